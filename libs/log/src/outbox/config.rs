//! The settings of a log's outbox and of the consumers it delivers to over gRPC.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{Consumer, Entry, EventSink, GrpcSink};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Events per delivery.
    pub batch_size: u32,
    /// Payload bytes per delivery at most (a delivery holds at least one event), which
    /// bounds what a consumer's delivery and the one read ahead of it hold in memory.
    pub batch_bytes: u64,
    /// Tries of an event the consumer refuses before it is dead-lettered.
    pub max_attempts: u32,
    /// The first retry delay; it doubles up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// The fallback poll, for wake-ups that got lost.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a caught-up consumer waits after a wake-up before it reads: entries
    /// committed one at a time then go on in fewer, larger deliveries, for this much
    /// more latency ("0s": none).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            batch_bytes: 16 * 1024 * 1024,
            max_attempts: 5,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            linger: Duration::ZERO,
        }
    }
}

impl OutboxConfig {
    /// Checks the settings of the section at `section` (`ingestion.outbox`, …).
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err(format!("{section}.batch_size must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(format!("{section}.max_attempts must be at least 1"));
        }
        if self.batch_bytes == 0 || self.batch_bytes > (MAX_DELIVERY_BYTES / 2) as u64 {
            return Err(format!(
                "{section}.batch_bytes must be between 1 and {}",
                MAX_DELIVERY_BYTES / 2
            ));
        }
        if self.retry_base.is_zero() || self.retry_max < self.retry_base {
            return Err(format!("{section}.retry_base must be positive and at most retry_max"));
        }
        Ok(())
    }
}

/// The largest delivery a Corvus consumer takes over gRPC: room for a delivery of the
/// default `batch_bytes` and then some (a delivery always holds at least one event, and
/// `batch_bytes` can be raised to this).
pub const MAX_DELIVERY_BYTES: usize = 64 * 1024 * 1024;

/// A consumer of the configuration: a service implementing
/// `corvus.ingestion.v1.EventConsumerService`, reached over gRPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub name: String,
    pub endpoint: String,
    /// Sent as `authorization: Bearer …`. Corvus's own services take deliveries only
    /// with a key of role `service` (`corvus keys create --role service`).
    #[serde(default, skip_serializing)]
    pub key: Option<SecretString>,
    /// Entries per delivery, instead of the log's `batch_size`.
    #[serde(default)]
    pub batch_size: Option<u32>,
    /// Identity's log only: deliver the profile changes and leave out the events.
    #[serde(default)]
    pub changes_only: bool,
    /// A delivery not answered within this is given up and retried.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ConsumerConfig {
    /// A consumer at `endpoint`, the other settings at their defaults.
    pub fn new(name: &str, endpoint: &str) -> Self {
        Self {
            name: name.to_owned(),
            endpoint: endpoint.to_owned(),
            key: None,
            batch_size: None,
            changes_only: false,
            timeout: default_timeout(),
        }
    }

    /// Checks the consumers listed at `section` (`ingestion.consumers`, …).
    pub fn validate_all(section: &str, consumers: &[Self]) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for c in consumers {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(format!(
                    "{section}: consumer name {:?} must be letters, digits, '-', '_' or '.'",
                    c.name
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(format!("{section}: consumer {:?} is listed twice", c.name));
            }
            if !(c.endpoint.starts_with("http://") || c.endpoint.starts_with("https://")) {
                return Err(format!(
                    "{section}.{}: endpoint must be an http:// or https:// URL",
                    c.name
                ));
            }
            if c.batch_size == Some(0) || c.timeout.is_zero() {
                return Err(format!("{section}.{}: batch_size and timeout must be positive", c.name));
            }
        }
        Ok(())
    }

    /// Every consumer listed, delivered to over gRPC.
    pub fn consumers<E: Entry>(configs: &[Self]) -> anyhow::Result<Vec<Consumer<E>>>
    where
        GrpcSink: EventSink<E>,
    {
        configs
            .iter()
            .map(Self::consumer)
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)
    }

    /// The consumer, delivered to over gRPC.
    pub fn consumer<E: Entry>(&self) -> Result<Consumer<E>, String>
    where
        GrpcSink: EventSink<E>,
    {
        Ok(Consumer {
            name: self.name.clone(),
            sink: Arc::new(GrpcSink::new(self).map_err(|e| format!("consumer {}: {e}", self.name))?),
            batch_size: self.batch_size,
        })
    }
}
