//! Tests of [`super::resolve`]: each rule alone and in combination.

use chrono::{DateTime, TimeDelta, Utc};

use super::*;

pub(super) fn day(n: i64) -> DateTime<Utc> {
    DateTime::UNIX_EPOCH + TimeDelta::days(20_000 + n)
}

pub(super) fn profile_id(n: u128) -> ProfileId {
    ProfileId::from(uuid::Uuid::from_u128(n))
}

pub(super) fn event_id(n: u128) -> EventId {
    EventId::from(uuid::Uuid::from_u128(n))
}

pub(super) fn id(kind: &str, value: &str) -> Identifier {
    Identifier::new(IdentifierKind::parse(kind).unwrap(), value)
}

/// The id offered for a new profile.
const NEW: u128 = 999;

fn profile(n: u128, created: i64, identifiers: &[(&str, &str, i64)]) -> Candidate {
    Candidate {
        profile: profile_id(n),
        created_at: day(created),
        identifiers: identifiers
            .iter()
            .map(|(kind, value, seen)| HeldIdentifier {
                identifier: id(kind, value),
                first_seen: day(*seen),
            })
            .collect(),
    }
}

fn event(rules: &IdentityRules, at: i64, raw: &[(&str, &str)]) -> EventIdentity {
    rules.prepare(event_id(1), day(at), raw.iter().copied())
}

fn run(raw: &[(&str, &str)], candidates: &[Candidate]) -> Resolution {
    let rules = IdentityRules::default();
    let candidates: Vec<&Candidate> = candidates.iter().collect();
    resolve(&event(&rules, 10, raw), &candidates, &rules, || profile_id(NEW))
}

fn link(profile: u128, identifier: Identifier, via: Option<Identifier>) -> EvidenceKind {
    EvidenceKind::Link {
        profile: profile_id(profile),
        identifier,
        via,
    }
}

fn kinds(resolution: &Resolution) -> Vec<EvidenceKind> {
    resolution.evidence.iter().map(|e| e.kind.clone()).collect()
}

fn drops(resolution: &Resolution) -> Vec<(String, DropReason)> {
    resolution
        .dropped
        .iter()
        .map(|d| (format!("{}:{}", d.kind, d.value), d.reason.clone()))
        .collect()
}

fn unique(kind: &str) -> DropReason {
    DropReason::Unique {
        kind: IdentifierKind::parse(kind).unwrap(),
    }
}

#[test]
fn no_holder_creates_a_profile_with_deterministic_evidence() {
    let resolution = run(&[("anonymous_id", "a1"), ("email", "Ada@Example.com")], &[]);
    let expected = vec![id("email", "ada@example.com"), id("anonymous_id", "a1")];
    assert_eq!(
        resolution.outcome,
        Outcome::Create {
            profile: profile_id(NEW),
            identifiers: expected.clone()
        }
    );
    assert_eq!(resolution.profile(), Some(profile_id(NEW)));
    assert_eq!(
        kinds(&resolution),
        expected.into_iter().map(|i| link(NEW, i, None)).collect::<Vec<_>>()
    );
    for evidence in &resolution.evidence {
        assert_eq!((evidence.rule, evidence.confidence), (Rule::Deterministic, 1.0));
        assert_eq!((evidence.event, evidence.at), (Some(event_id(1)), day(10)));
    }
}

#[test]
fn an_event_with_only_blocked_identifiers_is_unidentified() {
    let resolution = run(&[("anonymous_id", "null"), ("email", "n/a")], &[]);
    assert_eq!(resolution.outcome, Outcome::Unidentified);
    assert_eq!(resolution.profile(), None);
    assert!(resolution.evidence.is_empty());
    assert_eq!(resolution.dropped.len(), 2);
}

#[test]
fn blocked_values_are_dropped_and_the_rest_resolves() {
    let p1 = profile(1, 0, &[("email", "ada@example.com", 0)]);
    let resolution = run(&[("anonymous_id", "undefined"), ("email", "ada@example.com")], &[p1]);
    assert_eq!(
        resolution.outcome,
        Outcome::Attach {
            profile: profile_id(1),
            new_identifiers: vec![]
        }
    );
    assert_eq!(
        drops(&resolution),
        vec![("anonymous_id:undefined".to_owned(), DropReason::Blocked)]
    );
}

