//! The measured scenarios, in the order they run: the COPY ceiling, gRPC durable ingest
//! (closed loop, a concurrency sweep), ack latency at half the measured peak (open
//! loop), the Segment HTTP API, and embedded ingest.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;

use crate::corpus::{self, Batch};
use crate::load::{self, Measured, Work};
use crate::report::{CpuSample, Row, Target};
use crate::setup::{Resolution, Running, Scratch, TempDir, durable_config, embedded_config};

pub const BATCH: usize = 500;
/// How latency-sensitive clients send.
const SMALL_BATCH: usize = 100;
/// Connections the open-loop client multiplexes its requests over.
const OPEN_LOOP_CONNECTIONS: usize = 4;
const GRPC_TARGET: f64 = 80_000.0;
const HTTP_TARGET: f64 = 50_000.0;
const EMBEDDED_TARGET: f64 = 30_000.0;
const P99_TARGET: Duration = Duration::from_millis(20);
/// The corpus every scenario draws from; each point sends it to fresh workspaces.
pub const SEED: u64 = 1;

/// What to run and how much.
pub struct Plan {
    pub events: usize,
    pub concurrency: Vec<usize>,
    pub latency_secs: f64,
    /// The peak the latency runs take half of, instead of the measured one.
    pub peak: Option<f64>,
    pub grpc: bool,
    pub http: bool,
    pub embedded: bool,
    pub latency: bool,
    pub copy: bool,
    pub identity: bool,
    pub handoff: bool,
    pub models: bool,
    pub scoring: bool,
    pub orchestration: bool,
    pub measurement: bool,
    /// People of the orchestration section.
    pub orchestration_people: usize,
    /// `[scoring] scores_max_age` in the scoring and orchestration sections.
    pub scores_max_age: std::time::Duration,
    /// Exposures of the measurement section's largest point.
    pub measurement_exposures: usize,
    /// Events of the identity mix.
    pub identity_events: usize,
    /// Freshness probes.
    pub probes: usize,
    /// Length of each GetProfile point in seconds.
    pub read_secs: f64,
}

/// The rows so far and the figures later rows refer to.
#[derive(Default)]
pub struct Results {
    pub rows: Vec<Row>,
    pub ceiling: Option<f64>,
    pub grpc_peak: Option<f64>,
    /// Lines printed under the table: what a row alone does not say.
    pub notes: Vec<String>,
}

fn progress(what: &str) {
    eprintln!("corvus-bench: {what} ...");
}

/// Runs `load` between CPU samples and adds its row.
async fn measured<F>(results: &mut Results, scenario: String, target: Option<Target>, load: F) -> anyhow::Result<Row>
where
    F: Future<Output = anyhow::Result<Measured>>,
{
    progress(&scenario);
    let cpu = CpuSample::now();
    let mut m = load.await?;
    let mut row = Row::new(scenario, &mut m, cpu.cores_since());
    row.target = target;
    eprintln!("corvus-bench:   {:.0} events/s, p99 {:?}", row.events_per_s, row.p99);
    results.rows.push(row.clone());
    Ok(row)
}

/// Adds a "best of the sweep" row carrying the target.
fn best_row(results: &mut Results, sweep: &[Row], label: &str, target: f64) -> Option<f64> {
    let best = sweep.iter().max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s))?;
    let mut row = best.clone();
    row.scenario = format!("{label} best ({})", best.scenario.rsplit(", ").next()?);
    results.rows.push(row.with_target(Target::AtLeastPerSec(target)));
    Some(best.events_per_s)
}

