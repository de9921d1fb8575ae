//! API keys and workspaces. A key carries one workspace and one role; it is shown once
//! at creation and stored only as its SHA-256. Every request is bound to the key's
//! workspace, so no call can reach another workspace's data.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use corvus_proto::WorkspaceId;
use corvus_storage::{Database, Migrators, StorageConfig, StorageError};
use sha2::{Digest, Sha256};

static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The schema (Postgres) or file (SQLite) of workspaces and keys.
pub const SCHEMA: &str = "platform";

const KEY_PREFIX: &str = "cvs_";

const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(1);

/// What a key may do. `Admin` may do everything in its workspace; `Read` reads; `Ingest`
/// only sends events. `Service` delivers a log's entries from one Corvus service to
/// another (a consumer's `Deliver`), across workspaces: no other key may, admin included;
/// and, in the workspace it names, reads what a service needs to act on an entry (the
/// profile an alert describes, the person a triggered campaign decides for) and sends
/// the events a service reports (a message sent). It changes no definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Ingest,
    Read,
    Admin,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Admin => "admin",
            Self::Service => "service",
        }
    }

    /// Whether a key of this role may act as `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self == needed
            || (self == Role::Admin && needed != Role::Service)
            || (self == Role::Service && matches!(needed, Role::Read | Role::Ingest))
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ingest" => Ok(Self::Ingest),
            "read" => Ok(Self::Read),
            "admin" => Ok(Self::Admin),
            "service" => Ok(Self::Service),
            other => Err(format!(
                "unknown role {other:?}: expected ingest, read, admin or service"
            )),
        }
    }
}

/// Who is calling: the workspace and role of the key the request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub workspace: WorkspaceId,
    pub role: Role,
    /// The key's prefix, for logs.
    pub key_prefix: String,
    /// The workspace's ingest quota, events per second; `None` for no limit.
    pub events_per_second: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed API key")]
    MissingKey,
    #[error("unknown or revoked API key")]
    InvalidKey,
    #[error("the key belongs to another workspace")]
    WrongWorkspace,
    #[error("a key with role {has} cannot {action}")]
    Forbidden { has: &'static str, action: &'static str },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Principal {
    /// Refuses the call unless the key's role allows `needed`; `action` says what the call does.
    pub fn require(&self, needed: Role, action: &'static str) -> Result<(), AuthError> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                has: self.role.as_str(),
                action,
            })
        }
    }
}

/// A newly created key: the secret is shown once and never stored.
#[derive(Debug)]
pub struct CreatedKey {
    pub secret: String,
    pub prefix: String,
    pub workspace: WorkspaceId,
    pub role: Role,
}

