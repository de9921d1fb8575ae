//! Configuration in three layers: the defaults, then an optional TOML file, then
//! `CORVUS_` environment variables with `__` between levels
//! (`CORVUS_SERVER__GRPC_ADDR=0.0.0.0:50051`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Loads `T` from its defaults, the file at `path` (if any) and the environment.
/// Only nested variables (`CORVUS_SECTION__KEY`) are read, so flat ones such as
/// `CORVUS_CONFIG` never collide with a setting.
pub fn load_config<T>(path: Option<&Path>) -> anyhow::Result<T>
where
    T: Default + Serialize + for<'de> Deserialize<'de>,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = path {
        anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
        figment = figment.merge(Toml::file(path));
    }
    let env = Env::prefixed("CORVUS_")
        .filter(|key| key.as_str().contains("__"))
        .split("__");
    figment
        .merge(env)
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

/// Ports, deadlines and limits of a server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC: every service of the process, health and reflection.
    pub grpc_addr: SocketAddr,
    /// The Segment-compatible HTTP API.
    pub http_addr: SocketAddr,
    /// Prometheus `/metrics`; none to turn it off.
    pub metrics_addr: Option<SocketAddr>,
    /// The longest a request may run when the client sets no shorter deadline.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests in flight at once; past this they are refused with UNAVAILABLE at once.
    pub concurrency_limit: usize,
    /// How long in-flight requests get to finish on shutdown.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The key of role `service` this process presents when it delivers a log to
    /// another Corvus service (`CORVUS_SERVER__SERVICE_KEY`, from a Secret), for every
    /// consumer that names no `key` of its own.
    #[serde(skip_serializing)]
    pub service_key: Option<secrecy::SecretString>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: ([127, 0, 0, 1], 50051).into(),
            http_addr: ([127, 0, 0, 1], 8080).into(),
            metrics_addr: Some(([127, 0, 0, 1], 9090).into()),
            request_timeout: Duration::from_secs(30),
            concurrency_limit: 1024,
            drain_timeout: Duration::from_secs(25),
            service_key: None,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.concurrency_limit > 0,
            "server.concurrency_limit must be at least 1"
        );
        anyhow::ensure!(
            !self.request_timeout.is_zero(),
            "server.request_timeout must be positive"
        );
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        server: ServerConfig,
    }

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "corvus.toml",
                "[server]\nconcurrency_limit = 7\nrequest_timeout = \"5s\"\n",
            )?;
            jail.set_env("CORVUS_SERVER__CONCURRENCY_LIMIT", "9");
            jail.set_env("CORVUS_CONFIG", "ignored");
            let sample: Sample = load_config(Some(Path::new("corvus.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(sample.server.concurrency_limit, 9);
            assert_eq!(sample.server.request_timeout, Duration::from_secs(5));
            assert_eq!(sample.server.drain_timeout, Duration::from_secs(25));
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_the_setting() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CORVUS_SERVER__GRPC_ADDR", "not-an-address");
            let err = load_config::<Sample>(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("server.grpc_addr"), "{err}");
            Ok(())
        });
    }
}
