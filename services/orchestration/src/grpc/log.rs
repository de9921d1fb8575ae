//! The decision log's consumers over gRPC: their lag, dead letters and replays.

use corvus_log::api::known_consumer;
use corvus_log::outbox::{Entry, Handoff};
use corvus_platform::Role;
use corvus_platform::error::storage_status;
use corvus_platform::paging::{next_page, page};
use corvus_platform::server::authorise;
use corvus_proto::orchestration::v1 as pb;
use tonic::{Request, Response, Status};

use super::timestamp;
use crate::service::Orchestration;

pub async fn list_consumers(
    o: &Orchestration,
    request: Request<pb::ListConsumersRequest>,
) -> Result<Response<pb::ListConsumersResponse>, Status> {
    let principal = authorise(&request, Role::Read, "read consumer status")?;
    let consumers = o
        .store
        .log()
        .consumers(&principal.workspace)
        .await
        .map_err(storage_status)?;
    Ok(Response::new(pb::ListConsumersResponse {
        consumers: consumers
            .into_iter()
            .map(|c| pb::ConsumerStatus {
                name: c.name,
                lag: c.lag,
                dead_letters: c.dead_letters,
                last_delivery_at: c.last_delivery_at.map(timestamp),
                last_error: c.last_error.unwrap_or_default(),
            })
            .collect(),
    }))
}

pub async fn list_dead_letters(
    o: &Orchestration,
    request: Request<pb::ListDeadLettersRequest>,
) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
    let principal = authorise(&request, Role::Read, "read dead letters")?;
    let req = request.get_ref();
    let (size, after) = page::<i64>(req.page.as_ref())?;
    let log = o.store.log();
    let consumer = known_consumer(&*log, &Handoff::Log, &principal.workspace, &req.consumer).await?;
    let dead = log
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
                entry: Some(pb::DecisionLogEntry::from_logged(&d.event)?),
                reason: d.reason,
                attempts: d.attempts,
                failed_at: Some(timestamp(d.failed_at)),
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| Status::internal(format!("in orchestration's log: {e}")))?;
    Ok(Response::new(pb::ListDeadLettersResponse {
        page: next_page(dead_letters.len(), size, last),
        dead_letters,
    }))
}

pub async fn replay_dead_letters(
    o: &Orchestration,
    request: Request<pb::ReplayDeadLettersRequest>,
) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
    let principal = authorise(&request, Role::Admin, "replay dead letters")?;
    let req = request.get_ref();
    let log = o.store.log();
    let consumer = known_consumer(&*log, &Handoff::Log, &principal.workspace, &req.consumer).await?;
    let replayed = log
        .request_replay(&principal.workspace, &req.ids, consumer)
        .await
        .map_err(storage_status)?;
    Ok(Response::new(pb::ReplayDeadLettersResponse {
        replayed: replayed as u32,
    }))
}
