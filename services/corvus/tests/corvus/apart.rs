//! The services apart: `corvus serve ingestion` and `corvus serve identity` as processes
//! of their own over Postgres and Redis, identity consuming the event log over gRPC and
//! handing its log on to a downstream service (this test's own server). Identity is
//! killed with SIGKILL in the middle of a load and started again; the downstream is
//! stopped and started again. Afterwards every accepted event is resolved once and has
//! reached the downstream, with no gap and no duplicate effect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corvus_platform::{KeyStore, Role};
use corvus_proto::common::v1::Event;
use corvus_proto::identity::v1::identity_service_client::IdentityServiceClient;
use corvus_proto::identity::v1::{self as identity_pb, log_entry};
use corvus_proto::ingestion::v1::event_consumer_service_client::EventConsumerServiceClient;
use corvus_proto::ingestion::v1::event_consumer_service_server::{EventConsumerService, EventConsumerServiceServer};
use corvus_proto::ingestion::v1::ingestion_service_client::IngestionServiceClient;
use corvus_proto::ingestion::v1::{
    DeliverRequest, DeliverResponse, IngestRequest, ListConsumersRequest, ListEventsRequest,
};
use corvus_test_support::TempDir;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::identity::event;
use crate::support::Key;

/// A free port on loopback, for a process to bind.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The downstream service: every resolved event it was handed, with how many times.
#[derive(Clone, Default)]
struct Downstream {
    seen: Arc<Mutex<HashMap<String, (String, u32)>>>,
}

#[tonic::async_trait]
impl EventConsumerService for Downstream {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Result<Response<DeliverResponse>, Status> {
        let mut seen = self.seen.lock().unwrap();
        for entry in request.into_inner().entries {
            if let Some(log_entry::Entry::Event(e)) = entry.entry {
                let message_id = e.event.unwrap().message_id;
                seen.entry(message_id).or_insert((e.profile_id, 0)).1 += 1;
            }
        }
        Ok(Response::new(DeliverResponse::default()))
    }
}

/// Serves `downstream` on `addr` until the token is cancelled.
fn serve_downstream(downstream: &Downstream, addr: SocketAddr) -> CancellationToken {
    let stop = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .add_service(EventConsumerServiceServer::new(downstream.clone()))
        .serve_with_shutdown(addr, stop.clone().cancelled_owned());
    tokio::spawn(server);
    stop
}

/// One `corvus serve` process.
struct Process {
    service: &'static str,
    config: PathBuf,
    env: Vec<(&'static str, String)>,
    child: Option<Child>,
}

impl Process {
    fn start(service: &'static str, config: PathBuf, env: Vec<(&'static str, String)>) -> Self {
        let mut process = Self {
            service,
            config,
            env,
            child: None,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_corvus"))
            .args(["serve", self.service])
            .env("CORVUS_CONFIG", &self.config)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start corvus serve");
        self.child = Some(child);
    }

    /// SIGKILL: no drain, no goodbye.
    async fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().await.unwrap();
    }
}

fn write_config(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

fn server_section(grpc: u16) -> String {
    format!(
        "[server]\ngrpc_addr = \"127.0.0.1:{grpc}\"\nhttp_addr = \"127.0.0.1:{}\"\n\
         metrics_addr = \"127.0.0.1:{}\"\ndrain_timeout = \"2s\"\n[telemetry]\nlog_filter = \"error\"\n",
        free_port(),
        free_port()
    )
}

async fn connect(port: u16) -> Channel {
    let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    for _ in 0..600 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port}");
}

