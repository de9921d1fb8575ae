//! The identity service: resolution of delivered events, profile reads through the read
//! model, unmerge, erasure across stores and the review queue. Transport-free: the gRPC
//! handlers and the event-log consumer call in here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use corvus_log::outbox::{Handoff, JetStream};
use corvus_log::store::EventLog;
use corvus_proto::WorkspaceId;
use corvus_proto::common::v1::StoredEvent;
use corvus_proto::identity::v1 as pb;
use corvus_storage::{Cache, StorageConfig, StorageError};
use prost::Message;

use crate::config::{IdentityConfig, Rules};
use crate::domain::batch::IncomingEvent;
use crate::domain::partition::partition;
use crate::domain::resolution::{DropReason, Identifier, IdentityRules, ProfileId, Rule};
use crate::events::incoming;
use crate::read_model::{Entry, ReadModel, merge_message, timestamp};
use crate::storage::{
    self, CANDIDATE_ACCEPTED, CANDIDATE_REJECTED, CandidateRecord, IdentityStore, MatchMerge, MergeRecord, Removed,
    ReviewRefused, UnmergeRefused, Unmerged,
};

/// Another service's store that holds a person's events and erases them on request.
#[async_trait]
pub trait EventEraser: Send + Sync {
    /// The store's name on the receipt.
    fn name(&self) -> &'static str;
    /// Deletes the workspace's events with these message ids; how many there were.
    async fn erase(&self, workspace: &WorkspaceId, message_ids: &[String]) -> Result<u64, StorageError>;
}

/// Where GetProfile finds a profile's scores and audiences: scoring, in this process or
/// over gRPC. They are asked for at each read rather than copied onto the read model, as
/// much of them moves with time alone (P(alive), recency, a window closing on an
/// audience) and a copy would be stale by the time it was read.
#[async_trait]
pub trait ScoresSource: Send + Sync {
    /// The profile's scores; `Err` says why there are none to give (scoring down, say).
    async fn scores(&self, caller: &Caller, profile: ProfileId) -> Result<ProfileScores, String>;
}

/// Who asked for a profile: scoring is asked on their behalf, with their key.
pub struct Caller {
    pub principal: corvus_platform::Principal,
    pub metadata: tonic::metadata::MetadataMap,
}

/// What scoring holds of a profile, as `corvus.identity.v1.Profile` carries it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProfileScores {
    pub scores: Vec<pb::Score>,
    /// The audiences the person is in.
    pub segments: Vec<String>,
}

/// Why a request cannot be served, in terms the API maps to a status.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl IdentityError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Delivered events after resolution: each one's profile, in delivery order (none when
/// no identifier was left, or the event could not be read), and those that could not.
#[derive(Debug, Default)]
pub struct Resolved {
    pub profiles: Vec<Option<ProfileId>>,
    pub failures: Vec<(String, String)>,
}

/// A profile read: the profile, and the id asked for when it was merged into it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRead {
    pub id: ProfileId,
    /// The encoded `corvus.identity.v1.Profile`, as the read model holds it.
    pub profile: Bytes,
    pub redirected_from: Option<ProfileId>,
}

impl ProfileRead {
    pub fn decode(&self) -> Result<pb::Profile, StorageError> {
        pb::Profile::decode(self.profile.clone())
            .map_err(|e| StorageError::Internal(format!("a profile in the read model does not decode: {e}")))
    }
}

#[derive(Clone)]
pub struct Identity {
    pub store: Arc<dyn IdentityStore>,
    /// Identity's log: resolved events and profile changes, for the services after it.
    pub log: Arc<dyn EventLog>,
    /// How the log reaches its consumers: read by each, or relayed to a stream.
    pub handoff: Handoff,
    pub read_model: ReadModel,
    rules: Arc<Rules>,
    erasers: Vec<Arc<dyn EventEraser>>,
    scores: Option<Arc<dyn ScoresSource>>,
    scores_timeout: Duration,
    parts: usize,
}

impl Identity {
    /// Connects the store (running its migrations) and the cache.
    pub async fn connect(storage: &StorageConfig, config: &IdentityConfig) -> anyhow::Result<Self> {
        let (store, log) = storage::connect_with_log(storage).await?;
        let cache = <dyn Cache>::connect(storage).await?;
        let mut identity = Self::new(store, log, cache, config)?;
        if let Some(stream) = &config.jetstream {
            identity.handoff = Handoff::JetStream(Arc::new(JetStream::connect(stream, config.log_retention).await?));
        }
        Ok(identity)
    }

