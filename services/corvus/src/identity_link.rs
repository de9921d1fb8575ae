//! Where identity meets ingestion in one process: erasure reaches into the event log.

use std::sync::Arc;

use async_trait::async_trait;
use corvus_identity::EventEraser;
use corvus_ingestion::storage::EventLog;
use corvus_proto::WorkspaceId;
use corvus_storage::StorageError;

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
