//! What a log hands on, and the erasures among it.

use async_trait::async_trait;
use corvus_proto::common::v1::{Event, StoredEvent};
use corvus_proto::identity::v1::{ErasureAnswer, LogEntry, log_entry, profile_change};
use corvus_proto::orchestration::v1::DecisionLogEntry;
use prost::Message;

use crate::store::LoggedEvent;

/// What a log hands on: ingestion's log hands `StoredEvent`s, identity's `LogEntry`s,
/// orchestration's `DecisionLogEntry`s.
pub trait Entry: Send + Sync + Sized + 'static {
    /// The entry as the consumer receives it.
    fn from_logged(logged: &LoggedEvent) -> Result<Self, String>;
    /// The id a consumer names it by in a `Failure`.
    fn id(&self) -> &str;
    /// When the entry entered the platform, for the lag gauge.
    fn received_at(&self) -> Option<&prost_types::Timestamp>;
    /// The person the entry is about (a profile id), by which a stream partitions
    /// entries; empty when it is about nobody in particular.
    fn key(&self) -> &str {
        ""
    }
    /// The erasure the entry is, if it is one: for its receipt.
    fn erasure(&self) -> Option<Erasure<'_>> {
        None
    }
}

/// An erasure handed to a consumer: its workspace, the erased profile (the survivor of
/// those erased together) and the change's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Erasure<'a> {
    pub workspace: &'a str,
    pub profile: &'a str,
    pub change_id: &'a str,
}

/// Where the outbox notes which consumer has received which erasure, and what it
/// answered it deleted: identity's receipts.
#[async_trait]
pub trait ErasureLedger: Send + Sync {
    async fn received(&self, consumer: &str, erasures: &[(Erasure<'_>, Option<&ErasureAnswer>)]) -> Result<(), String>;
}

impl Entry for StoredEvent {
    /// The log row holds the event alone; the rest of the message is in its columns.
    fn from_logged(e: &LoggedEvent) -> Result<Self, String> {
        Ok(StoredEvent {
            workspace_id: e.workspace.to_string(),
            event_id: e.event_id.to_string(),
            event: Some(Event::decode(e.payload.as_slice()).map_err(|e| format!("undecodable event: {e}"))?),
            profile_id: String::new(),
            traceparent: e.traceparent.clone().unwrap_or_default(),
        })
    }

    fn id(&self) -> &str {
        &self.event_id
    }

    fn received_at(&self) -> Option<&prost_types::Timestamp> {
        self.event.as_ref()?.received_at.as_ref()
    }

    fn key(&self) -> &str {
        &self.profile_id
    }
}

impl Entry for LogEntry {
    /// The log row holds the whole entry.
    fn from_logged(e: &LoggedEvent) -> Result<Self, String> {
        match LogEntry::decode(e.payload.as_slice()) {
            Ok(entry) if entry.entry.is_some() => Ok(entry),
            Ok(_) => Err("a log entry with neither an event nor a change".to_owned()),
            Err(err) => Err(format!("undecodable log entry: {err}")),
        }
    }

    fn id(&self) -> &str {
        match &self.entry {
            Some(log_entry::Entry::Event(e)) => &e.event_id,
            Some(log_entry::Entry::Change(c)) => &c.change_id,
            None => "",
        }
    }

    fn received_at(&self) -> Option<&prost_types::Timestamp> {
        match &self.entry {
            Some(log_entry::Entry::Event(e)) => e.received_at(),
            Some(log_entry::Entry::Change(c)) => c.at.as_ref(),
            None => None,
        }
    }

    /// An event's profile; the survivor of a merge; the profile an unmerge split; the
    /// first of those erased together.
    fn key(&self) -> &str {
        match &self.entry {
            Some(log_entry::Entry::Event(e)) => &e.profile_id,
            Some(log_entry::Entry::Change(c)) => match &c.change {
                Some(profile_change::Change::Merged(m)) => &m.survivor_id,
                Some(profile_change::Change::Unmerged(u)) => u.sides.first().map_or("", |s| &s.profile_id),
                Some(profile_change::Change::Erased(e)) => e.profile_ids.first().map_or("", String::as_str),
                None => "",
            },
            None => "",
        }
    }

    fn erasure(&self) -> Option<Erasure<'_>> {
        let Some(log_entry::Entry::Change(change)) = &self.entry else {
            return None;
        };
        let Some(profile_change::Change::Erased(erased)) = &change.change else {
            return None;
        };
        Some(Erasure {
            workspace: &change.workspace_id,
            profile: erased.profile_ids.first()?,
            change_id: &change.change_id,
        })
    }
}

impl Entry for DecisionLogEntry {
    /// The log row holds the whole entry.
    fn from_logged(e: &LoggedEvent) -> Result<Self, String> {
        match DecisionLogEntry::decode(e.payload.as_slice()) {
            Ok(entry) if entry.decision.is_some() => Ok(entry),
            Ok(_) => Err("a decision log entry without a decision".to_owned()),
            Err(err) => Err(format!("undecodable decision log entry: {err}")),
        }
    }

    fn id(&self) -> &str {
        self.decision.as_ref().map_or("", |d| &d.decision_id)
    }

    fn received_at(&self) -> Option<&prost_types::Timestamp> {
        self.decision.as_ref()?.decided_at.as_ref()
    }

    fn key(&self) -> &str {
        self.decision.as_ref().map_or("", |d| &d.profile_id)
    }
}
