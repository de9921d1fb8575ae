//! The profile read model: what the store holds, as `corvus.identity.v1.Profile`, kept in
//! the cache under per-workspace keys.
//!
//! An entry is one tag byte and a body: `1` and the encoded profile, `2` and the id it was
//! merged into, `3` for an erased profile, `0` for a stale mark. Every entry is stored
//! with a cache version of `2 × profile version`, plus one for a full entry, and the cache
//! only moves forward ([`Cache::set_versioned`]). After each write the writer stores a
//! stale mark at `2v`; a reader that built its entry from an older version `u < v` can no
//! longer overwrite it (`2u + 1 < 2v`), and the next read rebuilds from the store. So an
//! entry is never served once the store has moved past it, whatever the interleaving.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use corvus_proto::WorkspaceId;
use corvus_proto::identity::v1 as pb;
use corvus_storage::{Cache, StorageError, Versioned};
use prost::Message;
use prost_types::Timestamp;

use crate::domain::resolution::{Identifier, IdentityRules, ProfileId, Rule};
use crate::storage::{Lookup, MergeRecord, ProfileData};

/// Bumped when the layout of entries changes, so that old entries are never read.
const LAYOUT: &str = "v1";

const STALE: u8 = 0;
const LIVE: u8 = 1;
const MERGED: u8 = 2;
const ERASED: u8 = 3;

pub fn profile_key(ws: &WorkspaceId, profile: ProfileId) -> String {
    format!("identity:{LAYOUT}:{ws}:p:{profile}")
}

/// Named by the identifier's digest, not the identifier: no key shows a person's email,
/// and what an erasure leaves behind names no one.
pub fn identifier_key(ws: &WorkspaceId, identifier: &Identifier) -> String {
    let digest: String = crate::storage::digest(identifier)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("identity:{LAYOUT}:{ws}:i:{digest}")
}

/// A read model entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// The encoded `corvus.identity.v1.Profile`, kept encoded: GetProfile sends it as it
    /// is, and whoever needs its fields decodes it.
    Live(Bytes),
    Merged(ProfileId),
    Erased,
}

impl Entry {
    pub fn from_lookup(lookup: Lookup, rules: &IdentityRules) -> Option<(Entry, i64)> {
        match lookup {
            Lookup::Live(data) => {
                let version = data.version;
                Some((Entry::Live(profile(*data, rules).encode_to_vec().into()), version))
            }
            Lookup::Merged { into, version } => Some((Entry::Merged(into), version)),
            Lookup::Erased { version } => Some((Entry::Erased, version)),
            Lookup::Missing => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Entry::Live(profile) => [&[LIVE], profile.as_ref()].concat(),
            Entry::Merged(into) => {
                let mut out = vec![MERGED];
                out.extend_from_slice(into.as_uuid().as_bytes());
                out
            }
            Entry::Erased => vec![ERASED],
        }
    }

    /// The entry, or none for a stale mark. A live entry's body is taken as written (only
    /// this module writes entries, under keys that name their layout), without a copy.
    fn decode(bytes: Vec<u8>) -> Option<Entry> {
        let (tag, body) = bytes.split_first()?;
        match *tag {
            LIVE => Some(Entry::Live(Bytes::from(bytes).slice(1..))),
            MERGED => Some(Entry::Merged(uuid::Uuid::from_slice(body).ok()?.into())),
            ERASED => Some(Entry::Erased),
            _ => None,
        }
    }
}

/// The cache side of the read model.
#[derive(Debug, Clone)]
pub struct ReadModel {
    pub cache: std::sync::Arc<dyn Cache>,
    pub ttl: Duration,
}

impl ReadModel {
    /// The entry for a profile, if the cache holds a current one.
    pub async fn get(&self, ws: &WorkspaceId, profile: ProfileId) -> Result<Option<Entry>, StorageError> {
        Ok(self
            .cache
            .get_versioned(&profile_key(ws, profile))
            .await?
            .and_then(|(_, bytes)| Entry::decode(bytes)))
    }

    /// Stores an entry built from the store at `version`, unless a newer one is there.
    pub async fn put(
        &self,
        ws: &WorkspaceId,
        profile: ProfileId,
        entry: &Entry,
        version: i64,
    ) -> Result<(), StorageError> {
        let key = profile_key(ws, profile);
        let value = entry.encode();
        let entry = Versioned {
            key: &key,
            version: cache_version(version) + 1,
            value: &value,
        };
        self.cache.set_versioned(&[entry], self.ttl).await
    }

    /// Marks the entries of changed profiles stale, as of their new versions.
    pub async fn invalidate(&self, ws: &WorkspaceId, versions: &[(ProfileId, i64)]) -> Result<(), StorageError> {
        let keys: Vec<String> = versions.iter().map(|(p, _)| profile_key(ws, *p)).collect();
        let entries: Vec<Versioned<'_>> = keys
            .iter()
            .zip(versions)
            .map(|(key, (_, version))| Versioned {
                key,
                version: cache_version(*version),
                value: &[STALE],
            })
            .collect();
        self.cache.set_versioned(&entries, self.ttl).await
    }

