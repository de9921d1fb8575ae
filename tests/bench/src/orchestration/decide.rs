//! Decide and GetProfile in closed and open loops, and what their answers were.

use super::*;

/// What the calls of a run answered.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    calls: u64,
    /// Decide: a decision made (sending, or holding the person out).
    chose: u64,
    /// Of those, the person held out (the campaign's holdout or the control group).
    held_out: u64,
    /// No decision, a cap among the reasons.
    capped: u64,
}

impl Tally {
    pub(super) fn add(&mut self, other: &Tally) {
        self.calls += other.calls;
        self.chose += other.chose;
        self.held_out += other.held_out;
        self.capped += other.capped;
    }
}

/// Checks an answer and counts it.
pub(super) type Judge = fn(&[u8], &mut Tally) -> anyhow::Result<()>;

pub(super) fn read_answer(answer: &[u8], tally: &mut Tally) -> anyhow::Result<()> {
    ensure!(!answer.is_empty(), "GetProfile answered with an empty message");
    tally.calls += 1;
    Ok(())
}

pub(super) fn decide_answer(answer: &[u8], tally: &mut Tally) -> anyhow::Result<()> {
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
pub(super) fn bodies(people: usize, encode: impl Fn(Identifier) -> Vec<u8>) -> Arc<Vec<Bytes>> {
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
pub(super) async fn decide(
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

pub(super) fn tally_note(what: &str, t: &Tally) -> String {
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
pub(super) fn best(rows: &[(usize, Row)]) -> Option<(usize, &Row)> {
    rows.iter()
        .max_by(|a, b| a.1.events_per_s.total_cmp(&b.1.events_per_s))
        .map(|(c, r)| (*c, r))
}

/// One closed-loop point: its row (added), and what the calls answered.
#[allow(clippy::too_many_arguments)]
pub(super) async fn point(
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
pub(super) async fn call(
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
pub(super) async fn closed_loop(
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
pub(super) async fn open_loop(
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
pub(super) async fn every_once(
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
pub(super) const MAX_AGAIN: u64 = 100;
