//! Each person's scores kept as events arrive: GetScores' answer as of now (no `as_of`,
//! the default horizon) held in the cache for every profile a delivery of identity's
//! log touched, so that reading a person's scores (Decide's read, GetProfile with
//! scores) costs one cache lookup rather than reading and scoring their facts.
//!
//! A card is current while nothing it was computed from has changed since and it is at
//! most `scoring.scores_max_age` old (time alone moves recency-based scores):
//! - a delivery drops the cards of the profiles it touched before it is acknowledged,
//!   and a keeper beside the deliveries computes again those that still stand (their
//!   facts read after the drop), each once for all the deliveries that touched it
//!   while it was busy;
//! - a change of audience standings outside a delivery drops the cards of the profiles
//!   whose memberships it changed (the next read computes them again);
//! - a model saved, a computed trait or an audience created or deleted marks the
//!   workspace's definitions changed: every card computed from reads that began before,
//!   or up to `MARGIN` after (the models and computed traits another replica may hold
//!   for up to `MODELS_RECHECK` after a change), is stale.
//!
//! Each card carries as its version the time its reads began, each drop the time it was
//! made, and the cache keeps only the highest: a card computed from facts read before a
//! drop never replaces it, whichever lands first (replicas' clocks are taken to agree
//! far closer than the time a read takes).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use corvus_proto::scoring::v1 as pb;
use corvus_proto::{ProfileId, WorkspaceId};
use corvus_storage::{Cache, StorageError, Versioned};
use prost::Message as _;
use tokio::sync::mpsc;

use crate::grpc::scores_response;
use crate::service::{MODELS_RECHECK, Scoring, ScoringError};
use crate::storage::Change;

/// See the module's notes.
const MARGIN: Duration = MODELS_RECHECK;

/// Profiles whose scores are computed together, at most.
const COMPUTED_AT_ONCE: usize = 500;

pub(crate) struct Cards {
    cache: Arc<dyn Cache>,
    max_age: Duration,
    /// Where deliveries send the profiles whose scores to compute again.
    keeper: OnceLock<mpsc::UnboundedSender<(WorkspaceId, HashSet<ProfileId>)>>,
}

fn card_key(ws: &WorkspaceId, profile: ProfileId) -> String {
    format!("scores:{}:{profile}", ws.as_str())
}

fn definitions_key(ws: &WorkspaceId) -> String {
    format!("scores-definitions:{}", ws.as_str())
}

fn micros(at: DateTime<Utc>) -> u64 {
    at.timestamp_micros().max(0) as u64
}

impl Cards {
    pub(crate) fn new(cache: Arc<dyn Cache>, max_age: Duration) -> Self {
        Self {
            cache,
            max_age,
            keeper: OnceLock::new(),
        }
    }

    /// What a drop or a definitions mark lives for: longer than any card it outdates.
    fn mark_ttl(&self) -> Duration {
        self.max_age * 2 + MARGIN
    }

    /// The profile's card, if it is current.
    async fn get(&self, ws: &WorkspaceId, profile: ProfileId) -> Result<Option<pb::GetScoresResponse>, StorageError> {
        let (key, definitions) = (card_key(ws, profile), definitions_key(ws));
        let (card, changed) = tokio::join!(self.cache.get_versioned(&key), self.cache.get_versioned(&definitions));
        let Some((version, bytes)) = card? else {
            return Ok(None);
        };
        // Models another replica saved up to `MARGIN` before the reads began may not
        // have been seen by them.
        let margin = MARGIN.as_micros() as u64;
        if changed?.is_some_and(|(at, _)| at + margin >= version) || bytes.len() < 8 {
            return Ok(None);
        }
        let (at, encoded) = bytes.split_at(8);
        let computed = i64::from_be_bytes(at.try_into().expect("eight bytes"));
        let age = Utc::now().timestamp_micros().saturating_sub(computed);
        if age > self.max_age.as_micros() as i64 {
            return Ok(None);
        }
        let card = pb::GetScoresResponse::decode(encoded)
            .map_err(|e| StorageError::Internal(format!("a scores card: {e}")))?;
        Ok(Some(card))
    }