    pub async fn holder(&self, ws: &WorkspaceId, identifier: &Identifier) -> Result<Option<ProfileId>, StorageError> {
        let bytes = self.cache.get(&identifier_key(ws, identifier)).await?;
        Ok(bytes.and_then(|b| uuid::Uuid::from_slice(&b).ok()).map(ProfileId::from))
    }

    /// Forgets who held these identifiers (an erasure).
    pub async fn forget_holders(&self, ws: &WorkspaceId, identifiers: &[Identifier]) -> Result<(), StorageError> {
        for identifier in identifiers {
            self.cache.delete(&identifier_key(ws, identifier)).await?;
        }
        Ok(())
    }

    /// Remembers who holds an identifier. A hint only: a reader checks that the profile
    /// still holds it, so an entry left behind by an unmerge or erasure is harmless.
    pub async fn put_holder(
        &self,
        ws: &WorkspaceId,
        identifier: &Identifier,
        profile: ProfileId,
    ) -> Result<(), StorageError> {
        self.cache
            .set(&identifier_key(ws, identifier), profile.as_uuid().as_bytes(), self.ttl)
            .await
    }
}

fn cache_version(version: i64) -> u64 {
    u64::try_from(version).unwrap_or(0) * 2
}

pub fn timestamp(t: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

pub fn identifier_message(identifier: &Identifier, first_seen: Option<DateTime<Utc>>) -> pb::ProfileIdentifier {
    pb::ProfileIdentifier {
        kind: identifier.kind.as_str().to_owned(),
        value: identifier.value.clone(),
        first_seen: first_seen.and_then(timestamp),
    }
}

pub fn rule_message(rule: Rule) -> pb::MatchRule {
    match rule {
        Rule::Deterministic => pb::MatchRule::Deterministic,
        Rule::Probabilistic => pb::MatchRule::Probabilistic,
        Rule::Review => pb::MatchRule::Review,
    }
}

pub fn merge_message(m: &MergeRecord) -> pb::Merge {
    pb::Merge {
        merge_id: m.id.to_string(),
        survivor_profile_id: m.survivor.to_string(),
        merged_profile_id: m.merged.to_string(),
        event_id: m.event.map(|e| e.to_string()).unwrap_or_default(),
        rule: rule_message(m.rule) as i32,
        confidence: m.confidence,
        survivor_via: Some(identifier_message(&m.survivor_via, None)),
        merged_via: Some(identifier_message(&m.merged_via, None)),
        merged_at: timestamp(m.at),
        unmerged_at: m.undone_at.and_then(timestamp),
    }
}

/// The 360° profile from what the store holds.
pub fn profile(data: ProfileData, rules: &IdentityRules) -> pb::Profile {
    let mut identifiers = data.identifiers;
    identifiers.sort_by(|a, b| rules.order(&a.0).cmp(&rules.order(&b.0)));
    pb::Profile {
        profile_id: data.profile.to_string(),
        merged_profile_ids: data.absorbed.iter().map(ToString::to_string).collect(),
        identifiers: identifiers
            .iter()
            .map(|(identifier, first_seen)| identifier_message(identifier, Some(*first_seen)))
            .collect(),
        traits: data
            .traits
            .iter()
            .map(|t| pb::Trait {
                name: t.name.clone(),
                value: Some(corvus_proto::json::json_to_value(&t.value)),
                set_at: timestamp(t.set_at),
                event_id: t.event.to_string(),
            })
            .collect(),
        consents: data
            .consents
            .iter()
            .map(|c| pb::Consent {
                purpose: c.change.purpose.clone(),
                channel: i32::from(c.change.channel),
                granted: c.change.granted,
                set_at: timestamp(c.set_at),
                event_id: c.event.to_string(),
            })
            .collect(),
        first_seen: (data.event_count > 0).then(|| timestamp(data.first_seen)).flatten(),
        last_seen: (data.event_count > 0).then(|| timestamp(data.last_seen)).flatten(),
        event_count: u64::try_from(data.event_count).unwrap_or(0),
        event_counts: data
            .counts
            .iter()
            .map(|(channel, event_type, n)| pb::EventCount {
                channel: i32::from(*channel),
                r#type: i32::from(*event_type),
                count: u64::try_from(*n).unwrap_or(0),
            })
            .collect(),
        recent_events: data
            .recent
            .iter()
            .map(|e| pb::RecentEvent {
                event_id: e.event.to_string(),
                r#type: i32::from(e.event_type),
                channel: i32::from(e.channel),
                name: e.name.clone(),
                timestamp: timestamp(e.at),
            })
            .collect(),
        merges: data.merges.iter().map(merge_message).collect(),
        scores: Vec::new(),
        segments: Vec::new(),
        version: u64::try_from(data.version).unwrap_or(0),
        created_at: timestamp(data.created_at),
        updated_at: timestamp(data.updated_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let profile = pb::Profile {
            profile_id: "p".into(),
            version: 7,
            ..Default::default()
        };
        let live = Entry::Live(profile.encode_to_vec().into());
        let merged = Entry::Merged(ProfileId::new());
        for entry in [live, merged, Entry::Erased] {
            assert_eq!(Entry::decode(entry.encode()), Some(entry));
        }
        assert_eq!(Entry::decode(vec![STALE]), None, "a stale mark is a miss");
        assert_eq!(Entry::decode(Vec::new()), None);
    }
}
