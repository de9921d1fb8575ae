//! Identity's log: what goes into it. Each resolved event (with its profile) and each
//! change to profiles becomes an entry, written in the transaction that made it, so
//! the log holds exactly what identity committed and in that order. The shared log
//! machinery (`corvus_log`) hands the entries on to the services after identity.

use chrono::{DateTime, Utc};
use corvus_log::store::NewEvent;
use corvus_proto::common::v1::StoredEvent;
use corvus_proto::identity::v1::{
    LogEntry, ProfileChange, ProfileUnmerged, ProfilesErased, ProfilesMerged, UnmergeSide, log_entry, profile_change,
};
use corvus_proto::{EventId, WorkspaceId};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::domain::batch::{FastMap, IncomingEvent, Onward, Plan};
use crate::domain::resolution::{EvidenceKind, ProfileId};

/// The channel the log's trigger NOTIFYs on a commit (Postgres).
pub const CHANNEL: &str = "corvus_identity_log";

/// A delivered event as the log will hand it on.
pub fn onward(stored: &StoredEvent) -> Onward {
    let received_at = stored
        .event
        .as_ref()
        .and_then(|e| e.received_at.as_ref())
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.try_into().ok()?))
        .unwrap_or_else(Utc::now);
    // The profile id goes on when the event is logged (`event_payload`).
    let encoded = if stored.profile_id.is_empty() {
        stored.encode_to_vec()
    } else {
        StoredEvent {
            profile_id: String::new(),
            ..stored.clone()
        }
        .encode_to_vec()
    };
    Onward {
        stored: encoded,
        received_at,
        traceparent: Some(stored.traceparent.clone()).filter(|t| !t.is_empty()),
    }
}

/// `StoredEvent.profile_id`'s field number.
const PROFILE_ID_FIELD: u32 = 4;
/// `LogEntry.event`'s field number.
const EVENT_FIELD: u32 = 1;

