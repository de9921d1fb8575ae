//! Where identity meets ingestion in one process: identity consumes the event log and
//! hands resolved events (with their profile id) to the consumers that come after it,
//! and erasure reaches into the event log.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use corvus_identity::{EventEraser, Identity};
use corvus_ingestion::outbox::{Consumer, EventSink, Failure};
use corvus_ingestion::storage::EventLog;
use corvus_proto::WorkspaceId;
use corvus_proto::common::v1::StoredEvent;
use corvus_storage::StorageError;

/// Identity as a consumer of the event log, followed by `next`, which receive what it
/// resolved in deliveries of at most `onward_batch` events (identity's own are larger).
pub struct IdentitySink {
    pub identity: Identity,
    pub next: Vec<Consumer>,
    pub onward_batch: usize,
}

#[async_trait]
impl EventSink for IdentitySink {
    async fn deliver(&self, events: &[StoredEvent]) -> Result<Vec<Failure>, String> {
        let started = std::time::Instant::now();
        let resolved = self.identity.resolve(events).await.map_err(|e| e.to_string())?;
        metrics::histogram!("corvus_identity_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("corvus_identity_events_resolved_total").increment(events.len() as u64);
        let mut failures: Vec<Failure> = resolved
            .failures
            .into_iter()
            .map(|(event_id, reason)| Failure { event_id, reason })
            .collect();
        if self.next.is_empty() {
            return Ok(failures);
        }
        let failed: HashSet<String> = failures.iter().map(|f| f.event_id.clone()).collect();
        let onward: Vec<StoredEvent> = events
            .iter()
            .zip(resolved.profiles)
            .filter(|(e, _)| !failed.contains(&e.event_id))
            .map(|(e, profile)| StoredEvent {
                profile_id: profile.map(|p| p.to_string()).unwrap_or_default(),
                ..e.clone()
            })
            .collect();
        for consumer in &self.next {
            let size = consumer.batch_size.map_or(self.onward_batch, |n| n as usize).max(1);
            for chunk in onward.chunks(size) {
                let refused = consumer
                    .sink
                    .deliver(chunk)
                    .await
                    .map_err(|e| format!("{}: {e}", consumer.name))?;
                failures.extend(refused.into_iter().map(|f| Failure {
                    reason: format!("{}: {}", consumer.name, f.reason),
                    ..f
                }));
            }
        }
        Ok(failures)
    }
}

/// The event log, as a store `ForgetProfile` erases events from.
pub struct LogEraser(pub Arc<dyn EventLog>);

#[async_trait]
impl EventEraser for LogEraser {
    fn name(&self) -> &'static str {
        "ingestion"
    }

    async fn erase(&self, workspace: &WorkspaceId, message_ids: &[String]) -> Result<u64, StorageError> {
        if message_ids.is_empty() {
            return Ok(0);
        }
        self.0.erase(workspace, message_ids).await
    }
}
