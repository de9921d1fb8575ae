//! The all-in-one Corvus process: every built service on one gRPC port, the Segment
//! HTTP API and the metrics port, over Postgres and Redis or the embedded default.

pub mod client;
pub mod console;
pub mod identity_link;
pub mod orchestration_link;
pub mod scores_link;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corvus_identity::{Identity, IdentityConfig};
use corvus_ingestion::outbox::{Consumer, ConsumerConfig};
use corvus_ingestion::{Ingestion, IngestionConfig};
use corvus_measurement::{Measurement, MeasurementConfig};
use corvus_orchestration::storage::OrchestrationStore;
use corvus_orchestration::{Orchestration, OrchestrationConfig};
use corvus_platform::server::{Listeners, Services};
use corvus_platform::telemetry::TelemetryConfig;
use corvus_platform::{Authenticator, KeyStore, ServerConfig};
use corvus_proto::identity::v1::LogEntry;
use corvus_scoring::{Scoring, ScoringConfig};
use corvus_storage::StorageConfig;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The whole configuration: defaults, then the TOML file, then `CORVUS_…` variables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorvusConfig {
    pub server: ServerConfig,
    #[serde(skip_serializing)]
    pub storage: StorageConfig,
    pub telemetry: TelemetryConfig,
    pub ingestion: IngestionConfig,
    pub identity: IdentityConfig,
    pub scoring: ScoringConfig,
    pub orchestration: OrchestrationConfig,
    pub measurement: MeasurementConfig,
    pub console: ConsoleConfig,
}

/// The `[console]` section: the web console on the HTTP port.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The gRPC API the console's calls are relayed to: this process's own when unset
    /// (`corvus dev`, `corvus serve all`); apart, an address that reaches every service
    /// (a gateway routing by service name).
    pub grpc_endpoint: Option<String>,
}

impl CorvusConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let config: Self = corvus_platform::load_config(path)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.server.validate()?;
        self.ingestion.validate()?;
        self.identity.validate()?;
        self.scoring.validate()?;
        self.orchestration.validate()?;
        self.measurement.validate()?;
        // A consumer's metrics carry its name alone, whichever log it consumes.
        if let Some(c) = self
            .identity
            .consumers
            .iter()
            .find(|c| self.ingestion.consumers.iter().any(|i| i.name == c.name))
        {
            anyhow::bail!(
                "identity.consumers.{0}: ingestion.consumers has a consumer {0:?} too; name them apart",
                c.name
            );
        }
        Ok(())
    }
}

/// Which services a process runs: all of them (`corvus dev`, `corvus serve all`), or
/// one (`corvus serve ingestion`, `identity`, `scoring`, `orchestration`,
/// `measurement`), the others reached over gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    All,
    Ingestion,
    Identity,
    Scoring,
    Orchestration,
    Measurement,
}

impl std::str::FromStr for Deployment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "ingestion" => Ok(Self::Ingestion),
            "identity" => Ok(Self::Identity),
            "scoring" => Ok(Self::Scoring),
            "orchestration" => Ok(Self::Orchestration),
            "measurement" => Ok(Self::Measurement),
            other => Err(format!(
                "unknown service {other:?}: expected all, ingestion, identity, scoring, orchestration or measurement"
            )),
        }
    }
}

impl Deployment {
    fn runs_ingestion(self) -> bool {
        matches!(self, Self::All | Self::Ingestion)
    }

    fn runs_identity(self) -> bool {
        matches!(self, Self::All | Self::Identity)
    }

    fn runs_scoring(self) -> bool {
        matches!(self, Self::All | Self::Scoring)
    }

    fn runs_orchestration(self) -> bool {
        matches!(self, Self::All | Self::Orchestration)
    }

    fn runs_measurement(self) -> bool {
        matches!(self, Self::All | Self::Measurement)
    }

    /// Whether the process serves the Segment HTTP API (ingestion's).
    pub fn serves_http(self) -> bool {
        self.runs_ingestion()
    }
}

