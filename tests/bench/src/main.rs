//! `corvus-bench`: how fast the all-in-one Corvus app ingests on this machine, measured
//! in one run against a raw `COPY` of the same rows, how fast identity resolves what it
//! ingests and serves profiles, and how fast orchestration decides, printed as a table.
//!
//! `cargo run --release -p corvus-bench -- [--quick] [--events N] [--only SECTION]...`
//!
//! The app runs in this process (as `corvus dev` would), over a throwaway Postgres
//! database `corvus_bench_<random>` that is dropped at the end, and Redis; the embedded
//! runs use SQLite in a temporary directory. Client and server share the process, its
//! tokio runtime and the machine's cores, as a sidecar or a co-located client would.
//! The ingestion sections run without identity consuming the log; the identity section
//! runs with it.

mod copy;
mod corpus;
mod handoff;
mod identity;
mod load;
mod measurement;
mod models;
mod orchestration;
mod people;
mod report;
mod scenarios;
mod scoring;
mod setup;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sqlx::{Connection as _, PgConnection};

use crate::scenarios::{BATCH, Plan, Results, SEED};
use crate::setup::Scratch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Grpc,
    Http,
    Embedded,
    Latency,
    Copy,
    Identity,
    /// Identity's log to three consumers, against none; freshness downstream.
    Handoff,
    /// Scoring's model fits against the Python reference libraries.
    Models,
    /// Scoring at identity's pace; features and audience membership fresh under load.
    Scoring,
    /// Decide against GetProfile, its latency, event to alert, SimulateCampaign.
    Orchestration,
    /// Experiment results against exposures; order to results; off-policy estimates
    /// against obp.
    Measurement,
}

#[derive(Debug, Parser)]
#[command(
    name = "corvus-bench",
    about = "Ingest throughput and ack latency of the all-in-one Corvus app, against a raw COPY, \
             and identity resolution, freshness and profile reads"
)]
struct Args {
    /// Postgres server to create the throwaway database on.
    #[arg(
        long,
        env = "CORVUS_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// NATS server with JetStream, for the hand-off through a stream (the hand-off
    /// section); empty to leave those runs out.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Events per measured point [default: 300000, or 20000 with --quick].
    #[arg(long)]
    events: Option<usize>,
    /// Small sizes, for a smoke check in under a minute.
    #[arg(long)]
    quick: bool,
    /// Run only these sections (repeatable); all by default.
    #[arg(long, value_enum)]
    only: Vec<Section>,
    /// Client tasks (one connection each) to try in the closed-loop runs.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    concurrency: Vec<usize>,
    /// Length of each open-loop latency run in seconds [default: 10, or 2 with --quick].
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Take this as the gRPC peak (events/s) for the latency runs instead of the one
    /// measured, e.g. to see the unloaded service time with a small figure.
    #[arg(long)]
    peak: Option<f64>,
    /// Events of the identity mix [default: 200000, or 20000 with --quick].
    #[arg(long)]
    identity_events: Option<usize>,
    /// Probes of the identity and hand-off sections (freshness) and of the orchestration
    /// section (event to alert) [default: 300, or 50 with --quick].
    #[arg(long)]
    probes: Option<usize>,
    /// Length of each GetProfile point in seconds [default: 10, or 2 with --quick].
    #[arg(long)]
    read_secs: Option<f64>,
    /// Seconds each person's scores are kept for as events arrive, in the scoring and
    /// orchestration sections (`[scoring] scores_max_age`); 0, the app's default, keeps
    /// none.
    #[arg(long, default_value_t = 0)]
    scores_max_age_secs: u64,
    /// People of the orchestration section [default: 50000, or 5000 with --quick].
    #[arg(long)]
    orchestration_people: Option<usize>,
    /// Exposures of the measurement section's largest point; the others are a tenth and
    /// a hundredth of it [default: 1000000, or 100000 with --quick].
    #[arg(long)]
    measurement_exposures: Option<usize>,
}

