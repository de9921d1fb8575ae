//! Which profile each identifier was last seen held by, kept in process so that a batch
//! can lock the profiles its identifiers point to without first looking each of them up
//! (the identifier lookups were identity's largest statement on Postgres).
//!
//! A hint is only ever a guess of which profile to lock. A batch trusts it once the
//! profile, locked, is found live and holding the identifier; an identifier has one
//! holder (it is the key of its table), and no writer moves it off a profile without
//! locking that profile, so that check is as good as the lookup. A hint that fails it (an
//! identifier moved by an unmerge or a merge elsewhere, a profile erased, another process
//! that resolved the same person) runs the batch again without hints. Keys are 64-bit
//! digests of workspace, kind and value, seeded at random per process (so no one can aim
//! identifiers at one slot of the table): a collision is such a failed hint, nothing worse.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, BuildHasherDefault, Hasher};
use std::sync::Mutex;

use corvus_proto::WorkspaceId;

use crate::domain::resolution::{Identifier, ProfileId};

/// Identifiers remembered per generation. When the newer generation is full, the older
/// one is dropped and the newer takes its place: what a batch used in the last
/// generation stays. At most twice this many are held, in two tables of 2^19 slots of
/// 25 bytes (this is just under the 7/8 of 2^19 at which a table doubles): 26 MB.
const GENERATION: usize = 450_000;

#[derive(Debug, Default)]
pub struct Hints {
    generations: Mutex<Generations>,
    digest: foldhash::fast::RandomState,
}

#[derive(Debug, Default)]
struct Generations {
    newer: Digests,
    older: Digests,
}

/// Keyed by digests, which need no hashing again.
type Digests = HashMap<u64, ProfileId, BuildHasherDefault<Digest>>;

#[derive(Debug, Default)]
struct Digest(u64);

impl Hasher for Digest {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with this; any other input is folded in whole.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

impl Generations {
    fn insert(&mut self, key: u64, profile: ProfileId) {
        if self.newer.len() >= GENERATION && !self.newer.contains_key(&key) {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(key, profile);
    }
}

impl Hints {
    /// The digest an identifier is remembered by.
    pub fn key(&self, ws: &WorkspaceId, identifier: &Identifier) -> u64 {
        self.digest.hash_one((ws, identifier))
    }

    /// The hinted holder of each key, where there is one.
    pub fn get(&self, keys: &[u64]) -> Vec<Option<ProfileId>> {
        let mut generations = self.lock();
        keys.iter()
            .map(|key| {
                if let Some(profile) = generations.newer.get(key) {
                    return Some(*profile);
                }
                // Used again: carried into the newer generation.
                let profile = generations.older.remove(key)?;
                generations.insert(*key, profile);
                Some(profile)
            })
            .collect()
    }

    /// Remembers holders seen under a lock, or written by a committed batch.
    pub fn learn(&self, held: impl IntoIterator<Item = (u64, ProfileId)>) {
        let mut generations = self.lock();
        for (key, profile) in held {
            generations.insert(key, profile);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The maps stay whole whatever a panicking holder was doing: every change is a
        // single insert or a swap.
        self.generations.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::resolution::IdentifierKind;

    fn id(kind: &str, value: &str) -> Identifier {
        Identifier::new(IdentifierKind::parse(kind).unwrap(), value)
    }

    fn email(value: &str) -> Identifier {
        id("email", value)
    }

    #[test]
    fn keys_tell_workspaces_kinds_and_values_apart() {
        let (acme, other): (WorkspaceId, WorkspaceId) = ("acme".parse().unwrap(), "other".parse().unwrap());
        let hints = Hints::default();
        let a = hints.key(&acme, &email("a@x.io"));
        assert_eq!(a, hints.key(&acme, &email("a@x.io")));
        assert_ne!(a, hints.key(&other, &email("a@x.io")));
        assert_ne!(a, hints.key(&acme, &email("b@x.io")));
        assert_ne!(a, hints.key(&acme, &id("user_id", "a@x.io")));
        assert_ne!(a, Hints::default().key(&acme, &email("a@x.io")), "seeded per process");
    }

    #[test]
    fn a_hint_used_survives_a_generation_and_one_unused_does_not() {
        let hints = Hints::default();
        let (used, unused) = (ProfileId::new(), ProfileId::new());
        hints.learn([(1, used), (2, unused)]);
        // Fill the newer generation so that 1 and 2 become the older one.
        hints.learn((10..10 + GENERATION as u64).map(|k| (k, ProfileId::new())));
        assert_eq!(hints.get(&[1]), vec![Some(used)]);
        // The next generation drops the older one: 2 was not used, 1 was carried over.
        hints.learn((10 + GENERATION as u64..10 + 2 * GENERATION as u64).map(|k| (k, ProfileId::new())));
        assert_eq!(hints.get(&[1, 2, 3]), vec![Some(used), None, None]);
    }

    #[test]
    fn the_newest_holder_learned_wins() {
        let hints = Hints::default();
        let (before, after) = (ProfileId::new(), ProfileId::new());
        hints.learn([(7, before)]);
        hints.learn([(7, after)]);
        assert_eq!(hints.get(&[7]), vec![Some(after)]);
    }
}