    /// Keeps the cards, each computed from reads that began at `read_at`.
    async fn put(
        &self,
        ws: &WorkspaceId,
        read_at: DateTime<Utc>,
        cards: &[(ProfileId, pb::GetScoresResponse)],
    ) -> Result<(), StorageError> {
        let version = micros(read_at);
        let entries: Vec<(String, Vec<u8>)> = cards
            .iter()
            .map(|(profile, card)| {
                let mut value = read_at.timestamp_micros().to_be_bytes().to_vec();
                card.encode(&mut value).expect("a Vec grows");
                (card_key(ws, *profile), value)
            })
            .collect();
        let versioned: Vec<Versioned<'_>> = entries
            .iter()
            .map(|(key, value)| Versioned { key, version, value })
            .collect();
        self.cache.set_versioned(&versioned, self.max_age).await
    }

    /// Drops the profiles' cards: none computed from reads before now is kept.
    async fn discard(
        &self,
        ws: &WorkspaceId,
        profiles: impl IntoIterator<Item = ProfileId>,
    ) -> Result<(), StorageError> {
        let version = micros(Utc::now());
        let keys: Vec<String> = profiles.into_iter().map(|p| card_key(ws, p)).collect();
        if keys.is_empty() {
            return Ok(());
        }
        let versioned: Vec<Versioned<'_>> = keys
            .iter()
            .map(|key| Versioned {
                key,
                version,
                value: &[],
            })
            .collect();
        self.cache.set_versioned(&versioned, self.mark_ttl()).await
    }

    /// Every card of the workspace computed from reads before now is stale.
    async fn definitions_changed(&self, ws: &WorkspaceId) -> Result<(), StorageError> {
        let key = definitions_key(ws);
        let entry = Versioned {
            key: &key,
            version: micros(Utc::now()),
            value: &[],
        };
        self.cache.set_versioned(&[entry], self.mark_ttl()).await
    }
}

impl Scoring {
    /// Keeps each person's scores in `cache` (see `cards`); `max_age` zero keeps none.
    pub fn with_cards(mut self, cache: Arc<dyn Cache>, max_age: Duration) -> Self {
        self.cards = (!max_age.is_zero()).then(|| Arc::new(Cards::new(cache, max_age)));
        self
    }

    /// The person's card, if one is held and current. The cache failing is a miss: the
    /// scores are computed from the store.
    pub(crate) async fn card(&self, ws: &WorkspaceId, profile: ProfileId) -> Option<pb::GetScoresResponse> {
        let cards = self.cards.as_ref()?;
        match cards.get(ws, profile).await {
            Ok(card) => {
                metrics::counter!("corvus_scoring_cards_total", "found" => if card.is_some() { "yes" } else { "no" })
                    .increment(1);
                card
            }
            Err(err) => {
                tracing::warn!(error = %err, "scores card unreadable; scoring from the store");
                None
            }
        }
    }

    /// Keeps a card GetScores computed (from reads that began at `read_at`), without
    /// holding up its answer.
    pub(crate) fn keep_card(
        &self,
        ws: &WorkspaceId,
        profile: ProfileId,
        read_at: DateTime<Utc>,
        card: &pb::GetScoresResponse,
    ) {
        let Some(cards) = self.cards.clone() else {
            return;
        };
        let (ws, card) = (ws.clone(), card.clone());
        tokio::spawn(async move {
            if let Err(err) = cards.put(&ws, read_at, &[(profile, card)]).await {
                tracing::warn!(error = %err, "scores card not kept");
            }
        });
    }

