//! (b) Freshness: a probe every 20 ms, under an open-loop load or none, sends one event
//! with an identifier no one had and polls GetProfile by it until the profile answers
//! holding it; the time from the probe's ack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use corvus_proto::common::v1::Identifier;
use corvus_proto::identity::v1::identity_service_client::IdentityServiceClient;
use corvus_proto::identity::v1::{GetProfileRequest, get_profile_request::Lookup};
use corvus_proto::ingestion::v1::IngestRequest;
use prost::Message as _;
use tokio::task::JoinSet;
use tonic::Status;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use super::diagnostics::Histogram;
use super::{caught_up, ingestion_client, progress, resolved};
use crate::corpus::Batch;
use crate::load::{self, Measured, Work, bearer};
use crate::people::Mix;
use crate::report::{CpuSample, Row, Target, quantile};
use crate::scenarios::{Plan, Results};
use crate::setup::{Keys, Running};

/// The background load of the loaded run: batches of 50 every 10 ms.
pub(crate) const LOAD_PER_S: f64 = 5_000.0;
pub(crate) const LOAD_BATCH: usize = 50;
pub(crate) const LOAD_CONNECTIONS: usize = 4;
/// How long the load runs before the first probe, so that probes see it steady.
pub(crate) const LOAD_LEAD: Duration = Duration::from_secs(1);
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(20);
const POLL_EVERY: Duration = Duration::from_millis(2);
/// A probe not visible by then aborts the run. Long: when identity resolves slower than
/// the load comes in, the last probes wait for the backlog of the whole run.
const PROBE_TIMEOUT: Duration = Duration::from_secs(180);
pub(crate) const FRESH_P99: Duration = Duration::from_millis(50);

