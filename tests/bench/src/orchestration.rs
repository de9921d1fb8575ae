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

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// What the calls of a run answered.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    calls: u64,
    /// Decide: a decision made (sending, or holding the person out).
    chose: u64,
    /// Of those, the person held out (the campaign's holdout or the control group).
    held_out: u64,
    /// No decision, a cap among the reasons.
    capped: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.calls += other.calls;
        self.chose += other.chose;
        self.held_out += other.held_out;
        self.capped += other.capped;
    }
}

/// Checks an answer and counts it.
type Judge = fn(&[u8], &mut Tally) -> anyhow::Result<()>;

fn read_answer(answer: &[u8], tally: &mut Tally) -> anyhow::Result<()> {
    ensure!(!answer.is_empty(), "GetProfile answered with an empty message");
    tally.calls += 1;
    Ok(())
}

fn decide_answer(answer: &[u8], tally: &mut Tally) -> anyhow::Result<()> {
    let answer = pb::DecideResponse::decode(answer).context("an undecodable DecideResponse")?;
    tally.calls += 1;
    match answer.decision {
        Some(d) => {
            tally.chose += 1;
            if d.arm == "holdout" || d.arm == "control" {
                tally.held_out += 1;
            }
        }
        None => {
            let capped = answer
                .explanation
                .is_some_and(|e| e.blocked.iter().any(|b| b.reason == pb::BlockReason::Cap as i32));
            if capped {
                tally.capped += 1;
            }
        }
    }
    Ok(())
}

/// One request body per person, by email.
fn bodies(people: usize, encode: impl Fn(Identifier) -> Vec<u8>) -> Arc<Vec<Bytes>> {
    Arc::new(
        (0..people)
            .map(|p| {
                Bytes::from(encode(Identifier {
                    kind: "email".to_owned(),
                    value: email(p),
                }))
            })
            .collect(),
    )
}