#[test]
fn one_holder_gets_the_new_identifiers() {
    let p1 = profile(1, 0, &[("anonymous_id", "a1", 0)]);
    let resolution = run(&[("anonymous_id", "a1"), ("email", "ada@example.com")], &[p1]);
    assert_eq!(
        resolution.outcome,
        Outcome::Attach {
            profile: profile_id(1),
            new_identifiers: vec![id("email", "ada@example.com")]
        }
    );
    assert_eq!(
        kinds(&resolution),
        vec![link(1, id("email", "ada@example.com"), Some(id("anonymous_id", "a1")))]
    );
}

#[test]
fn spellings_of_one_identifier_meet() {
    let p1 = profile(1, 0, &[("email", "ada@example.com", 0), ("phone", "+447700900123", 0)]);
    let resolution = run(&[("email", " Ada@Example.COM "), ("phone", "+44 7700 900123")], &[p1]);
    assert_eq!(
        resolution.outcome,
        Outcome::Attach {
            profile: profile_id(1),
            new_identifiers: vec![]
        }
    );
}

#[test]
fn resolving_the_same_event_twice_attaches_nothing_new() {
    let rules = IdentityRules::default();
    let raw = [("anonymous_id", "a1"), ("user_id", "u1"), ("device_id", "d1")];
    let first = resolve(&event(&rules, 10, &raw), &[], &rules, || profile_id(NEW));
    let Outcome::Create { profile, identifiers } = first.outcome else {
        panic!("expected a new profile, got {:?}", first.outcome);
    };
    let stored = Candidate {
        profile,
        created_at: day(10),
        identifiers: identifiers
            .into_iter()
            .map(|identifier| HeldIdentifier {
                identifier,
                first_seen: day(10),
            })
            .collect(),
    };
    let again = resolve(&event(&rules, 10, &raw), &[&stored], &rules, || profile_id(NEW + 1));
    assert_eq!(
        again.outcome,
        Outcome::Attach {
            profile,
            new_identifiers: vec![]
        }
    );
    assert!(again.evidence.is_empty() && again.dropped.is_empty());
}

#[test]
fn several_holders_merge_into_the_one_with_the_strongest_identifier() {
    // P1 is older, but P2 holds an email, which outranks an anonymous id.
    let p1 = profile(1, 0, &[("anonymous_id", "a1", 0)]);
    let p2 = profile(2, 5, &[("email", "ada@example.com", 5)]);
    let resolution = run(&[("anonymous_id", "a1"), ("email", "ada@example.com")], &[p1, p2]);
    assert_eq!(
        resolution.outcome,
        Outcome::Merge {
            survivor: profile_id(2),
            merged: vec![profile_id(1)],
            new_identifiers: vec![]
        }
    );
    assert_eq!(
        kinds(&resolution),
        vec![EvidenceKind::Merge {
            survivor: profile_id(2),
            merged: profile_id(1),
            survivor_via: id("email", "ada@example.com"),
            merged_via: id("anonymous_id", "a1"),
        }]
    );
}

#[test]
fn on_equal_strength_the_oldest_survives_then_the_smallest_id() {
    let p1 = profile(1, 3, &[("email", "a@example.com", 3)]);
    let p2 = profile(2, 1, &[("phone", "+447700900123", 1), ("email", "b@example.com", 1)]);
    let raw = [("email", "a@example.com"), ("phone", "+447700900123")];
    let resolution = run(&raw, &[p1.clone(), p2]);
    assert_eq!(resolution.profile(), Some(profile_id(2)));

    let p3 = profile(3, 3, &[("phone", "+447700900123", 3), ("email", "b@example.com", 3)]);
    let resolution = run(&raw, &[p3, p1]);
    assert_eq!(resolution.profile(), Some(profile_id(1)));
}

