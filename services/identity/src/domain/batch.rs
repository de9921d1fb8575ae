//! A batch of events resolved in one transaction: what the store loaded for it goes in,
//! every row to write comes out. Events are taken in log order against a view of the
//! graph that each decision updates, so the tenth event of a batch sees what the first
//! one created or merged.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::resolution::{
    Candidate, DropReason, Dropped, EventId, EventIdentity, Evidence, EvidenceKind, HeldIdentifier, Identifier,
    IdentityRules, Outcome, ProfileId, Rule, resolve,
};

/// One event to resolve, as identity reads it from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    pub identity: EventIdentity,
    /// The event's idempotency key in the event log.
    pub message_id: String,
    pub event_type: i16,
    pub channel: i16,
    /// The track event name, or the page or screen name.
    pub name: String,
    /// Traits the event sets (a JSON object), each as of `identity.at`.
    pub traits: Option<serde_json::Map<String, serde_json::Value>>,
    pub consents: Vec<ConsentChange>,
    /// What identity's log hands on once the event is resolved.
    pub onward: Onward,
}

/// An event as identity's log keeps it for handing on, before its profile is known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Onward {
    /// The `corvus.common.v1.StoredEvent` as delivered, encoded, without a profile id.
    pub stored: Vec<u8>,
    pub received_at: DateTime<Utc>,
    pub traceparent: Option<String>,
}

/// Consent given or withdrawn for a purpose on a channel (0: every channel).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsentChange {
    pub purpose: String,
    pub channel: i16,
    pub granted: bool,
}

/// What the store found for a batch, inside the transaction that will write it.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Events resolved before (a redelivery), with the profile they are on now.
    pub seen: HashMap<EventId, ProfileId>,
    /// Identifiers of the batch that belong to erased people.
    pub erased: HashSet<Identifier>,
    /// The live profiles holding any identifier of the batch, each with all it holds;
    /// locked until the transaction ends.
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewProfile {
    pub profile: ProfileId,
    pub created_at: DateTime<Utc>,
    /// Set when a later event of the same batch merged it away.
    pub merged_into: Option<ProfileId>,
    /// The seen times and count of the events it ends the batch with, written with the
    /// row rather than by a second version of it; none when merged away.
    pub seen: Option<Touched>,
}

/// A resolved event, on the profile it ends the batch on.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow<'a> {
    pub event: &'a IncomingEvent,
    pub profile: ProfileId,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraitRow {
    pub profile: ProfileId,
    pub name: String,
    pub value: serde_json::Value,
    pub set_at: DateTime<Utc>,
    pub event: EventId,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsentRow {
    pub profile: ProfileId,
    pub change: ConsentChange,
    pub set_at: DateTime<Utc>,
    pub event: EventId,
}

/// A profile whose seen times and event count grow.
#[derive(Debug, Clone, PartialEq)]
pub struct Touched {
    pub profile: ProfileId,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub events: i64,
}

/// Everything to write for a batch, in the order the store writes it.
#[derive(Debug, Default, PartialEq)]
pub struct Plan<'a> {
    pub new_profiles: Vec<NewProfile>,
    /// Profiles that existed before the batch and were merged: `(merged, into)`, `into`
    /// being where the batch ends. Their rows move to `into`.
    pub merges: Vec<(ProfileId, ProfileId)>,
    /// Identifiers new to the graph, on their final profile, with when first seen.
    pub identifiers: Vec<(Identifier, ProfileId, DateTime<Utc>)>,
    pub events: Vec<EventRow<'a>>,
    /// The newest value per profile and trait within the batch.
    pub traits: Vec<TraitRow>,
    /// The newest change per profile, purpose and channel within the batch.
    pub consents: Vec<ConsentRow>,
    pub evidence: Vec<Evidence>,
    /// Profiles that existed before the batch and grow (seen times, count, version); a
    /// new profile's row is written whole.
    pub touched: Vec<Touched>,
    /// Per input event: the profile it ends on, and the identifiers left out of it.
    pub outcomes: Vec<(EventId, Option<ProfileId>, Vec<Dropped>)>,
}

/// A map of a batch's own keys, hashed fast (with a seed drawn per map, so that no one
/// can choose keys that collide).
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// The graph as the batch goes: live profiles and who holds each identifier.
struct Graph {
    profiles: BTreeMap<ProfileId, Candidate>,
    holder: FastMap<Identifier, ProfileId>,
    merged_into: FastMap<ProfileId, ProfileId>,
}

impl Graph {
    fn root(&self, mut profile: ProfileId) -> ProfileId {
        while let Some(next) = self.merged_into.get(&profile) {
            profile = *next;
        }
        profile
    }

