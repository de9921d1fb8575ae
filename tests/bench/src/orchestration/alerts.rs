//! The time from a detractor's answer to its alert on StreamAlerts, under load.

use super::*;

/// (2) From a detractor's ack to their alert on StreamAlerts, under the identity mix at
/// [`LOAD_PER_S`].
#[allow(clippy::too_many_arguments)]
pub(super) async fn alerts(
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
    let lags = Lags::sample();
    let deliveries_before = CONSUMERS.map(Histogram::delivery);
    let started = Instant::now();
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
    let deliveries: Vec<String> = CONSUMERS
        .iter()
        .zip(&deliveries_before)
        .filter_map(|(consumer, before)| {
            let delta = Histogram::delivery(consumer).since(before)?;
            Some(format!("{consumer} {}", delta.deliveries(started.elapsed())))
        })
        .collect();
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
    results.notes.push(format!(
        "orchestration alerts: the consumers' deliveries over the same time (corvus_outbox_delivery_seconds): {}",
        deliveries.join("; ")
    ));
    results
        .notes
        .push(format!("orchestration alerts: meanwhile, {}; {scans}", sessions.note()));
    results.rows.push(row);
    Ok(())
}

/// Alerts raised so far in this process, from the app's own counter.
pub(super) fn alerts_raised() -> u64 {
    let text = corvus_platform::metrics::recorder().render();
    text.lines()
        .filter(|l| l.starts_with("corvus_orchestration_alerts_raised_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One `Survey Answered` with `nps` 3 per probe, each by a person no one had seen: a
/// user id and an email of their own; the email is what the alert's summary shows.
pub(super) fn survey_batches(probes: usize) -> anyhow::Result<Vec<(Batch, String)>> {
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

/// How often the consumers' lags are looked at while the probes run.
pub(super) const LAG_SAMPLE: Duration = Duration::from_millis(100);
/// How often the Postgres sessions are looked at while Decide runs.
pub(super) const SESSION_SAMPLE: Duration = Duration::from_millis(20);