/// (b) A probe every 20 ms, under an open-loop load of `load_per_s` events/s or none: how
/// long from the ack of an event with a new identifier until GetProfile finds the
/// profile by it.
pub(super) async fn freshness(
    plan: &Plan,
    app: &Running,
    keys: &Keys,
    mix: &mut Mix,
    results: &mut Results,
    load_per_s: f64,
) -> anyhow::Result<()> {
    let batches_per_s = load_per_s / LOAD_BATCH as f64;
    let secs = LOAD_LEAD.as_secs_f64() + plan.probes as f64 * PROBE_EVERY.as_secs_f64() + 0.5;
    let requests = (secs * batches_per_s).ceil() as usize;
    progress("encoding the freshness load and probes");
    let work = Arc::new(Work {
        batches: Arc::new(mix.batches(requests * LOAD_BATCH, LOAD_BATCH)?),
        keys: vec![keys.ingest.clone()],
        requests,
    });
    // Probes of every run are numbered apart: each brings an email no one had.
    let first = if load_per_s > 0.0 { plan.probes } else { 0 };
    let probes = Arc::new(probe_batches(mix, first, plan.probes)?);
    let label = if load_per_s > 0.0 {
        format!(
            "identity freshness: ack to visible, {} probes under {load_per_s:.0} events/s",
            plan.probes
        )
    } else {
        format!(
            "identity freshness: ack to visible, {} probes, no other load",
            plan.probes
        )
    };
    progress(&label);
    let ingest = load::connect(&app.grpc_url).await?;
    let reads = IdentityServiceClient::new(load::channel(&app.grpc_url).await?);
    let (ingest_key, read_key) = (Arc::new(keys.ingest.clone()), bearer(&keys.read)?);

    let batches_before = Histogram::batch_time();
    let resolved_before = resolved();
    let cpu = CpuSample::now();
    let grpc_url = app.grpc_url.clone();
    let background = (requests > 0)
        .then(|| tokio::spawn(async move { load::grpc_open(&grpc_url, work, LOAD_CONNECTIONS, batches_per_s).await }));
    if background.is_some() {
        tokio::time::sleep(LOAD_LEAD).await;
    }
    let started = Instant::now();
    let mut set = JoinSet::new();
    let mut seen = Vec::with_capacity(plan.probes);
    for n in 0..plan.probes {
        tokio::time::sleep_until((started + PROBE_EVERY * n as u32).into()).await;
        let (mut ingest, mut reads) = (ingest.clone(), reads.clone());
        let (probes, ingest_key, read_key) = (probes.clone(), ingest_key.clone(), read_key.clone());
        set.spawn(async move {
            let (batch, email) = &probes[n];
            let sent = Instant::now();
            load::ingest(&mut ingest, batch, &ingest_key).await?;
            let acked = Instant::now();
            let probe = poll_until_visible(&mut reads, &read_key, email, acked).await?;
            anyhow::Ok((acked - sent, probe))
        });
        // Reap finished probes as we go, so that an error aborts the run early.
        while let Some(done) = set.try_join_next() {
            seen.push(done??);
        }
    }
    while let Some(done) = set.join_next().await {
        seen.push(done??);
    }
    ensure!(
        seen.len() == plan.probes,
        "{} of {} probes came back",
        seen.len(),
        plan.probes
    );
    let mut visible = Vec::with_capacity(plan.probes);
    let mut acks = Vec::with_capacity(plan.probes);
    let (mut stale_probes, mut stale_answers, mut dropped) = (0, 0, 0);
    for (ack, probe) in seen {
        acks.push(ack);
        visible.push(probe.visible);
        if probe.stale > 0 {
            stale_probes += 1;
            stale_answers += probe.stale;
        }
        dropped += probe.dropped;
    }
    let loaded = background.is_some();
    let load = match background {
        Some(background) => background.await.context("the background load panicked")??,
        None => Measured {
            events: plan.probes as u64,
            elapsed: started.elapsed(),
            latencies: Vec::new(),
        },
    };
    let cpu = cpu.cores_since();
    let batches = Histogram::batch_time().since(&batches_before);
    let mut load_acks = load.latencies.clone();
    load_acks.sort_unstable();
    acks.sort_unstable();
    let ingested = if loaded { load.events } else { 0 } + plan.probes as u64;
    let mut m = Measured {
        events: load.events,
        elapsed: load.elapsed,
        latencies: visible,
    };
    let mut row = Row::new(label, &mut m, cpu);
    if load_per_s > 0.0 {
        row = row.with_target(Target::P99AtMost(FRESH_P99));
    }
    row.writes = false;
    eprintln!("corvus-bench:   p50 {:?}, p99 {:?}", row.p50, row.p99);
    results.rows.push(row);
    if load_per_s > 0.0 {
        results.notes.push(format!(
            "freshness: the rate/s column is the background load ({LOAD_BATCH} events every {:.0} ms over \
             {LOAD_CONNECTIONS} connections, open loop; its acks p50 {} p99 {}); the probes' own acks (one event) \
             took p50 {} p99 {}, not counted in the figure, which runs from the ack",
            1e3 / batches_per_s,
            ms(quantile(&load_acks, 0.5)),
            ms(quantile(&load_acks, 0.99)),
            ms(quantile(&acks, 0.5)),
            ms(quantile(&acks, 0.99)),
        ));
    } else {
        results.notes.push(format!(
            "freshness with no other load: the probes' own acks took p50 {} p99 {}; the rate/s column is the probes",
            ms(quantile(&acks, 0.5)),
            ms(quantile(&acks, 0.99)),
        ));
    }
    if let Some(batches) = batches {
        let run = if loaded {
            format!("at {load_per_s:.0} events/s")
        } else {
            "with no other load".to_owned()
        };
        results
            .notes
            .push(format!("identity batches during the freshness run {run}: {batches}"));
    }
    if dropped > 0 {
        results.notes.push(format!(
            "freshness: {dropped} GetProfile polls failed with their connection (closed under them) and were \
             made again"
        ));
    }
    if stale_probes > 0 {
        results.notes.push(format!(
            "freshness: {stale_probes} of {} probes were answered OK by their new email with a profile that did not \
             hold it yet ({stale_answers} such answers): GetProfile found the holder in the store, then served the \
             profile from a read model entry that was not yet marked stale; such answers count as not visible",
            plan.probes
        ));
    }
    let mut ingestion = ingestion_client(&app.grpc_url).await?;
    caught_up(&mut ingestion, &keys.read, resolved_before + ingested).await?;
    Ok(())
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

/// One event per probe, each under its own message id: an account holder's user id and
/// an email no one had, `probe-<n>@bench.example`.
pub(crate) fn probe_batches(mix: &Mix, first: usize, probes: usize) -> anyhow::Result<Vec<(Batch, String)>> {
    let now = chrono::Utc::now();
    (first..first + probes)
        .map(|n| {
            let user = mix
                .account_holder(n as u64)
                .context("no account holder to probe (too few events)")?;
            let email = format!("probe-{n}@bench.example");
            let message = serde_json::json!({
                "type": "identify",
                "messageId": format!("probe-{n}"),
                "userId": user,
                "traits": {"email": email},
                "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "context": {"channel": "web"},
            });
            let event = corvus_ingestion::domain::segment::from_json(message, None)
                .map_err(|v| anyhow::anyhow!("probe event {n} is invalid: {v:?}"))?;
            let request = IngestRequest {
                events: vec![event],
                sent_at: None,
            };
            let batch = Batch {
                body: request.encode_to_vec().into(),
                events: 1,
            };
            Ok((batch, email))
        })
        .collect()
}

/// What a probe saw.
struct Probe {
    /// From the ack of the event to the first answer holding the new identifier.
    visible: Duration,
    /// Answers (OK) with a profile that did not hold the identifier asked for yet.
    stale: u32,
    /// Calls lost with their connection.
    dropped: u32,
}

/// Whether a call failed for its connection rather than with an answer of the server.
fn is_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some())
}