/// The stores of the services a process runs, connected and migrated.
pub struct Stores {
    pub keys: KeyStore,
    pub ingestion: Option<Ingestion>,
    pub identity: Option<Identity>,
    pub scoring: Option<Scoring>,
    pub orchestration: Option<Arc<dyn OrchestrationStore>>,
    pub measurement: Option<Measurement>,
}

impl Stores {
    /// Connects each service's storage and runs its migrations.
    pub async fn connect(config: &CorvusConfig, deployment: Deployment) -> anyhow::Result<Self> {
        Ok(Self {
            keys: KeyStore::connect(&config.storage).await?,
            ingestion: match deployment.runs_ingestion() {
                true => Some(Ingestion::connect(&config.storage, &config.ingestion).await?),
                false => None,
            },
            identity: match deployment.runs_identity() {
                true => Some(Identity::connect(&config.storage, &config.identity).await?),
                false => None,
            },
            scoring: match deployment.runs_scoring() {
                true => Some(Scoring::connect(&config.storage, &config.scoring).await?),
                false => None,
            },
            orchestration: match deployment.runs_orchestration() {
                true => Some(corvus_orchestration::storage::connect(&config.storage).await?),
                false => None,
            },
            measurement: match deployment.runs_measurement() {
                true => Some(Measurement::connect(&config.storage, &config.measurement).await?),
                false => None,
            },
        })
    }
}

/// A running Corvus: the services, their outbox workers and the servers.
pub struct App {
    pub ingestion: Option<Ingestion>,
    pub identity: Option<Identity>,
    pub scoring: Option<Scoring>,
    pub orchestration: Option<Orchestration>,
    pub measurement: Option<Measurement>,
    pub keys: KeyStore,
    config: CorvusConfig,
    listeners: Listeners,
    extra_consumers: Vec<Consumer>,
    after_identity: Vec<Consumer<LogEntry>>,
}

impl App {
    /// Connects storage (running migrations) and prepares the servers of every service
    /// on `listeners`.
    pub async fn build(config: CorvusConfig, listeners: Listeners) -> anyhow::Result<Self> {
        let stores = Stores::connect(&config, Deployment::All).await?;
        Ok(Self::new(config, stores, listeners))
    }

    pub fn new(mut config: CorvusConfig, stores: Stores, listeners: Listeners) -> Self {
        let consumers = config
            .ingestion
            .consumers
            .iter_mut()
            .chain(&mut config.identity.consumers)
            .chain(&mut config.orchestration.consumers);
        for consumer in consumers.filter(|c| c.key.is_none()) {
            consumer.key.clone_from(&config.server.service_key);
        }
        // In one process, erasure reaches into the event log directly; apart, ingestion
        // erases when identity's log brings it the erasure.
        let identity = match (stores.identity, &stores.ingestion) {
            (Some(identity), Some(ingestion)) => {
                Some(identity.with_eraser(Arc::new(identity_link::LogEraser(ingestion.log.clone()))))
            }
            (identity, _) => identity,
        };
        // GetProfile asks scoring for the profile's scores: directly in one process, else
        // at scoring_endpoint.
        let scores = match (&stores.scoring, &config.identity.scoring_endpoint) {
            (Some(scoring), _) => Some(scores_link::ScoringLink::local(scoring.clone())),
            (None, Some(endpoint)) => scores_link::ScoringLink::remote(endpoint)
                .inspect_err(|e| tracing::error!("identity.scoring_endpoint {endpoint:?}: {e}"))
                .ok(),
            (None, None) => None,
        };
        let identity = match (identity, scores) {
            (Some(identity), Some(scores)) => Some(identity.with_scores(Arc::new(scores))),
            (identity, _) => identity,
        };
        // Decide reads people from identity and campaigns' targets from scoring: directly
        // in one process, else at their endpoints.
        let orchestration = stores.orchestration.and_then(|store| {
            let people = orchestration_link::People::new(
                identity.as_ref(),
                config.orchestration.identity_endpoint.as_deref(),
                stores.scoring.as_ref(),
                config.orchestration.scoring_endpoint.as_deref(),
            )
            .inspect_err(|e| tracing::error!("orchestration's identity or scoring endpoint: {e}"))
            .ok()?;
            let orchestration = Orchestration::new(store, &config.orchestration, Arc::new(people))
                .with_service_key(config.server.service_key.clone());
            // Sends' outcomes go back in through ingestion: directly in one process,
            // else at its endpoint.
            let orchestration = match orchestration_link::ReceiptLink::new(
                stores.ingestion.as_ref(),
                config.orchestration.ingestion_endpoint.as_deref(),
            ) {
                Ok(Some(receipts)) => orchestration.with_receipts(Arc::new(receipts)),
                Ok(None) => orchestration,
                Err(e) => {
                    tracing::error!("orchestration.ingestion_endpoint: {e}");
                    orchestration
                }
            };
            // Satisfaction rules read measurement: directly in one process, else at its
            // endpoint.
            match orchestration_link::FeedbackLink::new(
                stores.measurement.as_ref(),
                config.orchestration.measurement_endpoint.as_deref(),
            ) {
                Ok(Some(feedback)) => Some(orchestration.with_feedback(Arc::new(feedback))),
                Ok(None) => Some(orchestration),
                Err(e) => {
                    tracing::error!("orchestration.measurement_endpoint: {e}");
                    Some(orchestration)
                }
            }
        });
        Self {
            identity,
            orchestration,
            measurement: stores.measurement,
            ingestion: stores.ingestion,
            scoring: stores.scoring,
            keys: stores.keys,
            config,
            listeners,
            extra_consumers: Vec::new(),
            after_identity: Vec::new(),
        }
    }

