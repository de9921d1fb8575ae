//! Ingestion as a consumer of identity's log, when the two run apart: a person erased in
//! identity has their events deleted from the event log here. The erasure reaches this
//! store however long ingestion was away: it waits in identity's log at this consumer's
//! cursor.

use std::sync::Arc;

use corvus_platform::Role;
use corvus_platform::error::{invalid_argument, storage_status};
use corvus_platform::server::principal;
use corvus_proto::WorkspaceId;
use corvus_proto::identity::v1::{ErasureAnswer, log_entry, profile_change};
use corvus_proto::ingestion::v1::event_consumer_service_server::EventConsumerService;
use corvus_proto::ingestion::v1::{DeliverRequest, DeliverResponse, DeliveryFailure};
use tonic::{Request, Response, Status};

use crate::storage::EventLog;

pub struct ErasureConsumer {
    pub log: Arc<dyn EventLog>,
}

#[tonic::async_trait]
impl EventConsumerService for ErasureConsumer {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Result<Response<DeliverResponse>, Status> {
        principal(&request)?.require(Role::Service, "deliver a log's entries")?;
        let request = request.into_inner();
        if !request.events.is_empty() {
            return Err(invalid_argument(
                "events",
                "ingestion consumes identity's log (entries), not an event log",
            ));
        }
        let mut failures = Vec::new();
        let mut erasures = Vec::new();
        for entry in &request.entries {
            let Some(log_entry::Entry::Change(change)) = &entry.entry else {
                continue;
            };
            let Some(profile_change::Change::Erased(erased)) = &change.change else {
                continue;
            };
            match change.workspace_id.parse::<WorkspaceId>() {
                Ok(ws) => {
                    let n = match erased.message_ids.is_empty() {
                        true => 0,
                        false => self.log.erase(&ws, &erased.message_ids).await.map_err(storage_status)?,
                    };
                    tracing::info!(workspace = %ws, change = %change.change_id, events = n, "erased events of a forgotten profile");
                    erasures.push(ErasureAnswer {
                        change_id: change.change_id.clone(),
                        removed: [("events".to_owned(), n)].into(),
                        store: "ingestion".to_owned(),
                    });
                }
                Err(err) => failures.push(DeliveryFailure {
                    event_id: change.change_id.clone(),
                    reason: format!("workspace_id: {err}"),
                }),
            }
        }
        Ok(Response::new(DeliverResponse { failures, erasures }))
    }
}
