//! The systems under test: a throwaway Postgres database, and the all-in-one app started
//! in this process over it (or over embedded storage), with workspaces and keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use corvus::{App, CorvusConfig};
use corvus_ingestion::outbox::Consumer;
use corvus_platform::server::Listeners;
use corvus_platform::{KeyStore, Role};
use corvus_proto::identity::v1::LogEntry;
use sqlx::{Connection as _, PgConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `corvus_bench_<random>` on the server, dropped by [`Scratch::drop_database`].
pub struct Scratch {
    server_url: String,
    name: String,
    /// The URL of the scratch database itself.
    pub url: String,
}

impl Scratch {
    pub async fn create(server_url: &str) -> anyhow::Result<Self> {
        let name = format!("corvus_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(server_url)
            .await
            .with_context(|| format!("connect to Postgres at {server_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let url = with_database(server_url, &name)?;
        Ok(Self {
            server_url: server_url.to_owned(),
            name,
            url,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }

    /// FORCE ends the sessions a pool may still hold (Postgres 13 and later).
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.server_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }

    /// Empties the event log and checkpoints, so that every measured point starts from
    /// the same state: an empty table, and no checkpoint debt left by the point before.
    pub async fn reset_events(&self) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        sqlx::query("TRUNCATE ingestion.events").execute(&mut conn).await?;
        conn.close().await?;
        self.checkpoint().await
    }

    /// Writes out what the points before left dirty, in Postgres's buffers and in the
    /// kernel's page cache (a checkpoint syncs every file it wrote), so that it is not
    /// flushed in the middle of the next point: the kernel writes back dirty pages some
    /// 30 s after they were dirtied, and a burst of them stalls every commit's WAL flush
    /// meanwhile.
    pub async fn checkpoint(&self) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        // CHECKPOINT needs a superuser (or pg_checkpoint); without one, carry on.
        let _ = sqlx::query("CHECKPOINT").execute(&mut conn).await;
        conn.close().await?;
        Ok(())
    }
}

/// `server_url` with its database path replaced by `database`.
fn with_database(server_url: &str, database: &str) -> anyhow::Result<String> {
    let (scheme, rest) = server_url
        .split_once("://")
        .context("the database URL needs a scheme")?;
    let (authority, query) = match rest.find(['/', '?']) {
        Some(i) => {
            let tail = &rest[i..];
            (&rest[..i], tail.find('?').map(|q| &tail[q..]).unwrap_or(""))
        }
        None => (rest, ""),
    };
    Ok(format!("{scheme}://{authority}/{database}{query}"))
}

/// The keys of one workspace.
pub struct Keys {
    pub ingest: String,
    /// Role Read: profiles and consumer status.
    pub read: String,
}

/// The app, serving in a task of this process.
pub struct Running {
    pub grpc_url: String,
    pub http_url: String,
    pub backend: &'static str,
    keys: KeyStore,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Whether identity resolves the event log in the app: off where ingestion is measured
/// alone, on where identity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Off,
    On,
}

/// How long the identity read model keeps a profile: long enough for a run, short
/// enough that the scratch entries left in Redis go soon after it.
const CACHE_TTL: Duration = Duration::from_secs(15 * 60);

fn config(resolution: Resolution) -> CorvusConfig {
    let mut config = CorvusConfig::default();
    config.identity.resolve_events = resolution == Resolution::On;
    config.identity.cache_ttl = CACHE_TTL;
    config
}

/// Storage for the durable app: the scratch database and Redis.
pub fn durable_config(scratch: &Scratch, redis_url: &str, resolution: Resolution) -> CorvusConfig {
    let mut config = config(resolution);
    config.storage.database_url = Some(scratch.url.clone().into());
    config.storage.redis_url = Some(redis_url.to_owned().into());
    config.storage.cache_namespace = scratch.name().to_owned();
    config
}

/// Storage for the embedded app: SQLite files and the in-process cache in `dir`.
pub fn embedded_config(dir: &Path, resolution: Resolution) -> CorvusConfig {
    let mut config = config(resolution);
    config.storage.data_dir = dir.to_path_buf();
    config
}

impl Running {
    pub async fn start(config: CorvusConfig) -> anyhow::Result<Self> {
        Self::start_with(config, Vec::new()).await
    }

    /// The app with in-process consumers of identity's log.
    pub async fn start_with(config: CorvusConfig, downstream: Vec<Consumer<LogEntry>>) -> anyhow::Result<Self> {
        let app = downstream.into_iter().fold(
            App::build(config, Listeners::ephemeral().await?).await?,
            App::with_consumer_after_identity,
        );
        let grpc_url = format!("http://127.0.0.1:{}", app.grpc_port());
        let http_url = format!(
            "http://127.0.0.1:{}",
            app.http_port().context("the app has no HTTP port")?
        );
        let backend = app.backend();
        let keys = app.keys.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(stop.clone()));
        Ok(Self {
            grpc_url,
            http_url,
            backend,
            keys,
            stop,
            task,
        })
    }

    /// A new workspace `name` (without a quota, as the bench measures the pipeline, not
    /// the limiter) and an ingest key for it.
    pub async fn workspace_key(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.workspace_keys(name).await?.ingest)
    }

    /// A new workspace `name` with an ingest key and a read key.
    pub async fn workspace_keys(&self, name: &str) -> anyhow::Result<Keys> {
        let workspace = name.parse().map_err(|e| anyhow::anyhow!("workspace {name}: {e}"))?;
        self.keys.upsert_workspace(&workspace, name, None).await?;
        let ingest = self.keys.create_key(&workspace, Role::Ingest, "corvus-bench").await?;
        let read = self
            .keys
            .create_key(&workspace, Role::Read, "corvus-bench reads")
            .await?;
        Ok(Keys {
            ingest: ingest.secret,
            read: read.secret,
        })
    }

    /// An admin key of workspace `name` (made by `workspace_keys`).
    pub async fn admin_key(&self, name: &str) -> anyhow::Result<String> {
        let workspace = name.parse().map_err(|e| anyhow::anyhow!("workspace {name}: {e}"))?;
        Ok(self
            .keys
            .create_key(&workspace, Role::Admin, "corvus-bench admin")
            .await?
            .secret)
    }

    /// `count` fresh workspaces named `<label>-<n>`, one key each.
    pub async fn keys(&self, label: &str, count: usize) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::with_capacity(count);
        for n in 0..count {
            keys.push(self.workspace_key(&format!("{label}-{n}")).await?);
        }
        Ok(keys)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("the app did not stop within 30 s")???;
        self.keys.database().close().await;
        Ok(())
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("corvus-bench-{label}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
