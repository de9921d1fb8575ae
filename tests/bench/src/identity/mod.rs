//! The identity section, on the durable app with identity consuming the event log: how
//! fast identity resolves what ingestion takes in (`resolution`, here), how soon a new
//! identifier can be read back after its event is acknowledged (`freshness`), and how
//! fast profiles are read from the read model (`reads`). `diagnostics` says where the
//! time went, from the app's metrics and from Postgres's own views.

pub(crate) mod diagnostics;
mod freshness;
mod h2load;
mod reads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use corvus_proto::ingestion::v1::ListConsumersRequest;
use corvus_proto::ingestion::v1::ingestion_service_client::IngestionServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub(crate) use self::diagnostics::Histogram;
use self::diagnostics::{graph_note, index_scans, round_trip, sample_sessions, scans_note, value_of};
use self::freshness::freshness;
pub(crate) use self::freshness::{
    FRESH_P99, LOAD_BATCH, LOAD_CONNECTIONS, LOAD_LEAD, LOAD_PER_S, PROBE_EVERY, probe_batches,
};
pub(crate) use self::reads::BytesCodec;
use self::reads::reads;
use crate::load::{self, Measured, Work, bearer};
use crate::people::{Mix, MixCounts};
use crate::report::{CpuSample, Row, Target};
use crate::scenarios::{BATCH, Plan, Results, SEED};
use crate::setup::{Keys, Resolution, Running, Scratch, durable_config};

/// The consumer name identity reads the event log under.
const CONSUMER: &str = "identity";
/// Events per synthetic person.
pub const EVENTS_PER_PERSON: usize = 10;
/// Client tasks (one connection each) ingesting the mix at full speed.
const INGEST_TASKS: usize = 4;
const RESOLVE_TARGET: f64 = 20_000.0;
/// How often identity's progress is looked at while waiting for it: near the end often,
/// for the time it caught up; before that less often, since each look renders all of the
/// app's metrics in the process being measured.
const LAG_POLL: Duration = Duration::from_millis(5);
const LAG_POLL_FAR: Duration = Duration::from_millis(25);
/// Events still to resolve below which the lag is looked at every [`LAG_POLL`].
const NEAR: u64 = 2_000;
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(900);
/// Postgres publishes an idle backend's statistics within 10 s.
const STATS_DELAY: Duration = Duration::from_secs(11);

pub(super) fn progress(what: &str) {
    eprintln!("corvus-bench: {what} ...");
}

/// Identity resolution, freshness and profile reads on one app over `scratch`.
pub async fn run(plan: &Plan, scratch: &Scratch, redis_url: &str, results: &mut Results) -> anyhow::Result<()> {
    let app = Running::start(durable_config(scratch, redis_url, Resolution::On)).await?;
    ensure!(app.backend == "postgres", "the durable app runs on {}", app.backend);
    let outcome = sections(plan, scratch, &app, results).await;
    let stopped = app.stop().await;
    outcome?;
    stopped
}

async fn sections(plan: &Plan, scratch: &Scratch, app: &Running, results: &mut Results) -> anyhow::Result<()> {
    // Warm-up in a workspace of its own: connections, caches, plans of both services.
    let warm_keys = app.workspace_keys("identity-warmup").await?;
    let mut warm_mix = Mix::new(99, 200);
    let warm = Arc::new(Work {
        batches: Arc::new(warm_mix.batches(4 * BATCH, BATCH)?),
        keys: vec![warm_keys.ingest.clone()],
        requests: 4,
    });
    let resolved_before = resolved();
    let warmed = load::grpc_closed(&app.grpc_url, warm, 2).await?;
    let mut ingestion = ingestion_client(&app.grpc_url).await?;
    caught_up(&mut ingestion, &warm_keys.read, resolved_before + warmed.events).await?;

    let workspace = "identity";
    let keys = app.workspace_keys(workspace).await?;
    let mut mix = Mix::new(SEED, (plan.identity_events / EVENTS_PER_PERSON).max(1));
    resolution(plan, scratch, app, &keys, workspace, &mut mix, results).await?;
    // The mix left a few hundred MB dirty; written back in the middle of a freshness run,
    // it would stall every commit for a while (docs/benchmarks-identity-rounds.md, "Third round").
    scratch.checkpoint().await?;
    freshness(plan, app, &keys, &mut mix, results, 0.0).await?;
    freshness(plan, app, &keys, &mut mix, results, LOAD_PER_S).await?;
    reads(plan, app, &keys, workspace, &mix, results).await
}