impl Args {
    fn plan(&self) -> anyhow::Result<Plan> {
        let on = |s: Section| self.only.is_empty() || self.only.contains(&s);
        let events = self.events.unwrap_or(if self.quick { 20_000 } else { 300_000 });
        anyhow::ensure!(events >= BATCH, "--events must be at least {BATCH}");
        anyhow::ensure!(self.peak.is_none_or(|p| p > 0.0), "--peak must be positive");
        anyhow::ensure!(
            !self.concurrency.is_empty() && !self.concurrency.contains(&0),
            "--concurrency needs positive numbers"
        );
        let identity_events = self
            .identity_events
            .unwrap_or(if self.quick { 20_000 } else { 200_000 });
        anyhow::ensure!(identity_events >= BATCH, "--identity-events must be at least {BATCH}");
        let probes = self.probes.unwrap_or(if self.quick { 50 } else { 300 });
        anyhow::ensure!(probes > 0, "--probes must be positive");
        let read_secs = self.read_secs.unwrap_or(if self.quick { 2.0 } else { 10.0 });
        anyhow::ensure!(read_secs > 0.0, "--read-secs must be positive");
        let orchestration_people = self
            .orchestration_people
            .unwrap_or(if self.quick { 5_000 } else { 50_000 });
        anyhow::ensure!(orchestration_people > 0, "--orchestration-people must be positive");
        let measurement_exposures = self
            .measurement_exposures
            .unwrap_or(if self.quick { 100_000 } else { 1_000_000 });
        anyhow::ensure!(
            measurement_exposures >= 1_000,
            "--measurement-exposures must be at least 1000"
        );
        Ok(Plan {
            events,
            concurrency: self.concurrency.clone(),
            latency_secs: self.latency_secs.unwrap_or(if self.quick { 2.0 } else { 10.0 }),
            peak: self.peak,
            grpc: on(Section::Grpc),
            http: on(Section::Http),
            embedded: on(Section::Embedded),
            latency: on(Section::Latency),
            copy: on(Section::Copy),
            identity: on(Section::Identity),
            handoff: on(Section::Handoff),
            models: on(Section::Models),
            scoring: on(Section::Scoring),
            orchestration: on(Section::Orchestration),
            measurement: on(Section::Measurement),
            orchestration_people,
            scores_max_age: std::time::Duration::from_secs(self.scores_max_age_secs),
            measurement_exposures,
            identity_events,
            probes,
            read_secs,
        })
    }
}

