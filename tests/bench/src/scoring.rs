//! Scoring at identity's pace, and how fresh what it keeps is.
//!
//! (a) The identity mix resolved by identity and kept by scoring (facts, and an audience
//! on the person's traits kept current as their events arrive), at full ingest rate: the
//! time from the first send until identity's lag is 0, and until scoring's is. Scoring
//! keeps up when it ends within a few per cent of identity.
//! (b) Under 5,000 events/s, a probe every 20 ms (an identify with an email no one had),
//! timed from its ack until the person's entry into the audience "the email holds
//! `probe-`" comes on `StreamAudienceChanges`. Scoring writes the event's facts before it
//! evaluates the audiences in the same delivery, so the features are visible no later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use corvus_proto::common::v1::Identifier;
use corvus_proto::identity::v1::get_profile_request::Lookup;
use corvus_proto::identity::v1::identity_service_client::IdentityServiceClient;
use corvus_proto::identity::v1::{GetProfileRequest, ListConsumersRequest};
use corvus_proto::scoring::v1 as pb;
use corvus_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use tonic::transport::Channel;

use crate::handoff::probes_under_load;
use crate::identity::{EVENTS_PER_PERSON, FRESH_P99, LOAD_PER_S, caught_up, ingestion_client, progress, resolved};
use crate::load::{self, Measured, Work, bearer};
use crate::people::Mix;
use crate::report::{CpuSample, Row, Target};
use crate::scenarios::{BATCH, Plan, Results, SEED};
use crate::setup::{Resolution, Running, Scratch, durable_config};

const INGEST_TASKS: usize = 4;
/// Scoring's pace, of identity's: it ends the mix within this share of identity's time.
const KEEPS_UP: f64 = 0.95;
const TIMEOUT: Duration = Duration::from_secs(120);
const AUDIENCE: &str = "probed";

fn request<T>(message: T, key: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", bearer(key)?);
    Ok(request)
}

/// Scoring's lag on identity's log.
pub(crate) async fn scoring_lag(identity: &mut IdentityServiceClient<Channel>, key: &str) -> anyhow::Result<u64> {
    let consumers = identity
        .list_consumers(request(ListConsumersRequest {}, key)?)
        .await?
        .into_inner()
        .consumers;
    let scoring = consumers
        .iter()
        .find(|c| c.name == "scoring")
        .context("no consumer named scoring on identity's log")?;
    ensure!(
        scoring.dead_letters == 0,
        "scoring dead-lettered: {}",
        scoring.last_error
    );
    Ok(scoring.lag)
}

pub async fn run(plan: &Plan, server_url: &str, redis_url: &str, results: &mut Results) -> anyhow::Result<()> {
    let scratch = Scratch::create(server_url).await?;
    let mut config = durable_config(&scratch, redis_url, Resolution::On);
    config.scoring.scores_max_age = plan.scores_max_age;
    let app = Running::start(config).await?;
    let outcome = measure(plan, &scratch, &app, results).await;
    let stopped = app.stop().await;
    let dropped = scratch.drop_database().await;
    outcome?;
    stopped?;
    dropped
}