/// The people of the load: each event carries its person's user id and one of their
/// devices.
fn load_event(n: usize) -> Event {
    let person = n % 50;
    event(
        &format!("e-{n:05}"),
        &[
            ("user_id", &format!("u-{person}")),
            ("anonymous_id", &format!("a-{person}-{}", n % 3)),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_apart_lose_nothing_when_killed() {
    let (Some(server), Some(redis)) = (corvus_test_support::postgres_url(), corvus_test_support::redis_url()) else {
        return;
    };
    let database = corvus_test_support::fresh_postgres_database(&server).await;
    let dir = TempDir::new();
    let storage = corvus_storage::StorageConfig {
        database_url: Some(database.clone().into()),
        redis_url: Some(redis.clone().into()),
        cache_namespace: format!("test-{}", uuid::Uuid::new_v4().simple()),
        ..Default::default()
    };
    let keys = KeyStore::connect(&storage).await.unwrap();
    let (acme, system) = ("acme".parse().unwrap(), "system".parse().unwrap());
    keys.upsert_workspace(&acme, "Acme", None).await.unwrap();
    keys.upsert_workspace(&system, "Corvus services", None).await.unwrap();
    let admin = keys.create_key(&acme, Role::Admin, "test").await.unwrap().secret;
    let service = keys
        .create_key(&system, Role::Service, "delivery")
        .await
        .unwrap()
        .secret;

    let downstream = Downstream::default();
    let downstream_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut downstream_up = serve_downstream(&downstream, downstream_addr);

    let (ingestion_port, identity_port) = (free_port(), free_port());
    let identity_config = write_config(
        dir.path(),
        "identity",
        &format!(
            "{}[identity]\nbatch_size = 500\n[identity.log]\nretry_max = \"300ms\"\n\
             [[identity.consumers]]\nname = \"downstream\"\nendpoint = \"http://{downstream_addr}\"\n\
             [[identity.consumers]]\nname = \"ingestion\"\nendpoint = \"http://127.0.0.1:{ingestion_port}\"\n\
             key = \"{service}\"\nchanges_only = true\n",
            server_section(identity_port)
        ),
    );
    let ingestion_config = write_config(
        dir.path(),
        "ingestion",
        &format!(
            "{}[ingestion.outbox]\nretry_max = \"300ms\"\n\
             [[ingestion.consumers]]\nname = \"identity\"\nendpoint = \"http://127.0.0.1:{identity_port}\"\n\
             key = \"{service}\"\nbatch_size = 500\n",
            server_section(ingestion_port)
        ),
    );
    let env = vec![
        ("DATABASE_URL", database.clone()),
        ("REDIS_URL", redis.clone()),
        ("CORVUS_STORAGE__CACHE_NAMESPACE", storage.cache_namespace.clone()),
    ];
    let mut identity = Process::start("identity", identity_config, env.clone());
    let _ingestion = Process::start("ingestion", ingestion_config, env);

    let bearer = Key::bearer(&admin);
    let mut client = IngestionServiceClient::with_interceptor(connect(ingestion_port).await, bearer.clone());
    let (batches, per_batch) = (40, 50);
    for b in 0..batches {
        match b {
            10 => identity.kill().await,
            15 => identity.spawn(),
            20 => downstream_up.cancel(),
            30 => downstream_up = serve_downstream(&downstream, downstream_addr),
            _ => {}
        }
        let events = (b * per_batch..(b + 1) * per_batch).map(load_event).collect();
        let accepted = client
            .ingest(IngestRequest { events, sent_at: None })
            .await
            .expect("ingestion answers while the others come and go")
            .into_inner()
            .accepted;
        assert_eq!(accepted as usize, per_batch);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = batches * per_batch;

    // Every event reaches the downstream: once in effect, however often it was handed
    // over (at least once: a delivery cut short by the kill is made again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while downstream.seen.lock().unwrap().len() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the downstream has {} of {total} events",
            downstream.seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = downstream.seen.lock().unwrap().clone();
    let expected: Vec<String> = (0..total).map(|n| format!("e-{n:05}")).collect();
    let mut got: Vec<String> = seen.keys().cloned().collect();
    got.sort();
    assert_eq!(got, expected, "no gap and nothing else");
    let repeats: u32 = seen.values().map(|(_, n)| n - 1).sum();
    eprintln!("deliveries repeated after the kills: {repeats}");

    // Resolved once: each person's profile counts each of their events once, and the
    // downstream saw each event on that profile.
    let mut reader = IdentityServiceClient::with_interceptor(connect(identity_port).await, bearer.clone());
    let mut counted = 0;
    for person in 0..50 {
        let profile = reader
            .get_profile(identity_pb::GetProfileRequest {
                lookup: Some(identity_pb::get_profile_request::Lookup::Identifier(
                    corvus_proto::common::v1::Identifier {
                        kind: "user_id".into(),
                        value: format!("u-{person}"),
                    },
                )),
            })
            .await
            .unwrap()
            .into_inner()
            .profile
            .unwrap();
        let events: u64 = profile.event_counts.iter().map(|c| c.count).sum();
        assert_eq!(events, (total / 50) as u64, "u-{person}");
        counted += events;
        for n in (person..total).step_by(50) {
            assert_eq!(seen[&format!("e-{n:05}")].0, profile.profile_id);
        }
    }
    assert_eq!(counted as usize, total);

    // The cursors reach the end: nothing left behind for a later restart to redo.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ingestion = client
            .list_consumers(ListConsumersRequest {})
            .await
            .unwrap()
            .into_inner();
        let identity = reader
            .list_consumers(identity_pb::ListConsumersRequest {})
            .await
            .unwrap()
            .into_inner();
        let lags: Vec<(String, u64)> = (ingestion.consumers.into_iter().map(|c| (c.name, c.lag)))
            .chain(identity.consumers.into_iter().map(|c| (c.name, c.lag)))
            .collect();
        if lags.iter().all(|(_, lag)| *lag == 0) {
            assert_eq!(lags.len(), 3, "{lags:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{lags:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An erasure in identity reaches ingestion's event log, in another process.
    let person0 = reader
        .get_profile(identity_pb::GetProfileRequest {
            lookup: Some(identity_pb::get_profile_request::Lookup::Identifier(
                corvus_proto::common::v1::Identifier {
                    kind: "user_id".into(),
                    value: "u-0".into(),
                },
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    reader
        .forget_profile(identity_pb::ForgetProfileRequest {
            profile_id: person0.profile_id,
            allow_recreate: false,
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = stored_message_ids(&mut client).await;
        if left.len() == total - total / 50 {
            assert!(left.iter().all(|m| m != "e-00000" && m != "e-00050"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} events left", left.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Only a key of role `service` may hand identity events: not even a workspace's admin.
    let mut deliver = EventConsumerServiceClient::with_interceptor(connect(identity_port).await, bearer);
    let refused = deliver
        .deliver(DeliverRequest {
            consumer: "identity".into(),
            events: vec![],
            entries: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    downstream_up.cancel();
}

async fn stored_message_ids(client: &mut IngestionServiceClient<InterceptedService<Channel, Key>>) -> Vec<String> {
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
            .unwrap()
            .into_inner();
        out.extend(page.events.into_iter().map(|e| e.event.unwrap().message_id));
        token = page.page.unwrap_or_default().next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}
