use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use corvus::{App, CorvusConfig};
use corvus_ingestion::outbox::{Consumer, EventSink, Failure};
use corvus_platform::Role;
use corvus_platform::server::Listeners;
use corvus_proto::common::v1::{Event, EventType, StoredEvent};
use corvus_proto::identity::v1::identity_service_client::IdentityServiceClient;
use corvus_proto::identity::v1::{LogEntry, log_entry};
use corvus_proto::ingestion::v1::ingestion_service_client::IngestionServiceClient;
use corvus_proto::ingestion::v1::{ConsumerStatus, IngestRequest, ListConsumersRequest, ListEventsRequest};
use corvus_test_support::{Backend, TempDir};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Client = IngestionServiceClient<InterceptedService<Channel, Key>>;
pub type IdentityClient = IdentityServiceClient<InterceptedService<Channel, Key>>;

/// Puts an API key (and optionally a workspace) on every call.
#[derive(Clone)]
pub struct Key {
    bearer: Option<MetadataValue<tonic::metadata::Ascii>>,
    workspace: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Key {
    pub fn bearer(key: &str) -> Self {
        Self {
            bearer: Some(format!("Bearer {key}").parse().unwrap()),
            workspace: None,
        }
    }
}

impl Interceptor for Key {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        if let Some(w) = &self.workspace {
            req.metadata_mut().insert("x-corvus-workspace", w.clone());
        }
        Ok(req)
    }
}

/// Records what a log hands it: ingestion's events, or identity's entries.
pub struct Recorder<E = StoredEvent> {
    pub received: Mutex<Vec<E>>,
}

impl<E> Default for Recorder<E> {
    fn default() -> Self {
        Self {
            received: Mutex::new(Vec::new()),
        }
    }
}

impl Recorder<LogEntry> {
    /// The resolved events received, in order.
    pub fn events(&self) -> Vec<StoredEvent> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter_map(|e| match &e.entry {
                Some(log_entry::Entry::Event(event)) => Some(event.clone()),
                _ => None,
            })
            .collect()
    }
}

#[async_trait]
impl<E: Clone + Send + Sync + 'static> EventSink<E> for Recorder<E> {
    async fn deliver(&self, entries: &[E]) -> Result<Vec<Failure>, String> {
        self.received.lock().unwrap().extend_from_slice(entries);
        Ok(Vec::new())
    }
}

pub struct TestApp {
    pub grpc: String,
    pub http: String,
    pub metrics: String,
    /// Keys of workspace `acme`.
    pub admin_key: String,
    pub ingest_key: String,
    pub read_key: String,
    /// The admin key of workspace `globex`.
    pub other_key: String,
    pub recorder: Arc<Recorder>,
    /// Receives identity's log: events with their profile ids, and profile changes.
    pub resolved: Arc<Recorder<LogEntry>>,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub config: CorvusConfig,
    _dir: TempDir,
}

pub async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_with(backend, |_| {}).await
}

/// Starts the app on ephemeral ports with fresh storage; `tweak` adjusts the config.
pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut CorvusConfig)) -> Option<TestApp> {
    spawn_downstream(backend, tweak, Vec::new()).await
}

/// The same, with more in-process consumers of identity's log than `resolved`.
pub async fn spawn_downstream(
    backend: Backend,
    tweak: impl FnOnce(&mut CorvusConfig),
    downstream: Vec<Consumer<LogEntry>>,
) -> Option<TestApp> {
    // As `main` does: the subscriber with the OpenTelemetry layer that gives spans their
    // W3C context (a no-op after the first call).
    let _ = corvus_platform::telemetry::init(&corvus_platform::telemetry::TelemetryConfig {
        log_filter: "warn".into(),
        ..Default::default()
    });
    let dir = TempDir::new();
    let mut config = CorvusConfig {
        storage: corvus_test_support::storage(backend, &dir).await?,
        ..CorvusConfig::default()
    };
    config.server.drain_timeout = Duration::from_secs(5);
    tweak(&mut config);
    let recorder = Arc::new(Recorder::default());
    let resolved = Arc::new(Recorder::default());
    let app = App::build(config.clone(), Listeners::ephemeral().await.unwrap())
        .await
        .expect("build the app")
        .with_consumer(Consumer {
            name: "recorder".into(),
            sink: recorder.clone(),
            batch_size: None,
        })
        .with_consumer_after_identity(Consumer {
            name: "resolved".into(),
            sink: resolved.clone(),
            batch_size: None,
        });
    let app = downstream
        .into_iter()
        .fold(app, |app, consumer| app.with_consumer_after_identity(consumer));
    let (acme, globex) = ("acme".parse().unwrap(), "globex".parse().unwrap());
    app.keys.upsert_workspace(&acme, "Acme", None).await.unwrap();
    app.keys.upsert_workspace(&globex, "Globex", None).await.unwrap();
    let key = |ws, role| {
        let keys = app.keys.clone();
        async move { keys.create_key(ws, role, "test").await.unwrap().secret }
    };
    let admin_key = key(&acme, Role::Admin).await;
    let ingest_key = key(&acme, Role::Ingest).await;
    let read_key = key(&acme, Role::Read).await;
    let other_key = key(&globex, Role::Admin).await;
    let grpc = format!("http://127.0.0.1:{}", app.grpc_port());
    let http = format!("http://127.0.0.1:{}", app.http_port().unwrap());
    let metrics = format!("http://127.0.0.1:{}/metrics", app.metrics_port().unwrap());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run(shutdown.clone()));
    Some(TestApp {
        grpc,
        http,
        metrics,
        admin_key,
        ingest_key,
        read_key,
        other_key,
        recorder,
        resolved,
        shutdown,
        handle,
        config,
        _dir: dir,
    })
}