/// (1) GetProfile and Decide in closed loops, then Decide open loop at half its peak;
/// Decide's best rate.
async fn decide(
    plan: &Plan,
    scratch: &Scratch,
    app: &Running,
    keys: &Keys,
    people: usize,
    results: &mut Results,
) -> anyhow::Result<f64> {
    let key = bearer(&keys.read)?;
    let profile_request = |include_scores: bool| {
        move |identifier: Identifier| {
            GetProfileRequest {
                lookup: Some(Lookup::Identifier(identifier)),
                include_scores,
            }
            .encode_to_vec()
        }
    };
    let reads = bodies(people, profile_request(false));
    let with_scores = bodies(people, profile_request(true));
    let decides = bodies(people, |identifier| {
        pb::DecideRequest {
            person: Some(pb::decide_request::Person::Identifier(identifier)),
            placement: "home_banner".to_owned(),
            ..pb::DecideRequest::default()
        }
        .encode_to_vec()
    });
    progress(&format!(
        "orchestration: reading {people} profiles once by email, into the cache"
    ));
    let (warm, again) = every_once(&app.grpc_url, GET_PROFILE_PATH, &key, reads.clone(), WARM_TASKS).await?;
    results.notes.push(format!(
        "orchestration: the {people} profiles read once by email before the GetProfile points (into identity's \
         cache) at {:.0}/s{}",
        warm.events as f64 / warm.elapsed.as_secs_f64().max(1e-9),
        match again {
            0 => String::new(),
            n => format!(", {n} calls made again after UNAVAILABLE"),
        }
    ));

    let mut profile_rows = Vec::new();
    for &c in &plan.concurrency {
        let label = format!("orchestration: GetProfile by email (cache), {people} people, C={c}");
        let (row, _) = point(
            app,
            &key,
            label,
            GET_PROFILE_PATH,
            &reads,
            c,
            plan,
            read_answer,
            results,
        )
        .await?;
        profile_rows.push((c, row));
    }
    let (profile_c, profile_best) = best(&profile_rows).context("no GetProfile point")?;
    let mut row = profile_best.clone();
    row.scenario = format!("orchestration: GetProfile by email (cache) best (C={profile_c})");
    results.rows.push(row);

    let mut decide_rows = Vec::new();
    let mut tally = Tally::default();
    let before = Histogram::request_time("OrchestrationService/Decide\"");
    let scans_before = table_scans(scratch).await?;
    let sessions = Sessions::sample(scratch).await?;
    for &c in &plan.concurrency {
        let label = format!("orchestration: Decide by email, {CAMPAIGNS} campaigns, {people} people, C={c}");
        let (row, t) = point(app, &key, label, DECIDE_PATH, &decides, c, plan, decide_answer, results).await?;
        tally.add(&t);
        decide_rows.push((c, row));
    }
    let server = Histogram::request_time("OrchestrationService/Decide\"").since(&before);
    let sessions = sessions.stop().await?;
    let scans = scans_note(&scans_before, &table_scans(scratch).await?, "a call", tally.calls);
    let (decide_c, decide_best) = best(&decide_rows).context("no Decide point")?;
    let decide_rate = decide_best.events_per_s;
    let mut row = decide_best.clone();
    row.scenario = format!("orchestration: Decide best (C={decide_c}), against GetProfile's best");
    results
        .rows
        .push(row.with_target(Target::AtLeastPerSec(DECIDE_SHARE * profile_best.events_per_s)));
    results.notes.push(format!(
        "orchestration: Decide's best {decide_rate:.0}/s is {:.3} of GetProfile's best {:.0}/s (target \
         {DECIDE_SHARE}); {}",
        decide_rate / profile_best.events_per_s.max(1e-9),
        profile_best.events_per_s,
        tally_note("the closed-loop Decide calls", &tally),
    ));
    if let Some(server) = server {
        results.notes.push(format!(
            "orchestration: Decide in the closed loops, the server's own time (corvus_request_duration_seconds): \
             {server}"
        ));
    }
    results.notes.push(format!(
        "orchestration: during the closed-loop Decide points, {}; {scans}",
        sessions.note()
    ));

    // What Decide reads of the person: the profile with its scores, at Decide's best C.
    let label = format!("orchestration: GetProfile by email with scores, {people} people, C={decide_c}");
    let (row, _) = point(
        app,
        &key,
        label,
        GET_PROFILE_PATH,
        &with_scores,
        decide_c,
        plan,
        read_answer,
        results,
    )
    .await?;
    results.notes.push(format!(
        "orchestration: GetProfile with scores (what Decide reads of the person, in process) at {:.0}/s against \
         Decide's {decide_rate:.0}/s at C={decide_c}: reading the person is about {:.2} of what a Decide costs",
        row.events_per_s,
        decide_rate / row.events_per_s.max(1e-9),
    ));

    let rate = decide_rate / 2.0;
    let calls = (rate * plan.latency_secs).ceil() as usize;
    let label = format!("orchestration: Decide open loop at {rate:.0}/s (50% of its peak)");
    progress(&label);
    let cpu = CpuSample::now();
    let (mut m, tally) = open_loop(&app.grpc_url, DECIDE_PATH, &key, decides, rate, calls, decide_answer).await?;
    let mut row = Row::new(label, &mut m, cpu.cores_since()).with_target(Target::P99AtMost(DECIDE_P99));
    row.writes = false;
    eprintln!(
        "corvus-bench:   {:.0} calls/s, p50 {:?}, p99 {:?}",
        row.events_per_s, row.p50, row.p99
    );
    results.rows.push(row);
    results.notes.push(format!(
        "orchestration: the open-loop Decide ran over {OPEN_LOOP_CONNECTIONS} connections, latency from when each \
         call was due; {}",
        tally_note("its calls", &tally)
    ));
    Ok(decide_rate)
}

fn tally_note(what: &str, t: &Tally) -> String {
    let share = |n: u64| 100.0 * n as f64 / t.calls.max(1) as f64;
    format!(
        "of {} {what}, {} ({:.1}%) chose a campaign ({} of them, {:.1}% of the calls, holding the person out), {} \
         ({:.1}%) chose nothing with a cap among the reasons, {} ({:.1}%) nothing otherwise",
        t.calls,
        t.chose,
        share(t.chose),
        t.held_out,
        share(t.held_out),
        t.capped,
        share(t.capped),
        t.calls - t.chose - t.capped,
        share(t.calls - t.chose - t.capped),
    )
}

