//! The `[scoring]` section: what counts as a purchase, for every workspace and per
//! workspace.

use std::collections::BTreeMap;

use corvus_proto::WorkspaceId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringConfig {
    /// Track event names that are purchases (their `revenue`, else `total`, else the sum
    /// of their products' price × quantity is the purchase's value).
    pub purchase_events: Vec<String>,
    /// Per workspace, over the above (`[scoring.workspaces.acme] purchase_events = …`).
    pub workspaces: BTreeMap<String, WorkspaceScoring>,
    /// Entries of identity's log scoring takes at a time, at most: a delivery holds what
    /// is waiting, so it is this large only when scoring is behind, where a large one
    /// costs less per entry (one read of each touched profile, fewer commits).
    pub batch_size: u32,
    /// How often audiences' standings that come due with time (a window closing) are
    /// looked at again, and new audiences built.
    #[serde(with = "humantime_serde")]
    pub audience_upkeep_interval: std::time::Duration,
    /// Models fitted longer ago than this are fitted again as of now, with the settings
    /// they were fitted with ("0s": never).
    #[serde(with = "humantime_serde")]
    pub refit_every: std::time::Duration,
    /// Each person's scores as of now are kept in the cache as events arrive, and a
    /// GetScores without `as_of` answers from them while they are at most this old
    /// ("0s", the default: computed at every read). Keeping them costs scoring's
    /// deliveries a read and a scoring of each person they touch (docs/scoring.md).
    #[serde(with = "humantime_serde")]
    pub scores_max_age: std::time::Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkspaceScoring {
    pub purchase_events: Option<Vec<String>>,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            purchase_events: vec!["Order Completed".to_owned()],
            workspaces: BTreeMap::new(),
            batch_size: 10_000,
            audience_upkeep_interval: std::time::Duration::from_secs(1),
            refit_every: std::time::Duration::from_secs(24 * 3600),
            scores_max_age: std::time::Duration::from_secs(0),
        }
    }
}

impl ScoringConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=10_000).contains(&self.batch_size),
            "scoring.batch_size must be between 1 and 10000"
        );
        anyhow::ensure!(
            self.purchase_events.iter().all(|e| !e.trim().is_empty()),
            "scoring.purchase_events: an event name is empty"
        );
        anyhow::ensure!(
            (std::time::Duration::from_millis(10)..=std::time::Duration::from_secs(3600))
                .contains(&self.audience_upkeep_interval),
            "scoring.audience_upkeep_interval must be between 10ms and 1h"
        );
        anyhow::ensure!(
            self.scores_max_age <= std::time::Duration::from_secs(24 * 3600),
            "scoring.scores_max_age must be at most 24h"
        );
        for (ws, settings) in &self.workspaces {
            ws.parse::<WorkspaceId>()
                .map_err(|e| anyhow::anyhow!("scoring.workspaces.{ws}: {e}"))?;
            if let Some(events) = &settings.purchase_events {
                anyhow::ensure!(
                    events.iter().all(|e| !e.trim().is_empty()),
                    "scoring.workspaces.{ws}.purchase_events: an event name is empty"
                );
            }
        }
        Ok(())
    }

    /// Whether a track event named `name` is a purchase in workspace `ws`.
    pub fn is_purchase(&self, ws: &str, name: &str) -> bool {
        self.workspaces
            .get(ws)
            .and_then(|w| w.purchase_events.as_ref())
            .unwrap_or(&self.purchase_events)
            .iter()
            .any(|e| e == name)
    }
}
