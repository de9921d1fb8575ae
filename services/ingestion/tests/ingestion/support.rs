use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use corvus_ingestion::outbox::{EventSink, Failure};
use corvus_ingestion::storage::{self, EventLog, NewEvent};
use corvus_proto::common::v1::{Event, EventType, StoredEvent};
use corvus_proto::{EventId, WorkspaceId};
use corvus_test_support::{Backend, TempDir};
use prost::Message;

/// A fresh event log on `backend`, or `None` when its server is not configured.
pub async fn event_log(backend: Backend, dir: &TempDir) -> Option<Arc<dyn EventLog>> {
    let config = corvus_test_support::storage(backend, dir).await?;
    Some(storage::connect(&config).await.expect("connect the event log"))
}

pub fn workspace(name: &str) -> WorkspaceId {
    name.parse().unwrap()
}

pub fn new_event(message_id: &str) -> NewEvent {
    let event = Event {
        message_id: message_id.to_owned(),
        r#type: EventType::Track as i32,
        anonymous_id: "anon-1".into(),
        event: "Product Viewed".into(),
        ..Event::default()
    };
    NewEvent {
        event_id: EventId::new(),
        message_id: message_id.to_owned(),
        event_type: EventType::Track as i16,
        received_at: Utc::now(),
        payload: event.encode_to_vec(),
        traceparent: None,
    }
}

pub fn message_id(event: &StoredEvent) -> &str {
    &event.event.as_ref().expect("event").message_id
}

/// A consumer that records what it is handed and can be told to fail.
#[derive(Default)]
pub struct RecordingSink {
    pub received: Mutex<Vec<String>>,
    /// Message ids this consumer refuses.
    pub refuse: Mutex<HashSet<String>>,
    /// While set, every delivery fails as if the consumer were unreachable.
    pub down: Mutex<bool>,
    pub delay: Option<Duration>,
    pub calls: Mutex<u32>,
}

impl RecordingSink {
    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

#[async_trait]
impl EventSink for RecordingSink {
    async fn deliver(&self, events: &[StoredEvent]) -> Result<Vec<Failure>, String> {
        *self.calls.lock().unwrap() += 1;
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        if *self.down.lock().unwrap() {
            return Err("connection refused".into());
        }
        let refuse = self.refuse.lock().unwrap().clone();
        let mut failures = Vec::new();
        let mut received = self.received.lock().unwrap();
        for e in events {
            if refuse.contains(message_id(e)) {
                failures.push(Failure {
                    event_id: e.event_id.clone(),
                    reason: "profile store rejected the event".into(),
                });
            } else {
                received.push(message_id(e).to_owned());
            }
        }
        Ok(failures)
    }
}

pub use corvus_test_support::eventually;
