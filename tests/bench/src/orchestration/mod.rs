//! Orchestration: `Decide` against the read it is built on, the time from an event to
//! its alert, and `SimulateCampaign` against `Decide`, on the durable app (Postgres and
//! Redis) with identity, scoring and orchestration all consuming.
//!
//! Setup: N people (`--orchestration-people`: 50,000 by default, when the section takes
//! about 4 minutes on 2 cores, a third of them the simulation, whose time a person grows
//! with N, so that 100,000 take about 7; 5,000 with `--quick`), each an identify (an
//! email identifier, traits `first_name` and `timezone`) and a `Consent Updated`
//! (marketing, every channel, granted), sent at full rate; then until identity's lag is
//! 0 and scoring's and orchestration's on identity's log are too. Twenty campaigns for
//! everyone (no audience), live: channels email, sms and push in varied orders, consent
//! to marketing, four priorities, a cap of 3 sends a calendar day across campaigns on
//! every one (and of 1 a week of its own on some), two arms on some, a 10 % holdout on
//! some, quiet hours on some, two or three actions each.
//!
//! (1) Closed loops of C tasks (one connection each) for `--read-secs` a point:
//! GetProfile by email (the cached profile, no scores) over the N people, then Decide by
//! email over the same people, at each C of `--concurrency`; Decide's best rate must
//! reach half of GetProfile's best. Then Decide open loop at half of its own peak for
//! `--latency-secs` (over 4 connections, latency from when a call was due): p99 at
//! most 5 ms. Decide writes (its decision, its touch, its send), so people's caps fill
//! as the runs go: a call blocked by a cap is an answer like any other, and the share of
//! calls that chose a campaign is in the notes. A point of GetProfile with scores, what
//! Decide reads of the person, says how much of Decide's time that read is.
//! (3) A scoring audience holding the N people (`traits.first_name` exists), built; a
//! draft campaign on it, of the twenty's kind, simulated once: people a second, against
//! half of Decide's best.
//! (2) An alert rule (DETRACTOR, cooldown 24 h); StreamAlerts opened; under the identity
//! mix at 5,000 events/s, a probe every 20 ms: a `Survey Answered` with `nps` 3 by a
//! new person (a user id and an email no one had), timed from its ack until its alert,
//! known by the email in its profile summary, comes on the stream: p99 at most 100 ms.
//! It runs last, so that the mix's people are not in the audience of (3).
//!
//! The app runs as `corvus dev` would: the sends Decide makes go out through the default
//! connector (the log) and come back in as events, alongside. Where the time went is in
//! the notes: the server's own time for Decide, what the app's Postgres sessions were
//! doing (`pg_stat_activity`, sampled every 20 ms), the rows each table and index gave
//! (`pg_stat_user_tables`, `_indexes`) a call, a person or an event, and the consumers'
//! lags while the probes ran.

mod alerts;
mod decide;
mod simulate;
mod watch;

use alerts::*;
use decide::*;
use simulate::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use watch::*;

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use corvus_proto::common::v1::{Channel as Medium, Identifier};
use corvus_proto::identity::v1::identity_service_client::IdentityServiceClient;
use corvus_proto::identity::v1::{GetProfileRequest, ListConsumersRequest, get_profile_request::Lookup};
use corvus_proto::orchestration::v1 as pb;
use corvus_proto::orchestration::v1::orchestration_service_client::OrchestrationServiceClient;
use corvus_proto::scoring::v1 as spb;
use corvus_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use http::uri::PathAndQuery;
use prost::Message as _;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::corpus::{Batch, Rng};
use crate::handoff::batches_under_load;
use crate::identity::{BytesCodec, Histogram, LOAD_PER_S, caught_up, ingestion_client, progress, resolved};
use crate::load::{self, Measured, Work, bearer};
use crate::people::Mix;
use crate::report::{CpuSample, Row, Target, quantile};
use crate::scenarios::{BATCH, Plan, Results, SEED};
use crate::setup::{Keys, Resolution, Running, Scratch, durable_config};

const WORKSPACE: &str = "orchestration";
const GET_PROFILE_PATH: &str = "/corvus.identity.v1.IdentityService/GetProfile";
const DECIDE_PATH: &str = "/corvus.orchestration.v1.OrchestrationService/Decide";
const CAMPAIGNS: usize = 20;
/// Of GetProfile's best rate.
const DECIDE_SHARE: f64 = 0.5;
const DECIDE_P99: Duration = Duration::from_millis(5);
/// Of Decide's best rate, in people a second.
const SIMULATE_SHARE: f64 = 0.5;
const ALERT_P99: Duration = Duration::from_millis(100);
const INGEST_TASKS: usize = 4;
/// Connections the open-loop Decide multiplexes its calls over.
const OPEN_LOOP_CONNECTIONS: usize = 4;
/// Concurrent GetProfile calls reading every person once into the cache.
const WARM_TASKS: usize = 8;
/// The server's deadline: a simulation over tens of thousands of people is one call that
/// runs past the default 30 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(900);
const CATCH_UP: Duration = Duration::from_secs(600);
/// How long after the last probe's ack its alert may still come.
const ALERT_WAIT: Duration = Duration::from_secs(60);
const AUDIENCE: &str = "everyone";
const FIRST_NAMES: [&str; 6] = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Margaret"];
const ZONES: [&str; 4] = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "Europe/London"];

