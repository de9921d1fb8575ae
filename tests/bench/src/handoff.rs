//! The hand-off after identity: its log, a cursor per downstream consumer.
//!
//! (a) The identity mix resolved end to end on a fresh database, once with no consumer
//! of identity's log and once with three (in process, each counting what it receives):
//! from the first send until identity's lag is 0 and, with consumers, until each has
//! received every event. The run with consumers must reach 0.9 of the one without.
//! (b) Freshness downstream: under 5,000 events/s, a probe event every 20 ms, timed from
//! its ack until the first consumer has it; then the same with the third consumer dead
//! (every delivery to it fails and is retried), which must not move the figure.
//! (c) (a) and (b) with the three consumers reading identity's log through a JetStream
//! stream (a relay publishes the log, a durable consumer each), after a run with them
//! reading the log from Postgres, so the two are side by side in one run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use async_trait::async_trait;
use corvus_ingestion::outbox::{Consumer, EventSink, Failure, JetStream, JetStreamConfig};
use corvus_proto::identity::v1::{LogEntry, log_entry};
use tokio::task::JoinSet;

use crate::corpus::Batch;
use crate::identity::{
    EVENTS_PER_PERSON, FRESH_P99, LOAD_BATCH, LOAD_CONNECTIONS, LOAD_LEAD, LOAD_PER_S, PROBE_EVERY, caught_up,
    ingestion_client, probe_batches, progress, resolved,
};
use crate::load::{self, Measured, Work};
use crate::people::Mix;
use crate::report::{CpuSample, Row, Target};
use crate::scenarios::{BATCH, Plan, Results, SEED};
use crate::setup::{Resolution, Running, Scratch, durable_config};

const CONSUMERS: usize = 3;
const INGEST_TASKS: usize = 4;
/// Of the run without consumers.
const SHARE: f64 = 0.9;
/// The load, probes and bound of the identity section's freshness.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// A downstream service in process: counts the events it receives, notes when each
/// probe arrived, and can be dead (every delivery fails, as an unreachable one does).
#[derive(Default)]
struct Downstream {
    events: AtomicU64,
    dead: AtomicBool,
    probes: Mutex<HashMap<String, Instant>>,
}

#[async_trait]
impl EventSink<LogEntry> for Downstream {
    async fn deliver(&self, entries: &[LogEntry]) -> Result<Vec<Failure>, String> {
        if self.dead.load(Ordering::Relaxed) {
            return Err("unavailable: the bench took it down".into());
        }
        let now = Instant::now();
        let mut events = 0;
        for entry in entries {
            if let Some(log_entry::Entry::Event(e)) = &entry.entry {
                events += 1;
                let message_id = e.event.as_ref().map_or("", |e| e.message_id.as_str());
                if message_id.starts_with("probe-") {
                    self.probes.lock().unwrap().insert(message_id.to_owned(), now);
                }
            }
        }
        self.events.fetch_add(events, Ordering::Relaxed);
        Ok(Vec::new())
    }
}