#[test]
fn three_profiles_merge_and_the_new_identifier_follows() {
    let p1 = profile(1, 0, &[("anonymous_id", "a1", 0)]);
    let p2 = profile(2, 1, &[("email", "ada@example.com", 1)]);
    let p3 = profile(3, 2, &[("phone", "+447700900123", 2)]);
    let raw = [
        ("anonymous_id", "a1"),
        ("phone", "+447700900123"),
        ("email", "ada@example.com"),
        ("device_id", "d1"),
    ];
    let resolution = run(&raw, &[p1, p2, p3]);
    assert_eq!(
        resolution.outcome,
        Outcome::Merge {
            survivor: profile_id(2),
            merged: vec![profile_id(3), profile_id(1)],
            new_identifiers: vec![id("device_id", "d1")]
        }
    );
    let evidence = kinds(&resolution);
    assert_eq!(evidence.len(), 3);
    assert_eq!(
        evidence[2],
        link(2, id("device_id", "d1"), Some(id("email", "ada@example.com")))
    );
}

#[test]
fn uniqueness_stops_a_merge_while_another_identifier_still_attaches() {
    let p1 = profile(1, 0, &[("user_id", "u1", 0), ("anonymous_id", "a1", 0)]);
    let p2 = profile(2, 1, &[("user_id", "u2", 1), ("email", "bob@example.com", 1)]);
    let raw = [
        ("anonymous_id", "a1"),
        ("user_id", "u2"),
        ("email", "bob@example.com"),
        ("loyalty_card", "L-7"),
    ];
    let resolution = run(&raw, &[p1, p2]);
    assert_eq!(
        resolution.outcome,
        Outcome::Attach {
            profile: profile_id(2),
            new_identifiers: vec![id("loyalty_card", "L-7")]
        }
    );
    assert_eq!(
        drops(&resolution),
        vec![("anonymous_id:a1".to_owned(), unique("user_id"))]
    );
}

#[test]
fn a_new_user_id_does_not_join_a_profile_with_another() {
    // Someone else logs in on a browser that belonged to u1: a new profile, without the
    // browser's anonymous id.
    let p1 = profile(1, 0, &[("user_id", "u1", 0), ("anonymous_id", "a1", 0)]);
    let resolution = run(&[("user_id", "u2"), ("anonymous_id", "a1")], &[p1]);
    assert_eq!(
        resolution.outcome,
        Outcome::Create {
            profile: profile_id(NEW),
            identifiers: vec![id("user_id", "u2")]
        }
    );
    assert_eq!(
        drops(&resolution),
        vec![("anonymous_id:a1".to_owned(), unique("user_id"))]
    );
}

#[test]
fn an_anonymous_profile_takes_its_first_user_id() {
    let p1 = profile(1, 0, &[("anonymous_id", "a1", 0)]);
    let resolution = run(&[("user_id", "u1"), ("anonymous_id", "a1")], &[p1]);
    assert_eq!(
        resolution.outcome,
        Outcome::Attach {
            profile: profile_id(1),
            new_identifiers: vec![id("user_id", "u1")]
        }
    );
}

#[test]
fn a_second_value_of_a_unique_kind_is_dropped_from_the_event() {
    let p1 = profile(1, 0, &[("user_id", "u1", 0), ("crm_id", "c1", 0)]);
    let resolution = run(
        &[("user_id", "u1"), ("crm_id", "c2"), ("email", "ada@example.com")],
        &[p1],
    );
    assert_eq!(
        resolution.outcome,
        Outcome::Attach {
            profile: profile_id(1),
            new_identifiers: vec![id("email", "ada@example.com")]
        }
    );
    assert_eq!(drops(&resolution), vec![("crm_id:c2".to_owned(), unique("crm_id"))]);
}

fn anonymous_ids(n: usize, seen: i64) -> Vec<(String, i64)> {
    (0..n).map(|i| (format!("old{i}"), seen)).collect()
}

fn with_anonymous(n: u128, email: &str, anonymous: &[(String, i64)]) -> Candidate {
    let mut candidate = profile(n, 0, &[("email", email, 0)]);
    candidate
        .identifiers
        .extend(anonymous.iter().map(|(value, seen)| HeldIdentifier {
            identifier: id("anonymous_id", value),
            first_seen: day(*seen),
        }));
    candidate
}