async fn measure(plan: &Plan, scratch: &Scratch, app: &Running, results: &mut Results) -> anyhow::Result<()> {
    let keys = app.workspace_keys("scoring").await?;
    let admin = app.admin_key("scoring").await?;
    let channel = load::channel(&app.grpc_url).await?;
    let mut scoring = ScoringServiceClient::new(channel.clone());
    let mut identity = IdentityServiceClient::new(channel);
    let probed = pb::Condition {
        condition: Some(pb::condition::Condition::Compare(pb::Comparison {
            field: "traits.email".into(),
            op: pb::Operator::Contains as i32,
            value: Some(corvus_proto::json::json_to_value(&"probe-".into())),
        })),
    };
    let audience = pb::Audience {
        name: AUDIENCE.into(),
        definition: Some(probed),
        ..pb::Audience::default()
    };
    scoring
        .create_audience(request(
            pb::CreateAudienceRequest {
                audience: Some(audience),
            },
            &admin,
        )?)
        .await?;

    // (a) The mix at full rate: identity's end, then scoring's.
    let mut mix = Mix::new(SEED, (plan.identity_events / EVENTS_PER_PERSON).max(1));
    progress("scoring: encoding the mix");
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
    let identity_done = caught_up(&mut ingestion, &keys.read, resolved_before + ingest.events).await?;
    let deadline = Instant::now() + TIMEOUT;
    while scoring_lag(&mut identity, &keys.read).await? > 0 {
        ensure!(Instant::now() < deadline, "scoring did not catch up with identity");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scoring_done = Instant::now();
    let cores = cpu.cores_since();
    let mut resolved_by_identity = Measured {
        events: ingest.events,
        elapsed: identity_done - start,
        latencies: Vec::new(),
    };
    let identity_row = Row::new(
        "scoring: the mix resolved by identity (its lag 0)",
        &mut resolved_by_identity,
        cores,
    );
    let mut kept = Measured {
        events: ingest.events,
        elapsed: scoring_done - start,
        latencies: Vec::new(),
    };
    let mut scoring_row = Row::new(
        "scoring: the mix kept by scoring, an audience kept current (its lag 0)",
        &mut kept,
        cores,
    )
    .with_target(Target::AtLeastPerSec(KEEPS_UP * identity_row.events_per_s));
    scoring_row.writes = false;
    results.notes.push(format!(
        "scoring at identity's pace: identity resolved the mix in {:.2} s, scoring had kept it {:.2} s later \
         ({:.3} of identity's rate; target {KEEPS_UP})",
        (identity_done - start).as_secs_f64(),
        (scoring_done - identity_done).as_secs_f64(),
        scoring_row.events_per_s / identity_row.events_per_s.max(1e-9),
    ));
    results.rows.push(identity_row);
    results.rows.push(scoring_row);

    // (b) Freshness under load.
    scratch.checkpoint().await?;
    let entered: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut changes = scoring
        .stream_audience_changes(request(
            pb::StreamAudienceChangesRequest {
                name: AUDIENCE.into(),
                after_sequence: None,
            },
            &admin,
        )?)
        .await?
        .into_inner();
    let recorder = {
        let entered = entered.clone();
        tokio::spawn(async move {
            while let Ok(Some(change)) = changes.message().await {
                if change.entered {
                    entered.lock().unwrap().insert(change.profile_id, Instant::now());
                }
            }
        })
    };
    let label = format!(
        "scoring freshness: ack to audience entry, {} probes, {LOAD_PER_S:.0}/s",
        plan.probes
    );
    progress(&label);
    let cpu = CpuSample::now();
    let (acked, load) = probes_under_load(app, &keys.ingest, &mut mix, 0, plan.probes).await?;
    let deadline = Instant::now() + TIMEOUT;
    let mut latencies = Vec::with_capacity(acked.len());
    for (_, email, ack) in &acked {
        let lookup = GetProfileRequest {
            lookup: Some(Lookup::Identifier(Identifier {
                kind: "email".into(),
                value: email.clone(),
            })),
            include_scores: false,
        };
        let profile = loop {
            match identity.get_profile(request(lookup.clone(), &keys.read)?).await {
                Ok(found) => break found.into_inner().profile.context("a profile")?.profile_id,
                Err(status) if status.code() == tonic::Code::NotFound && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(status) => return Err(status).context(format!("the profile of {email}")),
            }
        };
        let at = loop {
            if let Some(at) = entered.lock().unwrap().get(&profile) {
                break *at;
            }
            ensure!(Instant::now() < deadline, "{email} never entered the audience");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        latencies.push(at.saturating_duration_since(*ack));
    }
    recorder.abort();
    let mut m = Measured {
        events: load.events,
        elapsed: load.elapsed,
        latencies,
    };
    let mut row = Row::new(label, &mut m, cpu.cores_since()).with_target(Target::P99AtMost(FRESH_P99));
    row.writes = false;
    eprintln!("corvus-bench:   p50 {:?}, p99 {:?}", row.p50, row.p99);
    results.rows.push(row);
    Ok(())
}
