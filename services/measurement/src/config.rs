//! The `[measurement]` section.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeasurementConfig {
    /// Entries of identity's or orchestration's log measurement takes at a time, at most,
    /// when it runs with them in one process (apart, the senders' consumer settings set
    /// the size). A delivery's changes commit per run of one workspace's entries, and
    /// per profile change, each reading every person it names once.
    pub batch_size: u32,
}

impl Default for MeasurementConfig {
    fn default() -> Self {
        Self { batch_size: 1000 }
    }
}

impl MeasurementConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=10_000).contains(&self.batch_size),
            "measurement.batch_size must be between 1 and 10000"
        );
        Ok(())
    }
}