    /// After a delivery is applied: the cards of the profiles it touched dropped, and
    /// those that still stand computed again in the background.
    pub(crate) async fn keep_cards(&self, changes: &[(WorkspaceId, Change)]) -> Result<(), ScoringError> {
        let Some(cards) = &self.cards else {
            return Ok(());
        };
        let mut touched: BTreeMap<&WorkspaceId, (HashSet<ProfileId>, HashSet<ProfileId>)> = BTreeMap::new();
        for (ws, change) in changes {
            let (compute, gone) = touched.entry(ws).or_default();
            match change {
                Change::Fact { profile, .. } => {
                    compute.insert(*profile);
                }
                Change::Merged { survivor, merged } => {
                    compute.insert(*survivor);
                    for m in merged {
                        compute.remove(m);
                        gone.insert(*m);
                    }
                }
                Change::Unmerged { sides } => compute.extend(sides.iter().map(|(p, _)| *p)),
                Change::Erased { profiles } => {
                    for p in profiles {
                        compute.remove(p);
                        gone.insert(*p);
                    }
                }
            }
        }
        // Dropped before the delivery is acknowledged, so that nothing it outdated is
        // served; computed again beside the deliveries, so as not to slow them.
        let keeper = cards.keeper.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(self.clone().keep(receiver));
            sender
        });
        for (ws, (compute, gone)) in touched {
            cards.discard(ws, compute.iter().copied().chain(gone)).await?;
            let _ = keeper.send((ws.clone(), compute));
        }
        Ok(())
    }

    /// Computes the scores of the profiles sent, each once for all the times it was
    /// sent while the previous round was being computed.
    async fn keep(self, mut sent: mpsc::UnboundedReceiver<(WorkspaceId, HashSet<ProfileId>)>) {
        while let Some((ws, profiles)) = sent.recv().await {
            let mut waiting: BTreeMap<WorkspaceId, HashSet<ProfileId>> = BTreeMap::new();
            waiting.entry(ws).or_default().extend(profiles);
            while let Ok((ws, profiles)) = sent.try_recv() {
                waiting.entry(ws).or_default().extend(profiles);
            }
            for (ws, profiles) in waiting {
                for chunk in profiles.into_iter().collect::<Vec<_>>().chunks(COMPUTED_AT_ONCE) {
                    // Not kept, they are computed when read.
                    if let Err(err) = self.compute_cards(&ws, chunk.to_vec()).await {
                        tracing::warn!(error = %err, "scores not kept; they are computed when read");
                    }
                }
            }
        }
    }

    /// Computes the profiles' scores and keeps them.
    async fn compute_cards(&self, ws: &WorkspaceId, mut profiles: Vec<ProfileId>) -> Result<(), ScoringError> {
        let Some(cards) = &self.cards else {
            return Ok(());
        };
        let read_at = Utc::now();
        profiles.sort();
        // A fact replayed under an id merged in an earlier delivery: that id's scores are
        // its survivor's, read through it.
        let merged = self.store.merged_among(ws, &profiles).await?;
        profiles.retain(|p| !merged.contains(p));
        let (models, traits, histories, memberships) = tokio::join!(
            self.models(ws),
            self.traits_in_use(ws),
            self.store.histories(ws, &profiles),
            self.store.memberships_of(ws, &profiles)
        );
        let (models, traits, mut histories, mut memberships) = (models?, traits?, histories?, memberships?);
        let mut kept = Vec::with_capacity(profiles.len());
        for profile in profiles {
            let (facts, held) = histories.remove(&profile).unwrap_or_default();
            if facts.is_empty() {
                continue;
            }
            let values: BTreeMap<String, Option<serde_json::Value>> = traits
                .iter()
                .map(|t| (t.name.clone(), t.compute(&held, read_at).0))
                .collect();
            let scores = self.scores_from(ws, &models, profile, facts, read_at, None)?;
            let audiences = memberships.remove(&profile).unwrap_or_default();
            kept.push((profile, scores_response(&scores, values, audiences)));
        }
        cards.put(ws, read_at, &kept).await?;
        Ok(())
    }

    /// Drops the cards of profiles whose audiences changed.
    pub(crate) async fn drop_cards(
        &self,
        ws: &WorkspaceId,
        profiles: impl IntoIterator<Item = ProfileId>,
    ) -> Result<(), ScoringError> {
        if let Some(cards) = &self.cards {
            cards.discard(ws, profiles).await?;
        }
        Ok(())
    }

    /// Marks every card of the workspace stale (a model, a computed trait or an audience
    /// saved or deleted).
    pub(crate) async fn definitions_changed(&self, ws: &WorkspaceId) -> Result<(), ScoringError> {
        {
            let mut traits = self.traits_cache.lock().expect("traits cache lock");
            traits.changes += 1;
            traits.held.remove(ws);
        }
        if let Some(cards) = &self.cards {
            cards.definitions_changed(ws).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corvus_storage::MemoryCache;

    fn card(orders: u64) -> pb::GetScoresResponse {
        pb::GetScoresResponse {
            features: Some(pb::Features {
                events: orders,
                ..pb::Features::default()
            }),
            ..pb::GetScoresResponse::default()
        }
    }

    fn events(card: Option<pb::GetScoresResponse>) -> Option<u64> {
        card.map(|c| c.features.unwrap().events)
    }

    /// A card computed from reads that began before a drop, or before the workspace's
    /// definitions changed, is never served; one read after is.
    #[tokio::test]
    async fn a_card_read_before_a_change_never_outlives_it() {
        let cards = Cards::new(Arc::new(MemoryCache::default()), Duration::from_secs(60));
        let ws: WorkspaceId = "acme".parse().unwrap();
        let p = ProfileId::new();
        let later = || Utc::now() + chrono::Duration::seconds(2);
        let before = Utc::now() - chrono::Duration::milliseconds(10);
        cards.put(&ws, before, &[(p, card(1))]).await.unwrap();
        assert_eq!(events(cards.get(&ws, p).await.unwrap()), Some(1));

        // Dropped, then the slow reader's card lands: it stays dropped.
        cards.discard(&ws, [p]).await.unwrap();
        cards.put(&ws, before, &[(p, card(1))]).await.unwrap();
        assert_eq!(events(cards.get(&ws, p).await.unwrap()), None);
        // A card from reads after the drop (past the margin) is kept.
        cards.put(&ws, later(), &[(p, card(2))]).await.unwrap();
        assert_eq!(events(cards.get(&ws, p).await.unwrap()), Some(2));
        // An older one cannot replace it.
        cards.put(&ws, before, &[(p, card(1))]).await.unwrap();
        assert_eq!(events(cards.get(&ws, p).await.unwrap()), Some(2));

        // The workspace's definitions changed: q's card, from reads before, is stale;
        // p's, from reads begun after (two seconds ahead), is not.
        let q = ProfileId::new();
        cards.put(&ws, before, &[(q, card(3))]).await.unwrap();
        cards.definitions_changed(&ws).await.unwrap();
        assert_eq!(events(cards.get(&ws, q).await.unwrap()), None);
        assert_eq!(events(cards.get(&ws, p).await.unwrap()), Some(2));
    }

    /// A delivery's profiles have their scores computed and kept with no read asking
    /// for them; a profile erased has none kept.
    #[tokio::test]
    async fn a_delivery_keeps_its_profiles_scores() {
        use crate::domain::facts::Fact;
        use crate::domain::traits::Payload;
        let dir = corvus_test_support::TempDir::new();
        let config = corvus_test_support::storage(corvus_test_support::Backend::Embedded, &dir)
            .await
            .expect("the embedded store");
        let store = crate::storage::connect(&config).await.unwrap();
        let scoring = Scoring::new(store.clone(), &crate::ScoringConfig::default())
            .with_cards(Arc::new(MemoryCache::default()), Duration::from_secs(60));
        let ws: WorkspaceId = "acme".parse().unwrap();
        let (kept, erased) = (ProfileId::new(), ProfileId::new());
        let order = |profile| Change::Fact {
            event: corvus_proto::EventId::new(),
            profile,
            at: Utc::now() - chrono::Duration::days(1),
            fact: Box::new(Fact {
                revenue: Some(30.0),
                ..Fact::default()
            }),
            payload: Box::new(Payload {
                kind: "track".into(),
                name: "Order Completed".into(),
                ..Payload::default()
            }),
        };
        let changes = vec![(ws.clone(), order(kept)), (ws.clone(), order(erased))];
        store.apply(&changes).await.unwrap();
        scoring.keep_cards(&changes).await.unwrap();
        let cards = scoring.cards.clone().unwrap();
        let mut card = None;
        for _ in 0..200 {
            card = cards.get(&ws, kept).await.unwrap();
            if card.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let card = card.expect("the delivery's profile has its scores kept");
        assert_eq!(card.profile_id, kept.to_string());
        assert_eq!(card.features.unwrap().purchases.unwrap().orders, 1);

        let erasure = vec![(ws.clone(), Change::Erased { profiles: vec![erased] })];
        store.apply(&erasure).await.unwrap();
        scoring.keep_cards(&erasure).await.unwrap();
        assert!(cards.get(&ws, erased).await.unwrap().is_none());
    }

    /// A card older than the most a card may be is not served.
    #[tokio::test]
    async fn a_card_older_than_the_most_is_not_served() {
        let cards = Cards::new(Arc::new(MemoryCache::default()), Duration::from_secs(60));
        let ws: WorkspaceId = "acme".parse().unwrap();
        let p = ProfileId::new();
        cards
            .put(&ws, Utc::now() - chrono::Duration::seconds(61), &[(p, card(1))])
            .await
            .unwrap();
        assert_eq!(events(cards.get(&ws, p).await.unwrap()), None);
        cards
            .put(&ws, Utc::now() - chrono::Duration::seconds(59), &[(p, card(1))])
            .await
            .unwrap();
        assert_eq!(events(cards.get(&ws, p).await.unwrap()), Some(1));
    }
}
