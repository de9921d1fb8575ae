//! What the services' APIs over a log share.

use corvus_proto::WorkspaceId;

use crate::outbox::Handoff;
use crate::store::EventLog;

/// The consumer a request names (`None` when it names none), or INVALID_ARGUMENT when
/// no consumer of that name has a cursor on the log (or on the stream it is handed off
/// through).
pub async fn known_consumer<'a>(
    log: &dyn EventLog,
    handoff: &Handoff,
    workspace: &WorkspaceId,
    name: &'a str,
) -> Result<Option<&'a str>, tonic::Status> {
    if name.is_empty() {
        return Ok(None);
    }
    let consumers = handoff
        .consumers(log, workspace)
        .await
        .map_err(corvus_platform::error::storage_status)?;
    if consumers.iter().any(|c| c.name == name) {
        Ok(Some(name))
    } else {
        let known: Vec<&str> = consumers.iter().map(|c| c.name.as_str()).collect();
        Err(corvus_platform::error::invalid_argument(
            "consumer",
            format!("no consumer {name:?} on this log (known: {})", known.join(", ")),
        ))
    }
}
