//! `corvus send`: events from a JSON-lines file (Segment format, one message a line)
//! to a Corvus server over `IngestStream`. The file is read as it is sent, so its size
//! is bounded by the disk, not by memory; the server's acks pace the reading.

use std::io::BufRead;
use std::sync::{Arc, Mutex};

use corvus_ingestion::domain::segment;
use corvus_ingestion::domain::validate::to_timestamp;
use corvus_proto::common::v1::Event;
use corvus_proto::ingestion::v1::ingestion_service_client::IngestionServiceClient;
use corvus_proto::ingestion::v1::{EventStatusCode, IngestRequest, IngestStreamRequest};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Puts `authorization: Bearer <key>` on every call.
#[derive(Clone)]
pub struct BearerAuth(MetadataValue<Ascii>);

impl BearerAuth {
    pub fn new(key: &str) -> anyhow::Result<Self> {
        let bearer = format!("Bearer {key}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the API key is not a valid header value"))?;
        Ok(Self(bearer))
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A channel to a Corvus server whose calls carry `key`; wrap it in any service's client.
pub async fn connect(endpoint: &str, key: &str) -> anyhow::Result<InterceptedService<Channel, BearerAuth>> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Corvus at {endpoint}: {e}"))?;
    Ok(InterceptedService::new(channel, BearerAuth::new(key)?))
}

/// What a send did, event by event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendSummary {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Lines that were not a valid event, or that the server rejected: line and reason.
    pub problems: Vec<String>,
}

const MAX_PROBLEMS_KEPT: usize = 100;

/// Parses one line into an event, or says why it is not one.
fn parse_line(line: &str) -> Result<Event, String> {
    let value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    segment::from_json(value, None).map_err(|v| format!("{}: {}", segment::json_field(&v.field), v.reason))
}

/// Sends every line of `reader` in batches of `batch_size`; `total_bytes` sizes the
/// progress bar (none for a stream of unknown length).
pub async fn send(
    endpoint: &str,
    key: &str,
    reader: Box<dyn BufRead + Send>,
    total_bytes: Option<u64>,
    batch_size: usize,
    progress: bool,
) -> anyhow::Result<SendSummary> {
    let mut client = IngestionServiceClient::new(connect(endpoint, key).await?);
    let bar = match (progress, total_bytes) {
        (false, _) => ProgressBar::hidden(),
        (true, Some(total)) => ProgressBar::new(total).with_style(ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )?),
        (true, None) => ProgressBar::new_spinner().with_style(ProgressStyle::with_template(
            "{spinner} {bytes} {binary_bytes_per_sec} {msg}",
        )?),
    };

    // The reader runs on a blocking thread and hands batches over a small channel, so
    // at most a few batches are in memory at once.
    let lines_of_batch: Arc<Mutex<Vec<Vec<usize>>>> = Arc::default();
    let unparsed: Arc<Mutex<(u64, Vec<String>)>> = Arc::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<IngestStreamRequest>(4);
    let reader_task = tokio::task::spawn_blocking({
        let (lines_of_batch, unparsed, bar) = (lines_of_batch.clone(), unparsed.clone(), bar.clone());
        move || -> anyhow::Result<()> {
            let mut events = Vec::with_capacity(batch_size);
            let mut lines = Vec::with_capacity(batch_size);
            let flush = |events: &mut Vec<Event>, lines: &mut Vec<usize>| -> bool {
                let mut batches = lines_of_batch.lock().expect("batch lines lock");
                let request = IngestStreamRequest {
                    batch_id: batches.len() as u64,
                    batch: Some(IngestRequest {
                        events: std::mem::take(events),
                        sent_at: Some(to_timestamp(chrono::Utc::now())),
                    }),
                };
                batches.push(std::mem::take(lines));
                drop(batches);
                tx.blocking_send(request).is_ok()
            };
            for (n, line) in reader.lines().enumerate() {
                let line = line?;
                bar.inc(line.len() as u64 + 1);
                if line.trim().is_empty() {
                    continue;
                }
                match parse_line(&line) {
                    Ok(event) => {
                        events.push(event);
                        lines.push(n + 1);
                    }
                    Err(reason) => {
                        let mut unparsed = unparsed.lock().expect("problems lock");
                        unparsed.0 += 1;
                        if unparsed.1.len() < MAX_PROBLEMS_KEPT {
                            unparsed.1.push(format!("line {}: {reason}", n + 1));
                        }
                    }
                }
                if events.len() == batch_size.max(1) && !flush(&mut events, &mut lines) {
                    return Ok(());
                }
            }
            if !events.is_empty() {
                flush(&mut events, &mut lines);
            }
            Ok(())
        }
    });

    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut acks = client.ingest_stream(stream).await?.into_inner();
    let mut summary = SendSummary::default();
    while let Some(ack) = acks.message().await? {
        let result = ack.result.unwrap_or_default();
        summary.accepted += u64::from(result.accepted);
        summary.duplicates += u64::from(result.duplicates);
        summary.rejected += u64::from(result.rejected);
        let rejected = result
            .statuses
            .iter()
            .filter(|s| s.code == EventStatusCode::Rejected as i32);
        for status in rejected {
            if summary.problems.len() < MAX_PROBLEMS_KEPT {
                let batches = lines_of_batch.lock().expect("batch lines lock");
                let line = batches[ack.batch_id as usize][status.index as usize];
                summary
                    .problems
                    .push(format!("line {line}: {}: {}", status.field, status.reason));
            }
        }
        bar.set_message(format!("{} accepted", summary.accepted));
    }
    reader_task.await??;
    bar.finish_and_clear();
    let (count, problems) = std::mem::take(&mut *unparsed.lock().expect("problems lock"));
    summary.rejected += count;
    summary.problems.splice(0..0, problems);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_says_why() {
        assert!(parse_line(r#"{"type": "track", "messageId": "m", "userId": "u", "event": "E"}"#).is_ok());
        assert!(parse_line("{nope").unwrap_err().contains("key must be a string"));
        assert_eq!(
            parse_line(r#"{"type": "fly"}"#).unwrap_err(),
            "type: unknown event type"
        );
    }
}
