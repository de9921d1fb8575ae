//! Measurement: an experiment's results against the number of exposures behind them,
//! and the time from an outcome event to its effect on the results, on the durable app
//! (Postgres and Redis) with identity and measurement consuming.
//!
//! (1) Exposures are loaded through measurement's own entry points, as orchestration's
//! log hands them on (`record_decisions`, 1,000 a delivery) with orders through
//! identity's (`deliver`): one experiment of three arms (a 10 % holdout and two of
//! 45 %), four channels, five segments, decisions over 14 days; a fifth of the people
//! order within a day of their exposure (one to three orders), a twentieth in the week
//! before (CUPED's covariate). Three metrics: converted (binomial), revenue per person
//! (count, with the covariate) and revenue per order (ratio). At 10,000, 100,000 and
//! 1,000,000 exposures (`--measurement-exposures`; a tenth with `--quick`), `GetExperimentResults` for all
//! three metrics is called over gRPC `RESULTS_CALLS` times: each under 20 ms at p99,
//! and the time at the largest at most 1.5× that at the smallest (the cost is of the
//! buckets, not of the people).
//!
//! (2) Probe people (an identify each, resolved by identity) exposed to an experiment
//! of their own; then, under the identity mix at 5,000 events/s, one `Order Completed`
//! by a probe every 20 ms (revenue 1), timed from its ack until the probes' experiment's
//! results count it (polled every 5 ms): p99 at most 1 s. The k-th probe counts as
//! visible when the results first count more than k orders.
//!
//! (3) The off-policy estimates (IPS, self-normalised IPS, DM, DR, with their intervals
//! and the effective sample size) of the Open Bandit Dataset sample's candidate policy,
//! the median of several runs, against obp 0.5.7's four estimators on the same files in
//! this run (`tests/reference/obp_ope.py`), the values compared: at least 10× faster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chrono::{SecondsFormat, Utc};
use corvus_measurement::{Measurement, MeasurementConfig};
use corvus_proto::common::v1::{Event, EventType, Identifier, StoredEvent};
use corvus_proto::identity::v1::identity_service_client::IdentityServiceClient;
use corvus_proto::identity::v1::{GetProfileRequest, LogEntry, get_profile_request::Lookup, log_entry};
use corvus_proto::measurement::v1 as pb;
use corvus_proto::measurement::v1::measurement_service_client::MeasurementServiceClient;
use corvus_proto::orchestration::v1::{Decision, DecisionLogEntry};
use serde_json::json;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::corpus::{Batch, Rng};
use crate::handoff::batches_under_load;
use crate::identity::{LOAD_PER_S, caught_up, ingestion_client, progress, resolved};
use crate::load::{self, Measured, bearer};
use crate::people::Mix;
use crate::report::{CpuSample, Row, Target, quantile};
use crate::scenarios::{Plan, Results, SEED};
use crate::setup::{Resolution, Running, Scratch, durable_config};

const WORKSPACE: &str = "measurement";
const EXPERIMENT: &str = "spring";
const PROBES_EXPERIMENT: &str = "probes";
const RESULTS_CALLS: usize = 40;
const RESULTS_P99: Duration = Duration::from_millis(20);
const RESULTS_GROWTH: f64 = 1.5;
const VISIBLE_P99: Duration = Duration::from_secs(1);
/// How long after the last probe's ack its order may still show.
const VISIBLE_WAIT: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(5);
/// Decisions (or orders) a delivery, as the logs' consumers take them.
const DELIVERY: usize = 1_000;
const CHANNELS: [i32; 3] = [3, 4, 5]; // email, sms, push
const DAY_MICROS: i64 = 86_400_000_000;

fn request<T>(message: T, key: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", bearer(key)?);
    Ok(request)
}