/// mimalloc: the ingest path allocates many small objects per event (protobuf
/// `Struct` maps); glibc's malloc spent a fifth of the CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // The app logs through tracing; only its warnings and errors matter here.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("corvus-bench: ABORTED: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Version and the settings that decide write throughput and query plans, or why there
/// are none.
async fn postgres_facts(server_url: &str) -> String {
    let facts = async {
        let mut conn = PgConnection::connect(server_url).await?;
        let version: String = sqlx::query_scalar("SELECT version()").fetch_one(&mut conn).await?;
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, current_setting(name) FROM pg_settings \
             WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'wal_level', 'max_wal_size', \
             'autovacuum') \
             ORDER BY name",
        )
        .fetch_all(&mut conn)
        .await?;
        conn.close().await?;
        let settings: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        anyhow::Ok(format!("{version}\n          {}", settings.join(" ")))
    };
    facts.await.unwrap_or_else(|e| format!("unreachable ({e:#})"))
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let busy = report::other_busy_processes(Duration::from_secs(1)).await;
    let (proto_size, json_size) = corpus::mean_sizes(SEED)?;
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    let mut header = format!(
        "corvus-bench: Corvus ingest throughput and ack latency, identity resolution and reads\n\
         command : {}\n\
         machine : nproc {nproc}, CPU {}, load average at start {}\n\
         idle    : {}\n\
         postgres: {} (same machine)\n\
         events  : {} per point, batches of {BATCH}; mean event {proto_size} B as protobuf, \
         {json_size} B as Segment JSON\n",
        report::command_line(),
        report::cpu_model(),
        loadavg.join(" "),
        if busy.is_empty() {
            "yes: no other process above 10% of a core in the second before the run".to_owned()
        } else {
            format!("NO, busy at start: {}", busy.join(", "))
        },
        postgres_facts(&args.database_url).await,
        plan.events,
    );
    eprint!("{header}");

    let mut results = Results::default();
    let needs_postgres = plan.grpc || plan.http || plan.latency || plan.copy;
    if needs_postgres {
        let scratch = Scratch::create(&args.database_url).await?;
        let outcome = scenarios::durable(&plan, &scratch, &args.redis_url, &mut results).await;
        // Drop the database whatever happened, then report the first failure.
        let dropped = scratch.drop_database().await;
        outcome?;
        dropped.context("drop the scratch database")?;
    }
    if plan.embedded {
        scenarios::embedded(&plan, &mut results).await?;
    }
    if plan.identity {
        header.push_str(&format!(
            "identity: {} events of {} people in batches of {BATCH}, then {} freshness probes, then GetProfile \
             for {} s a point\n",
            plan.identity_events,
            plan.identity_events / identity::EVENTS_PER_PERSON,
            plan.probes,
            plan.read_secs
        ));
        let scratch = Scratch::create(&args.database_url).await?;
        let outcome = identity::run(&plan, &scratch, &args.redis_url, &mut results).await;
        let dropped = scratch.drop_database().await;
        outcome?;
        dropped.context("drop the scratch database")?;
    }
    if plan.handoff {
        header.push_str(&format!(
            "hand-off: the identity mix ({} events) with no consumer of identity's log and with 3, on fresh \
             databases; then {} probes to a consumer under 5,000 events/s, twice; then the same with 3 \
             consumers through a JetStream stream\n",
            plan.identity_events, plan.probes
        ));
        let nats = Some(args.nats_url.as_str()).filter(|u| !u.is_empty());
        handoff::run(&plan, &args.database_url, &args.redis_url, nats, &mut results).await?;
    }
    if plan.models {
        models::run(&mut results)?;
    }
    let kept = match plan.scores_max_age.as_secs() {
        0 => String::new(),
        s => format!(" (each person's scores kept as events arrive, for {s} s)"),
    };
    if plan.scoring {
        header.push_str(&format!(
            "scoring: the identity mix ({} events) at full rate, an audience kept current; then {} probes \
             under 5,000 events/s, from the ack to the audience entry{kept}\n",
            plan.identity_events, plan.probes
        ));
        scoring::run(&plan, &args.database_url, &args.redis_url, &mut results).await?;
    }
    if plan.orchestration {
        header.push_str(&format!(
            "orchestration: {} people (identify + consent), 20 live campaigns; GetProfile and Decide for {} s a \
             point, Decide open loop at half its peak for {} s; SimulateCampaign over the people; then {} \
             detractor probes under 5,000 events/s, from the ack to the alert on StreamAlerts{kept}\n",
            plan.orchestration_people, plan.read_secs, plan.latency_secs, plan.probes
        ));
        orchestration::run(&plan, &args.database_url, &args.redis_url, &mut results).await?;
    }
    if plan.measurement {
        header.push_str(&format!(
            "measurement: exposures (and a fifth of them ordering) loaded to {}, {} and {}, GetExperimentResults \
             at each; then {} order probes under 5,000 events/s, from the ack to the results counting them\n",
            plan.measurement_exposures / 100,
            plan.measurement_exposures / 10,
            plan.measurement_exposures,
            plan.probes
        ));
        measurement::run(&plan, &args.database_url, &args.redis_url, &mut results).await?;
    }

    header.push_str(&format!(
        "notes   : every Postgres ingestion point starts from an empty ingestion.events (TRUNCATE, \
         CHECKPOINT);\n          \
         latency is per batch, from send (closed loop) or from when it was due (open loop) \
         to the ack;\n          \
         rate/s = events/s, or requests/s for the GetProfile and Decide rows, people/s for SimulateCampaign;\n          \
         CPU app|pg|redis|other = cores used by this process (client and server) | by all \
         Postgres processes | by Redis | by anything else (should be ~0), of {nproc}.\n"
    ));
    println!("{header}");
    println!("{}", report::table(&results.rows, results.ceiling));
    for note in &results.notes {
        println!("- {note}");
    }
    if !results.notes.is_empty() {
        println!();
    }
    let missed: Vec<&str> = results
        .rows
        .iter()
        .filter(|r| r.met() == Some(false))
        .map(|r| r.scenario.as_str())
        .collect();
    if !results.rows.iter().any(|r| r.target.is_some()) {
        println!("no targets in the sections run");
    } else if missed.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", missed.join("; "));
    }
    Ok(())
}