pub async fn run(
    plan: &Plan,
    server_url: &str,
    redis_url: &str,
    nats_url: Option<&str>,
    results: &mut Results,
) -> anyhow::Result<()> {
    // Fresh databases on a small machine differ from run to run by more than the effect
    // measured: two runs of each, alternating, and the mean of each pair compared.
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut freshness = Vec::new();
    for round in 0..2 {
        without.push(resolution_run(plan, server_url, redis_url, 0, false, None).await?.0);
        let (row, rows) = resolution_run(plan, server_url, redis_url, CONSUMERS, round == 1, None).await?;
        with.push(row);
        freshness.extend(rows);
    }
    let mean = |rows: &[Row]| rows.iter().map(|r| r.events_per_s).sum::<f64>() / rows.len() as f64;
    let (without_mean, with_mean) = (mean(&without), mean(&with));
    results.notes.push(format!(
        "hand-off: the mix resolved and handed to {CONSUMERS} consumers of identity's log at {with_mean:.0} \
         events/s (mean of two runs), {:.2} of the {without_mean:.0} with none (target {SHARE}); the runs \
         alternated, none, {CONSUMERS}, none, {CONSUMERS}",
        with_mean / without_mean.max(1e-9),
    ));
    results.rows.extend(without);
    let last = with.len() - 1;
    for (n, row) in with.into_iter().enumerate() {
        // The target is the pair's: on the last row, against the mean of the runs without.
        results.rows.push(if n == last {
            Row {
                events_per_s: with_mean,
                scenario: format!("hand-off: mean of the runs with {CONSUMERS} consumers"),
                ..row
            }
            .with_target(Target::AtLeastPerSec(SHARE * without_mean))
        } else {
            row
        });
    }
    results.rows.extend(freshness);
    if let Some(url) = nats_url {
        // (c) Right after the last run through Postgres.
        let stream = JetStreamConfig {
            url: url.to_owned(),
            stream: format!("BENCH_{}", std::process::id()),
            subject_prefix: format!("corvus.bench.{}", std::process::id()),
            ..JetStreamConfig::default()
        };
        let (row, rows) = resolution_run(plan, server_url, redis_url, CONSUMERS, true, Some(&stream)).await?;
        let freshness_p99 = rows
            .first()
            .and_then(|r| r.p99)
            .map_or(0.0, |p| p.as_secs_f64() * 1000.0);
        results.notes.push(format!(
            "hand-off through JetStream: {:.0} events/s with {CONSUMERS} consumers ({:.2} of the {with_mean:.0} \
             through Postgres in the same run); freshness p99 {freshness_p99:.1} ms",
            row.events_per_s,
            row.events_per_s / with_mean.max(1e-9),
        ));
        results.rows.push(row);
        results.rows.extend(rows);
        JetStream::connect(&stream, Duration::from_secs(3600))
            .await?
            .delete()
            .await
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// (a) One run of the mix on a database of its own: its row, end to end. With
/// consumers, (b) follows on the same app: its rows.
async fn resolution_run(
    plan: &Plan,
    server_url: &str,
    redis_url: &str,
    consumers: usize,
    with_freshness: bool,
    stream: Option<&JetStreamConfig>,
) -> anyhow::Result<(Row, Vec<Row>)> {
    let scratch = Scratch::create(server_url).await?;
    let downstream: Vec<Arc<Downstream>> = (0..consumers).map(|_| Arc::default()).collect();
    let mut config = durable_config(&scratch, redis_url, Resolution::On);
    config.identity.jetstream = stream.cloned();
    let through = if stream.is_some() { " through JetStream" } else { "" };
    let sinks = downstream
        .iter()
        .enumerate()
        .map(|(n, sink)| Consumer {
            name: format!("downstream-{n}"),
            sink: sink.clone() as Arc<dyn EventSink<LogEntry>>,
            batch_size: None,
        })
        .collect();
    let app = Running::start_with(config, sinks).await?;
    let outcome = async {
        let keys = app.workspace_keys("handoff").await?;
        let mut mix = Mix::new(SEED, (plan.identity_events / EVENTS_PER_PERSON).max(1));
        progress(&format!("hand-off: encoding the mix for {consumers} consumers"));
        let batches = Arc::new(mix.batches(plan.identity_events, BATCH)?);
        let work = Arc::new(Work {
            batches: batches.clone(),
            keys: vec![keys.ingest.clone()],
            requests: batches.len(),
        });
        let mut ingestion = ingestion_client(&app.grpc_url).await?;
        let resolved_before = resolved();
        let cpu = CpuSample::now();
        let start = Instant::now();
        let ingest = load::grpc_closed(&app.grpc_url, work, INGEST_TASKS).await?;
        caught_up(&mut ingestion, &keys.read, resolved_before + ingest.events).await?;
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while downstream
            .iter()
            .any(|d| d.events.load(Ordering::Relaxed) < ingest.events)
        {
            ensure!(Instant::now() < deadline, "the consumers did not get every event");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut whole = Measured {
            events: ingest.events,
            elapsed: start.elapsed(),
            latencies: Vec::new(),
        };
        let label = match consumers {
            0 => "hand-off: mix resolved end to end, no consumer of identity's log".to_owned(),
            n => format!("hand-off: mix resolved and handed to {n} consumers of identity's log{through}"),
        };
        let mut row = Row::new(label, &mut whole, cpu.cores_since());
        row.writes = false;
        eprintln!("corvus-bench:   {:.0} events/s", row.events_per_s);
        let mut freshness_rows = Vec::new();
        if with_freshness && consumers > 0 {
            // The mix left a few hundred MB dirty; written back during a freshness run it
            // would stall commits (as in the identity section).
            scratch.checkpoint().await?;
            // All alive, one dead, all alive again: the first and last bracket the middle.
            // Through a stream: once, all alive.
            let rounds: &[bool] = if stream.is_some() {
                &[false]
            } else {
                &[false, true, false]
            };
            for (round, dead) in rounds.iter().enumerate() {
                downstream[consumers - 1].dead.store(*dead, Ordering::Relaxed);
                let round = if stream.is_some() { 3 } else { round };
                freshness_rows.push(freshness(plan, &app, &keys, &mut mix, &downstream, round, through).await?);
            }
        }
        anyhow::Ok((row, freshness_rows))
    }
    .await;
    let stopped = app.stop().await;
    let dropped = scratch.drop_database().await;
    let rows = outcome?;
    stopped?;
    dropped?;
    Ok(rows)
}

/// (b) Probes under [`LOAD_PER_S`]: from each probe's ack until the first consumer has it.
async fn freshness(
    plan: &Plan,
    app: &Running,
    keys: &crate::setup::Keys,
    mix: &mut Mix,
    downstream: &[Arc<Downstream>],
    round: usize,
    through: &str,
) -> anyhow::Result<Row> {
    let one_dead = downstream.last().is_some_and(|d| d.dead.load(Ordering::Relaxed));
    // Numbered apart from every other run's probes.
    let first = (2 + round) * plan.probes;
    let label = format!(
        "hand-off freshness ({}): ack to a consumer{through}, {} probes, {LOAD_PER_S:.0}/s{}",
        round + 1,
        plan.probes,
        if one_dead { ", another dead" } else { "" }
    );
    progress(&label);
    let cpu = CpuSample::now();
    let (acked, load) = probes_under_load(app, &keys.ingest, mix, first, plan.probes).await?;
    let receiver = &downstream[0];
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut latencies = Vec::with_capacity(acked.len());
    for (n, _, ack) in &acked {
        let message_id = format!("probe-{n}");
        let arrived = loop {
            if let Some(at) = receiver.probes.lock().unwrap().get(&message_id) {
                break *at;
            }
            ensure!(
                Instant::now() < deadline,
                "probe {message_id} never reached the consumer"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        latencies.push(arrived.saturating_duration_since(*ack));
    }
    let mut m = Measured {
        events: load.events,
        elapsed: load.elapsed,
        latencies,
    };
    let mut row = Row::new(label, &mut m, cpu.cores_since()).with_target(Target::P99AtMost(FRESH_P99));
    row.writes = false;
    eprintln!("corvus-bench:   p50 {:?}, p99 {:?}", row.p50, row.p99);
    Ok(row)
}

/// Probes `first..first + count` (each an identify giving an account holder a new
/// email), one every [`PROBE_EVERY`], under an open-loop load of [`LOAD_PER_S`] events/s
/// of the mix: each probe's number, email and when it was acked, and the load.
pub(crate) async fn probes_under_load(
    app: &Running,
    ingest_key: &str,
    mix: &mut Mix,
    first: usize,
    count: usize,
) -> anyhow::Result<(Vec<(usize, String, Instant)>, Measured)> {
    let probes = probe_batches(mix, first, count)?;
    batches_under_load(app, ingest_key, mix, first, probes).await
}

/// `probes` (each a batch and what it is known by, numbered from `first`), one every
/// [`PROBE_EVERY`], under an open-loop load of [`LOAD_PER_S`] events/s of the mix: each
/// probe's number, what it is known by and when it was acked, and the load.
pub(crate) async fn batches_under_load(
    app: &Running,
    ingest_key: &str,
    mix: &mut Mix,
    first: usize,
    probes: Vec<(Batch, String)>,
) -> anyhow::Result<(Vec<(usize, String, Instant)>, Measured)> {
    let count = probes.len();
    let batches_per_s = LOAD_PER_S / LOAD_BATCH as f64;
    let secs = LOAD_LEAD.as_secs_f64() + count as f64 * PROBE_EVERY.as_secs_f64() + 0.5;
    let requests = (secs * batches_per_s).ceil() as usize;
    let work = Arc::new(Work {
        batches: Arc::new(mix.batches(requests * LOAD_BATCH, LOAD_BATCH)?),
        keys: vec![ingest_key.to_owned()],
        requests,
    });
    let probes = Arc::new(probes);
    let ingest = load::connect(&app.grpc_url).await?;
    let ingest_key = Arc::new(ingest_key.to_owned());
    let grpc_url = app.grpc_url.clone();
    let background =
        tokio::spawn(async move { load::grpc_open(&grpc_url, work, LOAD_CONNECTIONS, batches_per_s).await });
    tokio::time::sleep(LOAD_LEAD).await;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for n in 0..count {
        tokio::time::sleep_until((started + PROBE_EVERY * n as u32).into()).await;
        let (mut ingest, probes, ingest_key) = (ingest.clone(), probes.clone(), ingest_key.clone());
        set.spawn(async move {
            let (batch, email) = &probes[n];
            load::ingest(&mut ingest, batch, &ingest_key).await?;
            anyhow::Ok((first + n, email.clone(), Instant::now()))
        });
    }
    let mut acked = Vec::with_capacity(count);
    while let Some(done) = set.join_next().await {
        acked.push(done??);
    }
    Ok((acked, background.await??))
}