    fn candidates_for(&self, identifiers: &[Identifier]) -> Vec<&Candidate> {
        let mut ids: Vec<ProfileId> = identifiers.iter().filter_map(|i| self.holder.get(i).copied()).collect();
        ids.sort();
        ids.dedup();
        ids.iter().filter_map(|id| self.profiles.get(id)).collect()
    }

    fn give(&mut self, profile: ProfileId, identifiers: &[Identifier], at: DateTime<Utc>) {
        let candidate = self.profiles.get_mut(&profile).expect("a live profile");
        for identifier in identifiers {
            candidate.identifiers.push(HeldIdentifier {
                identifier: identifier.clone(),
                first_seen: at,
            });
            self.holder.insert(identifier.clone(), profile);
        }
    }

    fn merge(&mut self, merged: ProfileId, into: ProfileId) {
        let Some(gone) = self.profiles.remove(&merged) else {
            return;
        };
        for held in &gone.identifiers {
            self.holder.insert(held.identifier.clone(), into);
        }
        let survivor = self.profiles.get_mut(&into).expect("a live survivor");
        survivor.identifiers.extend(gone.identifiers);
        self.merged_into.insert(merged, into);
    }
}

/// Resolves `events` in order against `loaded`. `new_id` gives the id of each profile
/// created; `now` is when.
pub fn plan<'a>(
    events: &'a [IncomingEvent],
    loaded: Loaded,
    rules: &IdentityRules,
    now: DateTime<Utc>,
    mut new_id: impl FnMut() -> ProfileId,
) -> Plan<'a> {
    let existing: HashSet<ProfileId> = loaded.candidates.iter().map(|c| c.profile).collect();
    let mut graph = Graph {
        holder: loaded
            .candidates
            .iter()
            .flat_map(|c| c.identifiers.iter().map(|h| (h.identifier.clone(), c.profile)))
            .collect(),
        profiles: loaded.candidates.into_iter().map(|c| (c.profile, c)).collect(),
        merged_into: FastMap::default(),
    };
    let mut plan = Plan::default();
    let mut placed: Vec<(usize, ProfileId)> = Vec::new();
    let mut first_seen: FastMap<Identifier, DateTime<Utc>> = FastMap::default();
    for (index, event) in events.iter().enumerate() {
        let id = event.identity.event;
        if let Some(profile) = loaded.seen.get(&id) {
            plan.outcomes.push((id, Some(*profile), Vec::new()));
            continue;
        }
        let identity = without_erased(&event.identity, &loaded.erased);
        let candidates = graph.candidates_for(&identity.identifiers);
        let resolution = resolve(&identity, &candidates, rules, &mut new_id);
        let profile = resolution.profile();
        match resolution.outcome {
            Outcome::Unidentified => {}
            Outcome::Create { profile, identifiers } => {
                graph.profiles.insert(
                    profile,
                    Candidate {
                        profile,
                        created_at: now,
                        identifiers: Vec::new(),
                    },
                );
                graph.give(profile, &identifiers, identity.at);
                plan.new_profiles.push(NewProfile {
                    profile,
                    created_at: now,
                    merged_into: None,
                    seen: None,
                });
                first_seen.extend(identifiers.into_iter().map(|i| (i, identity.at)));
            }
            Outcome::Attach {
                profile,
                new_identifiers,
            } => {
                graph.give(profile, &new_identifiers, identity.at);
                first_seen.extend(new_identifiers.into_iter().map(|i| (i, identity.at)));
            }
            Outcome::Merge {
                survivor,
                merged,
                new_identifiers,
            } => {
                for gone in merged {
                    graph.merge(gone, survivor);
                }
                graph.give(survivor, &new_identifiers, identity.at);
                first_seen.extend(new_identifiers.into_iter().map(|i| (i, identity.at)));
            }
        }
        plan.evidence.extend(resolution.evidence);
        plan.outcomes.push((id, profile, resolution.dropped));
        if let Some(profile) = profile {
            placed.push((index, profile));
        }
    }

    // Everything below lands on the profile each event ends the batch on.
    for new in &mut plan.new_profiles {
        new.merged_into = graph
            .merged_into
            .contains_key(&new.profile)
            .then(|| graph.root(new.profile));
    }
    let mut merged_existing: Vec<(ProfileId, ProfileId)> = graph
        .merged_into
        .keys()
        .filter(|p| existing.contains(p))
        .map(|p| (*p, graph.root(*p)))
        .collect();
    merged_existing.sort();
    plan.merges = merged_existing;
    for outcome in &mut plan.outcomes {
        outcome.1 = outcome.1.map(|p| graph.root(p));
    }
    let mut identifiers: Vec<(Identifier, ProfileId, DateTime<Utc>)> = first_seen
        .into_iter()
        .map(|(identifier, at)| {
            let owner = graph.root(graph.holder[&identifier]);
            (identifier, owner, at)
        })
        .collect();
    identifiers.sort_by(|a, b| a.0.cmp(&b.0));
    plan.identifiers = identifiers;

    let mut traits: BTreeMap<(ProfileId, String), TraitRow> = BTreeMap::new();
    let mut consents: BTreeMap<(ProfileId, String, i16), ConsentRow> = BTreeMap::new();
    let mut touched: BTreeMap<ProfileId, Touched> = BTreeMap::new();
    for (index, profile) in placed {
        let event = &events[index];
        let profile = graph.root(profile);
        let (id, at) = (event.identity.event, event.identity.at);
        let newer = |set_at: DateTime<Utc>, by: EventId| (at, id) >= (set_at, by);
        for (name, value) in event.traits.iter().flatten() {
            let row = TraitRow {
                profile,
                name: name.clone(),
                value: value.clone(),
                set_at: at,
                event: id,
            };
            traits
                .entry((profile, name.clone()))
                .and_modify(|old| {
                    if newer(old.set_at, old.event) {
                        *old = row.clone();
                    }
                })
                .or_insert(row);
        }
        for change in &event.consents {
            let row = ConsentRow {
                profile,
                change: change.clone(),
                set_at: at,
                event: id,
            };
            consents
                .entry((profile, change.purpose.clone(), change.channel))
                .and_modify(|old| {
                    if newer(old.set_at, old.event) {
                        *old = row.clone();
                    }
                })
                .or_insert(row);
        }
        touched
            .entry(profile)
            .and_modify(|t| {
                t.first_seen = t.first_seen.min(at);
                t.last_seen = t.last_seen.max(at);
                t.events += 1;
            })
            .or_insert(Touched {
                profile,
                first_seen: at,
                last_seen: at,
                events: 1,
            });
        plan.events.push(EventRow { event, profile });
    }
    // A merge touches the survivor even when no event of the batch landed on it directly.
    for (_, into) in &plan.merges {
        touched.entry(*into).or_insert(Touched {
            profile: *into,
            first_seen: DateTime::<Utc>::MAX_UTC,
            last_seen: DateTime::<Utc>::MIN_UTC,
            events: 0,
        });
    }
    for new in &mut plan.new_profiles {
        if new.merged_into.is_none() {
            new.seen = touched.remove(&new.profile);
        }
    }
    plan.traits = traits.into_values().collect();
    plan.consents = consents.into_values().collect();
    plan.touched = touched.into_values().collect();
    plan
}

