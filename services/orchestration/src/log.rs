//! Orchestration's log: each decision, written in the transaction that made it, so the
//! log holds exactly the decisions committed. The shared log machinery (`corvus_log`)
//! hands them on: to measurement, to services configured under `[orchestration]
//! consumers`, and to the policy's own consumer, which counts each send as a trial of
//! its cell, off Decide's path.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use corvus_log::outbox::{EventSink, Failure};
use corvus_log::store::NewEvent;
use corvus_proto::WorkspaceId;
use corvus_proto::orchestration::v1::DecisionLogEntry;
use prost::Message;
use uuid::Uuid;

use crate::storage::{Decision, OrchestrationStore};

/// The channel the log listens on (Postgres). Nothing NOTIFYs it (see the migration
/// `0005_log.sql`): the replica that decides wakes its own dispatchers, and the poll
/// (`orchestration.log.poll_interval`) finds what other replicas decided.
pub const CHANNEL: &str = "corvus_orchestration_log";

/// The consumer of the log that counts trials for the policy.
pub const POLICY_CONSUMER: &str = "policy";

/// A decision's entry.
pub fn entry(ws: &WorkspaceId, decision: &Decision) -> NewEvent {
    let entry = DecisionLogEntry {
        workspace_id: ws.to_string(),
        decision: Some(crate::grpc::decision_message(decision)),
    };
    NewEvent {
        event_id: decision.id.into(),
        message_id: decision.id.to_string(),
        event_type: 0,
        received_at: chrono::Utc::now(),
        payload: entry.encode_to_vec(),
        traceparent: None,
    }
}

/// The policy's consumer: counts the sends among the decisions handed to it as trials.
pub struct Policy {
    pub store: Arc<dyn OrchestrationStore>,
}

#[async_trait]
impl EventSink<DecisionLogEntry> for Policy {
    async fn deliver(&self, entries: &[DecisionLogEntry]) -> Result<Vec<Failure>, String> {
        let mut by_workspace: HashMap<&str, Vec<Uuid>> = HashMap::new();
        let mut failures = Vec::new();
        for entry in entries {
            let Some(d) = &entry.decision else { continue };
            match d.decision_id.parse() {
                Ok(id) => by_workspace.entry(&entry.workspace_id).or_default().push(id),
                Err(_) => failures.push(Failure {
                    event_id: d.decision_id.clone(),
                    reason: "decision_id: not a UUID".to_owned(),
                }),
            }
        }
        for (ws, ids) in by_workspace {
            let ws: WorkspaceId = ws.parse().map_err(|e| format!("workspace_id: {e}"))?;
            self.store.count_trials(&ws, &ids).await.map_err(|e| e.to_string())?;
        }
        Ok(failures)
    }
}
