//! The orchestration service: campaigns kept and checked, the live ones cached per
//! workspace. Decide is in `decide.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use corvus_proto::WorkspaceId;
use corvus_storage::{StorageConfig, StorageError};

use crate::config::OrchestrationConfig;
use crate::decide::Evidence;
use crate::decider::Decider;
use crate::domain::campaign::{CONTROL, Definition, Trigger};
use crate::domain::policy::{Propensities, bucket};
use crate::people::{Caller, Directory};
use crate::storage::{self, OrchestrationStore, State, Stored, WriteError};

/// The name orchestration consumes identity's log under, and answers erasures as.
pub const CONSUMER_NAME: &str = "orchestration";

#[derive(Debug, thiserror::Error)]
pub enum OrchestrationError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    /// Identity or scoring could not be asked.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<WriteError> for OrchestrationError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::NotFound(_) => Self::NotFound(err.to_string()),
            WriteError::Exists(_) => Self::AlreadyExists(err.to_string()),
            WriteError::State { .. } | WriteError::Version { .. } => Self::Precondition(err.to_string()),
            WriteError::Storage(e) => Self::Storage(e),
        }
    }
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> OrchestrationError {
    OrchestrationError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What was read, and when.
type Read<T> = (Instant, Arc<T>);

/// How long a replica uses a workspace's live campaigns before it reads their count of
/// changes again: the most it lags behind a campaign launched, changed or resumed
/// through another replica (a pause is never missed: see `live`).
pub(crate) const LIVE_RECHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// A workspace's live campaigns and control group, as of a count of its changes.
#[derive(Default)]
pub(crate) struct Live {
    changed: i64,
    /// Every campaign, whatever its state (outcomes reach paused and ended ones).
    pub(crate) all: Vec<Arc<Stored>>,
    pub(crate) campaigns: Vec<Arc<Stored>>,
    pub(crate) control_share: f64,
}

#[derive(Clone)]
pub struct Orchestration {
    pub store: Arc<dyn OrchestrationStore>,
    pub(crate) directory: Arc<dyn Directory>,
    config: Arc<OrchestrationConfig>,
    /// Each workspace's live campaigns, and when their count of changes was last read.
    live: Arc<Mutex<HashMap<WorkspaceId, Read<Live>>>>,
    /// Moves on with each change of campaigns made here: live campaigns read across one
    /// are not kept.
    live_changes: Arc<std::sync::atomic::AtomicU64>,
    /// The policy's evidence of each workspace, and when it was read.
    evidence: Arc<Mutex<HashMap<WorkspaceId, Read<Evidence>>>>,
    pub(crate) propensities: Arc<Propensities>,
    pub(crate) decider: Arc<Decider>,
    /// Alert rules cached, what this replica knows of cooldowns, and the news of alerts
    /// raised here.
    pub(crate) alerting: Arc<crate::alerts::Alerting>,
    /// The key of role `service` this process presents to identity and scoring when it
    /// acts on an entry of identity's log rather than on a caller's request.
    service_key: Option<secrecy::SecretString>,
    /// Where sends' outcomes go back in as events.
    pub(crate) receipts: Option<Arc<dyn crate::delivery::Receipts>>,
    /// Where satisfaction rules read NPS, CSAT and mentions (measurement).
    pub(crate) feedback: Option<Arc<dyn crate::satisfaction::MeasurementSource>>,
}

impl Orchestration {
    pub async fn connect(
        storage: &StorageConfig,
        config: &OrchestrationConfig,
        directory: Arc<dyn Directory>,
    ) -> anyhow::Result<Self> {
        Ok(Self::new(storage::connect(storage).await?, config, directory))
    }

    pub fn new(
        store: Arc<dyn OrchestrationStore>,
        config: &OrchestrationConfig,
        directory: Arc<dyn Directory>,
    ) -> Self {
        Self {
            decider: Arc::new(Decider::new(store.clone())),
            store,
            directory,
            config: Arc::new(config.clone()),
            live: Arc::default(),
            live_changes: Arc::default(),
            evidence: Arc::default(),
            propensities: Arc::default(),
            alerting: Arc::default(),
            service_key: None,
            receipts: None,
            feedback: None,
        }
    }

    /// Where satisfaction rules read the workspace's figures.
    pub fn with_feedback(mut self, source: Arc<dyn crate::satisfaction::MeasurementSource>) -> Self {
        self.feedback = Some(source);
        self
    }

    pub fn with_receipts(mut self, receipts: Arc<dyn crate::delivery::Receipts>) -> Self {
        self.receipts = Some(receipts);
        self
    }

    pub fn with_service_key(mut self, key: Option<secrecy::SecretString>) -> Self {
        self.service_key = key;
        self
    }

    /// Orchestration itself as the caller, in workspace `ws`: for what it does on an
    /// entry of identity's log. Over gRPC it presents the service key and names the
    /// workspace.
    pub fn service_caller(&self, ws: &WorkspaceId) -> Caller {
        use secrecy::ExposeSecret;
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(key) = &self.service_key
            && let Ok(value) = format!("Bearer {}", key.expose_secret()).parse()
        {
            metadata.insert("authorization", value);
        }
        if let Ok(value) = ws.as_str().parse() {
            metadata.insert(corvus_platform::server::WORKSPACE_HEADER, value);
        }
        Caller {
            principal: corvus_platform::Principal {
                workspace: ws.clone(),
                role: corvus_platform::Role::Service,
                key_prefix: "orchestration".to_owned(),
                events_per_second: None,
            },
            metadata,
        }
    }

    pub fn config(&self) -> &OrchestrationConfig {
        &self.config
    }

    /// Checks a definition against itself and the workspace (its audience or segment
    /// exists).
    pub async fn check(&self, caller: &Caller, def: &Definition) -> Result<(), OrchestrationError> {
        def.check().map_err(|(field, reason)| invalid(field, reason))?;
        if def.audience.is_empty()
            && def.segment.is_empty()
            && !matches!(def.trigger, Some(Trigger::AudienceEntered(_)))
        {
            return Ok(());
        }
        let targets = self
            .directory
            .targets(caller)
            .await
            .map_err(OrchestrationError::Unavailable)?;
        if !def.audience.is_empty() && !targets.audiences.contains(&def.audience) {
            return Err(invalid(
                "campaign.audience",
                format!("no audience is named {:?} in this workspace", def.audience),
            ));
        }
        if let Some(Trigger::AudienceEntered(name)) = &def.trigger
            && !targets.audiences.contains(name)
        {
            return Err(invalid(
                "campaign.trigger.audience_entered",
                format!("no audience is named {name:?} in this workspace"),
            ));
        }
        if !def.segment.is_empty() {
            match &targets.segments {
                None => {
                    return Err(invalid(
                        "campaign.segment",
                        "the workspace has no segments yet: fit them first (FitModel, MODEL_KIND_SEGMENTS)",
                    ));
                }
                Some(names) if !names.contains(&def.segment) => {
                    return Err(invalid(
                        "campaign.segment",
                        format!(
                            "no segment is named {:?}; the segments are {}",
                            def.segment,
                            names.join(", ")
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    pub async fn create(&self, caller: &Caller, def: &Definition) -> Result<Stored, OrchestrationError> {
        self.check(caller, def).await?;
        let created = self
            .store
            .create_campaign(&caller.principal.workspace, def, Utc::now())
            .await;
        self.forget_live(&caller.principal.workspace);
        Ok(created?)
    }

    pub async fn update(
        &self,
        caller: &Caller,
        def: &Definition,
        expected: Option<u32>,
    ) -> Result<Stored, OrchestrationError> {
        self.check(caller, def).await?;
        let updated = self
            .store
            .update_campaign(&caller.principal.workspace, def, expected, Utc::now())
            .await;
        self.forget_live(&caller.principal.workspace);
        Ok(updated?)
    }

    pub async fn set_state(&self, ws: &WorkspaceId, name: &str, to: State) -> Result<Stored, OrchestrationError> {
        let stored = self.store.set_state(ws, name, to, Utc::now()).await;
        self.forget_live(ws);
        Ok(stored?)
    }

    pub async fn set_control_share(&self, ws: &WorkspaceId, share: f64) -> Result<(), OrchestrationError> {
        let set = self.store.set_control_share(ws, share).await;
        self.forget_live(ws);
        Ok(set?)
    }

    /// Pauses every live campaign tagged `tag`.
    pub async fn pause_tagged(&self, ws: &WorkspaceId, tag: &str) -> Result<Vec<String>, OrchestrationError> {
        let names: Vec<String> = self
            .store
            .campaigns(ws)
            .await?
            .into_iter()
            .filter(|c| c.state == State::Live && c.definition.tags.iter().any(|t| t == tag))
            .map(|c| c.definition.name)
            .collect();
        let paused = self.store.pause(ws, &names, Utc::now()).await;
        self.forget_live(ws);
        Ok(paused?)
    }

    /// The live campaigns, read again when the workspace's count of campaign changes
    /// has moved; the count is read at most once every `LIVE_RECHECK`. A change made
    /// through this replica is seen by its next call; one made through another within
    /// `LIVE_RECHECK`, and a pause at once: a decision is written only while its
    /// campaign is live in the version decided with (`storage::decide`).
    pub(crate) async fn live(&self, ws: &WorkspaceId) -> Result<Arc<Live>, StorageError> {
        let held = self.live.lock().expect("live lock").get(ws).cloned();
        if let Some((checked, live)) = &held
            && checked.elapsed() < LIVE_RECHECK
        {
            return Ok(live.clone());
        }
        let changes = self.live_changes.load(std::sync::atomic::Ordering::SeqCst);
        let changed = self.store.campaigns_changed(ws).await?;
        let live = match held.filter(|(_, l)| l.changed == changed) {
            Some((_, live)) => live,
            None => {
                let all: Vec<Arc<Stored>> = self.store.campaigns(ws).await?.into_iter().map(Arc::new).collect();
                Arc::new(Live {
                    changed,
                    campaigns: all.iter().filter(|c| c.state == State::Live).cloned().collect(),
                    all,
                    control_share: self.store.control_share(ws).await?,
                })
            }
        };
        if self.live_changes.load(std::sync::atomic::Ordering::SeqCst) == changes {
            self.live
                .lock()
                .expect("live lock")
                .insert(ws.clone(), (Instant::now(), live.clone()));
        }
        Ok(live)
    }

    /// Drops the workspace's live campaigns held here: they changed, here or elsewhere.
    pub(crate) fn forget_live(&self, ws: &WorkspaceId) {
        self.live_changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.live.lock().expect("live lock").remove(ws);
    }

    /// The policy's evidence, read again once it is `evidence_refresh` old: the
    /// policy learns at that pace rather than with every outcome, and a Decide costs no
    /// read of it.
    pub(crate) async fn evidence(&self, ws: &WorkspaceId) -> Result<Arc<Evidence>, StorageError> {
        let fresh = self.config.evidence_refresh;
        if let Some((read, evidence)) = self.evidence.lock().expect("evidence lock").get(ws)
            && read.elapsed() < fresh
        {
            return Ok(evidence.clone());
        }
        let evidence = Arc::new(self.store.evidence(ws).await?);
        self.evidence
            .lock()
            .expect("evidence lock")
            .insert(ws.clone(), (Instant::now(), evidence.clone()));
        Ok(evidence)
    }

    /// Whether a person is in the workspace's control group of `share`.
    pub(crate) fn in_control_group(&self, ws: &WorkspaceId, profile: corvus_proto::ProfileId, share: f64) -> bool {
        share > 0.0 && bucket(&[ws.as_str(), CONTROL, &profile.to_string()]) < share
    }
}
