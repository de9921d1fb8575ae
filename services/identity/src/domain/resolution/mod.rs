//! Deterministic identity resolution: which profile an event belongs to, decided from the
//! identifiers it carries and the profiles that already hold them.
//!
//! The storage layer calls this inside one transaction per event:
//!
//! 1. [`IdentityRules::prepare`] normalises the raw identifiers of the event (per kind) and
//!    drops the ones that can never identify anyone (invalid kind, malformed, blocked).
//! 2. The store looks up the profiles holding any of [`EventIdentity::identifiers`] and
//!    passes them as [`Candidate`]s, each with *all* its identifiers: uniqueness and limits
//!    are judged on the whole profile, not only on what the event shares with it.
//! 3. [`resolve`] decides: [`Outcome::Create`], [`Outcome::Attach`] or [`Outcome::Merge`],
//!    which identifiers a rule dropped from the event, and the [`Evidence`] to record.
//! 4. To undo a merge, [`unmerge`] replays the recorded evidence without it and says which
//!    identifiers and events belong to which side.
//!
//! Nothing here reads a clock or generates an id: the time and the id a new profile would
//! get are inputs, so the same input always gives the same decision.

mod evidence;
mod identifier;
mod resolve;
mod rules;
mod unmerge;

#[cfg(test)]
mod resolve_tests;
#[cfg(test)]
mod unmerge_tests;

pub use evidence::{Evidence, EvidenceKind, Rule};
pub use identifier::{Identifier, IdentifierKind, InvalidKind, Malformed, Normalisation};
pub use resolve::{Candidate, HeldIdentifier, Outcome, Resolution, resolve};
pub use rules::{DEFAULT_BLOCKED_VALUES, DropReason, Dropped, EventIdentity, IdentityRules, KindRule, Limit};
pub use unmerge::{Side, Unmerge, UnmergeError, unmerge};

pub use corvus_proto::{EventId, ProfileId};
