//! The `[identity]` section: resolution rules per identifier kind, for every workspace
//! and per workspace, over the built-in defaults.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::TimeDelta;
use corvus_log::outbox::jetstream::RELAY;
use corvus_log::outbox::{ConsumerConfig, JetStreamConfig, OutboxConfig};
use corvus_proto::WorkspaceId;
use serde::{Deserialize, Serialize};

use crate::domain::resolution::{IdentifierKind, IdentityRules, KindRule};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Rules per identifier kind for every workspace, replacing the built-in rule of a
    /// standard kind (`[identity.kinds.email]`).
    pub kinds: BTreeMap<String, KindConfig>,
    /// Rules per kind for one workspace, over `kinds` (`[identity.workspaces.acme.email]`).
    pub workspaces: BTreeMap<String, BTreeMap<String, KindConfig>>,
    /// How long a profile stays in the read model after it was last read or changed.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Resolve the event log in this process. Off for a process that only serves reads,
    /// or to measure ingestion alone.
    pub resolve_events: bool,
    /// Events identity takes from the log at a time (the outbox's `batch_size` is for the
    /// other consumers). Larger batches spread each statement's cost over more events.
    pub batch_size: u32,
    /// Transactions a delivered batch is split into and resolved at once. Events that
    /// share an identifier stay in one; 1 resolves each batch in a single transaction.
    pub resolve_parts: usize,
    /// How identity's log hands resolved events and profile changes on.
    pub log: OutboxConfig,
    /// How long an entry of identity's log is kept once every consumer has passed it (a
    /// consumer added later starts from the oldest entry kept).
    #[serde(with = "humantime_serde")]
    pub log_retention: Duration,
    /// Services that receive identity's log over gRPC
    /// (`corvus.ingestion.v1.EventConsumerService`, the `entries` of each delivery).
    pub consumers: Vec<ConsumerConfig>,
    /// Hand the log on through a NATS JetStream stream instead of each consumer reading
    /// it from identity's store (`[identity.jetstream]`; absent, the store's log).
    pub jetstream: Option<JetStreamConfig>,
    /// Scoring's gRPC address (`http://scoring:50051`), where GetProfile finds a
    /// profile's scores and audiences when scoring runs in another process. In one
    /// process with identity it is asked directly and this is not needed.
    pub scoring_endpoint: Option<String>,
    /// How long GetProfile waits for scoring before it answers without scores (saying
    /// why in `scores_unavailable`).
    #[serde(with = "humantime_serde")]
    pub scores_timeout: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            kinds: BTreeMap::new(),
            workspaces: BTreeMap::new(),
            cache_ttl: Duration::from_secs(24 * 3600),
            resolve_events: true,
            batch_size: 8000,
            resolve_parts: 4,
            log: OutboxConfig::default(),
            log_retention: Duration::from_secs(7 * 24 * 3600),
            consumers: Vec::new(),
            jetstream: None,
            scoring_endpoint: None,
            scores_timeout: Duration::from_millis(250),
        }
    }
}

