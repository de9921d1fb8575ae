//! Tests of [`super::unmerge`] on histories made by [`super::resolve`] itself.

use std::collections::BTreeMap;

use super::resolve_tests::{day, event_id, id, profile_id};
use super::*;

/// A stand-in for the profile store: applies each resolution as the service would.
struct Store {
    rules: IdentityRules,
    profiles: BTreeMap<ProfileId, Candidate>,
    history: Vec<Evidence>,
    events: Vec<EventIdentity>,
    next_profile: u128,
}

impl Store {
    fn new() -> Self {
        Self {
            rules: IdentityRules::default(),
            profiles: BTreeMap::new(),
            history: Vec::new(),
            events: Vec::new(),
            next_profile: 100,
        }
    }

    fn ingest(&mut self, event: u128, at: i64, raw: &[(&str, &str)]) -> Resolution {
        let event = self.rules.prepare(event_id(event), day(at), raw.iter().copied());
        let candidates: Vec<&Candidate> = self
            .profiles
            .values()
            .filter(|c| c.identifiers.iter().any(|h| event.identifiers.contains(&h.identifier)))
            .collect();
        let next = profile_id(self.next_profile);
        let resolution = resolve(&event, &candidates, &self.rules, || next);
        let held = |identifiers: &[Identifier]| {
            identifiers
                .iter()
                .map(|identifier| HeldIdentifier {
                    identifier: identifier.clone(),
                    first_seen: event.at,
                })
                .collect::<Vec<_>>()
        };
        match &resolution.outcome {
            Outcome::Unidentified => {}
            Outcome::Create { profile, identifiers } => {
                self.next_profile += 1;
                let candidate = Candidate {
                    profile: *profile,
                    created_at: event.at,
                    identifiers: held(identifiers),
                };
                self.profiles.insert(*profile, candidate);
            }
            Outcome::Attach {
                profile,
                new_identifiers,
            } => {
                let target = self.profiles.get_mut(profile).unwrap();
                target.identifiers.extend(held(new_identifiers));
            }
            Outcome::Merge {
                survivor,
                merged,
                new_identifiers,
            } => {
                let mut moved = held(new_identifiers);
                for profile in merged {
                    moved.extend(self.profiles.remove(profile).unwrap().identifiers);
                }
                self.profiles.get_mut(survivor).unwrap().identifiers.extend(moved);
            }
        }
        self.history.extend(resolution.evidence.iter().cloned());
        self.events.push(event);
        resolution
    }

    fn merge_index(&self, event: u128) -> usize {
        self.history
            .iter()
            .position(|e| e.event == Some(event_id(event)) && matches!(e.kind, EvidenceKind::Merge { .. }))
            .unwrap()
    }
}

const ADA: u128 = 100;
const BOB: u128 = 101;

/// Ada browses, signs up, uses the app on her tablet; Bob browses and signs up; then Bob
/// signs in on Ada's tablet, which wrongly merges the two.
fn wrong_merge_story() -> Store {
    let mut store = Store::new();
    store.ingest(1, 1, &[("anonymous_id", "web-a")]);
    store.ingest(2, 1, &[("anonymous_id", "web-a"), ("email", "ada@example.com")]);
    store.ingest(3, 2, &[("device_id", "tablet-1"), ("email", "ada@example.com")]);
    store.ingest(4, 3, &[("anonymous_id", "web-b"), ("email", "bob@example.com")]);
    let wrong = store.ingest(5, 4, &[("device_id", "tablet-1"), ("email", "Bob@example.com")]);
    assert_eq!(
        wrong.outcome,
        Outcome::Merge {
            survivor: profile_id(ADA),
            merged: vec![profile_id(BOB)],
            new_identifiers: vec![]
        }
    );
    // Since the merge: Bob from a new browser (linked to the merged profile through his
    // email), Ada from a new browser, then events that link nothing new.
    store.ingest(6, 5, &[("anonymous_id", "web-b2"), ("email", "bob@example.com")]);
    store.ingest(7, 5, &[("anonymous_id", "web-a2"), ("email", "ada@example.com")]);
    store.ingest(8, 6, &[("email", "bob@example.com")]);
    store.ingest(9, 6, &[("device_id", "tablet-1")]);
    store
}