/// GetProfile by `email` until it answers with a profile holding it, timed from
/// `acked`: every [`POLL_EVERY`] for the first 100 ms, then less often.
async fn poll_until_visible(
    client: &mut IdentityServiceClient<Channel>,
    key: &AsciiMetadataValue,
    email: &str,
    acked: Instant,
) -> anyhow::Result<Probe> {
    let lookup = Lookup::Identifier(Identifier {
        kind: "email".to_owned(),
        value: email.to_owned(),
    });
    let mut next = acked;
    let (mut stale, mut dropped) = (0, 0);
    loop {
        let mut request = tonic::Request::new(GetProfileRequest {
            lookup: Some(lookup.clone()),
            include_scores: false,
        });
        request.metadata_mut().insert("authorization", key.clone());
        match client.get_profile(request).await {
            Ok(response) => {
                let visible = acked.elapsed();
                let profile = response
                    .into_inner()
                    .profile
                    .context("GetProfile answered without a profile")?;
                if profile
                    .identifiers
                    .iter()
                    .any(|i| i.kind == "email" && i.value == email)
                {
                    return Ok(Probe {
                        visible,
                        stale,
                        dropped,
                    });
                }
                // Found through the store, but served from a read model entry not yet
                // marked stale: the profile as it was before the event.
                stale += 1;
            }
            Err(status) if status.code() == tonic::Code::NotFound => {}
            // The connection went away under the call (the channel reconnects): counted
            // and reported, and the probe carries on.
            Err(status) if is_transport(&status) => {
                if dropped == 0 {
                    eprintln!("corvus-bench:   GetProfile by {email} lost its connection: {status:?}");
                }
                dropped += 1;
            }
            Err(status) => bail!("GetProfile by {email}: {status}"),
        }
        ensure!(
            acked.elapsed() < PROBE_TIMEOUT,
            "{email} was not visible {PROBE_TIMEOUT:?} after its ack"
        );
        // Every 2 ms at first; a probe still invisible after 100 ms is looked at less
        // often, so that probes piling up behind a slow identity do not swamp it.
        let since = acked.elapsed();
        next += if since < Duration::from_millis(100) {
            POLL_EVERY
        } else if since < Duration::from_secs(1) {
            POLL_EVERY * 5
        } else {
            POLL_EVERY * 25
        };
        tokio::time::sleep_until(next.max(Instant::now()).into()).await;
    }
}