/// How one kind takes part in resolution. Normalisation stays the kind's built-in one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindConfig {
    /// Lower is stronger.
    pub priority: u16,
    /// At most one value per profile: two profiles with different values never merge.
    #[serde(default)]
    pub unique: bool,
    /// At most `max` values first seen within `window` on one profile.
    #[serde(default)]
    pub limit: Option<LimitConfig>,
    /// Values of this kind that never identify anyone.
    #[serde(default)]
    pub blocked: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub max: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl IdentityConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.rules()?;
        anyhow::ensure!(!self.cache_ttl.is_zero(), "identity.cache_ttl must be positive");
        anyhow::ensure!(
            (1..=10_000).contains(&self.batch_size),
            "identity.batch_size must be between 1 and 10000"
        );
        anyhow::ensure!(
            (1..=64).contains(&self.resolve_parts),
            "identity.resolve_parts must be between 1 and 64"
        );
        self.log.validate("identity.log").map_err(anyhow::Error::msg)?;
        anyhow::ensure!(!self.log_retention.is_zero(), "identity.log_retention must be positive");
        anyhow::ensure!(
            chrono::Duration::from_std(self.log_retention).is_ok(),
            "identity.log_retention is too long"
        );
        ConsumerConfig::validate_all("identity.consumers", &self.consumers).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            !self.consumers.iter().any(|c| c.name == crate::CONSUMER_NAME),
            "identity.consumers: {:?} is identity's own name on ingestion's log",
            crate::CONSUMER_NAME
        );
        anyhow::ensure!(
            !self.consumers.iter().any(|c| c.name == RELAY),
            "identity.consumers: {RELAY:?} is the name of the relay to JetStream"
        );
        if let Some(stream) = &self.jetstream {
            stream.validate("identity.jetstream").map_err(anyhow::Error::msg)?;
        }
        if let Some(endpoint) = &self.scoring_endpoint {
            anyhow::ensure!(
                endpoint
                    .parse::<tonic::transport::Uri>()
                    .is_ok_and(|u| u.scheme().is_some()),
                "identity.scoring_endpoint: {endpoint:?} is not a URL (http://host:port)"
            );
        }
        anyhow::ensure!(
            (Duration::from_millis(10)..=Duration::from_secs(10)).contains(&self.scores_timeout),
            "identity.scores_timeout must be between 10ms and 10s"
        );
        Ok(())
    }

    /// The rules of every workspace configured on its own, and those of the others.
    pub fn rules(&self) -> anyhow::Result<Rules> {
        let base = apply(IdentityRules::default(), &self.kinds, "identity.kinds")?;
        let mut workspaces = HashMap::new();
        for (workspace, kinds) in &self.workspaces {
            let id: WorkspaceId = workspace
                .parse()
                .map_err(|e| anyhow::anyhow!("identity.workspaces.{workspace}: {e}"))?;
            let rules = apply(base.clone(), kinds, &format!("identity.workspaces.{workspace}"))?;
            workspaces.insert(id, rules);
        }
        Ok(Rules { base, workspaces })
    }
}

fn apply(mut rules: IdentityRules, kinds: &BTreeMap<String, KindConfig>, path: &str) -> anyhow::Result<IdentityRules> {
    for (kind, config) in kinds {
        let kind = IdentifierKind::parse(kind).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let mut rule = KindRule::new(config.priority).normalisation(rules.rule(&kind).normalisation.clone());
        rule.unique = config.unique;
        if let Some(limit) = &config.limit {
            anyhow::ensure!(limit.max > 0, "{path}.{kind}.limit.max must be at least 1");
            let window = TimeDelta::from_std(limit.window)
                .map_err(|_| anyhow::anyhow!("{path}.{kind}.limit.window is too long"))?;
            rule = rule.limit(limit.max, window);
        }
        for value in &config.blocked {
            rule = rule.block(value.clone());
        }
        rules = rules.with_kind(kind, rule);
    }
    Ok(rules)
}

/// Resolution rules by workspace.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    base: IdentityRules,
    workspaces: HashMap<WorkspaceId, IdentityRules>,
}

impl Rules {
    pub fn of(&self, workspace: &WorkspaceId) -> &IdentityRules {
        self.workspaces.get(workspace).unwrap_or(&self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_rules_override_global_ones_over_the_defaults() {
        let config: IdentityConfig = serde_json::from_value(serde_json::json!({
            "kinds": {"member_no": {"priority": 15, "unique": true}},
            "workspaces": {"acme": {"email": {"priority": 5, "limit": {"max": 2, "window": "30d"}, "blocked": ["x@y.z"]}}}
        }))
        .unwrap();
        let rules = config.rules().unwrap();
        let other = rules.of(&"other".parse().unwrap());
        let member = IdentifierKind::parse("member_no").unwrap();
        assert!(other.rule(&member).unique);
        assert_eq!(other.priority(&IdentifierKind::email()), 30);
        let acme = rules.of(&"acme".parse().unwrap());
        assert_eq!(acme.priority(&IdentifierKind::email()), 5);
        assert_eq!(acme.rule(&IdentifierKind::email()).limit.unwrap().max, 2);
        assert!(
            acme.identifier("email", " X@Y.Z").is_err(),
            "blocked, after normalising"
        );
        assert!(acme.rule(&member).unique);
    }

    #[test]
    fn bad_rules_are_refused_with_their_path() {
        let config: IdentityConfig =
            serde_json::from_value(serde_json::json!({"kinds": {"Bad Kind": {"priority": 1}}})).unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("identity.kinds"));
    }
}