/// (a) The mix ingested at full speed, then until identity has resolved all of it.
async fn resolution(
    plan: &Plan,
    scratch: &Scratch,
    app: &Running,
    keys: &Keys,
    workspace: &str,
    mix: &mut Mix,
    results: &mut Results,
) -> anyhow::Result<()> {
    progress("encoding the identity mix");
    let batches = Arc::new(mix.batches(plan.identity_events, BATCH)?);
    let counts = mix.counts;
    results.notes.push(mix_note(mix.people(), &counts));
    let work = Arc::new(Work {
        batches: batches.clone(),
        keys: vec![keys.ingest.clone()],
        requests: batches.len(),
    });
    let mut ingestion = ingestion_client(&app.grpc_url).await?;
    let label = format!("identity mix: gRPC Ingest, batch {BATCH}, C={INGEST_TASKS} (to the ack)");
    progress(&label);
    let scans_before = index_scans(scratch).await?;
    let before = Histogram::batch_time();
    let resolved_before = resolved();
    let sampling = scratch.connect().await?;
    let cpu_start = CpuSample::now();
    let start = Instant::now();
    let mut ingest = load::grpc_closed(&app.grpc_url, work, INGEST_TASKS).await?;
    let acked = Instant::now();
    let cpu_acked = CpuSample::now();
    let at_ack = Histogram::batch_time();
    let events = ingest.events;
    let lag_at_ack = events.saturating_sub(resolved() - resolved_before);
    progress("waiting for identity to resolve the mix");
    let stop_sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample_sessions(sampling, stop_sampling.clone()));
    let done = caught_up(&mut ingestion, &keys.read, resolved_before + events).await?;
    let cpu_done = CpuSample::now();
    let after = Histogram::batch_time();
    stop_sampling.cancel();
    let sessions = sampler.await.context("the session sampler panicked")??;

    let row = Row::new(label, &mut ingest, cpu_start.cores_to(&cpu_acked));
    results.rows.push(row);
    let mut whole = Measured {
        events,
        elapsed: done - start,
        latencies: Vec::new(),
    };
    let mut row = Row::new(
        "identity resolution end to end: first send to identity lag 0",
        &mut whole,
        cpu_start.cores_to(&cpu_done),
    )
    .with_target(Target::AtLeastPerSec(RESOLVE_TARGET));
    row.writes = false;
    eprintln!("corvus-bench:   {:.0} events/s end to end", row.events_per_s);
    results.rows.push(row);
    let mut alone = Measured {
        events: lag_at_ack,
        elapsed: done - acked,
        latencies: Vec::new(),
    };
    let mut row = Row::new(
        format!("identity alone after the last ack ({lag_at_ack} events left)"),
        &mut alone,
        cpu_acked.cores_to(&cpu_done),
    );
    row.writes = false;
    results.rows.push(row);

    let ingest_secs = (acked - start).as_secs_f64();
    results.notes.push(format!(
        "identity trailed ingestion by {:.2} s: the last ack came {:.2} s after the first send, with {lag_at_ack} \
         of {events} events not yet resolved; identity resolved {:.0} events/s while ingestion ran, {:.0} after",
        (done - acked).as_secs_f64(),
        ingest_secs,
        (events - lag_at_ack) as f64 / ingest_secs.max(1e-9),
        lag_at_ack as f64 / (done - acked).as_secs_f64().max(1e-9),
    ));
    if let (Some(during), Some(alone)) = (at_ack.since(&before), after.since(&at_ack)) {
        results.notes.push(format!(
            "identity batches (corvus_identity_batch_seconds) while ingestion ran: {during}; after: {alone}"
        ));
    }
    if let Some(all) = after.since(&before) {
        results.notes.push(format!(
            "identity spent {:.1} of the {:.1} s inside Identity::resolve ({:.0}%); the rest is the outbox \
             reading the log, decoding and moving its cursor",
            all.seconds,
            whole.elapsed.as_secs_f64(),
            100.0 * all.seconds / whole.elapsed.as_secs_f64().max(1e-9),
        ));
    }
    results.notes.push(sessions.note());
    results.notes.push(graph_note(scratch, workspace, &counts).await?);
    if let Some(all) = after.since(&before) {
        tokio::time::sleep(STATS_DELAY).await;
        let scans = index_scans(scratch).await?;
        results
            .notes
            .push(scans_note(&scans_before, &scans, all.count, round_trip(scratch).await?));
    }
    let status = status(&mut ingestion, &keys.read).await?;
    ensure!(
        status.dead_letters == 0 && status.last_error.is_empty(),
        "identity dead-lettered {} events of the mix; last error: {:?}",
        status.dead_letters,
        status.last_error
    );
    Ok(())
}