    pub fn new(
        store: Arc<dyn IdentityStore>,
        log: Arc<dyn EventLog>,
        cache: Arc<dyn Cache>,
        config: &IdentityConfig,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            store,
            log,
            handoff: Handoff::Log,
            read_model: ReadModel {
                cache,
                ttl: config.cache_ttl,
            },
            rules: Arc::new(config.rules()?),
            erasers: Vec::new(),
            scores: None,
            scores_timeout: config.scores_timeout,
            parts: config.resolve_parts.max(1),
        })
    }

    /// Adds a store that `ForgetProfile` erases the person's events from.
    pub fn with_eraser(mut self, eraser: Arc<dyn EventEraser>) -> Self {
        self.erasers.push(eraser);
        self
    }

    /// Sets where GetProfile finds scores.
    pub fn with_scores(mut self, source: Arc<dyn ScoresSource>) -> Self {
        self.scores = Some(source);
        self
    }

    /// A profile's scores from scoring, or why there are none.
    pub async fn scores_of(&self, caller: &Caller, profile: ProfileId) -> Result<ProfileScores, String> {
        let Some(source) = &self.scores else {
            return Err("scoring does not run beside identity and identity.scoring_endpoint is not set".to_owned());
        };
        match tokio::time::timeout(self.scores_timeout, source.scores(caller, profile)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "scoring did not answer within {} ms",
                self.scores_timeout.as_millis()
            )),
        }
    }

    pub fn rules(&self, ws: &WorkspaceId) -> &IdentityRules {
        self.rules.of(ws)
    }

    /// Resolves delivered events, per workspace in parts of linked events that each take
    /// a transaction, and says which profile each event is on.
    pub async fn resolve(&self, events: &[StoredEvent]) -> Result<Resolved, StorageError> {
        let mut resolved = Resolved {
            profiles: vec![None; events.len()],
            failures: Vec::new(),
        };
        let mut by_workspace: HashMap<WorkspaceId, Vec<usize>> = HashMap::new();
        let mut order = Vec::new();
        for (i, event) in events.iter().enumerate() {
            match event.workspace_id.parse::<WorkspaceId>() {
                Ok(ws) => {
                    if !by_workspace.contains_key(&ws) {
                        order.push(ws.clone());
                    }
                    by_workspace.entry(ws).or_default().push(i);
                }
                Err(e) => resolved
                    .failures
                    .push((event.event_id.clone(), format!("workspace: {e}"))),
            }
        }
        for ws in order {
            let rules = self.rules(&ws);
            let mut indices = Vec::new();
            let mut incoming_events = Vec::new();
            for i in &by_workspace[&ws] {
                match incoming(&events[*i], rules) {
                    Ok(event) => {
                        indices.push(*i);
                        incoming_events.push(event);
                    }
                    Err(e) => resolved.failures.push((events[*i].event_id.clone(), e.to_string())),
                }
            }
            // The parts go to the store at once, each its own transaction. One that fails
            // fails the delivery; the parts already committed come back as redeliveries,
            // which keep their profile.
            let parts = partition(&incoming_events, self.parts);
            let mut slots: Vec<Option<IncomingEvent>> = incoming_events.into_iter().map(Some).collect();
            let batches: Vec<Vec<IncomingEvent>> = parts
                .iter()
                .map(|part| part.iter().filter_map(|&j| slots[j].take()).collect())
                .collect();
            // Each part a task of its own, so that their work in this process (planning,
            // encoding, decoding) spreads over the runtime's threads too, and each marks
            // its profiles stale as soon as it has committed.
            let tasks = batches.into_iter().map(|events| {
                let (store, all_rules, ws) = (self.store.clone(), self.rules.clone(), ws.clone());
                let read_model = self.read_model.clone();
                tokio::spawn(async move {
                    let applied = store.resolve(&ws, &events, all_rules.of(&ws)).await?;
                    mark_stale(&read_model, &ws, &applied.versions).await;
                    Ok::<_, StorageError>(applied.outcomes)
                })
            });
            let outcomes: Vec<_> = futures::future::try_join_all(tasks)
                .await
                .map_err(|e| StorageError::Internal(format!("a resolving task failed: {e}")))?
                .into_iter()
                .collect::<Result<_, _>>()?;
            for (part, outcomes) in parts.iter().zip(outcomes) {
                for (&j, (_, profile, _)) in part.iter().zip(outcomes) {
                    resolved.profiles[indices[j]] = profile;
                }
            }
        }
        // Every workspace's entries are committed: the log's dispatchers look once.
        self.log.wake();
        Ok(resolved)
    }

    /// A profile by id: from the read model when it holds a current entry, else from the
    /// store (refreshing the read model). Merged ids redirect to the survivor.
    pub async fn profile(&self, ws: &WorkspaceId, id: ProfileId) -> Result<Option<ProfileRead>, IdentityError> {
        let mut asked = id;
        let mut redirected_from = None;
        // Merges are flattened, so one redirect is all there can be; a second one means
        // the survivor was merged meanwhile, and is followed too.
        for _ in 0..4 {
            match self.entry(ws, asked).await? {
                Some(Entry::Live(profile)) => {
                    return Ok(Some(ProfileRead {
                        id: asked,
                        profile,
                        redirected_from,
                    }));
                }
                Some(Entry::Merged(into)) => {
                    redirected_from = Some(id);
                    asked = into;
                }
                Some(Entry::Erased) | None => return Ok(None),
            }
        }
        Err(StorageError::Unavailable("the profile keeps being merged; try again".to_owned()).into())
    }

    async fn entry(&self, ws: &WorkspaceId, id: ProfileId) -> Result<Option<Entry>, IdentityError> {
        match self.read_model.get(ws, id).await {
            Ok(Some(entry)) => return Ok(Some(entry)),
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "read model unavailable; reading the store"),
        }
        let lookup = self.store.lookup(ws, id).await?;
        let Some((entry, version)) = Entry::from_lookup(lookup, self.rules(ws)) else {
            return Ok(None);
        };
        if let Err(err) = self.read_model.put(ws, id, &entry, version).await {
            tracing::warn!(error = %err, "read model not refreshed");
        }
        Ok(Some(entry))
    }

    /// The identifier in normal form, or why it names no one.
    pub fn identifier(&self, ws: &WorkspaceId, kind: &str, value: &str) -> Result<Identifier, IdentityError> {
        self.rules(ws).identifier(kind, value).map_err(|reason| match reason {
            DropReason::InvalidKind => IdentityError::invalid(
                "identifier.kind",
                format!("{kind:?} is not an identifier kind (lowercase letters, digits and '_')"),
            ),
            DropReason::Malformed(m) => IdentityError::invalid("identifier.value", m.to_string()),
            _ => IdentityError::invalid("identifier.value", "empty or blocked value: it identifies no one"),
        })
    }

    /// The profile holding an identifier (any spelling of it).
    pub async fn profile_by_identifier(
        &self,
        ws: &WorkspaceId,
        identifier: &Identifier,
    ) -> Result<Option<ProfileRead>, IdentityError> {
        // A profile that does not decode holds nothing: the store is read instead, and the
        // entry made again.
        let holds = |read: &ProfileRead| {
            read.decode().is_ok_and(|profile| {
                profile
                    .identifiers
                    .iter()
                    .any(|i| i.kind == identifier.kind.as_str() && i.value == identifier.value)
            })
        };
        if let Ok(Some(hint)) = self.read_model.holder(ws, identifier).await
            && let Some(read) = self.profile(ws, hint).await?
            && holds(&read)
        {
            return Ok(Some(ProfileRead {
                redirected_from: None,
                ..read
            }));
        }
        let Some(holder) = self.store.holder(ws, identifier).await? else {
            return Ok(None);
        };
        let mut read = self.profile(ws, holder).await?;
        if read.as_ref().is_some_and(|r| !holds(r)) {
            // The identifier is newer than the read model's entry, whose stale mark is on
            // its way: read the store.
            read = match Entry::from_lookup(self.store.lookup(ws, holder).await?, self.rules(ws)) {
                Some((Entry::Live(profile), version)) => {
                    let entry = Entry::Live(profile.clone());
                    if let Err(err) = self.read_model.put(ws, holder, &entry, version).await {
                        tracing::warn!(error = %err, "read model not refreshed");
                    }
                    Some(ProfileRead {
                        id: holder,
                        profile,
                        redirected_from: None,
                    })
                }
                // Merged or erased meanwhile: the read model has the word on that.
                _ => self.profile(ws, holder).await?,
            };
        }
        if read.is_some()
            && let Err(err) = self.read_model.put_holder(ws, identifier, holder).await
        {
            tracing::warn!(error = %err, "identifier not cached");
        }
        Ok(read.map(|read| ProfileRead {
            redirected_from: None,
            ..read
        }))
    }

    pub async fn profile_ids(
        &self,
        ws: &WorkspaceId,
        after: Option<ProfileId>,
        limit: u32,
    ) -> Result<Vec<ProfileId>, IdentityError> {
        Ok(self.store.profile_ids(ws, after, limit).await?)
    }

    pub async fn merges(
        &self,
        ws: &WorkspaceId,
        id: ProfileId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<MergeRecord>, IdentityError> {
        let Some(read) = self.profile(ws, id).await? else {
            return Err(IdentityError::NotFound(format!("no profile {id} in this workspace")));
        };
        Ok(self.store.merges(ws, read.id, before, limit).await?)
    }

    pub async fn unmerge(&self, ws: &WorkspaceId, merge: i64) -> Result<Unmerged, IdentityError> {
        match self.store.unmerge(ws, merge, self.rules(ws)).await? {
            Ok(unmerged) => {
                self.log.wake();
                mark_stale(&self.read_model, ws, &unmerged.versions).await;
                Ok(unmerged)
            }
            Err(refused @ UnmergeRefused::NotFound(_)) => Err(IdentityError::NotFound(refused.to_string())),
            Err(refused) => Err(IdentityError::Precondition(refused.to_string())),
        }
    }

    /// Erases a person from every store; the receipt, and whether it had been erased before.
    pub async fn forget(
        &self,
        ws: &WorkspaceId,
        id: ProfileId,
        allow_recreate: bool,
    ) -> Result<(pb::ErasureReceipt, bool), IdentityError> {
        let build = |removed: &Removed| {
            let identity = pb::ErasedStore {
                store: "identity".to_owned(),
                removed: removed
                    .rows
                    .iter()
                    .map(|(table, n)| ((*table).to_owned(), *n))
                    .collect(),
                pending: false,
            };
            pb::ErasureReceipt {
                profile_id: removed.profile.to_string(),
                merged_profile_ids: removed.absorbed.iter().map(ToString::to_string).collect(),
                erased_at: timestamp(chrono::Utc::now()),
                stores: vec![identity],
                blocked_identifiers: if allow_recreate {
                    0
                } else {
                    removed.identifiers.len() as u64
                },
            }
            .encode_to_vec()
        };
        let Some(erasure) = self.store.forget(ws, id, !allow_recreate, &build).await? else {
            return Err(IdentityError::NotFound(format!("no profile {id} in this workspace")));
        };
        let mut receipt = pb::ErasureReceipt::decode(erasure.receipt.as_slice())
            .map_err(|e| StorageError::Internal(format!("a stored receipt does not decode: {e}")))?;
        if erasure.already_erased && erasure.pending.is_empty() {
            return Ok((receipt, true));
        }
        if !erasure.already_erased {
            self.log.wake();
            self.store.scrub().await?;
            // The read model: every id of the person now reads as erased.
            let entries = erasure.versions.len() as u64;
            for (profile, version) in &erasure.versions {
                self.read_model.put(ws, *profile, &Entry::Erased, *version).await?;
            }
            self.read_model.forget_holders(ws, &erasure.identifiers).await?;
            receipt.stores.push(pb::ErasedStore {
                store: "identity-cache".to_owned(),
                removed: [
                    ("profile_entries".to_owned(), entries),
                    ("identifier_entries".to_owned(), erasure.identifiers.len() as u64),
                ]
                .into(),
                pending: false,
            });
        }
        for eraser in &self.erasers {
            let n = eraser.erase(ws, &erasure.pending).await?;
            receipt.stores.retain(|s| s.store != eraser.name());
            receipt.stores.push(pb::ErasedStore {
                store: eraser.name().to_owned(),
                removed: [("events".to_owned(), n)].into(),
                pending: false,
            });
        }
        self.store.erasure_done(ws, id, &receipt.encode_to_vec()).await?;
        Ok((receipt, erasure.already_erased))
    }

    /// The receipt of the erasure of `id` as it stands: what identity, its cache and (in
    /// one process) the event log removed, and for each consumer of identity's log what
    /// it answered, or that it has not received the erasure yet.
    pub async fn erasure_receipt(&self, ws: &WorkspaceId, id: ProfileId) -> Result<pb::ErasureReceipt, IdentityError> {
        let Some((receipt, answers)) = self.store.erasure_receipt(ws, id).await? else {
            return Err(IdentityError::NotFound(format!(
                "no erasure of profile {id} in this workspace"
            )));
        };
        let mut receipt = pb::ErasureReceipt::decode(receipt.as_slice())
            .map_err(|e| StorageError::Internal(format!("a stored receipt does not decode: {e}")))?;
        for consumer in self.handoff.consumers(&*self.log, ws).await? {
            if self.handoff.is_relay(&consumer.name) {
                continue;
            }
            let answer = answers.iter().find(|(name, _, _)| *name == consumer.name);
            receipt.stores.push(match answer {
                Some((_, store, removed)) => pb::ErasedStore {
                    store: store.clone(),
                    removed: serde_json::from_str(removed).unwrap_or_default(),
                    pending: false,
                },
                None => pb::ErasedStore {
                    store: consumer.name,
                    removed: Default::default(),
                    pending: true,
                },
            });
        }
        Ok(receipt)
    }

    /// Applies merges proposed by matching or review and refreshes the read model.
    pub async fn merge_matches(
        &self,
        ws: &WorkspaceId,
        merges: &[MatchMerge],
    ) -> Result<Vec<MergeRecord>, IdentityError> {
        let (made, versions) = self.store.merge_matches(ws, merges, self.rules(ws)).await?;
        self.log.wake();
        mark_stale(&self.read_model, ws, &versions).await;
        Ok(made)
    }

    pub async fn review(
        &self,
        ws: &WorkspaceId,
        candidate: uuid::Uuid,
        accept: bool,
    ) -> Result<(CandidateRecord, Option<pb::Merge>), IdentityError> {
        let Some(record) = self.store.candidate(ws, candidate).await? else {
            return Err(IdentityError::NotFound(ReviewRefused::NotFound(candidate).to_string()));
        };
        if record.status != storage::CANDIDATE_PENDING {
            return Err(IdentityError::Precondition(
                ReviewRefused::NotPending(candidate).to_string(),
            ));
        }
        let mut merge = None;
        if accept {
            let made = self
                .merge_matches(
                    ws,
                    &[MatchMerge {
                        a: record.a,
                        b: record.b,
                        rule: Rule::Review,
                        probability: record.probability,
                    }],
                )
                .await?;
            merge = made.first().map(merge_message);
            if merge.is_none() {
                let (a, b) = (self.profile(ws, record.a).await?, self.profile(ws, record.b).await?);
                let same = matches!((&a, &b), (Some(a), Some(b)) if a.id == b.id);
                if !same {
                    return Err(IdentityError::Precondition(
                        "the two profiles cannot be merged: they were erased, or hold different values of a unique \
                         identifier kind"
                            .to_owned(),
                    ));
                }
            }
        }
        let status = if accept { CANDIDATE_ACCEPTED } else { CANDIDATE_REJECTED };
        match self.store.set_candidate_status(ws, candidate, status).await? {
            Ok(record) => Ok((record, merge)),
            Err(refused) => Err(IdentityError::Precondition(refused.to_string())),
        }
    }
}

/// Marks changed profiles stale in the read model. The store is already committed, so a
/// cache that cannot be reached is retried in the background until it answers: serving
/// a stale profile after a merge is not an option.
async fn mark_stale(read_model: &ReadModel, ws: &WorkspaceId, versions: &[(ProfileId, i64)]) {
    if versions.is_empty() {
        return;
    }
    if let Err(err) = read_model.invalidate(ws, versions).await {
        tracing::warn!(error = %err, "cache unreachable after a profile change; retrying in the background");
        let (read_model, ws, versions) = (read_model.clone(), ws.clone(), versions.to_vec());
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            while read_model.invalidate(&ws, &versions).await.is_err() {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }
}
