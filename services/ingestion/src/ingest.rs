//! The ingest path shared by gRPC and HTTP: validate each event, drop repeats within
//! the batch, apply the workspace quota, commit to the log, and give every event an
//! exact status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use corvus_platform::Principal;
use corvus_proto::EventId;
use corvus_proto::common::v1::Event;
use corvus_storage::{Cache, StorageError};
use prost::Message;
use prost_types::Timestamp;

use crate::domain::{Limits, Violation, validate};
use crate::storage::{Appended, EventLog, NewEvent};

/// What became of one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted(EventId),
    Duplicate(EventId),
    Rejected(Violation),
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the workspace's ingest quota of {limit} events/s is used up")]
    QuotaExceeded { limit: u32, retry_after: Duration },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug, Clone)]
pub struct Ingestor {
    log: Arc<dyn EventLog>,
    cache: Arc<dyn Cache>,
    limits: Arc<Limits>,
}

impl Ingestor {
    pub fn new(log: Arc<dyn EventLog>, cache: Arc<dyn Cache>, limits: Limits) -> Self {
        Self {
            log,
            cache,
            limits: Arc::new(limits),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Ingests a batch whose events were already parsed (or failed to parse). Fails as
    /// a whole only when the quota is used up or the log cannot commit; then nothing
    /// of the batch is stored.
    pub async fn ingest(
        &self,
        principal: &Principal,
        events: Vec<Result<Event, Violation>>,
        batch_sent_at: Option<&Timestamp>,
    ) -> Result<Vec<Outcome>, IngestError> {
        let received_at = Utc::now();
        let traceparent = corvus_platform::telemetry::current_traceparent();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut first_of: HashMap<String, usize> = HashMap::new();
        // Events to commit, and the batch position of each.
        let mut fresh: Vec<NewEvent> = Vec::with_capacity(events.len());
        let mut positions: Vec<usize> = Vec::with_capacity(events.len());
        let mut repeats: Vec<(usize, usize)> = Vec::new();

        for (i, parsed) in events.into_iter().enumerate() {
            let verdict = parsed.and_then(|mut event| {
                validate(&mut event, &self.limits, received_at, batch_sent_at)?;
                // Encoded once: the size check and the stored payload share the bytes.
                let payload = event.encode_to_vec();
                if payload.len() > self.limits.max_event_bytes {
                    return Err(Violation::new(
                        "",
                        format!(
                            "event is {} bytes, the limit is {}",
                            payload.len(),
                            self.limits.max_event_bytes
                        ),
                    ));
                }
                Ok((event, payload))
            });
            let (event, payload) = match verdict {
                Ok(ok) => ok,
                Err(violation) => {
                    outcomes[i] = Some(Outcome::Rejected(violation));
                    continue;
                }
            };
            if let Some(&first) = first_of.get(&event.message_id) {
                repeats.push((i, first));
                continue;
            }
            first_of.insert(event.message_id.clone(), fresh.len());
            positions.push(i);
            fresh.push(NewEvent {
                event_id: EventId::new(),
                message_id: event.message_id,
                event_type: event.r#type as i16,
                received_at,
                payload,
                traceparent: traceparent.clone(),
            });
        }

        if let Some(limit) = principal.events_per_second {
            self.check_quota(principal, limit, fresh.len() as u64).await?;
        }

        let appended = self.log.append(&principal.workspace, &fresh).await?;
        let mut ids = Vec::with_capacity(fresh.len());
        for ((&i, event), appended) in positions.iter().zip(&fresh).zip(appended) {
            let (outcome, id) = match appended {
                Appended::Inserted => (Outcome::Accepted(event.event_id), event.event_id),
                Appended::Duplicate(id) => (Outcome::Duplicate(id), id),
            };
            outcomes[i] = Some(outcome);
            ids.push(id);
        }
        for (i, first) in repeats {
            outcomes[i] = Some(Outcome::Duplicate(ids[first]));
        }

        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.expect("every event has an outcome"))
            .collect();
        record(&outcomes);
        Ok(outcomes)
    }

    /// A fixed one-second window per workspace, counted in the shared cache so that
    /// the quota holds across replicas.
    async fn check_quota(&self, principal: &Principal, limit: u32, count: u64) -> Result<(), IngestError> {
        if count == 0 {
            return Ok(());
        }
        let now = Utc::now();
        let key = format!("quota:{}:{}", principal.workspace, now.timestamp());
        let used = self.cache.incr(&key, count, Duration::from_secs(2)).await?;
        if used > u64::from(limit) {
            let into_second = u64::from(now.timestamp_subsec_millis());
            metrics::counter!("corvus_ingest_quota_exceeded_total").increment(1);
            return Err(IngestError::QuotaExceeded {
                limit,
                retry_after: Duration::from_millis(1000 - into_second.min(999)),
            });
        }
        Ok(())
    }
}

fn record(outcomes: &[Outcome]) {
    let (mut accepted, mut duplicate, mut rejected) = (0u64, 0u64, 0u64);
    for o in outcomes {
        match o {
            Outcome::Accepted(_) => accepted += 1,
            Outcome::Duplicate(_) => duplicate += 1,
            Outcome::Rejected(_) => rejected += 1,
        }
    }
    metrics::counter!("corvus_events_total", "outcome" => "accepted").increment(accepted);
    metrics::counter!("corvus_events_total", "outcome" => "duplicate").increment(duplicate);
    metrics::counter!("corvus_events_total", "outcome" => "rejected").increment(rejected);
}
