//! `corvus`: run Corvus (`dev`, `serve`), prepare it (`migrate`, `keys`), feed it (`send`),
//! show what it does (`demo`).

mod audiences;
mod campaigns;
mod demo;
mod models;
mod stats;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use corvus::{App, CorvusConfig, Deployment, Stores};
use corvus_platform::server::{Listeners, cancel_on_signal};
use corvus_platform::{KeyStore, Role};
use corvus_storage::StorageError;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "corvus",
    version,
    about = "Corvus: real-time customer data platform and decision engine"
)]
struct Cli {
    /// A TOML configuration file (also `CORVUS_CONFIG`).
    #[arg(long, global = true, env = "CORVUS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every service in one process, embedded storage unless a database is named.
    Dev {
        #[command(flatten)]
        storage: StorageArgs,
        /// gRPC address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_addr: std::net::SocketAddr,
        /// Segment HTTP API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: std::net::SocketAddr,
    },
    /// Run services as configured (for Kubernetes): `corvus serve ingestion`, `identity`,
    /// `scoring`, `orchestration` or `measurement`, each reaching the others over gRPC, or
    /// `corvus serve all` in one process.
    Serve {
        #[arg(value_parser = ["all", "ingestion", "identity", "scoring", "orchestration", "measurement"])]
        service: String,
    },
    /// Create or update every schema, then exit.
    Migrate {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Send events from a JSON-lines file (or - for stdin) over gRPC.
    Send {
        /// The file; `-` reads standard input.
        file: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        endpoint: String,
        /// An API key with the ingest role (also `CORVUS_API_KEY`).
        #[arg(long, env = "CORVUS_API_KEY")]
        key: String,
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
    },
    /// Tell a running Corvus an omnichannel story about synthetic people and measure how
    /// well identity resolves them.
    Demo(demo::DemoArgs),
    /// Fit a workspace's predictive models and show them.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
        #[arg(long, default_value = "http://127.0.0.1:50051", global = true)]
        endpoint: String,
        /// An API key (admin to fit, read to show; also `CORVUS_API_KEY`).
        #[arg(long, env = "CORVUS_API_KEY", global = true)]
        key: Option<String>,
        /// Print the model as JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Computed traits and audiences as code: apply a file of definitions, export,
    /// list, delete, watch an audience's entries and exits.
    Audiences {
        #[command(subcommand)]
        command: AudiencesCommand,
        #[arg(long, default_value = "http://127.0.0.1:50051", global = true)]
        endpoint: String,
        /// An API key (admin to change, read to show; also `CORVUS_API_KEY`).
        #[arg(long, env = "CORVUS_API_KEY", global = true)]
        key: Option<String>,
    },
    /// Campaigns as code: apply a file of campaigns, export, list, set a campaign's
    /// state, pause campaigns by tag.
    Campaigns {
        #[command(subcommand)]
        command: CampaignsCommand,
        #[arg(long, default_value = "http://127.0.0.1:50051", global = true)]
        endpoint: String,
        /// An API key (admin to change, read to show; also `CORVUS_API_KEY`).
        #[arg(long, env = "CORVUS_API_KEY", global = true)]
        key: Option<String>,
    },
    /// Experiment statistics, computed here from a file (no server needed); a campaign's
    /// decision log exported from a running Corvus in the same files.
    Stats {
        #[command(subcommand)]
        command: StatsCommand,
    },
}

#[derive(Subcommand)]
enum StatsCommand {
    /// Analyse a case (per-arm users, sum and sum of squares, and the settings; the
    /// format is in docs/measurement.md) under five settings, frequentist relative,
    /// absolute and sequential, Bayesian relative and absolute, and print the results
    /// as JSON.
    Analyze {
        /// The case, as JSON ("-" for standard input).
        file: std::path::PathBuf,
    },
    /// Off-policy estimates of a candidate policy's mean reward from logged decisions
    /// (IPS, self-normalised IPS, and with a reward model the direct method and doubly
    /// robust), each with its interval, printed as JSON. CSV files, gzip or plain, in
    /// the Open Bandit Dataset's formats (docs/measurement.md).
    Ope {
        /// round,action,position,reward,pscore
        #[arg(long)]
        logged: std::path::PathBuf,
        /// action,position,probability
        #[arg(long)]
        policy: std::path::PathBuf,
        /// round,action,q: a reward model's estimates at each round's logged position.
        #[arg(long)]
        rewards: Option<std::path::PathBuf>,
        /// The intervals are at 1 − alpha.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
    },
    /// Write a campaign's logged decisions, from a running Corvus, in the files `ope`
    /// reads: `logged.csv`, with `actions.csv` and `positions.csv` naming the actions
    /// and segments by index. The reward is the person's value of the metric.
    Export {
        /// The campaign.
        #[arg(long)]
        experiment: String,
        /// The metric whose value is the reward.
        #[arg(long)]
        metric: String,
        /// The directory to write to.
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        endpoint: String,
        /// A read key (also `CORVUS_API_KEY`).
        #[arg(long, env = "CORVUS_API_KEY")]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum CampaignsCommand {
    /// Make the workspace hold a JSON file's campaigns (`{"campaigns": [...]}`, the
    /// format `export` writes). Checks the whole file before changing anything, shows
    /// what it does (+ create as a draft, = unchanged, ~ a new version), and leaves
    /// campaigns the file does not name alone. An ended campaign cannot be changed.
    Apply {
        file: PathBuf,
        /// Show what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Set the file's campaigns that are drafts live once applied.
        #[arg(long)]
        launch: bool,
    },
    /// Print the workspace's campaigns (their current versions) as a file `apply` takes.
    Export,
    /// The campaigns: name, state, version, priority, channels, tags.
    List,
    /// Set a campaign's state: draft → live ⇄ paused, any → ended (final).
    State {
        name: String,
        #[arg(value_parser = campaigns::parse_state)]
        state: corvus_proto::orchestration::v1::CampaignState,
    },
    /// Pause every live campaign with a tag, at once.
    Pause {
        #[arg(long)]
        tag: String,
    },
}

#[derive(Subcommand)]
enum AudiencesCommand {
    /// Make the workspace hold a JSON file's computed traits and audiences
    /// (`{"computed_traits": [...], "audiences": [...]}`, the format `export` writes).
    /// Shows what it does (+ create, = unchanged, ~ replace), checks every definition
    /// before changing anything, and leaves definitions the file does not name alone.
    Apply {
        file: PathBuf,
        /// Delete and create again definitions that differ from those held (an
        /// audience's members are found again and its history starts over).
        #[arg(long)]
        replace: bool,
        /// Show what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the workspace's definitions as a file `apply` takes.
    Export,
    /// The computed traits, and the audiences with their sizes.
    List,
    /// Delete an audience (or, with --computed-trait, a computed trait).
    Delete {
        name: String,
        #[arg(long)]
        computed_trait: bool,
    },
    /// Print an audience's entries and exits as they happen.
    Watch {
        name: String,
        /// From after this sequence (0: every change kept); from now when absent.
        #[arg(long)]
        after: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Fit a model from what scoring holds and keep it: `corvus models fit clv --as-of
    /// 1997-09-30 --unit week`; `rfm` (quintiles); `engagement` (channel priors, hours);
    /// `affinity` (co-purchase rules); `segments` (needs-based, k-means); `propensity`
    /// (purchase in the next --horizon-days, learnt online, checked on a holdout).
    Fit {
        #[arg(value_parser = ["clv", "rfm", "engagement", "affinity", "segments", "propensity"])]
        kind: String,
        /// The end of the calibration period: a date (its end, UTC) or an RFC 3339 time;
        /// default now.
        #[arg(long, value_parser = models::parse_as_of)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        /// day, week or month (clv).
        #[arg(long, default_value = "week")]
        unit: String,
        /// Months of lifetime value.
        #[arg(long, default_value_t = 12)]
        months: u32,
        /// The monthly discount rate of lifetime values.
        #[arg(long, default_value_t = 0.01)]
        discount_rate: f64,
        /// The least share of orders an itemset is in (affinity; default 0.01).
        #[arg(long)]
        min_support: Option<f64>,
        /// The least confidence of a rule (affinity; default 0.25).
        #[arg(long)]
        min_confidence: Option<f64>,
        /// How many segments (segments; default: chosen by silhouette among 2 to 8).
        #[arg(long, default_value_t = 0)]
        k: u32,
        /// k-means restarts (segments; default 4).
        #[arg(long, default_value_t = 0)]
        restarts: u32,
        /// The window a purchase is looked for in after each snapshot (propensity;
        /// default 30).
        #[arg(long, default_value_t = 0)]
        horizon_days: u32,
    },
    /// Show the workspace's current model.
    Get {
        #[arg(value_parser = ["clv", "rfm", "engagement", "affinity", "segments", "propensity"])]
        kind: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key (and its workspace, if new); prints the key once.
    Create {
        #[arg(long)]
        workspace: String,
        #[arg(long, value_parser = ["ingest", "read", "admin", "service"])]
        role: String,
        #[arg(long, default_value = "")]
        name: String,
        /// The workspace's ingest quota in events per second.
        #[arg(long)]
        events_per_second: Option<u32>,
    },
    /// Revoke the key that starts with this prefix.
    Revoke { prefix: String },
}

/// Global, so that `corvus keys create --data-dir DIR` and `corvus keys --data-dir DIR
/// create` both work.
#[derive(clap::Args)]
struct StorageArgs {
    /// Postgres URL; without one, SQLite files in --data-dir.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Redis URL; without one, an in-process cache.
    #[arg(long, env = "REDIS_URL", global = true)]
    redis_url: Option<String>,
    #[arg(long, env = "CORVUS_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
}

impl StorageArgs {
    fn apply(self, config: &mut CorvusConfig) {
        if let Some(url) = self.database_url.filter(|u| !u.is_empty()) {
            config.storage.database_url = Some(url.into());
        }
        if let Some(url) = self.redis_url.filter(|u| !u.is_empty()) {
            config.storage.redis_url = Some(url.into());
        }
        if let Some(dir) = self.data_dir {
            config.storage.data_dir = dir;
        }
    }
}

/// mimalloc: the ingest path allocates many small objects per event (protobuf
/// `Struct` maps); glibc's malloc spent a fifth of the CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = CorvusConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Dev {
            storage,
            grpc_addr,
            http_addr,
        } => {
            storage.apply(&mut config);
            config.server.grpc_addr = grpc_addr;
            config.server.http_addr = http_addr;
            let _telemetry = corvus_platform::telemetry::init(&config.telemetry)?;
            let app = App::new(
                config.clone(),
                connect(&config, Deployment::All).await?,
                Listeners::bind(&config.server, true).await?,
            );
            let key = corvus::ensure_dev_key(&app.keys, &config.storage).await?;
            let backend = app.backend();
            let host = config.server.grpc_addr.ip();
            println!(
                "corvus dev: storage {backend}, data in {}",
                config.storage.data_dir.display()
            );
            println!("  gRPC      http://{host}:{}", app.grpc_port());
            if let Some(port) = app.http_port() {
                println!(
                    "  HTTP      http://{}:{port}  (Segment API: POST /v1/batch)",
                    config.server.http_addr.ip()
                );
            }
            if let (Some(addr), Some(port)) = (config.server.metrics_addr, app.metrics_port()) {
                println!("  metrics   http://{}:{port}/metrics", addr.ip());
            }
            println!(
                "  admin key {key}  (workspace dev; also in {})",
                config.storage.data_dir.join("dev-key").display()
            );
            run(app).await
        }
        Command::Serve { service } => {
            let deployment: Deployment = service.parse().map_err(anyhow::Error::msg)?;
            // Each service its own name in the traces, unless configured otherwise.
            if deployment != Deployment::All && config.telemetry.service_name == "corvus" {
                config.telemetry.service_name = format!("corvus-{service}");
            }
            let _telemetry = corvus_platform::telemetry::init(&config.telemetry)?;
            let stores = connect(&config, deployment).await?;
            // The Segment HTTP API is ingestion's.
            let http = deployment.serves_http();
            run(App::new(
                config.clone(),
                stores,
                Listeners::bind(&config.server, http).await?,
            ))
            .await
        }
        Command::Migrate { storage } => {
            storage.apply(&mut config);
            // Connecting runs every migration.
            connect(&config, Deployment::All).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Keys { command, storage } => {
            storage.apply(&mut config);
            let keys = KeyStore::connect(&config.storage).await?;
            match command {
                KeysCommand::Create {
                    workspace,
                    role,
                    name,
                    events_per_second,
                } => {
                    let workspace = workspace.parse().map_err(|e| anyhow::anyhow!("--workspace: {e}"))?;
                    let role: Role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                    keys.upsert_workspace(&workspace, &name, events_per_second).await?;
                    let created = keys.create_key(&workspace, role, &name).await?;
                    eprintln!(
                        "created {} key {} for workspace {}; it is shown only now:",
                        created.role.as_str(),
                        created.prefix,
                        created.workspace
                    );
                    println!("{}", created.secret);
                }
                KeysCommand::Revoke { prefix } => {
                    anyhow::ensure!(keys.revoke(&prefix).await?, "no live key starts with {prefix}");
                    println!("revoked {prefix}");
                }
            }
            Ok(())
        }
        Command::Send {
            file,
            endpoint,
            key,
            batch_size,
        } => {
            let (reader, size): (Box<dyn std::io::BufRead + Send>, _) = if file.as_os_str() == "-" {
                (Box::new(std::io::BufReader::new(std::io::stdin())), None)
            } else {
                let f = std::fs::File::open(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                let size = f.metadata().ok().map(|m| m.len());
                (Box::new(std::io::BufReader::new(f)), size)
            };
            let progress = std::io::stderr().is_terminal();
            let summary = corvus::client::send(&endpoint, &key, reader, size, batch_size, progress).await?;
            println!(
                "accepted {}, duplicates {}, rejected {}",
                summary.accepted, summary.duplicates, summary.rejected
            );
            for p in summary.problems.iter().take(20) {
                eprintln!("  {p}");
            }
            anyhow::ensure!(summary.rejected == 0, "some events were not accepted");
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Models {
            command,
            endpoint,
            key,
            json,
        } => {
            let key = key.ok_or_else(|| anyhow::anyhow!("--key (or CORVUS_API_KEY) is required"))?;
            match command {
                ModelsCommand::Fit {
                    kind,
                    as_of,
                    unit,
                    months,
                    discount_rate,
                    min_support,
                    min_confidence,
                    k,
                    restarts,
                    horizon_days,
                } => {
                    let fit = models::Fit {
                        kind: models::kind_of(&kind),
                        as_of,
                        unit,
                        months,
                        discount_rate,
                        min_support,
                        min_confidence,
                        k,
                        restarts,
                        horizon_days,
                    };
                    models::fit(&endpoint, &key, fit, json).await
                }
                ModelsCommand::Get { kind } => models::get(&endpoint, &key, models::kind_of(&kind), json).await,
            }
        }
        Command::Audiences { command, endpoint, key } => {
            let key = key.ok_or_else(|| anyhow::anyhow!("--key (or CORVUS_API_KEY) is required"))?;
            match command {
                AudiencesCommand::Apply { file, replace, dry_run } => {
                    audiences::apply(&endpoint, &key, &file, replace, dry_run).await
                }
                AudiencesCommand::Export => audiences::export(&endpoint, &key).await,
                AudiencesCommand::List => audiences::list(&endpoint, &key).await,
                AudiencesCommand::Delete { name, computed_trait } => {
                    audiences::delete(&endpoint, &key, &name, computed_trait).await
                }
                AudiencesCommand::Watch { name, after } => audiences::watch(&endpoint, &key, &name, after).await,
            }
        }
        Command::Campaigns { command, endpoint, key } => {
            let key = key.ok_or_else(|| anyhow::anyhow!("--key (or CORVUS_API_KEY) is required"))?;
            match command {
                CampaignsCommand::Apply { file, dry_run, launch } => {
                    campaigns::apply(&endpoint, &key, &file, dry_run, launch).await
                }
                CampaignsCommand::Export => campaigns::export(&endpoint, &key).await,
                CampaignsCommand::List => campaigns::list(&endpoint, &key).await,
                CampaignsCommand::State { name, state } => campaigns::set_state(&endpoint, &key, &name, state).await,
                CampaignsCommand::Pause { tag } => campaigns::pause(&endpoint, &key, &tag).await,
            }
        }
        Command::Stats { command } => match command {
            StatsCommand::Analyze { file } => stats::analyze(&file),
            StatsCommand::Ope {
                logged,
                policy,
                rewards,
                alpha,
            } => stats::ope(&logged, &policy, rewards.as_deref(), alpha),
            StatsCommand::Export {
                experiment,
                metric,
                out,
                endpoint,
                key,
            } => {
                let key = key.ok_or_else(|| anyhow::anyhow!("--key (or CORVUS_API_KEY) is required"))?;
                stats::export(&endpoint, &key, &experiment, &metric, &out).await
            }
        },
    }
}

/// Connects storage (running migrations), retrying for up to five minutes while it is
/// unavailable, as it is when a pod starts before its database.
async fn connect(config: &CorvusConfig, deployment: Deployment) -> anyhow::Result<Stores> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        match Stores::connect(config, deployment).await {
            Ok(stores) => return Ok(stores),
            Err(err)
                if tokio::time::Instant::now() < deadline
                    && matches!(err.downcast_ref::<StorageError>(), Some(StorageError::Unavailable(_))) =>
            {
                tracing::warn!(error = %err, "storage unavailable at start, retrying");
                eprintln!("storage unavailable ({err}); retrying");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

async fn run(app: App) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    app.run(shutdown).await
}