fn ts(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

pub async fn run(plan: &Plan, server_url: &str, redis_url: &str, results: &mut Results) -> anyhow::Result<()> {
    let scratch = Scratch::create(server_url).await?;
    let config = durable_config(&scratch, redis_url, Resolution::On);
    let app = Running::start(config.clone()).await?;
    let outcome = async {
        ensure!(app.backend == "postgres", "the durable app runs on {}", app.backend);
        // Measurement's entry points, over the app's database, to load exposures at the
        // rate its consumers take them.
        let direct = Measurement::connect(&config.storage, &MeasurementConfig::default()).await?;
        measure(plan, &scratch, &app, &direct, results).await
    }
    .await;
    let stopped = app.stop().await;
    let dropped = scratch.drop_database().await;
    outcome?;
    stopped?;
    dropped
}

async fn measure(
    plan: &Plan,
    scratch: &Scratch,
    app: &Running,
    direct: &Measurement,
    results: &mut Results,
) -> anyhow::Result<()> {
    let keys = app.workspace_keys(WORKSPACE).await?;
    let admin = app.admin_key(WORKSPACE).await?;
    let channel = load::channel(&app.grpc_url).await?;
    let mut client = MeasurementServiceClient::new(channel.clone());
    for metric in metrics() {
        client
            .create_metric(request(pb::CreateMetricRequest { metric: Some(metric) }, &admin)?)
            .await
            .context("CreateMetric")?;
    }
    let largest = plan.measurement_exposures;
    let sizes = [largest / 100, largest / 10, largest];
    let mut rng = Rng::new(SEED, 0);
    let now = Utc::now().timestamp_micros();
    let mut loaded = 0;
    let mut times = Vec::new();
    for size in sizes {
        let label = format!("measurement: load exposures to {size}");
        progress(&label);
        let cpu = CpuSample::now();
        let started = Instant::now();
        let (decisions, orders) = load_people(direct, &mut rng, now, loaded, size).await?;
        let elapsed = started.elapsed();
        loaded = size;
        let cores = cpu.cores_since();
        results.notes.push(format!(
            "measurement: {decisions} decisions and {orders} orders in {:.1} s ({:.0} entries/s) through the \
             consumers' entry points, {DELIVERY} a delivery, to {size} exposures; cores app {:.2}, pg {:.2}",
            elapsed.as_secs_f64(),
            (decisions + orders) as f64 / elapsed.as_secs_f64(),
            cores.app,
            cores.postgres,
        ));
        scratch.checkpoint().await?;
        let row = results_time(&mut client, &keys.read, size).await?;
        times.push(row.p50.unwrap_or_default());
        results.rows.push(row);
    }
    let (first, last) = (times[0].as_secs_f64(), times[times.len() - 1].as_secs_f64());
    let growth = last / first.max(1e-9);
    results.notes.push(format!(
        "measurement: GetExperimentResults (3 metrics, 5 settings each) median {:.2} ms at {} exposures against \
         {:.2} ms at {}: {growth:.2}× (target ≤ {RESULTS_GROWTH}×: {})",
        last * 1e3,
        sizes[2],
        first * 1e3,
        sizes[0],
        if growth <= RESULTS_GROWTH { "met" } else { "missed" }
    ));
    // The same read once the aggregates' dead row versions are gone, as a server that
    // vacuums (this one may not) keeps them: what of the growth they are.
    let mut conn = scratch.connect().await?;
    sqlx::query("VACUUM measurement.sums, measurement.exposure_counts")
        .execute(&mut conn)
        .await?;
    let vacuumed = results_time(&mut client, &keys.read, sizes[2]).await?;
    results.notes.push(format!(
        "measurement: after VACUUM of the aggregates, GetExperimentResults at {} exposures: median {:.2} ms, p99 \
         {:.2} ms ({:.2}× the smallest point's median)",
        sizes[2],
        vacuumed.p50.unwrap_or_default().as_secs_f64() * 1e3,
        vacuumed.p99.unwrap_or_default().as_secs_f64() * 1e3,
        vacuumed.p50.unwrap_or_default().as_secs_f64() / first.max(1e-9),
    ));
    freshness(plan, app, &keys, direct, &mut client, results).await?;
    ope_against_obp(results)
}

/// (3) The estimates on the Open Bandit sample, against obp's in this run.
fn ope_against_obp(results: &mut Results) -> anyhow::Result<()> {
    use corvus_measurement::ope::{self, RewardModel, files};
    progress("measurement: off-policy estimates against obp 0.5.7");
    let dir = crate::models::root().join("services/measurement/tests/data/obd");
    let read = |name: &str| files::read_text(&dir.join(name)).with_context(|| format!("read {name}"));
    let refused = |e: corvus_measurement::stats::Invalid| anyhow::anyhow!("{e}");
    let rounds = files::logged(&read("logged.csv")?).map_err(refused)?;
    let policy = files::policy(&read("policy.csv")?).map_err(refused)?;
    let model = files::rewards(&read("rewards.csv.gz")?, rounds.len()).map_err(refused)?;
    let (seconds, ours) = crate::models::median_seconds(20, || {
        ope::estimate(&rounds, &policy, Some(&model as &dyn RewardModel), 0.05)
    });
    let dir_arg = dir.to_string_lossy().into_owned();
    let line = match crate::models::reference("obp_ope.py", &[&dir_arg, "--time", "20"]) {
        Ok(r) => {
            let theirs = r["seconds"].as_f64().unwrap_or(f64::NAN);
            let values = [
                ("ipw", ours.ipw.value),
                ("snipw", ours.snipw.value),
                ("dm", ours.dm.as_ref().map_or(f64::NAN, |e| e.value)),
                ("dr", ours.dr.as_ref().map_or(f64::NAN, |e| e.value)),
            ];
            let worst = values
                .iter()
                .map(|(k, v)| (v - r[*k].as_f64().unwrap_or(f64::NAN)).abs())
                .fold(0.0, f64::max);
            ensure!(
                worst < 1e-9,
                "the estimates differ from obp's by {worst:e}: {values:?} against {r}"
            );
            let speedup = theirs / seconds;
            format!(
                "off-policy estimates on the Open Bandit sample ({} rounds; IPS, SNIPS, DM, DR with intervals and the \
                 effective sample size): {:.2} ms against obp 0.5.7's four estimates in {:.1} ms in this run, equal \
                 to 1e-9: {speedup:.0}× faster (target ≥ 10×: {})",
                rounds.len(),
                seconds * 1e3,
                theirs * 1e3,
                if speedup >= 10.0 { "met" } else { "missed" }
            )
        }
        Err(why) => format!(
            "off-policy estimates on the Open Bandit sample: {:.2} ms; no reference: {why}",
            seconds * 1e3
        ),
    };
    eprintln!("corvus-bench: {line}");
    results.notes.push(line);
    Ok(())
}

fn metrics() -> Vec<pb::Metric> {
    let order = |value: &str| pb::MetricEvent {
        event: "Order Completed".into(),
        value: value.into(),
        ..Default::default()
    };
    let day = prost_types::Duration {
        seconds: 86_400,
        nanos: 0,
    };
    vec![
        pb::Metric {
            name: "converted".into(),
            r#type: pb::MetricType::Binomial as i32,
            numerator: Some(order("")),
            window: Some(day),
            ..Default::default()
        },
        pb::Metric {
            name: "revenue".into(),
            r#type: pb::MetricType::Count as i32,
            numerator: Some(order("revenue")),
            window: Some(day),
            lookback: Some(prost_types::Duration {
                seconds: 7 * 86_400,
                nanos: 0,
            }),
            ..Default::default()
        },
        pb::Metric {
            name: "revenue_per_order".into(),
            r#type: pb::MetricType::Ratio as i32,
            numerator: Some(order("revenue")),
            denominator: Some(order("")),
            window: Some(day),
            ..Default::default()
        },
    ]
}

fn decision_entry(
    profile: Uuid,
    experiment: &str,
    arm: &str,
    channel: i32,
    segment: String,
    at: i64,
) -> DecisionLogEntry {
    let share = match arm {
        "holdout" => 0.1,
        _ => 0.45,
    };
    DecisionLogEntry {
        workspace_id: WORKSPACE.into(),
        decision: Some(Decision {
            decision_id: Uuid::now_v7().to_string(),
            profile_id: profile.to_string(),
            campaign: experiment.into(),
            campaign_version: 1,
            arm: arm.into(),
            action: "offer".into(),
            channel: if arm == "holdout" { 0 } else { channel },
            policy: "thompson".into(),
            propensity: 0.5,
            decided_at: Some(ts(at)),
            segment,
            arm_share: share,
            ..Default::default()
        }),
    }
}

fn order_entry(profile: Uuid, revenue: f64, at: i64) -> LogEntry {
    LogEntry {
        entry: Some(log_entry::Entry::Event(StoredEvent {
            workspace_id: WORKSPACE.into(),
            event_id: Uuid::now_v7().to_string(),
            profile_id: profile.to_string(),
            event: Some(Event {
                r#type: EventType::Track as i32,
                event: "Order Completed".into(),
                properties: Some(corvus_proto::raw::RawStruct::from_json(
                    json!({ "revenue": revenue }).as_object().expect("an object"),
                )),
                timestamp: Some(ts(at)),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// People `from..to` exposed, with their orders; the decisions and orders delivered.
async fn load_people(
    direct: &Measurement,
    rng: &mut Rng,
    now: i64,
    from: usize,
    to: usize,
) -> anyhow::Result<(usize, usize)> {
    let (mut decisions, mut orders) = (0, 0);
    for start in (from..to).step_by(DELIVERY) {
        let mut entries = Vec::with_capacity(DELIVERY);
        let mut bought = Vec::new();
        for _ in start..(start + DELIVERY).min(to) {
            let profile = Uuid::new_v4();
            let arm = match rng.below(20) {
                0 | 1 => "holdout",
                n if n % 2 == 0 => "a",
                _ => "b",
            };
            let at = now - (rng.below(14) as i64 + 1) * DAY_MICROS + rng.below(86_400) as i64 * 1_000_000;
            let channel = CHANNELS[rng.below(CHANNELS.len() as u64) as usize];
            entries.push(decision_entry(
                profile,
                EXPERIMENT,
                arm,
                channel,
                format!("segment-{}", rng.below(5)),
                at,
            ));
            if rng.below(5) == 0 {
                for n in 0..=rng.below(3) {
                    let revenue = 10.0 + rng.below(90) as f64;
                    bought.push(order_entry(profile, revenue, at + (n as i64 + 1) * 3_600_000_000));
                }
            }
            if rng.below(20) == 0 {
                bought.push(order_entry(profile, 25.0, at - 2 * DAY_MICROS));
            }
        }
        let failures = direct.record_decisions(&entries).await?;
        ensure!(failures.is_empty(), "decisions refused: {failures:?}");
        decisions += entries.len();
        for chunk in bought.chunks(DELIVERY) {
            let (failures, _) = direct.deliver(chunk).await?;
            ensure!(failures.is_empty(), "orders refused: {failures:?}");
            orders += chunk.len();
        }
    }
    Ok((decisions, orders))
}

/// (1) `RESULTS_CALLS` calls of GetExperimentResults, one at a time.
async fn results_time(
    client: &mut MeasurementServiceClient<Channel>,
    key: &str,
    exposures: usize,
) -> anyhow::Result<Row> {
    let label = format!("measurement: GetExperimentResults at {exposures} exposures");
    progress(&label);
    let ask = || {
        request(
            pb::GetExperimentResultsRequest {
                experiment: EXPERIMENT.into(),
                ..Default::default()
            },
            key,
        )
    };
    let answer = client.get_experiment_results(ask()?).await?.into_inner();
    let users: u64 = answer.arms.iter().map(|a| a.users).sum();
    ensure!(
        users == exposures as u64,
        "the results count {users} people, not {exposures}"
    );
    ensure!(
        answer.metrics.iter().all(|m| m.settings.len() == 5),
        "a metric without its settings"
    );
    let cpu = CpuSample::now();
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(RESULTS_CALLS);
    for _ in 0..RESULTS_CALLS {
        let t = Instant::now();
        client.get_experiment_results(ask()?).await?;
        latencies.push(t.elapsed());
    }
    let mut m = Measured {
        events: RESULTS_CALLS as u64,
        elapsed: started.elapsed(),
        latencies,
    };
    let mut row = Row::new(label, &mut m, cpu.cores_since()).with_target(Target::P99AtMost(RESULTS_P99));
    row.writes = false;
    eprintln!("corvus-bench:   p50 {:?}, p99 {:?}", row.p50, row.p99);
    Ok(row)
}

/// (2) From an order's ack to the results counting it, under the identity mix.
async fn freshness(
    plan: &Plan,
    app: &Running,
    keys: &crate::setup::Keys,
    direct: &Measurement,
    client: &mut MeasurementServiceClient<Channel>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let probes = plan.probes;
    progress(&format!("measurement: {probes} probe people, resolved and exposed"));
    let now = Utc::now();
    let stamp = now.to_rfc3339_opts(SecondsFormat::Millis, true);
    let user = |n: usize| format!("probe-{n:06}");
    let identifies: Vec<Event> = (0..probes)
        .map(|n| {
            corvus_ingestion::domain::segment::from_json(
                json!({"type": "identify", "messageId": format!("probe-identify-{n}"), "userId": user(n),
                       "timestamp": stamp}),
                None,
            )
            .map_err(|v| anyhow::anyhow!("probe {n}'s identify is invalid: {v:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut ingest = load::connect(&app.grpc_url).await?;
    let before = resolved();
    load::ingest(&mut ingest, &Batch::grpc(identifies, now), &keys.ingest).await?;
    caught_up(
        &mut ingestion_client(&app.grpc_url).await?,
        &keys.read,
        before + probes as u64,
    )
    .await?;
    let mut identity = IdentityServiceClient::new(load::channel(&app.grpc_url).await?);
    let mut entries = Vec::with_capacity(probes);
    let decided = Utc::now().timestamp_micros() - 60_000_000;
    for n in 0..probes {
        let profile = identity
            .get_profile(request(
                GetProfileRequest {
                    lookup: Some(Lookup::Identifier(Identifier {
                        kind: "user_id".into(),
                        value: user(n),
                    })),
                    include_scores: false,
                },
                &keys.read,
            )?)
            .await
            .with_context(|| format!("probe {n}'s profile"))?
            .into_inner()
            .profile
            .context("no profile")?;
        entries.push(decision_entry(
            profile.profile_id.parse()?,
            PROBES_EXPERIMENT,
            "a",
            3,
            "probes".into(),
            decided,
        ));
    }
    direct.record_decisions(&entries).await?;
    let orders: Vec<(Batch, String)> = (0..probes)
        .map(|n| {
            let event = corvus_ingestion::domain::segment::from_json(
                json!({"type": "track", "event": "Order Completed", "messageId": format!("probe-order-{n}"),
                       "userId": user(n), "properties": {"revenue": 1}, "timestamp": stamp}),
                None,
            )
            .map_err(|v| anyhow::anyhow!("probe {n}'s order is invalid: {v:?}"))?;
            Ok((Batch::grpc(vec![event], now), user(n)))
        })
        .collect::<anyhow::Result<_>>()?;
    // The poller: when the probes' results first counted each number of orders.
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let poller = {
        let (seen, stop, mut client, key) = (seen.clone(), stop.clone(), client.clone(), keys.read.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let answer = client
                    .get_experiment_results(request(
                        pb::GetExperimentResultsRequest {
                            experiment: PROBES_EXPERIMENT.into(),
                            metrics: vec!["revenue".into()],
                            ..Default::default()
                        },
                        &key,
                    )?)
                    .await?
                    .into_inner();
                let counted = answer.metrics[0]
                    .observed
                    .iter()
                    .map(|a| a.mean * a.users as f64)
                    .sum::<f64>()
                    .round() as usize;
                let at = Instant::now();
                {
                    let mut seen = seen.lock().unwrap();
                    while seen.len() < counted {
                        seen.push(at);
                    }
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
            anyhow::Ok(())
        })
    };
    let label = format!("measurement: order to results, {probes} probes, {LOAD_PER_S:.0}/s");
    progress(&label);
    let mut mix = Mix::new(SEED + 7, 10_000);
    let cpu = CpuSample::now();
    let (mut acked, load) = batches_under_load(app, &keys.ingest, &mut mix, 0, orders).await?;
    let deadline = Instant::now() + VISIBLE_WAIT;
    while seen.lock().unwrap().len() < probes && Instant::now() < deadline {
        tokio::time::sleep(POLL_EVERY).await;
    }
    stop.cancel();
    poller.await??;
    let cores = cpu.cores_since();
    acked.sort_by_key(|(n, _, _)| *n);
    let seen = seen.lock().unwrap().clone();
    let missing = probes.saturating_sub(seen.len());
    let latencies: Vec<Duration> = acked
        .iter()
        .enumerate()
        .map(|(k, (_, _, ack))| seen.get(k).copied().unwrap_or(deadline).saturating_duration_since(*ack))
        .collect();
    let mut m = Measured {
        events: load.events,
        elapsed: load.elapsed,
        latencies,
    };
    let mut row = Row::new(label, &mut m, cores).with_target(Target::P99AtMost(VISIBLE_P99));
    row.writes = false;
    eprintln!(
        "corvus-bench:   p50 {:?}, p99 {:?}, {missing} missing",
        row.p50, row.p99
    );
    let mut acks = load.latencies.clone();
    acks.sort_unstable();
    let ms = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
    results.notes.push(format!(
        "measurement freshness: {} of {probes} probes' orders counted in the results (polled every {} ms){}; p50 {}, \
         p99 {}, max {}, from each probe's ack; the rate/s column is the background load (its acks p50 {}, p99 {})",
        probes - missing,
        POLL_EVERY.as_millis(),
        if missing > 0 {
            format!(" ({missing} not within {VISIBLE_WAIT:?}, counted at that wait)")
        } else {
            String::new()
        },
        ms(row.p50),
        ms(row.p99),
        ms(row.max),
        ms(quantile(&acks, 0.5)),
        ms(quantile(&acks, 0.99)),
    ));
    results.rows.push(row);
    Ok(())
}