/// Workspaces and hashed keys in the database.
#[derive(Debug, Clone)]
pub struct KeyStore {
    db: Database,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn new_secret() -> String {
    // Two v4 UUIDs: 244 bits from the operating system's CSPRNG.
    format!(
        "{KEY_PREFIX}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

type PrincipalRow = (String, String, String, Option<i32>);

impl KeyStore {
    pub async fn connect(config: &StorageConfig) -> Result<Self, StorageError> {
        let migrators = Migrators {
            postgres: &MIGRATE_POSTGRES,
            sqlite: &MIGRATE_SQLITE,
        };
        Ok(Self {
            db: Database::connect(config, SCHEMA, &migrators).await?,
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Creates the workspace, or updates its name and quota when it exists.
    pub async fn upsert_workspace(
        &self,
        id: &WorkspaceId,
        name: &str,
        events_per_second: Option<u32>,
    ) -> Result<(), StorageError> {
        let quota = events_per_second.map(|q| q as i64);
        let sql = "INSERT INTO workspaces (id, name, events_per_second) VALUES ($1, $2, $3) \
                   ON CONFLICT (id) DO UPDATE SET name = excluded.name, events_per_second = excluded.events_per_second";
        match &self.db {
            Database::Postgres(pool) => {
                sqlx::query(sql)
                    .bind(id)
                    .bind(name)
                    .bind(quota.map(|q| q as i32))
                    .execute(pool)
                    .await?;
            }
            Database::Sqlite(pool) => {
                sqlx::query(sql).bind(id).bind(name).bind(quota).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Creates a key for an existing workspace.
    pub async fn create_key(
        &self,
        workspace: &WorkspaceId,
        role: Role,
        name: &str,
    ) -> Result<CreatedKey, StorageError> {
        let secret = new_secret();
        let prefix = secret[..KEY_PREFIX.len() + 8].to_owned();
        let sql = "INSERT INTO api_keys (key_hash, key_prefix, workspace_id, role, name) VALUES ($1, $2, $3, $4, $5)";
        let hashed = hash(&secret);
        match &self.db {
            Database::Postgres(pool) => {
                sqlx::query(sql)
                    .bind(&hashed)
                    .bind(&prefix)
                    .bind(workspace)
                    .bind(role.as_str())
                    .bind(name)
                    .execute(pool)
                    .await?;
            }
            Database::Sqlite(pool) => {
                sqlx::query(sql)
                    .bind(&hashed)
                    .bind(&prefix)
                    .bind(workspace)
                    .bind(role.as_str())
                    .bind(name)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(CreatedKey {
            secret,
            prefix,
            workspace: workspace.clone(),
            role,
        })
    }

    /// Revokes the key with this prefix; false when there is none.
    pub async fn revoke(&self, prefix: &str) -> Result<bool, StorageError> {
        let affected = match &self.db {
            Database::Postgres(pool) => {
                sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_prefix = $1 AND revoked_at IS NULL")
                    .bind(prefix)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
            Database::Sqlite(pool) => sqlx::query(
                "UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 WHERE key_prefix = $1 AND revoked_at IS NULL",
            )
            .bind(prefix)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(affected > 0)
    }

    /// The principal of a live key, or `None` for an unknown or revoked one.
    pub async fn lookup(&self, secret: &str) -> Result<Option<Principal>, StorageError> {
        let sql = "SELECT k.workspace_id, k.role, k.key_prefix, w.events_per_second \
                   FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id \
                   WHERE k.key_hash = $1 AND k.revoked_at IS NULL";
        let hashed = hash(secret);
        let row: Option<PrincipalRow> = match &self.db {
            Database::Postgres(pool) => sqlx::query_as(sql).bind(&hashed).fetch_optional(pool).await?,
            Database::Sqlite(pool) => sqlx::query_as(sql).bind(&hashed).fetch_optional(pool).await?,
        };
        row.map(|(workspace, role, key_prefix, quota)| {
            Ok(Principal {
                workspace: workspace.parse().map_err(|e| StorageError::Internal(format!("{e}")))?,
                role: role.parse().map_err(StorageError::Internal)?,
                key_prefix,
                events_per_second: quota.map(|q| q as u32),
            })
        })
        .transpose()
    }
}

/// Resolves keys to principals, remembering answers for a short time so that a busy
/// client costs one lookup per `ttl`, not one per request. A revoked key stops working
/// within `ttl`.
#[derive(Debug)]
pub struct Authenticator {
    store: KeyStore,
    ttl: Duration,
    /// Key hash → the answer (none for an unknown key) and when it was looked up.
    remembered: Mutex<HashMap<Vec<u8>, Remembered>>,
}

type Remembered = (Option<Principal>, Instant);

impl Authenticator {
    pub fn new(store: KeyStore, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            remembered: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    /// The principal for `secret`. `workspace_opt` is the workspace the caller says it
    /// acts for (a header); a key of another workspace is refused, but for a service
    /// key, which acts for the workspace it names.
    pub async fn authenticate(&self, secret: &str, workspace_opt: Option<&str>) -> Result<Principal, AuthError> {
        if !secret.starts_with(KEY_PREFIX) {
            return Err(AuthError::InvalidKey);
        }
        let key = hash(secret);
        let cached = {
            let remembered = self.remembered.lock().expect("auth cache lock");
            // An unknown key is remembered briefly only, so a key created a moment
            // after a failed attempt works at once.
            remembered
                .get(&key)
                .filter(|(p, at)| at.elapsed() < if p.is_some() { self.ttl } else { UNKNOWN_KEY_TTL })
                .map(|(p, _)| p.clone())
        };
        let principal = match cached {
            Some(p) => p,
            None => {
                let p = self.store.lookup(secret).await?;
                let mut remembered = self.remembered.lock().expect("auth cache lock");
                if remembered.len() > 10_000 {
                    remembered.clear();
                }
                remembered.insert(key, (p.clone(), Instant::now()));
                p
            }
        };
        let principal = principal.ok_or(AuthError::InvalidKey)?;
        match workspace_opt {
            Some(ws) if ws != principal.workspace.as_str() && principal.role == Role::Service => Ok(Principal {
                workspace: ws.parse().map_err(|_| AuthError::WrongWorkspace)?,
                ..principal
            }),
            Some(ws) if ws != principal.workspace.as_str() => Err(AuthError::WrongWorkspace),
            _ => Ok(principal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_allows_its_workspace_and_others_only_themselves() {
        assert!(Role::Admin.allows(Role::Ingest) && Role::Admin.allows(Role::Read));
        assert!(Role::Ingest.allows(Role::Ingest) && !Role::Ingest.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Ingest) && !Role::Read.allows(Role::Admin));
        // Deliveries cross workspaces: an admin of one may not make them, and a service
        // key may otherwise only read and report events.
        assert!(!Role::Admin.allows(Role::Service) && Role::Service.allows(Role::Service));
        assert!(Role::Service.allows(Role::Read) && Role::Service.allows(Role::Ingest));
        assert!(!Role::Service.allows(Role::Admin));
        assert_eq!("service".parse::<Role>(), Ok(Role::Service));
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
        assert_ne!(hash(&a), hash(&b));
    }
}