fn email(person: usize) -> String {
    format!("member{person}@orch.example")
}

fn request<T>(message: T, key: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", bearer(key)?);
    Ok(request)
}

pub async fn run(plan: &Plan, server_url: &str, redis_url: &str, results: &mut Results) -> anyhow::Result<()> {
    let people = plan.orchestration_people;
    let scratch = Scratch::create(server_url).await?;
    let mut config = durable_config(&scratch, redis_url, Resolution::On);
    config.server.request_timeout = REQUEST_TIMEOUT;
    config.scoring.scores_max_age = plan.scores_max_age;
    let app = Running::start(config).await?;
    let outcome = async {
        ensure!(app.backend == "postgres", "the durable app runs on {}", app.backend);
        measure(plan, &scratch, &app, people, results).await
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
    people: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let keys = app.workspace_keys(WORKSPACE).await?;
    let admin = app.admin_key(WORKSPACE).await?;
    let channel = load::channel(&app.grpc_url).await?;
    let mut identity = IdentityServiceClient::new(channel.clone());
    let mut orchestration = OrchestrationServiceClient::new(channel.clone());
    let mut scoring = ScoringServiceClient::new(channel);

    setup(app, &keys, &mut identity, people, results).await?;
    scratch.checkpoint().await?;
    for n in 0..CAMPAIGNS {
        let name = campaign_name(n);
        orchestration
            .create_campaign(request(
                pb::CreateCampaignRequest {
                    campaign: Some(campaign(n, &name)),
                },
                &admin,
            )?)
            .await
            .with_context(|| format!("create campaign {name}"))?;
        orchestration
            .set_campaign_state(request(
                pb::SetCampaignStateRequest {
                    name: name.clone(),
                    state: pb::CampaignState::Live as i32,
                },
                &admin,
            )?)
            .await
            .with_context(|| format!("launch campaign {name}"))?;
    }
    let decide_best = decide(plan, scratch, app, &keys, people, results).await?;
    simulate(
        scratch,
        &keys,
        &admin,
        &mut scoring,
        &mut orchestration,
        people,
        decide_best,
        results,
    )
    .await?;
    scratch.checkpoint().await?;
    alerts(plan, scratch, app, &keys, &admin, &mut orchestration, people, results).await
}

/// The people, resolved by identity and kept by scoring and orchestration.
async fn setup(
    app: &Running,
    keys: &Keys,
    identity: &mut IdentityServiceClient<Channel>,
    people: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    progress(&format!(
        "orchestration: encoding {people} people's identify and consent"
    ));
    let batches = Arc::new(people_batches(people)?);
    let work = Arc::new(Work {
        batches: batches.clone(),
        keys: vec![keys.ingest.clone()],
        requests: batches.len(),
    });
    let label = format!("orchestration setup: {people} people (identify + consent) to lag 0");
    progress(&label);
    let mut ingestion = ingestion_client(&app.grpc_url).await?;
    let resolved_before = resolved();
    let cpu = CpuSample::now();
    let start = Instant::now();
    let ingest = load::grpc_closed(&app.grpc_url, work, INGEST_TASKS).await?;
    let identity_done = caught_up(&mut ingestion, &keys.read, resolved_before + ingest.events).await?;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let lags = downstream_lags(identity, &keys.read).await?;
        if lags.iter().all(|(_, lag)| *lag == 0) {
            break;
        }
        ensure!(Instant::now() < deadline, "identity's consumers still behind: {lags:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = Instant::now();
    let mut m = Measured {
        events: ingest.events,
        elapsed: done - start,
        latencies: Vec::new(),
    };
    let mut row = Row::new(label, &mut m, cpu.cores_since());
    row.writes = false;
    eprintln!("corvus-bench:   {:.0} events/s", row.events_per_s);
    results.rows.push(row);
    results.notes.push(format!(
        "orchestration setup: {} events of {people} people acked in {:.1} s, resolved by identity {:.1} s after the \
         first send, kept by scoring and orchestration {:.1} s after",
        ingest.events,
        ingest.elapsed.as_secs_f64(),
        (identity_done - start).as_secs_f64(),
        (done - start).as_secs_f64(),
    ));
    Ok(())
}

/// Identity's lag to scoring and to orchestration, on its log.
async fn downstream_lags(
    identity: &mut IdentityServiceClient<Channel>,
    key: &str,
) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let consumers = identity
        .list_consumers(request(ListConsumersRequest {}, key)?)
        .await?
        .into_inner()
        .consumers;
    ["scoring", "orchestration"]
        .into_iter()
        .map(|name| {
            let c = consumers
                .iter()
                .find(|c| c.name == name)
                .with_context(|| format!("no consumer named {name} on identity's log"))?;
            ensure!(c.dead_letters == 0, "{name} dead-lettered: {}", c.last_error);
            Ok((name, c.lag))
        })
        .collect()
}

/// Each person's identify and consent, in batches of [`BATCH`].
fn people_batches(people: usize) -> anyhow::Result<Vec<Batch>> {
    let now = Utc::now();
    let at = |ms: i64| (now - chrono::Duration::milliseconds(ms)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut batches = Vec::with_capacity((2 * people).div_ceil(BATCH));
    let mut events = Vec::with_capacity(BATCH);
    for person in 0..people {
        let user = format!("member-{person:08}");
        let identify = json!({
            "type": "identify",
            "messageId": format!("{user}-identify"),
            "userId": user,
            "traits": {"first_name": FIRST_NAMES[person % FIRST_NAMES.len()], "timezone": ZONES[person % ZONES.len()]},
            "timestamp": at(2_000),
            "context": {"channel": "web", "identifiers": {"email": email(person)}},
        });
        let consent = json!({
            "type": "track",
            "event": "Consent Updated",
            "messageId": format!("{user}-consent"),
            "userId": user,
            "properties": {"purpose": "marketing", "granted": true},
            "timestamp": at(1_000),
            "context": {"channel": "web"},
        });
        for message in [identify, consent] {
            events.push(
                corvus_ingestion::domain::segment::from_json(message, None)
                    .map_err(|v| anyhow::anyhow!("person {person}'s event is invalid: {v:?}"))?,
            );
            if events.len() == BATCH {
                batches.push(Batch::grpc(std::mem::take(&mut events), now));
            }
        }
    }
    if !events.is_empty() {
        batches.push(Batch::grpc(events, now));
    }
    Ok(batches)
}

fn campaign_name(n: usize) -> String {
    format!("campaign-{:02}", n + 1)
}

/// Campaign `n` of the twenty: all for everyone, each a little different.
fn campaign(n: usize, name: &str) -> pb::Campaign {
    // Priorities cycle every 4 campaigns; the rest cycles otherwise, so that the top
    // priority's campaigns differ among themselves too.
    let channels: &[Medium] = match (n / 4) % 4 {
        0 => &[Medium::Email],
        1 => &[Medium::Sms, Medium::Email],
        2 => &[Medium::Push, Medium::Email],
        _ => &[Medium::Email, Medium::Sms, Medium::Push],
    };
    let actions: Vec<pb::Action> = (1..=2 + usize::from(n % 3 == 1))
        .map(|a| pb::Action {
            name: format!("action-{a}"),
            kind: if a == 3 { "offer" } else { "message" }.to_owned(),
            subject: format!("{{{{traits.first_name|Hello}}}}, news {a} from {name}"),
            body: "Hi {{traits.first_name|there}}, this is {{campaign}} for {{profile_id}}.".to_owned(),
            value: 1.0 + a as f64,
            ..pb::Action::default()
        })
        .collect();
    let mut caps = vec![pb::FrequencyCap {
        limit: 3,
        all_campaigns: true,
        calendar_days: 1,
        ..pb::FrequencyCap::default()
    }];
    if n % 3 == 2 {
        caps.push(pb::FrequencyCap {
            limit: 1,
            calendar_days: 7,
            ..pb::FrequencyCap::default()
        });
    }
    let arms = if n.is_multiple_of(3) {
        vec![
            pb::Arm {
                name: "first".to_owned(),
                weight: 0.5,
                actions: vec!["action-1".to_owned()],
            },
            pb::Arm {
                name: "rest".to_owned(),
                weight: 0.5,
                actions: actions.iter().skip(1).map(|a| a.name.clone()).collect(),
            },
        ]
    } else {
        Vec::new()
    };
    pb::Campaign {
        name: name.to_owned(),
        description: format!("bench campaign {}", n + 1),
        tags: vec!["bench".to_owned()],
        actions,
        channels: channels.iter().map(|c| *c as i32).collect(),
        consent_purposes: vec!["marketing".to_owned()],
        caps,
        quiet_hours: (n % 5 == 2).then(|| pb::QuietHours {
            start: "22:00".to_owned(),
            end: "07:00".to_owned(),
        }),
        priority: (n % 4) as i32,
        arms,
        holdout: if n % 5 == 3 { 0.1 } else { 0.0 },
        default_time_zone: "UTC".to_owned(),
        ..pb::Campaign::default()
    }
}
