//! How a delivery of identity's log is cut for writing: runs of facts and merges
//! between unmerges and erasures, each run's facts once, and where its merges move
//! facts.

use std::collections::BTreeMap;

use corvus_proto::{ProfileId, WorkspaceId};

use super::{Change, root_of};

pub(super) fn is_barrier(change: &Change) -> bool {
    matches!(change, Change::Unmerged { .. } | Change::Erased { .. })
}

/// Changes cut into runs of facts and merges, each unmerge and erasure alone between
/// them, in order.
pub(super) fn segments(changes: &[(WorkspaceId, Change)]) -> Vec<&[(WorkspaceId, Change)]> {
    changes
        .chunk_by(|(_, a), (_, b)| !is_barrier(a) && !is_barrier(b))
        .collect()
}

/// A run's facts, each event once (a replay can bring one twice; two chunks side by side
/// inserting the same two events in turn would deadlock).
pub(super) fn facts_of(run: &[(WorkspaceId, Change)]) -> Vec<&(WorkspaceId, Change)> {
    let mut seen = std::collections::HashSet::new();
    run.iter()
        .filter(|(ws, c)| matches!(c, Change::Fact { event, .. } if seen.insert((ws, *event))))
        .collect()
}

/// A run's merges, per workspace: where each merged id's facts go (to where the run's
/// chain of merges ends: a merged into b and b into c send a and b to c, in whichever
/// order they came), and each alias as merged (a to b, b to c).
pub(super) type Moves<'a> = BTreeMap<&'a WorkspaceId, (BTreeMap<ProfileId, ProfileId>, BTreeMap<ProfileId, ProfileId>)>;

pub(super) fn moves(run: &[(WorkspaceId, Change)]) -> Moves<'_> {
    let mut moves: Moves<'_> = BTreeMap::new();
    for (ws, change) in run {
        if let Change::Merged { survivor, merged } = change {
            let (to, _) = moves.entry(ws).or_default();
            for id in merged {
                to.insert(*id, *survivor);
            }
        }
    }
    for (to, aliases) in moves.values_mut() {
        aliases.clone_from(to);
        for end in to.values_mut() {
            *end = root_of(|p| aliases.get(p).copied(), *end);
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(survivor: ProfileId, merged: &[ProfileId]) -> (WorkspaceId, Change) {
        (
            "acme".parse().unwrap(),
            Change::Merged {
                survivor,
                merged: merged.to_vec(),
            },
        )
    }

    /// Facts go to the end of the run's chain, in whichever order its links came; the
    /// aliases are the links as merged.
    #[test]
    fn a_runs_merges_move_facts_to_the_end_of_their_chain() {
        let [a, b, c, d, e] = [(); 5].map(|_| ProfileId::new());
        for run in [
            vec![merged(b, &[a]), merged(c, &[b]), merged(e, &[d])],
            vec![merged(c, &[b]), merged(b, &[a]), merged(e, &[d])],
        ] {
            let moves = moves(&run);
            let (to, aliases) = &moves[&"acme".parse::<WorkspaceId>().unwrap()];
            assert_eq!(to, &BTreeMap::from([(a, c), (b, c), (d, e)]));
            assert_eq!(aliases, &BTreeMap::from([(a, b), (b, c), (d, e)]));
        }
    }
}