/// The entry of an event resolved to `profile`: `LogEntry { event }`, built from the
/// stored bytes without decoding them. A field appended to an encoded message sets it,
/// so the profile id goes on the end of the event.
fn event_payload(onward: &Onward, profile: ProfileId) -> Vec<u8> {
    let profile = profile.to_string();
    let tail = 1 + encoded_len_varint(profile.len() as u64) + profile.len();
    let inner = onward.stored.len() + tail;
    let mut out = Vec::with_capacity(1 + encoded_len_varint(inner as u64) + inner);
    encode_key(EVENT_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(inner as u64, &mut out);
    out.extend_from_slice(&onward.stored);
    encode_key(PROFILE_ID_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(profile.len() as u64, &mut out);
    out.extend_from_slice(profile.as_bytes());
    out
}

/// The entry of a resolved event.
fn resolved(event: &IncomingEvent, profile: ProfileId) -> NewEvent {
    let id = event.identity.event;
    NewEvent {
        event_id: id,
        message_id: id.to_string(),
        event_type: event.event_type,
        received_at: event.onward.received_at,
        payload: event_payload(&event.onward, profile),
        traceparent: event.onward.traceparent.clone(),
    }
}

/// The entries a batch's plan adds to the log: its merges first, so that a consumer
/// has joined the profiles before it meets an event resolved to the survivor, then its
/// events, in the batch's order.
pub fn of_plan(ws: &WorkspaceId, plan: &Plan<'_>) -> Vec<NewEvent> {
    let mut entries = Vec::with_capacity(plan.merges.len() + plan.events.len());
    if !plan.merges.is_empty() {
        entries.extend(merges_of(ws, plan));
    }
    entries.extend(plan.events.iter().map(|row| resolved(row.event, row.profile)));
    entries
}

/// One `merged` change per survivor of the batch, in the order the survivors first
/// appear. Each pass over the batch is made once, not once per merge: a batch of
/// thousands of events has hundreds of merges.
fn merges_of(ws: &WorkspaceId, plan: &Plan<'_>) -> Vec<NewEvent> {
    let mut order: Vec<ProfileId> = Vec::new();
    let mut merged_into: FastMap<ProfileId, Vec<ProfileId>> = FastMap::default();
    for (merged, into) in &plan.merges {
        merged_into
            .entry(*into)
            .or_insert_with(|| {
                order.push(*into);
                Vec::new()
            })
            .push(*merged);
    }
    // The event that folded each profile in, as evidence recorded it, and its trace.
    let mut cause: FastMap<ProfileId, EventId> = FastMap::default();
    for evidence in &plan.evidence {
        if let (EvidenceKind::Merge { merged, .. }, Some(event)) = (&evidence.kind, evidence.event) {
            cause.entry(*merged).or_insert(event);
        }
    }
    let traces: FastMap<EventId, &str> = plan
        .events
        .iter()
        .filter_map(|r| Some((r.event.identity.event, r.event.onward.traceparent.as_deref()?)))
        .collect();
    order
        .into_iter()
        .map(|survivor| {
            let merged = &merged_into[&survivor];
            let event = cause.get(&merged[0]).copied();
            let traceparent = event.and_then(|e| traces.get(&e)).map(|t| (*t).to_owned());
            merged_entry(ws, survivor, merged, event, traceparent)
        })
        .collect()
}

/// `merged` folded into `survivor`.
pub fn merged_entry(
    ws: &WorkspaceId,
    survivor: ProfileId,
    merged: &[ProfileId],
    event: Option<EventId>,
    traceparent: Option<String>,
) -> NewEvent {
    change(
        ws,
        -1,
        traceparent,
        profile_change::Change::Merged(ProfilesMerged {
            survivor_id: survivor.to_string(),
            merged_ids: merged.iter().map(ToString::to_string).collect(),
            event_id: event.map(|e| e.to_string()).unwrap_or_default(),
        }),
    )
}

/// Merge `merge` undone: each side with every event that belongs to it now.
pub fn unmerged_entry(ws: &WorkspaceId, merge: i64, sides: &[(ProfileId, Vec<EventId>)]) -> NewEvent {
    change(
        ws,
        -2,
        None,
        profile_change::Change::Unmerged(ProfileUnmerged {
            merge_id: merge,
            sides: sides
                .iter()
                .map(|(profile, events)| UnmergeSide {
                    profile_id: profile.to_string(),
                    event_ids: events.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        }),
    )
}

/// `profiles` (a survivor and all merged into it) erased, with the message ids of the
/// person's events.
pub fn erased_entry(ws: &WorkspaceId, profiles: &[ProfileId], message_ids: &[String]) -> NewEvent {
    change(
        ws,
        -3,
        None,
        profile_change::Change::Erased(ProfilesErased {
            profile_ids: profiles.iter().map(ToString::to_string).collect(),
            message_ids: message_ids.to_vec(),
        }),
    )
}

fn change(ws: &WorkspaceId, kind: i16, traceparent: Option<String>, change: profile_change::Change) -> NewEvent {
    let id = EventId::new();
    let at = Utc::now();
    let entry = LogEntry {
        entry: Some(log_entry::Entry::Change(ProfileChange {
            workspace_id: ws.to_string(),
            change_id: id.to_string(),
            at: Some(prost_types::Timestamp {
                seconds: at.timestamp(),
                nanos: at.timestamp_subsec_nanos() as i32,
            }),
            traceparent: traceparent.clone().unwrap_or_default(),
            change: Some(change),
        })),
    };
    NewEvent {
        event_id: id,
        message_id: id.to_string(),
        event_type: kind,
        received_at: at,
        payload: entry.encode_to_vec(),
        traceparent,
    }
}

#[cfg(test)]
mod tests {
    use corvus_proto::common::v1::Event;

    use super::*;

    #[test]
    fn an_event_entry_decodes_as_the_event_with_its_profile() {
        let stored = StoredEvent {
            workspace_id: "acme".into(),
            event_id: EventId::new().to_string(),
            event: Some(Event {
                message_id: "m-1".into(),
                user_id: "u-1".into(),
                ..Default::default()
            }),
            profile_id: String::new(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        };
        let profile = ProfileId::new();
        let payload = event_payload(&onward(&stored), profile);
        let decoded = LogEntry::decode(payload.as_slice()).unwrap();
        let expected = StoredEvent {
            profile_id: profile.to_string(),
            ..stored
        };
        assert_eq!(decoded.entry, Some(log_entry::Entry::Event(expected)));
    }
}
