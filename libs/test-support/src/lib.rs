//! Test helpers: the real Postgres and Redis named by `CORVUS_TEST_DATABASE_URL` and
//! `CORVUS_TEST_REDIS_URL`, a throwaway database per test, and embedded storage in a
//! temporary directory.
//!
//! Unset on a developer laptop, the tests that need a server are skipped with a notice;
//! unset while `CI=true`, they fail, so CI can never pass by skipping.

use std::path::PathBuf;

use corvus_storage::StorageConfig;
use sqlx::Connection;

mod proxy;

pub use proxy::FlakyProxy;

/// Runs each named test (an `async fn(Backend)`) against both backends, as
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Embedded).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Which backend a conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Postgres,
}

fn required_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} must be set when CI=true: tests against real servers may not be skipped")
        }
        _ => {
            eprintln!("notice: {var} is not set; skipping a test that needs the real server");
            None
        }
    }
}

/// The Postgres server for tests, or `None` (skip) on a laptop without one.
pub fn postgres_url() -> Option<String> {
    required_env("CORVUS_TEST_DATABASE_URL")
}

/// The Redis server for tests, or `None` (skip) on a laptop without one.
pub fn redis_url() -> Option<String> {
    required_env("CORVUS_TEST_REDIS_URL")
}

/// The NATS server (with JetStream) for tests, or `None` (skip) on a laptop without one.
pub fn nats_url() -> Option<String> {
    required_env("CORVUS_TEST_NATS_URL")
}

/// A new, empty Postgres database on the test server, so that tests never share state.
pub async fn fresh_postgres_database(server_url: &str) -> String {
    let name = format!("corvus_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(server_url)
        .await
        .expect("connect to CORVUS_TEST_DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let mut url = url_without_path(server_url);
    url.push('/');
    url.push_str(&name);
    url
}

fn url_without_path(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("database url has a scheme");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

/// Polls `check` every 10 ms until it holds or `timeout` passes; whether it held.
pub async fn eventually(timeout: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    check()
}

/// A fresh temporary directory, removed when the value drops.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("corvus-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Storage for one test on `backend`: a fresh Postgres database and the Redis server, or
/// SQLite files and the in-process cache in a temporary directory. `None` means skip.
pub async fn storage(backend: Backend, dir: &TempDir) -> Option<StorageConfig> {
    let mut config = StorageConfig {
        data_dir: dir.path().to_path_buf(),
        max_connections: 8,
        cache_namespace: format!("test-{}", uuid::Uuid::new_v4().simple()),
        ..StorageConfig::default()
    };
    if backend == Backend::Postgres {
        let server = postgres_url()?;
        let redis = redis_url()?;
        config.database_url = Some(fresh_postgres_database(&server).await.into());
        config.redis_url = Some(redis.into());
    }
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_url_loses_its_database() {
        assert_eq!(
            url_without_path("postgres://root@127.0.0.1:5432/test"),
            "postgres://root@127.0.0.1:5432"
        );
        assert_eq!(
            url_without_path("postgres://h:5432?sslmode=disable"),
            "postgres://h:5432"
        );
    }
}
