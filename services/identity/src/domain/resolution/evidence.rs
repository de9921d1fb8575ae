//! What is recorded for every link and merge, so that a merge can be explained and undone.

use chrono::{DateTime, Utc};

use super::{EventId, Identifier, ProfileId};

/// The rule that made a link or merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// The event carried the identifiers: the link is a fact, with confidence 1.
    Deterministic,
    /// Matching scored the pair above the auto-merge threshold.
    Probabilistic,
    /// A reviewer accepted a pair matching proposed.
    Review,
}

/// One recorded step of the identity graph. Records are kept in the order they were made;
/// [`super::unmerge`] replays them in that order.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// The event that carried the identifiers; `None` for merges made by matching or review.
    pub event: Option<EventId>,
    pub at: DateTime<Utc>,
    pub rule: Rule,
    /// 1.0 for deterministic evidence; a match probability for evidence from matching.
    pub confidence: f64,
    pub kind: EvidenceKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceKind {
    /// `identifier` became `profile`'s.
    Link {
        profile: ProfileId,
        identifier: Identifier,
        /// The strongest identifier of the same event that the profile (or a profile merged
        /// into it by the same event) already held: the reason the event went there. `None`
        /// when the event created the profile. Replay follows `via`, not `profile`, so a
        /// link made only because of a later-undone merge goes to the right side.
        via: Option<Identifier>,
    },
    /// `merged` was folded into `survivor`, because the event carried `survivor_via`
    /// (held by the survivor) and `merged_via` (held by the merged profile).
    Merge {
        survivor: ProfileId,
        merged: ProfileId,
        survivor_via: Identifier,
        merged_via: Identifier,
    },
}

impl Evidence {
    pub(super) fn deterministic(event: EventId, at: DateTime<Utc>, kind: EvidenceKind) -> Self {
        Self {
            event: Some(event),
            at,
            rule: Rule::Deterministic,
            confidence: 1.0,
            kind,
        }
    }

    /// Every identifier this record shows the event carried.
    pub(super) fn identifiers(&self) -> Vec<&Identifier> {
        match &self.kind {
            EvidenceKind::Link { identifier, via, .. } => std::iter::once(identifier).chain(via).collect(),
            EvidenceKind::Merge {
                survivor_via,
                merged_via,
                ..
            } => vec![survivor_via, merged_via],
        }
    }
}