/// The best rate among `rows`, with its concurrency.
fn best(rows: &[(usize, Row)]) -> Option<(usize, &Row)> {
    rows.iter()
        .max_by(|a, b| a.1.events_per_s.total_cmp(&b.1.events_per_s))
        .map(|(c, r)| (*c, r))
}

/// One closed-loop point: its row (added), and what the calls answered.
#[allow(clippy::too_many_arguments)]
async fn point(
    app: &Running,
    key: &AsciiMetadataValue,
    label: String,
    path: &'static str,
    bodies: &Arc<Vec<Bytes>>,
    tasks: usize,
    plan: &Plan,
    judge: Judge,
    results: &mut Results,
) -> anyhow::Result<(Row, Tally)> {
    progress(&label);
    let cpu = CpuSample::now();
    let (mut m, tally) = closed_loop(&app.grpc_url, path, key, bodies.clone(), tasks, plan.read_secs, judge).await?;
    let mut row = Row::new(label, &mut m, cpu.cores_since());
    row.writes = false;
    eprintln!(
        "corvus-bench:   {:.0} calls/s, p50 {:?}, p99 {:?}",
        row.events_per_s, row.p50, row.p99
    );
    let per_call = |cores: f64| cores * 1e6 / row.events_per_s.max(1e-9);
    results.notes.push(format!(
        "{}: CPU a call {:.0} µs in this process (client and server), {:.0} µs in Postgres, {:.0} µs in Redis",
        row.scenario,
        per_call(row.cpu.app),
        per_call(row.cpu.postgres),
        per_call(row.cpu.redis)
    ));
    results.rows.push(row.clone());
    Ok((row, tally))
}

/// Sends `body` to `path` and judges the answer.
async fn call(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    key: &AsciiMetadataValue,
    body: Bytes,
    judge: Judge,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    client.ready().await.context("gRPC channel not ready")?;
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert("authorization", key.clone());
    match client.unary(request, PathAndQuery::from_static(path), BytesCodec).await {
        Ok(answer) => judge(answer.get_ref(), tally),
        Err(status) => Err(anyhow::Error::new(status).context(format!("{path} failed"))),
    }
}