#[test]
fn unmerge_puts_identifiers_and_events_on_the_right_side() {
    let store = wrong_merge_story();
    assert_eq!(store.profiles.len(), 1);
    let undone = unmerge(&store.history, store.merge_index(5), &store.events, &store.rules).unwrap();

    let events = |ns: &[u128]| ns.iter().map(|n| event_id(*n)).collect::<Vec<_>>();
    assert_eq!(
        undone.sides,
        vec![
            Side {
                profile: profile_id(ADA),
                absorbed: vec![],
                identifiers: vec![
                    id("email", "ada@example.com"),
                    // The shared device stays with the person who brought it.
                    id("device_id", "tablet-1"),
                    id("anonymous_id", "web-a"),
                    id("anonymous_id", "web-a2"),
                ],
                events: events(&[1, 2, 3, 7, 9]),
            },
            Side {
                profile: profile_id(BOB),
                absorbed: vec![],
                identifiers: vec![
                    id("email", "bob@example.com"),
                    id("anonymous_id", "web-b"),
                    id("anonymous_id", "web-b2"),
                ],
                // The merging event goes with its strongest identifier, Bob's email.
                events: events(&[4, 5, 6, 8]),
            },
        ]
    );
    assert!(undone.unplaced.is_empty());
    assert_eq!(
        undone.side_of_event(event_id(6)).map(|s| s.profile),
        Some(profile_id(BOB))
    );
}

#[test]
fn a_later_merge_through_the_merged_side_goes_with_it() {
    let mut store = wrong_merge_story();
    store.ingest(10, 7, &[("phone", "+447700900999")]);
    // Bob adds his phone, which an older call-centre profile holds: a rightful merge.
    let second = store.ingest(11, 8, &[("email", "bob@example.com"), ("phone", "+447700900999")]);
    assert!(matches!(second.outcome, Outcome::Merge { .. }));
    let undone = unmerge(&store.history, store.merge_index(5), &store.events, &store.rules).unwrap();

    assert_eq!(undone.sides.len(), 2);
    let (ada, bob) = (&undone.sides[0], &undone.sides[1]);
    assert_eq!((ada.profile, bob.profile), (profile_id(ADA), profile_id(BOB)));
    assert!(!ada.identifiers.contains(&id("phone", "+447700900999")));
    assert!(bob.identifiers.contains(&id("phone", "+447700900999")));
    assert_eq!(bob.absorbed, vec![profile_id(102)]);
    assert!(bob.events.contains(&event_id(10)) && bob.events.contains(&event_id(11)));
}

#[test]
fn only_merges_can_be_undone() {
    let store = wrong_merge_story();
    assert_eq!(
        unmerge(&store.history, 0, &store.events, &store.rules),
        Err(UnmergeError::NotAMerge(0))
    );
    assert_eq!(
        unmerge(&store.history, store.history.len(), &[], &store.rules),
        Err(UnmergeError::NotAMerge(store.history.len()))
    );
}

#[test]
fn a_merge_repeated_by_other_evidence_cannot_be_undone_alone() {
    let store = wrong_merge_story();
    let index = store.merge_index(5);
    let mut history = store.history.clone();
    let mut again = history[index].clone();
    again.event = Some(event_id(42));
    history.push(again);
    assert_eq!(
        unmerge(&history, index, &store.events, &store.rules),
        Err(UnmergeError::StillJoined { by: history.len() - 1 })
    );
}

#[test]
fn events_no_side_can_place_are_reported() {
    let store = wrong_merge_story();
    let stray = store
        .rules
        .prepare(event_id(77), day(9), [("loyalty_card", "never-linked")]);
    let mut events = store.events.clone();
    events.push(stray);
    let undone = unmerge(&store.history, store.merge_index(5), &events, &store.rules).unwrap();
    assert_eq!(undone.unplaced, vec![event_id(77)]);
}
