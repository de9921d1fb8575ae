//! Undoing a merge by replaying the recorded evidence without it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{EventId, EventIdentity, Evidence, EvidenceKind, Identifier, IdentityRules, ProfileId};

/// One profile after an unmerge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub profile: ProfileId,
    /// Other profile ids merged into this one by merges that still stand; they keep
    /// redirecting to `profile`.
    pub absorbed: Vec<ProfileId>,
    /// Strongest first.
    pub identifiers: Vec<Identifier>,
    /// Sorted (event ids are UUIDv7, so this is arrival order).
    pub events: Vec<EventId>,
}

/// The profiles a merged profile falls apart into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmerge {
    /// The undone merge's survivor side first, its merged side second, then any others.
    pub sides: Vec<Side>,
    /// Events none of whose identifiers any side holds (their identifiers were all
    /// dropped): the service decides where they go.
    pub unplaced: Vec<EventId>,
}

impl Unmerge {
    pub fn side_of_event(&self, event: EventId) -> Option<&Side> {
        self.sides.iter().find(|side| side.events.contains(&event))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnmergeError {
    #[error("evidence record {0} is not a merge")]
    NotAMerge(usize),
    /// Another merge that stands joins the two sides again; undo that one too (or first).
    #[error("the merge recorded at {by} joins the same profiles again")]
    StillJoined { by: usize },
}

/// Replays `history` without the merge at index `undo`.
///
/// `history` is every evidence record of the profiles concerned (the survivor and all it
/// absorbed), in the order recorded. The replay starts from no profiles and applies each
/// record except the undone merge:
///
/// - a link with no `via` creates its profile (if new) and gives it the identifier;
/// - a link with a `via` gives the identifier to whichever profile holds `via` *in the
///   replay* — so a link that was made on the survivor only because the undone merge had
///   brought `via` there now goes to the merged side;
/// - a merge joins the profiles holding `survivor_via` and `merged_via`, if they differ
///   (a merge that only repeated what the undone one did becomes a no-op).
///
/// An identifier belongs to the first profile it was linked to. Then each event goes to the
/// side holding its strongest identifier (per `rules`), knowing its identifiers from
/// `events` (pass the events resolved to the profiles concerned, prepared again from the
/// event log; this covers events that linked nothing new) and from its evidence.
pub fn unmerge(
    history: &[Evidence],
    undo: usize,
    events: &[EventIdentity],
    rules: &IdentityRules,
) -> Result<Unmerge, UnmergeError> {
    let Some(EvidenceKind::Merge { survivor, merged, .. }) = history.get(undo).map(|e| &e.kind) else {
        return Err(UnmergeError::NotAMerge(undo));
    };
    let mut graph = Graph::default();
    let mut joined_again = None;
    for (index, record) in history.iter().enumerate() {
        if index == undo {
            continue;
        }
        match &record.kind {
            EvidenceKind::Link {
                profile,
                identifier,
                via,
            } => {
                let target = via
                    .as_ref()
                    .and_then(|via| graph.holder(via))
                    .unwrap_or_else(|| graph.node(*profile));
                graph.owner.entry(identifier.clone()).or_insert(target);
            }
            EvidenceKind::Merge {
                survivor,
                merged,
                survivor_via,
                merged_via,
            } => {
                let keep = graph.holder(survivor_via).unwrap_or_else(|| graph.node(*survivor));
                let fold = graph.holder(merged_via).unwrap_or_else(|| graph.node(*merged));
                if keep != fold {
                    graph.parent.insert(fold, keep);
                }
            }
        }
        if joined_again.is_none() && graph.joined(*survivor, *merged) {
            joined_again = Some(index);
        }
    }
    if let Some(by) = joined_again {
        return Err(UnmergeError::StillJoined { by });
    }
    Ok(graph.sides(history, events, rules, [*survivor, *merged]))
}

#[derive(Debug, Default)]
struct Graph {
    /// Union–find over profile ids: a profile points at the one it was merged into.
    parent: BTreeMap<ProfileId, ProfileId>,
    owner: HashMap<Identifier, ProfileId>,
}

impl Graph {
    fn root(&self, mut profile: ProfileId) -> ProfileId {
        while let Some(&up) = self.parent.get(&profile) {
            if up == profile {
                break;
            }
            profile = up;
        }
        profile
    }

    fn node(&mut self, profile: ProfileId) -> ProfileId {
        self.parent.entry(profile).or_insert(profile);
        self.root(profile)
    }

    fn holder(&self, identifier: &Identifier) -> Option<ProfileId> {
        self.owner.get(identifier).map(|p| self.root(*p))
    }

    fn joined(&self, a: ProfileId, b: ProfileId) -> bool {
        self.parent.contains_key(&a) && self.parent.contains_key(&b) && self.root(a) == self.root(b)
    }

    fn sides(
        &self,
        history: &[Evidence],
        events: &[EventIdentity],
        rules: &IdentityRules,
        first: [ProfileId; 2],
    ) -> Unmerge {
        let mut carried: BTreeMap<EventId, BTreeSet<&Identifier>> = BTreeMap::new();
        for record in history {
            if let Some(event) = record.event {
                carried.entry(event).or_default().extend(record.identifiers());
            }
        }
        for event in events {
            carried.entry(event.event).or_default().extend(&event.identifiers);
        }

        let mut sides: BTreeMap<ProfileId, Side> = BTreeMap::new();
        for &profile in self.parent.keys() {
            let root = self.root(profile);
            let side = sides.entry(root).or_insert_with(|| Side {
                profile: root,
                absorbed: Vec::new(),
                identifiers: Vec::new(),
                events: Vec::new(),
            });
            if profile != root {
                side.absorbed.push(profile);
            }
        }
        for (identifier, owner) in &self.owner {
            if let Some(side) = sides.get_mut(&self.root(*owner)) {
                side.identifiers.push(identifier.clone());
            }
        }
        let mut unplaced = Vec::new();
        for (event, identifiers) in carried {
            let strongest = identifiers
                .into_iter()
                .filter_map(|i| self.holder(i).map(|holder| (rules.order(i), holder)))
                .min();
            match strongest.and_then(|(_, holder)| sides.get_mut(&holder)) {
                Some(side) => side.events.push(event),
                None => unplaced.push(event),
            }
        }

        let mut sides: Vec<Side> = sides.into_values().collect();
        for side in &mut sides {
            side.identifiers.sort_by(|a, b| rules.order(a).cmp(&rules.order(b)));
        }
        let roots = first.map(|p| self.root(p));
        sides.sort_by_key(|side| (roots.iter().position(|r| *r == side.profile).unwrap_or(2), side.profile));
        Unmerge { sides, unplaced }
    }
}
