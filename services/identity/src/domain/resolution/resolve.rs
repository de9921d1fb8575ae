//! The decision for one event: create a profile, attach to one, or merge several.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::{
    DropReason, Dropped, EventIdentity, Evidence, EvidenceKind, Identifier, IdentifierKind, IdentityRules, ProfileId,
};

/// An identifier a profile holds, with when the profile first had it (for limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldIdentifier {
    pub identifier: Identifier,
    pub first_seen: DateTime<Utc>,
}

/// A profile the store found holding at least one of the event's identifiers, with all
/// the identifiers it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub profile: ProfileId,
    pub created_at: DateTime<Utc>,
    pub identifiers: Vec<HeldIdentifier>,
}

impl Candidate {
    fn holds(&self, identifier: &Identifier) -> bool {
        self.identifiers.iter().any(|held| &held.identifier == identifier)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every identifier was blocked, malformed or dropped: the event names no one. The
    /// service decides whether such an event is kept without a profile or rejected.
    Unidentified,
    /// A new profile, with the id the caller offered, holding `identifiers`.
    Create {
        profile: ProfileId,
        identifiers: Vec<Identifier>,
    },
    /// The event belongs to `profile`, which gains `new_identifiers` (often none).
    Attach {
        profile: ProfileId,
        new_identifiers: Vec<Identifier>,
    },
    /// `merged` fold into `survivor`: their identifiers, events and traits move to it and
    /// their ids redirect to it. The survivor also gains `new_identifiers`.
    Merge {
        survivor: ProfileId,
        merged: Vec<ProfileId>,
        new_identifiers: Vec<Identifier>,
    },
}

/// What [`resolve`] decided, and everything the store records for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub outcome: Outcome,
    /// The prepared event's drops, then those made by uniqueness and limits.
    pub dropped: Vec<Dropped>,
    /// Merges first, then links, to be appended to the evidence log in this order.
    pub evidence: Vec<Evidence>,
}

impl Resolution {
    /// The profile the event now belongs to.
    pub fn profile(&self) -> Option<ProfileId> {
        match &self.outcome {
            Outcome::Unidentified => None,
            Outcome::Create { profile, .. } | Outcome::Attach { profile, .. } => Some(*profile),
            Outcome::Merge { survivor, .. } => Some(*survivor),
        }
    }
}

/// Decides where an event goes.
///
/// The event's identifiers are taken strongest first. Each is accepted, joining the
/// profiles holding it (if any) to the event, unless that would break a rule on the
/// profile the event would end up on — then it is dropped, and the profiles it would have
/// joined stay apart. So a rule always sacrifices the weaker identifier, and the event goes
/// where its strongest identifiers lead:
///
/// - uniqueness: the result would hold two values of a unique kind (the event's own
///   values count, so a new `user_id` does not join a profile with another one);
/// - limits: the result would hold more than `max` values of a kind first seen within the
///   window (the event's new values count as seen at `event.at`). A profile that was
///   already over a limit on its own (the rule was tightened later) is not held to it.
///
/// None joined → [`Outcome::Create`] with `new_profile`; one → [`Outcome::Attach`];
/// several → [`Outcome::Merge`] into the profile with the strongest identifier of all it
/// holds, then the oldest, then the smallest id. Resolving an event again gives an attach
/// with nothing new. `candidates` holding none of the identifiers are ignored.
/// `new_profile` is asked for an id only when a profile is created.
pub fn resolve(
    event: &EventIdentity,
    candidates: &[&Candidate],
    rules: &IdentityRules,
    new_profile: impl FnOnce() -> ProfileId,
) -> Resolution {
    let mut identifiers: Vec<&Identifier> = event.identifiers.iter().collect();
    identifiers.sort_by(|a, b| rules.order(a).cmp(&rules.order(b)));
    identifiers.dedup();

    let mut dropped = event.dropped.clone();
    let mut joined: Vec<&Candidate> = Vec::new();
    let mut accepted: Vec<&Identifier> = Vec::new();
    for identifier in identifiers {
        let joining: Vec<&Candidate> = candidates
            .iter()
            .copied()
            .filter(|c| c.holds(identifier) && !joined.iter().any(|j| j.profile == c.profile))
            .collect();
        let held = candidates.iter().any(|c| c.holds(identifier));
        // A rule can only be broken by joining something (a profile, or a value the
        // profiles do not hold) to something: the first identifier, and one held only by
        // profiles already joined, are taken without counting (most events are these).
        let adds = !joining.is_empty() || !held;
        if !adds || (joined.is_empty() && accepted.is_empty()) {
            joined.extend(joining);
            accepted.push(identifier);
            continue;
        }
        let before = Tally::of(&joined, &accepted, event.at);
        let addition = if held {
            Tally::of(&joining, &[], event.at)
        } else {
            Tally::of(&[], &[identifier], event.at)
        };
        match before.conflict(&addition, rules, event.at) {
            Some(reason) => dropped.push(Dropped::identifier(identifier, reason)),
            None => {
                joined.extend(joining);
                accepted.push(identifier);
            }
        }
    }

    let (outcome, evidence) = decide(event, &joined, &accepted, rules, new_profile);
    Resolution {
        outcome,
        dropped,
        evidence,
    }
}

