//! gRPC handlers: check the role, convert, call the ingest path or the log, map the
//! error. No SQL here.

mod erasures;

pub use erasures::ErasureConsumer;

use std::pin::Pin;
use std::sync::Arc;

use corvus_platform::error::{invalid_argument, retryable, storage_status};
use corvus_platform::paging::{next_page, page};
use corvus_platform::server::principal;
use corvus_platform::{Principal, Role};
use corvus_proto::common::v1::StoredEvent;
use corvus_proto::ingestion::v1 as pb;
use corvus_proto::ingestion::v1::ingestion_service_server::IngestionService;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::ingest::{IngestError, Ingestor, Outcome};
use crate::outbox::Entry;
use crate::storage::{EventLog, Position};
use corvus_log::api::known_consumer;
use corvus_log::outbox::Handoff;

pub struct IngestionApi {
    pub ingestor: Ingestor,
    pub log: Arc<dyn EventLog>,
}

impl From<IngestError> for Status {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::QuotaExceeded { retry_after, .. } => {
                retryable(tonic::Code::ResourceExhausted, err.to_string(), retry_after)
            }
            IngestError::Storage(e) => storage_status(e),
        }
    }
}

async fn ingest_batch(
    ingestor: &Ingestor,
    principal: &Principal,
    batch: pb::IngestRequest,
) -> Result<pb::IngestResponse, Status> {
    let message_ids: Vec<String> = batch.events.iter().map(|e| e.message_id.clone()).collect();
    let events = batch.events.into_iter().map(Ok).collect();
    let outcomes = ingestor.ingest(principal, events, batch.sent_at.as_ref()).await?;
    Ok(response(&outcomes, &message_ids))
}

/// The per-event statuses of a batch; `message_ids` stands in where an event had none.
pub fn response(outcomes: &[Outcome], message_ids: &[String]) -> pb::IngestResponse {
    let mut res = pb::IngestResponse::default();
    for (i, outcome) in outcomes.iter().enumerate() {
        let mut status = pb::EventStatus {
            index: i as u32,
            message_id: message_ids.get(i).cloned().unwrap_or_default(),
            ..Default::default()
        };
        match outcome {
            Outcome::Accepted(id) => {
                res.accepted += 1;
                status.code = pb::EventStatusCode::Accepted as i32;
                status.event_id = id.to_string();
            }
            Outcome::Duplicate(id) => {
                res.duplicates += 1;
                status.code = pb::EventStatusCode::Duplicate as i32;
                status.event_id = id.to_string();
            }
            Outcome::Rejected(v) => {
                res.rejected += 1;
                status.code = pb::EventStatusCode::Rejected as i32;
                status.field = if v.field.is_empty() {
                    format!("events[{i}]")
                } else {
                    format!("events[{i}].{}", v.field)
                };
                status.reason = v.reason.clone();
            }
        }
        res.statuses.push(status);
    }
    res
}

type IngestStream = Pin<Box<dyn Stream<Item = Result<pb::IngestStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IngestionService for IngestionApi {
    async fn ingest(&self, request: Request<pb::IngestRequest>) -> Result<Response<pb::IngestResponse>, Status> {
        let principal = principal(&request)?.clone();
        principal.require(Role::Ingest, "ingest events").map_err(Status::from)?;
        let batch = request.into_inner();
        if batch.events.is_empty() {
            return Err(invalid_argument("events", "a batch needs at least one event"));
        }
        let response = ingest_batch(&self.ingestor, &principal, batch).await?;
        Ok(Response::new(response))
    }

    type IngestStreamStream = IngestStream;

    async fn ingest_stream(
        &self,
        request: Request<Streaming<pb::IngestStreamRequest>>,
    ) -> Result<Response<Self::IngestStreamStream>, Status> {
        let principal = principal(&request)?.clone();
        principal.require(Role::Ingest, "ingest events").map_err(Status::from)?;
        let ingestor = self.ingestor.clone();
        let mut inbound = request.into_inner();
        // The next batch is read only after the previous ack was handed to the
        // transport, so a fast client is held back by HTTP/2 flow control.
        let output = async_stream::try_stream! {
            while let Some(req) = inbound.message().await? {
                let batch = req.batch.unwrap_or_default();
                let result = ingest_batch(&ingestor, &principal, batch).await?;
                yield pb::IngestStreamResponse { batch_id: req.batch_id, result: Some(result) };
            }
        };
        Ok(Response::new(Box::pin(output)))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let principal = principal(&request)?;
        principal.require(Role::Read, "read events").map_err(Status::from)?;
        let (size, after) = page::<i64>(request.get_ref().page.as_ref())?;
        let after = Position {
            tx: 0,
            seq: after.unwrap_or(0),
        };
        let events = self
            .log
            .list(&principal.workspace, Some(after), size)
            .await
            .map_err(storage_status)?;
        let last = events.last().map(|e| e.position.seq);
        let events = events
            .iter()
            .map(StoredEvent::from_logged)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(format!("in the log: {e}")))?;
        Ok(Response::new(pb::ListEventsResponse {
            page: next_page(events.len(), size, last),
            events,
        }))
    }

    async fn list_consumers(
        &self,
        request: Request<pb::ListConsumersRequest>,
    ) -> Result<Response<pb::ListConsumersResponse>, Status> {
        let principal = principal(&request)?;
        principal
            .require(Role::Read, "read consumer status")
            .map_err(Status::from)?;
        let consumers = self.log.consumers(&principal.workspace).await.map_err(storage_status)?;
        Ok(Response::new(pb::ListConsumersResponse {
            consumers: consumers
                .into_iter()
                .map(|c| pb::ConsumerStatus {
                    name: c.name,
                    lag: c.lag,
                    dead_letters: c.dead_letters,
                    last_delivery_at: c.last_delivery_at.map(crate::domain::validate::to_timestamp),
                    last_error: c.last_error.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let principal = principal(&request)?;
        principal
            .require(Role::Read, "read dead letters")
            .map_err(Status::from)?;
        let req = request.get_ref();
        let (size, after) = page::<i64>(req.page.as_ref())?;
        let consumer = known_consumer(&*self.log, &Handoff::Log, &principal.workspace, &req.consumer).await?;
        let dead = self
            .log
            .list_dead_letters(&principal.workspace, consumer, after.unwrap_or(0), size)
            .await
            .map_err(storage_status)?;
        let last = dead.last().map(|d| d.id);
        let dead_letters = dead
            .into_iter()
            .map(|d| {
                Ok(pb::DeadLetter {
                    id: d.id,
                    consumer: d.consumer,
                    event: Some(StoredEvent::from_logged(&d.event)?),
                    reason: d.reason,
                    attempts: d.attempts,
                    failed_at: Some(crate::domain::validate::to_timestamp(d.failed_at)),
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| Status::internal(format!("in the log: {e}")))?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            page: next_page(dead_letters.len(), size, last),
            dead_letters,
        }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let principal = principal(&request)?;
        principal
            .require(Role::Admin, "replay dead letters")
            .map_err(Status::from)?;
        let req = request.get_ref();
        let consumer = known_consumer(&*self.log, &Handoff::Log, &principal.workspace, &req.consumer).await?;
        let replayed = self
            .log
            .request_replay(&principal.workspace, &req.ids, consumer)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::ReplayDeadLettersResponse {
            replayed: replayed as u32,
        }))
    }
}