fn mix_note(people: usize, c: &MixCounts) -> String {
    let share = |n: u64| 100.0 * n as f64 / c.events.max(1) as f64;
    format!(
        "identity mix: {} events of {people} people; {} ({:.1}%) first sight of a person's browser or account \
         (a new profile), {} ({:.1}%) bring an identifier new to a known person, {} ({:.1}%) join a browser and \
         an account first seen apart (a merge)",
        c.events,
        c.new_profiles,
        share(c.new_profiles),
        c.new_identifiers,
        share(c.new_identifiers),
        c.merges,
        share(c.merges),
    )
}

pub(super) async fn ingestion_client(grpc_url: &str) -> anyhow::Result<IngestionServiceClient<Channel>> {
    Ok(IngestionServiceClient::new(load::channel(grpc_url).await?))
}

/// Identity's consumer status, as the caller's workspace sees it.
struct ConsumerStatus {
    lag: u64,
    dead_letters: u64,
    last_error: String,
}

async fn status(client: &mut IngestionServiceClient<Channel>, key: &str) -> anyhow::Result<ConsumerStatus> {
    let mut request = tonic::Request::new(ListConsumersRequest {});
    request.metadata_mut().insert("authorization", bearer(key)?);
    let consumers = client
        .list_consumers(request)
        .await
        .context("ListConsumers failed")?
        .into_inner()
        .consumers;
    let identity = consumers
        .into_iter()
        .find(|c| c.name == CONSUMER)
        .context("no identity consumer: is identity resolving events?")?;
    Ok(ConsumerStatus {
        lag: identity.lag,
        dead_letters: identity.dead_letters,
        last_error: identity.last_error,
    })
}

/// Events identity has resolved so far in this process (all workspaces), from the app's
/// own counter: free to read, where ListConsumers counts the lag in Postgres.
pub(super) fn resolved() -> u64 {
    let text = corvus_platform::metrics::recorder().render();
    value_of(&text, "corvus_identity_events_resolved_total", "").unwrap_or(0.0) as u64
}

/// Waits until identity's counter reaches `resolved_at_least`, then polls ListConsumers
/// every [`LAG_POLL`] until identity's lag is 0; when it was seen at 0. Counting a long
/// lag costs Postgres a scan of it, which would slow identity down; a short one is cheap.
pub(super) async fn caught_up(
    client: &mut IngestionServiceClient<Channel>,
    key: &str,
    resolved_at_least: u64,
) -> anyhow::Result<Instant> {
    let started = Instant::now();
    let mut told = started;
    loop {
        let left = resolved_at_least.saturating_sub(resolved());
        let now = Instant::now();
        let lag = if left > 0 {
            left
        } else {
            let status = status(client, key).await?;
            if status.lag == 0 {
                return Ok(Instant::now());
            }
            ensure!(
                status.last_error.is_empty(),
                "identity fails to deliver: {}",
                status.last_error
            );
            status.lag
        };
        ensure!(
            now - started < CATCH_UP_TIMEOUT,
            "identity still {lag} events behind after {CATCH_UP_TIMEOUT:?}"
        );
        if now - told >= Duration::from_secs(5) {
            eprintln!("corvus-bench:   identity lag {lag}");
            told = now;
        }
        tokio::time::sleep(if lag > NEAR { LAG_POLL_FAR } else { LAG_POLL }).await;
    }
}