fn decide(
    event: &EventIdentity,
    joined: &[&Candidate],
    accepted: &[&Identifier],
    rules: &IdentityRules,
    new_profile: impl FnOnce() -> ProfileId,
) -> (Outcome, Vec<Evidence>) {
    let record = |kind| Evidence::deterministic(event.event, event.at, kind);
    let new_identifiers: Vec<Identifier> = accepted
        .iter()
        .filter(|i| !joined.iter().any(|c| c.holds(i)))
        .map(|i| (*i).clone())
        .collect();
    let mut profiles = joined.to_vec();
    profiles.sort_by_key(|c| survivor_key(c, rules));
    let Some((survivor, merged)) = profiles.split_first() else {
        if new_identifiers.is_empty() {
            return (Outcome::Unidentified, Vec::new());
        }
        let new_profile = new_profile();
        let links = new_identifiers
            .iter()
            .map(|identifier| {
                record(EvidenceKind::Link {
                    profile: new_profile,
                    identifier: identifier.clone(),
                    via: None,
                })
            })
            .collect();
        let outcome = Outcome::Create {
            profile: new_profile,
            identifiers: new_identifiers,
        };
        return (outcome, links);
    };

    // `accepted` is strongest first, so the first one a profile holds is its reason to be here.
    let strongest_held_by = |c: &Candidate| accepted.iter().find(|i| c.holds(i)).map(|i| (*i).clone());
    let anchor = accepted.iter().find(|i| joined.iter().any(|c| c.holds(i)));
    let mut evidence = Vec::new();
    if let Some(survivor_via) = strongest_held_by(survivor) {
        for profile in merged {
            if let Some(merged_via) = strongest_held_by(profile) {
                evidence.push(record(EvidenceKind::Merge {
                    survivor: survivor.profile,
                    merged: profile.profile,
                    survivor_via: survivor_via.clone(),
                    merged_via,
                }));
            }
        }
    }
    for identifier in &new_identifiers {
        evidence.push(record(EvidenceKind::Link {
            profile: survivor.profile,
            identifier: identifier.clone(),
            via: anchor.map(|a| (*a).clone()),
        }));
    }
    let outcome = if merged.is_empty() {
        Outcome::Attach {
            profile: survivor.profile,
            new_identifiers,
        }
    } else {
        Outcome::Merge {
            survivor: survivor.profile,
            merged: merged.iter().map(|c| c.profile).collect(),
            new_identifiers,
        }
    };
    (outcome, evidence)
}

/// The profile that survives a merge: the one holding the strongest identifier (so a
/// known customer absorbs an anonymous visitor, not the reverse), then the oldest.
fn survivor_key(candidate: &Candidate, rules: &IdentityRules) -> (u16, DateTime<Utc>, ProfileId) {
    let strongest = candidate
        .identifiers
        .iter()
        .map(|held| rules.priority(&held.identifier.kind))
        .min()
        .unwrap_or(u16::MAX);
    (strongest, candidate.created_at, candidate.profile)
}

/// Per kind, the distinct values a would-be profile holds, each with when it was first seen.
#[derive(Debug, Default)]
struct Tally<'a> {
    values: BTreeMap<&'a IdentifierKind, BTreeMap<&'a str, DateTime<Utc>>>,
}

impl<'a> Tally<'a> {
    fn of(profiles: &[&'a Candidate], new: &[&'a Identifier], at: DateTime<Utc>) -> Self {
        let mut tally = Tally::default();
        let held = profiles
            .iter()
            .flat_map(|c| &c.identifiers)
            .map(|h| (&h.identifier, h.first_seen));
        for (identifier, first_seen) in held.chain(new.iter().map(|i| (*i, at))) {
            let seen = tally
                .values
                .entry(&identifier.kind)
                .or_default()
                .entry(&identifier.value)
                .or_insert(first_seen);
            *seen = (*seen).min(first_seen);
        }
        tally
    }

    fn kinds(&self) -> BTreeSet<&'a IdentifierKind> {
        self.values.keys().copied().collect()
    }

    /// Distinct values of `kind`, all of them or only those first seen since `since`.
    fn count(&self, kind: &IdentifierKind, since: Option<DateTime<Utc>>) -> usize {
        self.values.get(kind).map_or(0, |values| {
            values
                .values()
                .filter(|seen| since.is_none_or(|since| **seen >= since))
                .count()
        })
    }

    fn union(&self, other: &Tally<'a>) -> Tally<'a> {
        let mut union = Tally {
            values: self.values.clone(),
        };
        for (kind, values) in &other.values {
            let into = union.values.entry(kind).or_default();
            for (value, seen) in values {
                let first = into.entry(value).or_insert(*seen);
                *first = (*first).min(*seen);
            }
        }
        union
    }

    /// The rule `addition` would break if joined to `self`. A rule counts as broken only if
    /// joining makes things worse than either side was alone: a profile already over a limit
    /// may still receive its own events.
    fn conflict(&self, addition: &Tally<'a>, rules: &IdentityRules, at: DateTime<Utc>) -> Option<DropReason> {
        let union = self.union(addition);
        for kind in addition.kinds() {
            let rule = rules.rule(kind);
            let worse = |since| {
                let after = union.count(kind, since);
                (after > self.count(kind, since) && after > addition.count(kind, since)).then_some(after)
            };
            if rule.unique && worse(None).is_some_and(|after| after > 1) {
                return Some(DropReason::Unique { kind: kind.clone() });
            }
            if let Some(limit) = rule.limit {
                let since = Some(at - limit.window);
                if worse(since).is_some_and(|after| after > limit.max as usize) {
                    return Some(DropReason::Limit {
                        kind: kind.clone(),
                        limit,
                    });
                }
            }
        }
        None
    }
}