/// Closed loop for `secs`: `tasks` tasks, one connection each, each sending one of
/// `bodies` at random as soon as its last call came back.
async fn closed_loop(
    grpc_url: &str,
    path: &'static str,
    key: &AsciiMetadataValue,
    bodies: Arc<Vec<Bytes>>,
    tasks: usize,
    secs: f64,
    judge: Judge,
) -> anyhow::Result<(Measured, Tally)> {
    let mut clients = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        clients.push(load::connect(grpc_url).await?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for (task, mut client) in clients.into_iter().enumerate() {
        let (bodies, key) = (bodies.clone(), key.clone());
        set.spawn(async move {
            let mut rng = Rng::new(SEED ^ 0x0DEC1DE, task as u64);
            let mut latencies = Vec::new();
            let mut tally = Tally::default();
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                let body = bodies[rng.below(bodies.len() as u64) as usize].clone();
                call(&mut client, path, &key, body, judge, &mut tally).await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok((latencies, tally))
        });
    }
    let mut measured = Measured::default();
    let mut tally = Tally::default();
    while let Some(done) = set.join_next().await {
        let (latencies, t) = done??;
        measured.events += latencies.len() as u64;
        measured.latencies.extend(latencies);
        tally.add(&t);
    }
    measured.elapsed = started.elapsed();
    Ok((measured, tally))
}

/// Open loop: `calls` calls at `per_s` a second on a fixed schedule, over
/// [`OPEN_LOOP_CONNECTIONS`] connections, each to one of `bodies` at random; latency from
/// when a call was due.
async fn open_loop(
    grpc_url: &str,
    path: &'static str,
    key: &AsciiMetadataValue,
    bodies: Arc<Vec<Bytes>>,
    per_s: f64,
    calls: usize,
    judge: Judge,
) -> anyhow::Result<(Measured, Tally)> {
    ensure!(per_s > 0.0, "open-loop rate must be positive");
    let mut clients = Vec::with_capacity(OPEN_LOOP_CONNECTIONS);
    for _ in 0..OPEN_LOOP_CONNECTIONS {
        clients.push(load::connect(grpc_url).await?);
    }
    let mut rng = Rng::new(SEED ^ 0x09E7, 0);
    let started = Instant::now();
    let mut set = JoinSet::new();
    let mut measured = Measured::default();
    let mut tally = Tally::default();
    let mut reap = |done: Result<anyhow::Result<(Duration, Tally)>, tokio::task::JoinError>| {
        let (latency, t) = done??;
        measured.events += 1;
        measured.latencies.push(latency);
        tally.add(&t);
        anyhow::Ok(())
    };
    for j in 0..calls {
        let due = started + Duration::from_secs_f64(j as f64 / per_s);
        tokio::time::sleep_until(due.into()).await;
        let mut client = clients[j % OPEN_LOOP_CONNECTIONS].clone();
        let body = bodies[rng.below(bodies.len() as u64) as usize].clone();
        let key = key.clone();
        set.spawn(async move {
            let mut t = Tally::default();
            call(&mut client, path, &key, body, judge, &mut t).await?;
            anyhow::Ok((due.elapsed(), t))
        });
        // Reap finished calls as we go, so that an error aborts the run early.
        while let Some(done) = set.try_join_next() {
            reap(done)?;
        }
    }
    while let Some(done) = set.join_next().await {
        reap(done)?;
    }
    measured.elapsed = started.elapsed();
    Ok((measured, tally))
}

/// Every body once, `tasks` calls at a time; a call refused as UNAVAILABLE (the
/// server's pool short of a connection for a moment, on a machine the run shares) is made
/// again. The calls made, and how many were made again.
async fn every_once(
    grpc_url: &str,
    path: &'static str,
    key: &AsciiMetadataValue,
    bodies: Arc<Vec<Bytes>>,
    tasks: usize,
) -> anyhow::Result<(Measured, u64)> {
    let client = load::connect(grpc_url).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let (mut client, bodies, key, next) = (client.clone(), bodies.clone(), key.clone(), next.clone());
        set.spawn(async move {
            let (mut tally, mut again) = (Tally::default(), 0);
            while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                loop {
                    match call(&mut client, path, &key, body.clone(), read_answer, &mut tally).await {
                        Ok(()) => break,
                        Err(e)
                            if again < MAX_AGAIN
                                && e.downcast_ref::<tonic::Status>()
                                    .is_some_and(|s| s.code() == tonic::Code::Unavailable) =>
                        {
                            again += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            anyhow::Ok((tally.calls, again))
        });
    }
    let (mut measured, mut again) = (Measured::default(), 0);
    while let Some(done) = set.join_next().await {
        let (calls, retried) = done??;
        measured.events += calls;
        again += retried;
    }
    measured.elapsed = started.elapsed();
    Ok((measured, again))
}

/// Calls a warming task makes again, at most, before it gives up.
const MAX_AGAIN: u64 = 100;

/// (3) SimulateCampaign over an audience of the N people: people a second, against
/// Decide's best.
#[allow(clippy::too_many_arguments)]
async fn simulate(
    scratch: &Scratch,
    keys: &Keys,
    admin: &str,
    scoring: &mut ScoringServiceClient<Channel>,
    orchestration: &mut OrchestrationServiceClient<Channel>,
    people: usize,
    decide_rate: f64,
    results: &mut Results,
) -> anyhow::Result<()> {
    progress(&format!(
        "orchestration: building audience {AUDIENCE:?} of {people} people"
    ));
    let everyone = spb::Condition {
        condition: Some(spb::condition::Condition::Compare(spb::Comparison {
            field: "traits.first_name".into(),
            op: spb::Operator::Exists as i32,
            value: None,
        })),
    };
    let started = Instant::now();
    scoring
        .create_audience(request(
            spb::CreateAudienceRequest {
                audience: Some(spb::Audience {
                    name: AUDIENCE.into(),
                    definition: Some(everyone),
                    ..spb::Audience::default()
                }),
            },
            admin,
        )?)
        .await
        .context("create the audience")?;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let audiences = scoring
            .list_audiences(request(spb::ListAudiencesRequest {}, &keys.read)?)
            .await?
            .into_inner()
            .audiences;
        let audience = audiences
            .iter()
            .find(|a| a.name == AUDIENCE)
            .context("the audience is gone")?;
        if audience.built_at.is_some() && audience.size == people as u64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "audience {AUDIENCE:?} not built with {people} members after {CATCH_UP:?}: built {}, size {}",
            audience.built_at.is_some(),
            audience.size
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let built = started.elapsed();

    let name = "simulated";
    let mut draft = campaign(CAMPAIGNS, name);
    draft.audience = AUDIENCE.into();
    draft.priority = 3;
    orchestration
        .create_campaign(request(pb::CreateCampaignRequest { campaign: Some(draft) }, admin)?)
        .await
        .context("create the draft campaign")?;
    let label = format!("orchestration: SimulateCampaign, {people} people (people/s)");
    progress(&label);
    let scans_before = table_scans(scratch).await?;
    let sessions = Sessions::sample(scratch).await?;
    let cpu = CpuSample::now();
    let started = Instant::now();
    let sim = orchestration
        .simulate_campaign(request(
            pb::SimulateCampaignRequest {
                name: name.into(),
                ..pb::SimulateCampaignRequest::default()
            },
            &keys.read,
        )?)
        .await
        .context("SimulateCampaign")?
        .into_inner();
    let took = started.elapsed();
    let sessions = sessions.stop().await?;
    let scans = scans_note(&scans_before, &table_scans(scratch).await?, "a person", people as u64);
    ensure!(
        sim.audience == people as u64,
        "the simulation ran over {} people, not {people}",
        sim.audience
    );
    let mut m = Measured {
        events: sim.audience,
        elapsed: took,
        latencies: vec![took],
    };
    let mut row =
        Row::new(label, &mut m, cpu.cores_since()).with_target(Target::AtLeastPerSec(SIMULATE_SHARE * decide_rate));
    row.writes = false;
    eprintln!(
        "corvus-bench:   {:.0} people/s, {:.1} s",
        row.events_per_s,
        took.as_secs_f64()
    );
    let blocked: Vec<String> = sim
        .blocked
        .iter()
        .map(|b| {
            let reason = pb::BlockReason::try_from(b.reason)
                .map_or("unknown", |r| r.as_str_name())
                .trim_start_matches("BLOCK_REASON_")
                .to_ascii_lowercase();
            format!("{} {reason}", b.people)
        })
        .collect();
    results.notes.push(format!(
        "orchestration: the audience of {people} built {:.1} s after it was created; SimulateCampaign took {:.2} s \
         for {} people ({:.0}/s, {:.3} of Decide's best {decide_rate:.0}/s; target {SIMULATE_SHARE}): {} would \
         receive it, {} unknown, blocked: {}",
        built.as_secs_f64(),
        took.as_secs_f64(),
        sim.audience,
        row.events_per_s,
        row.events_per_s / decide_rate.max(1e-9),
        sim.would_send,
        sim.unknown,
        if blocked.is_empty() {
            "none".to_owned()
        } else {
            blocked.join(", ")
        },
    ));
    results.notes.push(format!(
        "orchestration: during SimulateCampaign, {}; {scans}",
        sessions.note()
    ));
    results.rows.push(row);
    Ok(())
}

/// (2) From a detractor's ack to their alert on StreamAlerts, under the identity mix at
/// [`LOAD_PER_S`].
#[allow(clippy::too_many_arguments)]
async fn alerts(
    plan: &Plan,
    scratch: &Scratch,
    app: &Running,
    keys: &Keys,
    admin: &str,
    orchestration: &mut OrchestrationServiceClient<Channel>,
    people: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let rule = "detractors";
    orchestration
        .create_alert_rule(request(
            pb::CreateAlertRuleRequest {
                rule: Some(pb::AlertRule {
                    name: rule.into(),
                    kind: pb::AlertKind::Detractor as i32,
                    events: vec!["Survey Answered".into()],
                    // The cooldown is the default, 24 hours.
                    ..pb::AlertRule::default()
                }),
            },
            admin,
        )?)
        .await
        .context("create the alert rule")?;
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut stream = orchestration
        .stream_alerts(request(
            pb::StreamAlertsRequest {
                rules: vec![rule.into()],
                ..pb::StreamAlertsRequest::default()
            },
            &keys.read,
        )?)
        .await
        .context("StreamAlerts")?
        .into_inner();
    let recorder = {
        let arrived = arrived.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                let now = Instant::now();
                if let Some(email) = message.alert.and_then(|a| a.profile).map(|p| p.email) {
                    arrived.lock().unwrap().entry(email).or_insert(now);
                }
            }
        })
    };
    let label = format!(
        "orchestration: event to alert on StreamAlerts, {} probes, {LOAD_PER_S:.0}/s",
        plan.probes
    );
    progress(&label);
    // The identity mix for the load, of as many people again as the section has.
    let mut mix = Mix::new(SEED, people.max(1_000));
    let surveys = survey_batches(plan.probes)?;
    let cpu = CpuSample::now();
    let alerts_before = alerts_raised();
    let scans_before = table_scans(scratch).await?;
    let lags = Lags::sample(app, &keys.read).await?;
    let sessions = Sessions::sample(scratch).await?;
    let (acked, load) = batches_under_load(app, &keys.ingest, &mut mix, 0, surveys).await?;
    let deadline = Instant::now() + ALERT_WAIT;
    loop {
        let missing = {
            let arrived = arrived.lock().unwrap();
            acked
                .iter()
                .filter(|(_, email, _)| !arrived.contains_key(email))
                .count()
        };
        if missing == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    recorder.abort();
    let lags = lags.stop().await?;
    let sessions = sessions.stop().await?;
    let scans = scans_note(
        &scans_before,
        &table_scans(scratch).await?,
        "an event of the load",
        load.events,
    );
    let cores = cpu.cores_since();
    let arrived = arrived.lock().unwrap().clone();
    let mut latencies = Vec::with_capacity(acked.len());
    let mut missing = 0;
    for (_, email, ack) in &acked {
        match arrived.get(email) {
            Some(at) => latencies.push(at.saturating_duration_since(*ack)),
            None => {
                // Never came: counted as late as the wait.
                missing += 1;
                latencies.push(deadline.saturating_duration_since(*ack));
            }
        }
    }
    let mut m = Measured {
        events: load.events,
        elapsed: load.elapsed,
        latencies,
    };
    let mut row = Row::new(label, &mut m, cores).with_target(Target::P99AtMost(ALERT_P99));
    row.writes = false;
    eprintln!(
        "corvus-bench:   p50 {:?}, p99 {:?}, {missing} missing",
        row.p50, row.p99
    );
    let mut acks = load.latencies.clone();
    acks.sort_unstable();
    let ms = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
    results.notes.push(format!(
        "orchestration alerts: {} of {} probes' alerts arrived on the stream{}; p50 {}, p99 {}, max {}, from each \
         probe's ack; {} alerts raised in all (corvus_orchestration_alerts_raised_total); the rate/s column is the \
         background load (its acks p50 {}, p99 {})",
        acked.len() - missing,
        acked.len(),
        if missing > 0 {
            format!(" ({missing} not within {ALERT_WAIT:?} of the last ack, counted at that wait)")
        } else {
            String::new()
        },
        ms(row.p50),
        ms(row.p99),
        ms(row.max),
        alerts_raised() - alerts_before,
        ms(quantile(&acks, 0.5)),
        ms(quantile(&acks, 0.99)),
    ));
    results.notes.push(format!(
        "orchestration alerts: the lags while the probes ran, sampled every {} ms from the first probe until the \
         last alert (or the wait's end): {}",
        LAG_SAMPLE.as_millis(),
        lags.note()
    ));
    results
        .notes
        .push(format!("orchestration alerts: meanwhile, {}; {scans}", sessions.note()));
    results.rows.push(row);
    Ok(())
}

/// Alerts raised so far in this process, from the app's own counter.
fn alerts_raised() -> u64 {
    let text = corvus_platform::metrics::recorder().render();
    text.lines()
        .filter(|l| l.starts_with("corvus_orchestration_alerts_raised_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One `Survey Answered` with `nps` 3 per probe, each by a person no one had seen: a
/// user id and an email of their own; the email is what the alert's summary shows.
fn survey_batches(probes: usize) -> anyhow::Result<Vec<(Batch, String)>> {
    let now = Utc::now();
    (0..probes)
        .map(|n| {
            let email = format!("surveyed-{n}@orch.example");
            let message = json!({
                "type": "track",
                "event": "Survey Answered",
                "messageId": format!("survey-{n}"),
                "userId": format!("surveyed-{n:06}"),
                "properties": {"nps": 3, "comment": "the parcel came late"},
                "timestamp": now.to_rfc3339_opts(SecondsFormat::Millis, true),
                "context": {"channel": "survey", "identifiers": {"email": email}},
            });
            let event = corvus_ingestion::domain::segment::from_json(message, None)
                .map_err(|v| anyhow::anyhow!("survey event {n} is invalid: {v:?}"))?;
            Ok((Batch::grpc(vec![event], now), email))
        })
        .collect()
}

/// How often the consumers' lags are looked at while the probes run: each look counts
/// them in Postgres, which the run shares.
const LAG_SAMPLE: Duration = Duration::from_millis(500);
/// How often the Postgres sessions are looked at while Decide runs.
const SESSION_SAMPLE: Duration = Duration::from_millis(20);

/// (samples, sum, largest) of each consumer's lag.
type LagsSeen = HashMap<&'static str, (u64, u64, u64)>;

/// Identity's lag on the event log, and scoring's and orchestration's on identity's
/// log, sampled until stopped: the mean and the largest of each.
struct Lags {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<LagsSeen>>,
}

impl Lags {
    async fn sample(app: &Running, key: &str) -> anyhow::Result<Self> {
        let mut ingestion = ingestion_client(&app.grpc_url).await?;
        let mut identity = IdentityServiceClient::new(load::channel(&app.grpc_url).await?);
        let key = key.to_owned();
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = LagsSeen::new();
            let mut next = Instant::now();
            while !stopping.is_cancelled() {
                let mut lags = downstream_lags(&mut identity, &key).await?;
                let events = ingestion
                    .list_consumers(request(corvus_proto::ingestion::v1::ListConsumersRequest {}, &key)?)
                    .await?
                    .into_inner()
                    .consumers;
                if let Some(identity) = events.iter().find(|c| c.name == "identity") {
                    lags.push(("identity", identity.lag));
                }
                for (name, lag) in lags {
                    let entry = seen.entry(name).or_default();
                    entry.0 += 1;
                    entry.1 += lag;
                    entry.2 = entry.2.max(lag);
                }
                next += LAG_SAMPLE;
                tokio::time::sleep_until(next.max(Instant::now()).into()).await;
            }
            anyhow::Ok(seen)
        });
        Ok(Self { stop, task })
    }

    async fn stop(self) -> anyhow::Result<LagNote> {
        self.stop.cancel();
        Ok(LagNote(self.task.await.context("the lag sampler panicked")??))
    }
}

struct LagNote(LagsSeen);

impl LagNote {
    fn note(&self) -> String {
        ["identity", "scoring", "orchestration"]
            .iter()
            .filter_map(|name| {
                let (samples, sum, max) = self.0.get(name)?;
                Some(format!(
                    "{name} mean {:.0}, max {max} entries ({samples} samples)",
                    *sum as f64 / (*samples).max(1) as f64
                ))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The app's Postgres sessions not idle, sampled from `pg_stat_activity` until stopped:
/// by service, state (or what they wait on) and statement.
struct Sessions {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<SessionNote>>,
}

#[derive(Default)]
struct SessionNote {
    samples: u64,
    seen: HashMap<(String, String, String), u64>,
}

impl Sessions {
    async fn sample(scratch: &Scratch) -> anyhow::Result<Self> {
        let mut conn = scratch.connect().await?;
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut note = SessionNote::default();
            let mut next = Instant::now();
            while !stopping.is_cancelled() {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT application_name, \
                     CASE WHEN state = 'active' AND wait_event IS NOT NULL \
                          THEN 'waiting on ' || wait_event_type || ':' || wait_event ELSE state END, \
                     left(regexp_replace(query, '\\s+', ' ', 'g'), 60) \
                     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     AND application_name LIKE 'corvus-%' AND state <> 'idle'",
                )
                .fetch_all(&mut conn)
                .await?;
                note.samples += 1;
                for row in rows {
                    *note.seen.entry(row).or_default() += 1;
                }
                next += SESSION_SAMPLE;
                tokio::time::sleep_until(next.max(Instant::now()).into()).await;
            }
            anyhow::Ok(note)
        });
        Ok(Self { stop, task })
    }

    async fn stop(self) -> anyhow::Result<SessionNote> {
        self.stop.cancel();
        self.task.await.context("the session sampler panicked")?
    }
}

impl SessionNote {
    fn note(&self) -> String {
        let share = |n: u64| 100.0 * n as f64 / self.samples.max(1) as f64;
        let busy: u64 = self.seen.values().sum();
        let mut top: Vec<_> = self.seen.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = top
            .iter()
            .take(8)
            .map(|((app, state, query), n)| format!("{:.0}% {app} {state} \"{query}…\"", share(**n)))
            .collect();
        format!(
            "the app's Postgres sessions, sampled every {} ms ({} samples), were busy {:.0}% of the time (summed over \
             sessions); most seen: {}",
            SESSION_SAMPLE.as_millis(),
            self.samples,
            share(busy),
            top.join(", ")
        )
    }
}

/// Scans so far and the rows they read: each table's sequential scans
/// (`pg_stat_user_tables`) and each index's scans with the entries they read
/// (`pg_stat_user_indexes`); a busy session publishes its counts within a second.
async fn table_scans(scratch: &Scratch) -> anyhow::Result<HashMap<String, [i64; 2]>> {
    let mut conn = scratch.connect().await?;
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT schemaname || '.' || relname || ' sequentially', coalesce(seq_scan, 0), \
         coalesce(seq_tup_read, 0) FROM pg_stat_user_tables \
         UNION ALL SELECT schemaname || '.' || relname || ' by ' || indexrelname, idx_scan, idx_tup_read \
         FROM pg_stat_user_indexes",
    )
    .fetch_all(&mut conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(what, scans, read)| (what, [scans, read]))
        .collect())
}

/// What was read most between two looks, by rows, per `unit` of `units`.
fn scans_note(before: &HashMap<String, [i64; 2]>, after: &HashMap<String, [i64; 2]>, unit: &str, units: u64) -> String {
    let mut read: Vec<(&String, [i64; 2])> = after
        .iter()
        .map(|(what, now)| {
            let was = before.get(what).copied().unwrap_or_default();
            (what, [now[0] - was[0], now[1] - was[1]])
        })
        .filter(|(_, d)| d[1] > 0)
        .collect();
    read.sort_by_key(|(_, d)| -d[1]);
    let per = |n: i64| n as f64 / units.max(1) as f64;
    let top: Vec<String> = read
        .iter()
        .take(5)
        .map(|(what, d)| format!("{what}: {:.1} rows in {:.2} scans", per(d[1]), per(d[0])))
        .collect();
    format!(
        "read {unit} (pg_stat_user_tables and _indexes): {}",
        if top.is_empty() {
            "nothing".to_owned()
        } else {
            top.join("; ")
        }
    )
}
