//! Load generators: closed-loop gRPC and HTTP (C tasks, each sending its next batch as
//! soon as the last is acked) and open-loop gRPC (batches on a fixed schedule, whatever
//! the acks do).
//!
//! Request bodies are encoded before the clock starts and sent as raw bytes, so the
//! client, which shares the two cores with the server, spends as little CPU as a
//! client can. Every ack is checked: one event not ACCEPTED aborts the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use bytes::{BufMut as _, Bytes};
use corvus_proto::ingestion::v1::{EventStatusCode, IngestResponse};
use http::uri::PathAndQuery;
use prost::Message as _;
use tokio::task::JoinSet;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::corpus::Batch;

const INGEST_PATH: &str = "/corvus.ingestion.v1.IngestionService/Ingest";

/// What to send: request `j` carries `batches[j % batches.len()]` under key
/// `keys[j / batches.len()]`, so a corpus can be sent more than once, each time to a
/// fresh workspace, without a message id ever repeating within one workspace.
pub struct Work {
    pub batches: Arc<Vec<Batch>>,
    pub keys: Vec<String>,
    pub requests: usize,
}

impl Work {
    fn request(&self, j: usize) -> (&Batch, &str) {
        let n = self.batches.len();
        (&self.batches[j % n], &self.keys[j / n])
    }

    /// How many keys `requests` requests over `batches` batches need.
    pub fn keys_needed(requests: usize, batches: usize) -> usize {
        requests.div_ceil(batches).max(1)
    }
}

/// The outcome of one load run.
#[derive(Debug, Default)]
pub struct Measured {
    pub events: u64,
    pub elapsed: Duration,
    /// Ack latency of every batch.
    pub latencies: Vec<Duration>,
}

impl Measured {
    /// Adds what one task or request did: its events and latencies.
    fn add(&mut self, (events, latencies): (u64, Vec<Duration>)) {
        self.events += events;
        self.latencies.extend(latencies);
    }
}

/// Sends pre-encoded `IngestRequest` bytes and decodes the `IngestResponse`.
#[derive(Clone, Copy)]
struct RawCodec;

struct RawEncoder;
struct ResponseDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = IngestResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = IngestResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<IngestResponse>, Status> {
        let res =
            IngestResponse::decode(src).map_err(|e| Status::internal(format!("undecodable IngestResponse: {e}")))?;
        Ok(Some(res))
    }
}

/// One HTTP/2 connection of its own.
pub async fn channel(grpc_url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(grpc_url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect to {grpc_url}"))
}

/// A client of one HTTP/2 connection of its own.
pub async fn connect(grpc_url: &str) -> anyhow::Result<tonic::client::Grpc<Channel>> {
    Ok(tonic::client::Grpc::new(channel(grpc_url).await?))
}

pub fn bearer(key: &str) -> anyhow::Result<AsciiMetadataValue> {
    Ok(MetadataValue::try_from(format!("Bearer {key}"))?)
}

/// Sends one batch and checks that every event came back ACCEPTED.
pub async fn ingest(client: &mut tonic::client::Grpc<Channel>, batch: &Batch, key: &str) -> anyhow::Result<()> {
    client.ready().await.context("gRPC channel not ready")?;
    let mut request = tonic::Request::new(batch.body.clone());
    request.metadata_mut().insert("authorization", bearer(key)?);
    let response = client
        .unary(request, PathAndQuery::from_static(INGEST_PATH), RawCodec)
        .await
        .context("Ingest RPC failed")?
        .into_inner();
    let accepted = response
        .statuses
        .iter()
        .filter(|s| s.code == EventStatusCode::Accepted as i32)
        .count();
    if accepted != batch.events as usize || response.accepted != batch.events {
        let other = response
            .statuses
            .iter()
            .find(|s| s.code != EventStatusCode::Accepted as i32);
        bail!(
            "batch of {} events: {accepted} ACCEPTED, {} duplicates, {} rejected; first other: {other:?}",
            batch.events,
            response.duplicates,
            response.rejected
        );
    }
    Ok(())
}

/// Closed loop: `tasks` tasks, each on its own connection, send until `work` is done.
pub async fn grpc_closed(grpc_url: &str, work: Arc<Work>, tasks: usize) -> anyhow::Result<Measured> {
    let mut senders = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let (client, work) = (connect(grpc_url).await?, work.clone());
        senders.push(move |j: usize| {
            let (mut client, work) = (client.clone(), work.clone());
            async move {
                let (batch, key) = work.request(j);
                ingest(&mut client, batch, key).await?;
                Ok(batch.events)
            }
        });
    }
    closed_loop(&work, senders).await
}