impl TestApp {
    /// Waits (up to 20 s) until every consumer of the workspace of `key` has a cursor past
    /// all its events (`ListConsumers`), and returns them.
    pub async fn caught_up(&self, key: &str) -> Vec<ConsumerStatus> {
        let mut client = self.client(key).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let consumers = client
                .list_consumers(ListConsumersRequest {})
                .await
                .unwrap()
                .into_inner()
                .consumers;
            // Identity's cursor may not exist yet just after the start: not caught up.
            let identity_there = !self.config.identity.resolve_events || consumers.iter().any(|c| c.name == "identity");
            if identity_there && consumers.iter().all(|c| c.lag == 0) {
                return consumers;
            }
            assert!(tokio::time::Instant::now() < deadline, "lag stayed at {consumers:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Identity's log as its consumers stand (`IdentityService.ListConsumers`).
    pub async fn downstream(&self) -> Vec<corvus_proto::identity::v1::ConsumerStatus> {
        self.identity(&self.admin_key)
            .await
            .list_consumers(corvus_proto::identity::v1::ListConsumersRequest {})
            .await
            .unwrap()
            .into_inner()
            .consumers
    }

    /// Waits (up to 20 s) until every consumer of identity's log has a cursor past all
    /// its entries, and returns them.
    pub async fn downstream_caught_up(&self) -> Vec<corvus_proto::identity::v1::ConsumerStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let consumers = self.downstream().await;
            // As above: the cursors are made when the dispatchers start.
            if consumers.iter().any(|c| c.name == "resolved") && consumers.iter().all(|c| c.lag == 0) {
                return consumers;
            }
            assert!(tokio::time::Instant::now() < deadline, "lag stayed at {consumers:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self, key: &str) -> Client {
        self.client_as(Some(key), None).await
    }

    pub async fn client_as(&self, key: Option<&str>, workspace: Option<&str>) -> Client {
        let key = Key {
            bearer: key.map(|k| format!("Bearer {k}").parse().unwrap()),
            workspace: workspace.map(|w| w.parse().unwrap()),
        };
        IngestionServiceClient::with_interceptor(self.channel().await, key)
    }

    pub async fn identity(&self, key: &str) -> IdentityClient {
        let key = Key {
            bearer: Some(format!("Bearer {key}").parse().unwrap()),
            workspace: None,
        };
        IdentityServiceClient::with_interceptor(self.channel().await, key)
    }

    /// Every stored event of the key's workspace, through ListEvents.
    /// `corvus COMMAND ARGS` against the app with its admin key: whether it
    /// succeeded, and what it printed.
    pub async fn cli(&self, command: &str, args: &[&str]) -> (bool, String) {
        let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_corvus"));
        run.arg(command)
            .args(args)
            .args(["--endpoint", &self.grpc, "--key", &self.admin_key]);
        let out = tokio::task::spawn_blocking(move || run.output())
            .await
            .unwrap()
            .expect("corvus runs");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), printed)
    }

    pub async fn stored(&self, key: &str) -> Vec<StoredEvent> {
        stored_events(&mut self.client(key).await).await
    }

    /// An admin key of a new workspace whose ingest quota is `events_per_second`.
    pub async fn key_with_quota(&self, workspace: &str, events_per_second: u32) -> String {
        let keys = corvus_platform::KeyStore::connect(&self.config.storage).await.unwrap();
        let ws = workspace.parse().unwrap();
        keys.upsert_workspace(&ws, workspace, Some(events_per_second))
            .await
            .unwrap();
        keys.create_key(&ws, Role::Admin, "quota").await.unwrap().secret
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().expect("clean shutdown");
    }
}

pub fn track(message_id: &str) -> Event {
    Event {
        message_id: message_id.to_owned(),
        r#type: EventType::Track as i32,
        anonymous_id: "anon-1".into(),
        event: "Product Viewed".into(),
        ..Event::default()
    }
}

pub fn batch(events: Vec<Event>) -> IngestRequest {
    IngestRequest { events, sent_at: None }
}

pub fn message_ids(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.event.as_ref().unwrap().message_id.clone())
        .collect()
}

pub use corvus_test_support::eventually;

/// Every stored event of the client's workspace, through ListEvents, page by page.
pub async fn stored_events(client: &mut Client) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_events(ListEventsRequest {
                page: Some(corvus_proto::common::v1::PageRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                }),
            })
            .await
            .expect("list events")
            .into_inner();
        out.extend(page.events);
        token = page.page.unwrap_or_default().next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}