    /// `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        self.keys.database().backend()
    }

    /// Registers an in-process consumer of the event log.
    pub fn with_consumer(mut self, consumer: Consumer) -> Self {
        self.extra_consumers.push(consumer);
        self
    }

    /// Registers an in-process consumer of identity's log: resolved events (with their
    /// profile id) and profile changes.
    pub fn with_consumer_after_identity(mut self, consumer: Consumer<LogEntry>) -> Self {
        self.after_identity.push(consumer);
        self
    }

    pub fn grpc_port(&self) -> u16 {
        self.listeners.grpc.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    pub fn http_port(&self) -> Option<u16> {
        self.listeners
            .http
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn metrics_port(&self) -> Option<u16> {
        self.listeners
            .metrics
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    /// Serves until `shutdown` is cancelled, then drains and stops the workers.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let grpc_port = self.grpc_port();
        let auth = Arc::new(Authenticator::new(self.keys.clone(), Duration::from_secs(30)));
        let workers_stop = CancellationToken::new();
        let mut workers = Vec::new();
        let mut routes = tonic::service::RoutesBuilder::default();
        let mut names = Vec::new();
        let mut checks = Vec::new();
        let mut http = None;
        if let Some(ingestion) = &self.ingestion {
            let mut consumers = Vec::new();
            if let Some(identity) = self.identity.as_ref().filter(|_| self.config.identity.resolve_events) {
                consumers.push(Consumer {
                    name: corvus_identity::CONSUMER_NAME.to_owned(),
                    sink: Arc::new(identity.clone()),
                    batch_size: Some(self.config.identity.batch_size),
                });
            }
            consumers.extend(self.extra_consumers);
            consumers.extend(ConsumerConfig::consumers(&self.config.ingestion.consumers)?);
            workers.push(ingestion.spawn_outbox(consumers, workers_stop.clone()));
            routes.add_service(ingestion.grpc_service());
            if self.identity.is_none() {
                routes.add_service(ingestion.erasure_consumer());
            }
            names.push(corvus_ingestion::SERVICE_NAME.to_owned());
            checks.push(ingestion.readiness());
            http = Some(ingestion.http_router(auth.clone()));
        }
        if let Some(identity) = &self.identity {
            // Identity's own log, a cursor per downstream service: none of them holds up
            // identity's cursor on the event log, nor each other.
            let mut downstream = self.after_identity;
            if let Some(scoring) = &self.scoring {
                downstream.push(scoring.consumer());
            }
            if let Some(orchestration) = &self.orchestration {
                downstream.push(orchestration.consumer());
            }
            if let Some(measurement) = &self.measurement {
                downstream.push(measurement.consumer());
            }
            downstream.extend(ConsumerConfig::consumers(&self.config.identity.consumers)?);
            let (log, retention) = (&self.config.identity.log, self.config.identity.log_retention);
            workers.push(identity.spawn_log(downstream, log, retention, workers_stop.clone()));
            routes.add_service(identity.grpc_service());
            if self.ingestion.is_none() {
                routes.add_service(identity.resolving_consumer());
            }
            names.push(corvus_identity::SERVICE_NAME.to_owned());
            checks.push(identity.readiness());
        }
        if let Some(scoring) = &self.scoring {
            workers.push(
                scoring.spawn_audience_upkeep(self.config.scoring.audience_upkeep_interval, workers_stop.clone()),
            );
            routes.add_service(scoring.grpc_service());
            if self.identity.is_none() {
                routes.add_service(scoring.log_consumer());
            }
            names.push(corvus_scoring::SERVICE_NAME.to_owned());
            checks.push(scoring.readiness());
        }
        if let Some(orchestration) = &self.orchestration {
            let mut decisions = ConsumerConfig::consumers(&self.config.orchestration.consumers)?;
            if let Some(measurement) = &self.measurement {
                decisions.push(measurement.decisions_consumer());
            }
            workers.push(orchestration.spawn_log(decisions, workers_stop.clone()));
            workers.push(orchestration.spawn_delivery(workers_stop.clone()));
            workers.push(orchestration.spawn_triggers(workers_stop.clone()));
            workers.push(orchestration.spawn_alert_webhooks(workers_stop.clone()));
            workers.push(orchestration.spawn_satisfaction_watch(
                self.config.orchestration.satisfaction_check_interval,
                workers_stop.clone(),
            ));
            routes.add_service(orchestration.grpc_service());
            if self.identity.is_none() {
                routes.add_service(orchestration.log_consumer());
            }
            names.push(corvus_orchestration::SERVICE_NAME.to_owned());
            checks.push(orchestration.readiness());
        }
        if let Some(measurement) = &self.measurement {
            routes.add_service(measurement.grpc_service());
            // Apart, identity's and orchestration's logs reach it over gRPC.
            if self.identity.is_none() && self.orchestration.is_none() {
                routes.add_service(measurement.log_consumer());
            }
            names.push(corvus_measurement::SERVICE_NAME.to_owned());
            checks.push(measurement.readiness());
        }
        // The console, on the HTTP port, over the gRPC API.
        if let Some(router) = http.take() {
            let endpoint = match &self.config.console.grpc_endpoint {
                Some(endpoint) => endpoint.clone(),
                None => format!("http://127.0.0.1:{grpc_port}"),
            };
            http = Some(router.merge(console::router(&endpoint)?));
        }
        let services = Services {
            grpc: routes.routes(),
            names,
            http,
        };
        let readiness: corvus_platform::server::ReadinessCheck = Arc::new(move || {
            let checks: Vec<_> = checks.iter().map(|check| check()).collect();
            Box::pin(async move {
                for check in checks {
                    check.await?;
                }
                Ok(())
            })
        });
        let served =
            corvus_platform::server::serve(&self.config.server, self.listeners, services, auth, readiness, shutdown)
                .await;
        // Requests are drained; now the workers finish the delivery in hand and stop.
        workers_stop.cancel();
        for mut set in workers {
            while set.join_next().await.is_some() {}
        }
        served
    }
}

/// Creates workspace `dev` with an admin key the first time `corvus dev` runs on a
/// data directory, and keeps the key in `<data_dir>/dev-key`.
pub async fn ensure_dev_key(keys: &KeyStore, storage: &StorageConfig) -> anyhow::Result<String> {
    let path = storage.data_dir.join("dev-key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        let key = key.trim().to_owned();
        if keys.lookup(&key).await?.is_some() {
            return Ok(key);
        }
    }
    let workspace = "dev".parse()?;
    keys.upsert_workspace(&workspace, "Development", None).await?;
    let created = keys
        .create_key(&workspace, corvus_platform::Role::Admin, "corvus dev")
        .await?;
    std::fs::create_dir_all(&storage.data_dir)?;
    std::fs::write(&path, &created.secret)?;
    Ok(created.secret)
}
