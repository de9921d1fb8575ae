//! SimulateCampaign over an audience of every person.

use super::*;

/// (3) SimulateCampaign over an audience of the N people: people a second, against
/// Decide's best.
#[allow(clippy::too_many_arguments)]
pub(super) async fn simulate(
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
