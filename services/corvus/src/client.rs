//! `corvus send`: events from a JSON-lines file (Segment format, one message a line)
//! to a Corvus server over `IngestStream`, with a progress bar.

use std::io::BufRead;

use corvus_ingestion::domain::segment;
use corvus_proto::common::v1::Event;
use corvus_proto::ingestion::v1::ingestion_service_client::IngestionServiceClient;
use corvus_proto::ingestion::v1::{EventStatusCode, IngestRequest, IngestStreamRequest};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::metadata::MetadataValue;

/// What a send did, event by event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendSummary {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// The first rejections: line number and reason.
    pub problems: Vec<String>,
}

/// Events read from JSON lines, each with its line number, and the lines that failed.
#[derive(Debug, Default)]
pub struct ParsedLines {
    pub events: Vec<(usize, Event)>,
    pub problems: Vec<String>,
}

/// Parses JSON lines into events; a line that does not parse is a problem, not an abort.
pub fn read_events(reader: impl BufRead) -> anyhow::Result<ParsedLines> {
    let mut events = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str(&line)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                segment::from_json(v, None)
                    .map_err(|v| format!("{}: {}", segment::json_field(&v.field), v.reason))
            });
        match parsed {
            Ok(event) => events.push((n + 1, event)),
            Err(reason) => problems.push(format!("line {}: {reason}", n + 1)),
        }
    }
    Ok(ParsedLines { events, problems })
}

pub async fn send(
    endpoint: &str,
    key: &str,
    events: Vec<(usize, Event)>,
    batch_size: usize,
    progress: bool,
) -> anyhow::Result<SendSummary> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect()
        .await?;
    let bearer: MetadataValue<_> = format!("Bearer {key}").parse()?;
    let mut client =
        IngestionServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        });
    let bar = if progress {
        let bar = ProgressBar::new(events.len() as u64);
        bar.set_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events {per_sec} eta {eta}",
        )?);
        bar
    } else {
        ProgressBar::hidden()
    };
    let lines: Vec<Vec<usize>> = events
        .chunks(batch_size.max(1))
        .map(|c| c.iter().map(|(n, _)| *n).collect())
        .collect();
    let batches: Vec<IngestStreamRequest> = events
        .chunks(batch_size.max(1))
        .enumerate()
        .map(|(i, chunk)| IngestStreamRequest {
            batch_id: i as u64,
            batch: Some(IngestRequest {
                events: chunk.iter().map(|(_, e)| e.clone()).collect(),
                sent_at: Some(corvus_ingestion::domain::validate::to_timestamp(
                    chrono::Utc::now(),
                )),
            }),
        })
        .collect();
    let mut acks = client
        .ingest_stream(tokio_stream::iter(batches))
        .await?
        .into_inner();
    let mut summary = SendSummary::default();
    while let Some(ack) = acks.message().await? {
        let result = ack.result.unwrap_or_default();
        summary.accepted += u64::from(result.accepted);
        summary.duplicates += u64::from(result.duplicates);
        summary.rejected += u64::from(result.rejected);
        for status in result
            .statuses
            .iter()
            .filter(|s| s.code == EventStatusCode::Rejected as i32)
        {
            if summary.problems.len() < 20 {
                let line = lines[ack.batch_id as usize][status.index as usize];
                summary
                    .problems
                    .push(format!("line {line}: {}: {}", status.field, status.reason));
            }
        }
        bar.inc(result.statuses.len() as u64);
    }
    bar.finish_and_clear();
    Ok(summary)
}