#[test]
fn limits_drop_an_identifier_beyond_the_window_count() {
    let limit = DropReason::Limit {
        kind: IdentifierKind::anonymous_id(),
        limit: Limit {
            max: 5,
            window: TimeDelta::days(7),
        },
    };
    let full = with_anonymous(1, "ada@example.com", &anonymous_ids(5, 8));
    let resolution = run(&[("email", "ada@example.com"), ("anonymous_id", "a6")], &[full]);
    assert_eq!(
        resolution.outcome,
        Outcome::Attach {
            profile: profile_id(1),
            new_identifiers: vec![]
        }
    );
    assert_eq!(drops(&resolution), vec![("anonymous_id:a6".to_owned(), limit)]);

    // The same five, first seen more than a week before the event, no longer count.
    let old = with_anonymous(1, "ada@example.com", &anonymous_ids(5, 2));
    let resolution = run(&[("email", "ada@example.com"), ("anonymous_id", "a6")], &[old]);
    assert_eq!(
        resolution.outcome,
        Outcome::Attach {
            profile: profile_id(1),
            new_identifiers: vec![id("anonymous_id", "a6")]
        }
    );
}

#[test]
fn a_limit_stops_a_merge_that_would_exceed_it() {
    // Three recent anonymous ids on each side: together six, over the limit of five.
    let p1 = with_anonymous(1, "ada@example.com", &anonymous_ids(3, 9));
    let p2 = profile(
        2,
        1,
        &[
            ("anonymous_id", "x", 9),
            ("anonymous_id", "y", 9),
            ("anonymous_id", "z", 9),
        ],
    );
    let resolution = run(&[("email", "ada@example.com"), ("anonymous_id", "x")], &[p1, p2]);
    assert_eq!(
        resolution.outcome,
        Outcome::Attach {
            profile: profile_id(1),
            new_identifiers: vec![]
        }
    );
    assert!(matches!(
        resolution.dropped[..],
        [Dropped {
            reason: DropReason::Limit { .. },
            ..
        }]
    ));
}

#[test]
fn a_profile_already_over_a_limit_still_receives_its_events() {
    // The limit was tightened after this profile collected seven anonymous ids this week.
    let over = with_anonymous(1, "ada@example.com", &anonymous_ids(7, 9));
    let resolution = run(&[("anonymous_id", "old3")], std::slice::from_ref(&over));
    assert_eq!(
        (resolution.outcome, resolution.dropped),
        (
            Outcome::Attach {
                profile: profile_id(1),
                new_identifiers: vec![]
            },
            vec![]
        )
    );
    let resolution = run(&[("anonymous_id", "old3"), ("anonymous_id", "new")], &[over]);
    assert_eq!(drops(&resolution).len(), 1);
}

#[test]
fn workspace_kinds_take_part_with_their_rules() {
    let rules =
        IdentityRules::default().with_kind(IdentifierKind::parse("member_no").unwrap(), KindRule::new(5).unique());
    let p1 = profile(1, 0, &[("member_no", "M1", 0), ("email", "ada@example.com", 0)]);
    let p2 = profile(2, 1, &[("member_no", "M2", 1), ("phone", "+447700900123", 1)]);
    let raw = [
        ("email", "ada@example.com"),
        ("phone", "+447700900123"),
        ("member_no", " M2 "),
    ];
    let resolution = resolve(&event(&rules, 10, &raw), &[&p1, &p2], &rules, || profile_id(NEW));
    // member_no outranks email, so M2 decides; the email's profile holds M1 and stays apart.
    assert_eq!(
        resolution.outcome,
        Outcome::Attach {
            profile: profile_id(2),
            new_identifiers: vec![]
        }
    );
    assert_eq!(
        drops(&resolution),
        vec![("email:ada@example.com".to_owned(), unique("member_no"))]
    );
}

#[test]
fn candidates_holding_none_of_the_identifiers_are_ignored() {
    let stranger = profile(1, 0, &[("email", "someone@example.com", 0)]);
    let resolution = run(&[("email", "ada@example.com")], &[stranger]);
    assert!(matches!(resolution.outcome, Outcome::Create { .. }));
}

#[test]
fn two_values_of_a_unique_kind_in_one_event_keep_the_first_in_order() {
    let resolution = run(&[("crm_id", "c2"), ("crm_id", "c1")], &[]);
    assert_eq!(
        resolution.outcome,
        Outcome::Create {
            profile: profile_id(NEW),
            identifiers: vec![id("crm_id", "c1")]
        }
    );
    assert_eq!(drops(&resolution), vec![("crm_id:c2".to_owned(), unique("crm_id"))]);
}