/// The event's identity with its erased identifiers dropped (reason: blocked); as it is,
/// without a copy, when it has none.
fn without_erased<'e>(identity: &'e EventIdentity, erased: &HashSet<Identifier>) -> Cow<'e, EventIdentity> {
    if erased.is_empty() || !identity.identifiers.iter().any(|i| erased.contains(i)) {
        return Cow::Borrowed(identity);
    }
    let mut identity = identity.clone();
    identity.identifiers.retain(|identifier| {
        let erased = erased.contains(identifier);
        if erased {
            identity.dropped.push(Dropped {
                kind: identifier.kind.as_str().to_owned(),
                value: identifier.value.clone(),
                reason: DropReason::Blocked,
            });
        }
        !erased
    });
    Cow::Owned(identity)
}

/// Whether two profiles may be merged by matching or review: never when both hold a
/// value of a unique kind and the values differ (two logins are two people).
pub fn may_merge(a: &Candidate, b: &Candidate, rules: &IdentityRules) -> bool {
    a.identifiers.iter().all(|x| {
        !rules.rule(&x.identifier.kind).unique
            || b.identifiers
                .iter()
                .all(|y| y.identifier.kind != x.identifier.kind || y.identifier.value == x.identifier.value)
    })
}

/// Evidence of a merge made by matching or by a reviewer rather than by an event: the
/// strongest identifier of each side stands for it, so an unmerge can replay it.
pub fn matched_merge(
    survivor: &Candidate,
    merged: &Candidate,
    rule: Rule,
    confidence: f64,
    at: DateTime<Utc>,
    rules: &IdentityRules,
) -> Option<Evidence> {
    let strongest = |c: &Candidate| {
        c.identifiers
            .iter()
            .map(|h| &h.identifier)
            .min_by(|a, b| rules.order(a).cmp(&rules.order(b)))
            .cloned()
    };
    Some(Evidence {
        event: None,
        at,
        rule,
        confidence,
        kind: EvidenceKind::Merge {
            survivor: survivor.profile,
            merged: merged.profile,
            survivor_via: strongest(survivor)?,
            merged_via: strongest(merged)?,
        },
    })
}
