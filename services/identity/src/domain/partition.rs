//! A delivered batch split into parts that can be resolved at once, each in its own
//! transaction. Events sharing an identifier, directly or through other events, stay in
//! one part and in log order, so everything a batch could join within itself is joined
//! by one transaction. Parts still meet in the store when their events name different
//! identifiers of one person: the profile's row lock then runs them one after the other.

use std::collections::HashMap;

use super::batch::IncomingEvent;
use super::resolution::Identifier;

/// Events below which a part is not worth its own transaction (its statements and
/// commit cost about as much as a few hundred events' rows).
pub const MIN_PART: usize = 64;

/// Splits `events` into at most `parts` groups of indices (fewer for a small batch, none
/// under `MIN_PART` events unless the batch is), each in log order, as even in size as
/// whole groups of linked events allow. Empty groups are left out.
pub fn partition(events: &[IncomingEvent], parts: usize) -> Vec<Vec<usize>> {
    let parts = parts.min(events.len() / MIN_PART).max(1);
    if parts == 1 || events.len() < 2 {
        return if events.is_empty() {
            Vec::new()
        } else {
            vec![(0..events.len()).collect()]
        };
    }
    // Union-find over events: each identifier links every event naming it.
    let mut parent: Vec<usize> = (0..events.len()).collect();
    let mut first: HashMap<&Identifier, usize> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        for identifier in &event.identity.identifiers {
            match first.get(identifier) {
                Some(&j) => union(&mut parent, i, j),
                None => {
                    first.insert(identifier, i);
                }
            }
        }
    }
    let mut linked: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..events.len() {
        let root = find(&mut parent, i);
        linked.entry(root).or_default().push(i);
    }
    // Largest first, each to the part with the fewest events so far.
    let mut groups: Vec<Vec<usize>> = linked.into_values().collect();
    groups.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); parts];
    for group in groups {
        let smallest = out.iter_mut().min_by_key(|part| part.len()).expect("at least one part");
        smallest.extend(group);
    }
    out.retain(|part| !part.is_empty());
    for part in &mut out {
        part.sort_unstable();
    }
    out
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (a, b) = (find(parent, a), find(parent, b));
    if a != b {
        parent[a.max(b)] = a.min(b);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::domain::resolution::{EventId, EventIdentity, IdentifierKind};

    fn event(ids: &[(&str, &str)]) -> IncomingEvent {
        IncomingEvent {
            identity: EventIdentity {
                event: EventId::from(uuid::Uuid::new_v4()),
                at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
                identifiers: ids
                    .iter()
                    .map(|(k, v)| Identifier {
                        kind: IdentifierKind::parse(k).unwrap(),
                        value: (*v).to_owned(),
                    })
                    .collect(),
                dropped: Vec::new(),
            },
            message_id: String::new(),
            event_type: 1,
            channel: 1,
            name: String::new(),
            traits: None,
            consents: Vec::new(),
            onward: Default::default(),
        }
    }

    #[test]
    fn linked_events_share_a_part_in_log_order() {
        let events = vec![
            event(&[("anonymous_id", "a1")]),
            event(&[("user_id", "u2")]),
            event(&[("anonymous_id", "a3")]),
            // Joins a1 and u1 ...
            event(&[("anonymous_id", "a1"), ("user_id", "u1")]),
            // ... and u1 with e1: events 0, 3, 4 and 5 are one person.
            event(&[("user_id", "u1"), ("email", "e1@x.io")]),
            event(&[("email", "e1@x.io")]),
            event(&[]),
        ];
        let parts = partition(&events, 3);
        assert_eq!(parts, vec![(0..events.len()).collect::<Vec<_>>()], "too few to split");
        let parts = split(&events, 3);
        assert_eq!(parts.len(), 3);
        let with_zero = parts.iter().find(|p| p.contains(&0)).unwrap();
        assert_eq!(with_zero, &vec![0, 3, 4, 5]);
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..events.len()).collect::<Vec<_>>(),
            "every event in exactly one part"
        );
        for part in &parts {
            assert!(part.windows(2).all(|w| w[0] < w[1]), "log order within {part:?}");
        }
    }

    /// The same events, each repeated `MIN_PART` times under its own copies of its
    /// identifiers' values, so that the batch is big enough to split; the part holding
    /// copy 0 of each event is returned, as indices of the original events.
    fn split(events: &[IncomingEvent], parts: usize) -> Vec<Vec<usize>> {
        let n = events.len();
        let copies: Vec<IncomingEvent> = (0..MIN_PART)
            .flat_map(|copy| {
                events.iter().map(move |e| {
                    let mut e = e.clone();
                    for identifier in &mut e.identity.identifiers {
                        identifier.value = format!("{}-{copy}", identifier.value);
                    }
                    e
                })
            })
            .collect();
        partition(&copies, parts)
            .into_iter()
            .map(|part| part.into_iter().filter(|i| *i < n).collect::<Vec<_>>())
            .filter(|part| !part.is_empty())
            .collect()
    }

    #[test]
    fn parts_are_even_when_nothing_links() {
        let events: Vec<IncomingEvent> = (0..10 * MIN_PART)
            .map(|i| event(&[("anonymous_id", &format!("a{i}"))]))
            .collect();
        let sizes: Vec<usize> = partition(&events, 4).iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10 * MIN_PART);
        assert!(
            sizes
                .iter()
                .all(|s| s * 4 >= 10 * MIN_PART - 4 && s * 4 <= 10 * MIN_PART + 4),
            "{sizes:?}"
        );
        assert_eq!(partition(&events, 1), vec![(0..10 * MIN_PART).collect::<Vec<_>>()]);
        assert_eq!(partition(&events[..MIN_PART * 2], 8).len(), 2, "no part under MIN_PART");
        assert!(partition(&[], 4).is_empty());
    }
}