/// Runs one task per sender; each takes the next request number until `work` is done
/// and times its acknowledgement. A sender answers with the events the request carried.
async fn closed_loop<F, Fut>(work: &Arc<Work>, senders: Vec<F>) -> anyhow::Result<Measured>
where
    F: FnMut(usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u32>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for mut send in senders {
        let (requests, next) = (work.requests, next.clone());
        set.spawn(async move {
            let mut latencies = Vec::new();
            let mut events = 0u64;
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= requests {
                    break;
                }
                let sent = Instant::now();
                events += u64::from(send(j).await?);
                latencies.push(sent.elapsed());
            }
            anyhow::Ok((events, latencies))
        });
    }
    collect(set, started).await
}

/// Open loop: `batches_per_s` batches a second on a fixed schedule over `connections`
/// multiplexed connections. Latency is counted from when a batch was due, not from when
/// it went out, so a client that falls behind shows up in the figures instead of hiding
/// the wait (coordinated omission).
pub async fn grpc_open(
    grpc_url: &str,
    work: Arc<Work>,
    connections: usize,
    batches_per_s: f64,
) -> anyhow::Result<Measured> {
    ensure!(batches_per_s > 0.0, "open-loop rate must be positive");
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(grpc_url).await?);
    }
    let started = Instant::now();
    let mut set = JoinSet::new();
    let mut measured = Measured::default();
    for j in 0..work.requests {
        let due = started + Duration::from_secs_f64(j as f64 / batches_per_s);
        tokio::time::sleep_until(due.into()).await;
        let mut client = clients[j % connections].clone();
        let work = work.clone();
        set.spawn(async move {
            let (batch, key) = work.request(j);
            ingest(&mut client, batch, key).await?;
            anyhow::Ok((u64::from(batch.events), vec![due.elapsed()]))
        });
        // Reap finished requests as we go, so that an error aborts the run early.
        while let Some(done) = set.try_join_next() {
            measured.add(done??);
        }
    }
    let rest = collect(set, started).await?;
    measured.events += rest.events;
    measured.latencies.extend(rest.latencies);
    measured.elapsed = rest.elapsed;
    Ok(measured)
}

async fn collect(mut set: JoinSet<anyhow::Result<(u64, Vec<Duration>)>>, started: Instant) -> anyhow::Result<Measured> {
    let mut measured = Measured::default();
    while let Some(done) = set.join_next().await {
        measured.add(done??);
    }
    measured.elapsed = started.elapsed();
    Ok(measured)
}

/// Closed loop over the Segment API: `tasks` tasks POST `/v1/batch` bodies with the key
/// as the Basic-auth user name.
pub async fn http_closed(http_url: &str, work: Arc<Work>, tasks: usize) -> anyhow::Result<Measured> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(tasks)
        .build()?;
    let url = format!("{http_url}/v1/batch");
    let auth: Vec<String> = work
        .keys
        .iter()
        .map(|k| {
            let user = base64::engine::general_purpose::STANDARD.encode(format!("{k}:"));
            format!("Basic {user}")
        })
        .collect();
    let auth = Arc::new(auth);
    let senders = (0..tasks)
        .map(|_| {
            let (work, client, url, auth) = (work.clone(), client.clone(), url.clone(), auth.clone());
            move |j: usize| {
                let (work, client, url, auth) = (work.clone(), client.clone(), url.clone(), auth.clone());
                async move {
                    let batch = work.request(j).0;
                    let res = client
                        .post(&url)
                        .header(http::header::AUTHORIZATION, &auth[j / work.batches.len()])
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(batch.body.clone())
                        .send()
                        .await
                        .context("POST /v1/batch")?;
                    let status = res.status();
                    let body: serde_json::Value = res.json().await.context("/v1/batch response")?;
                    let accepted = body.get("accepted").and_then(serde_json::Value::as_u64);
                    if status != http::StatusCode::OK || accepted != Some(u64::from(batch.events)) {
                        bail!(
                            "/v1/batch of {} events: HTTP {status}, body {:.400}",
                            batch.events,
                            body.to_string()
                        );
                    }
                    Ok(batch.events)
                }
            }
        })
        .collect();
    closed_loop(&work, senders).await
}
