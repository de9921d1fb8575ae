//! The `[orchestration]` section.

use std::time::Duration;

use corvus_log::outbox::{ConsumerConfig, OutboxConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestrationConfig {
    /// The exploration floor: every eligible action keeps at least this probability of
    /// being chosen (at most 1/m of m actions).
    pub epsilon: f64,
    /// Seeded draws a propensity is estimated from, when more than one action is
    /// eligible.
    pub propensity_draws: u32,
    /// How long the policy's evidence (each cell's trials and successes) is used
    /// before it is read again: the policy learns at this pace.
    #[serde(with = "humantime_serde")]
    pub evidence_refresh: Duration,
    /// Identity's gRPC endpoint, when orchestration runs apart from it
    /// (`corvus serve orchestration`).
    pub identity_endpoint: Option<String>,
    /// Scoring's gRPC endpoint, when orchestration runs apart from it.
    pub scoring_endpoint: Option<String>,
    /// Entries of identity's log taken at a time, at most.
    pub batch_size: u32,
    /// Where sends on a channel with no connector of its workspace go: "log" (written
    /// to the process's log and counted delivered, for development) or "none" (they
    /// wait until a connector is set).
    pub default_connector: String,
    /// Ingestion's gRPC endpoint, for sends' outcomes (`Message Sent`, `Delivery
    /// Failed`) when orchestration runs apart from it.
    pub ingestion_endpoint: Option<String>,
    /// How orchestration's log hands decisions on.
    pub log: OutboxConfig,
    /// How long a decision's entry stays in the log once every consumer has passed it
    /// (the decision itself stays, readable through `ListDecisions`).
    #[serde(with = "humantime_serde")]
    pub log_retention: Duration,
    /// Services that receive orchestration's log over gRPC
    /// (`corvus.ingestion.v1.EventConsumerService`, the `decisions` of each delivery).
    pub consumers: Vec<ConsumerConfig>,
    /// Measurement's gRPC endpoint, where satisfaction rules read NPS, CSAT and
    /// mentions, when orchestration runs apart from it.
    pub measurement_endpoint: Option<String>,
    /// How often satisfaction rules look at measurement's figures.
    #[serde(with = "humantime_serde")]
    pub satisfaction_check_interval: Duration,
}

impl Default for OrchestrationConfig {
    fn default() -> Self {
        Self {
            epsilon: 0.05,
            propensity_draws: 1_000,
            evidence_refresh: Duration::from_secs(1),
            identity_endpoint: None,
            scoring_endpoint: None,
            batch_size: 1_000,
            default_connector: "log".to_owned(),
            ingestion_endpoint: None,
            // Decisions are committed one at a time: the log hands them on in batches.
            log: OutboxConfig {
                linger: Duration::from_millis(50),
                ..OutboxConfig::default()
            },
            log_retention: Duration::from_secs(7 * 24 * 3600),
            consumers: Vec::new(),
            measurement_endpoint: None,
            satisfaction_check_interval: Duration::from_secs(60),
        }
    }
}

impl OrchestrationConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.epsilon > 0.0 && self.epsilon <= 0.5,
            "orchestration.epsilon must be in (0, 0.5]"
        );
        anyhow::ensure!(
            (100..=100_000).contains(&self.propensity_draws),
            "orchestration.propensity_draws must be between 100 and 100000"
        );
        anyhow::ensure!(
            self.evidence_refresh <= Duration::from_secs(3_600),
            "orchestration.evidence_refresh must be at most 1h"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.batch_size),
            "orchestration.batch_size must be between 1 and 10000"
        );
        anyhow::ensure!(
            matches!(self.default_connector.as_str(), "log" | "none"),
            "orchestration.default_connector must be \"log\" or \"none\""
        );
        self.log.validate("orchestration.log").map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            (Duration::from_millis(100)..=Duration::from_secs(86_400)).contains(&self.satisfaction_check_interval),
            "orchestration.satisfaction_check_interval must be between 100ms and 24h"
        );
        ConsumerConfig::validate_all("orchestration.consumers", &self.consumers).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            !self.consumers.iter().any(|c| c.name == crate::log::POLICY_CONSUMER),
            "orchestration.consumers: {:?} is the name of orchestration's own consumer",
            crate::log::POLICY_CONSUMER
        );
        Ok(())
    }
}