/// Everything that runs against Postgres and Redis, on one app.
pub async fn durable(plan: &Plan, scratch: &Scratch, redis_url: &str, results: &mut Results) -> anyhow::Result<()> {
    // Ingestion alone: identity does not consume the log here (see the identity section).
    let app = Running::start(durable_config(scratch, redis_url, Resolution::Off)).await?;
    ensure!(app.backend == "postgres", "the durable app runs on {}", app.backend);
    // Warm-up: connections, the auth cache, Postgres's plan and catalog caches.
    let warm = Arc::new(Work {
        batches: Arc::new(corpus::grpc_batches(99, 4 * BATCH, BATCH)?),
        keys: app.keys("warmup", 1).await?,
        requests: 4,
    });
    load::grpc_closed(&app.grpc_url, warm, 2).await?;

    if plan.copy {
        for connections in [1, 2] {
            let label = format!(
                "COPY binary, {} rows/stmt, {connections} conn",
                crate::copy::ROWS_PER_COPY
            );
            let mut copy = crate::copy::prepare(scratch, SEED, plan.events, connections).await?;
            let row = measured(results, label, None, copy.run()).await?;
            results.ceiling = Some(results.ceiling.unwrap_or(0.0).max(row.events_per_s));
        }
    }

    let batches = if plan.grpc || plan.latency {
        progress("encoding gRPC batches");
        Some(Arc::new(corpus::grpc_batches(SEED, plan.events, BATCH)?))
    } else {
        None
    };
    if let Some(batches) = &batches {
        // The latency runs need the peak; measure it at C=4 alone if the sweep is off
        // and no peak was given.
        let sweep: &[usize] = match (plan.grpc, plan.peak) {
            (true, _) => &plan.concurrency,
            (false, None) => &[4],
            (false, Some(_)) => &[],
        };
        let mut rows = Vec::new();
        for &c in sweep {
            scratch.reset_events().await?;
            let work = Arc::new(Work {
                batches: batches.clone(),
                keys: app.keys(&format!("grpc-c{c}"), 1).await?,
                requests: batches.len(),
            });
            let label = format!("gRPC Ingest durable, batch {BATCH}, C={c}");
            rows.push(measured(results, label, None, load::grpc_closed(&app.grpc_url, work, c)).await?);
        }
        results.grpc_peak = best_row(results, &rows, "gRPC durable", GRPC_TARGET);
    }

    if plan.latency
        && let (Some(peak), Some(batches)) = (plan.peak.or(results.grpc_peak), &batches)
    {
        let rate = peak / 2.0;
        for size in [BATCH, SMALL_BATCH] {
            let requests = ((rate * plan.latency_secs) / size as f64).ceil() as usize;
            let set: Arc<Vec<Batch>> = if size == BATCH {
                batches.clone()
            } else {
                let events = (requests * size).min(plan.events);
                Arc::new(corpus::grpc_batches(SEED, events, size)?)
            };
            scratch.reset_events().await?;
            let keys_needed = Work::keys_needed(requests, set.len());
            let work = Arc::new(Work {
                batches: set,
                keys: app.keys(&format!("latency-b{size}"), keys_needed).await?,
                requests,
            });
            let of = if plan.peak.is_some() { "given" } else { "measured" };
            let label = format!("gRPC open loop at {rate:.0}/s (50% {of} peak), batch {size}");
            let batches_per_s = rate / size as f64;
            let run = load::grpc_open(&app.grpc_url, work, OPEN_LOOP_CONNECTIONS, batches_per_s);
            let target = Some(Target::P99AtMost(P99_TARGET));
            measured(results, label, target, run).await?;
        }
    }

    if plan.http {
        progress("encoding /v1/batch bodies");
        let bodies = Arc::new(corpus::http_bodies(SEED, plan.events, BATCH)?);
        let mut rows = Vec::new();
        for &c in &plan.concurrency {
            scratch.reset_events().await?;
            let work = Arc::new(Work {
                batches: bodies.clone(),
                keys: app.keys(&format!("http-c{c}"), 1).await?,
                requests: bodies.len(),
            });
            let label = format!("HTTP /v1/batch durable, batch {BATCH}, C={c}");
            rows.push(measured(results, label, None, load::http_closed(&app.http_url, work, c)).await?);
        }
        best_row(results, &rows, "HTTP /v1/batch", HTTP_TARGET);
    }
    app.stop().await
}

/// gRPC into a fresh embedded app (SQLite and the in-process cache) per point.
pub async fn embedded(plan: &Plan, results: &mut Results) -> anyhow::Result<()> {
    progress("encoding gRPC batches");
    let batches = Arc::new(corpus::grpc_batches(SEED, plan.events, BATCH)?);
    let mut rows = Vec::new();
    for &c in &plan.concurrency {
        let dir = TempDir::new("embedded")?;
        let app = Running::start(embedded_config(dir.path(), Resolution::Off)).await?;
        // Without a URL in the config the storage layer still reads DATABASE_URL.
        ensure!(
            app.backend == "sqlite",
            "the embedded app runs on {}: unset DATABASE_URL and REDIS_URL",
            app.backend
        );
        let work = Arc::new(Work {
            batches: batches.clone(),
            keys: app.keys(&format!("embedded-c{c}"), 1).await?,
            requests: batches.len(),
        });
        let label = format!("gRPC Ingest embedded, batch {BATCH}, C={c}");
        let row = measured(results, label, None, load::grpc_closed(&app.grpc_url, work, c)).await;
        app.stop().await?;
        rows.push(row?);
    }
    best_row(results, &rows, "gRPC embedded", EMBEDDED_TARGET);
    Ok(())
}
