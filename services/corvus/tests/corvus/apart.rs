//! The services apart: `corvus serve ingestion`, `corvus serve identity`, `corvus
//! serve scoring`, `corvus serve orchestration` and `corvus serve measurement` as
//! processes of their own over Postgres and Redis, identity consuming the event log over
//! gRPC and handing its log on to scoring, to orchestration, to measurement and to a
//! downstream service (this test's own server); orchestration handing its decisions to
//! measurement.
//! Identity is killed with SIGKILL in the middle of a load and started again; the
//! downstream is stopped and started again. Afterwards every accepted event is resolved
//! once and has reached the downstream, with no gap and no duplicate effect,
//! orchestration decides for a person it asks identity about, and measurement counts the
//! exposure and the order that followed it. And one trace follows an event across the
//! processes (`trace.rs`).

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
use corvus_proto::ingestion::v1::{DeliverRequest, DeliverResponse, IngestRequest, ListConsumersRequest};
use corvus_proto::measurement::v1 as measurement_pb;
use corvus_proto::measurement::v1::measurement_service_client::MeasurementServiceClient;
use corvus_proto::orchestration::v1 as orchestration_pb;
use corvus_proto::orchestration::v1::orchestration_service_client::OrchestrationServiceClient;
use corvus_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use corvus_proto::scoring::v1::{self as scoring_pb, GetScoresRequest};
use corvus_test_support::TempDir;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::identity::event;
use crate::support::{Client, Key, stored_events};

mod trace;

/// A free port on loopback, for a process of this test to bind. A port the kernel
/// handed out (`bind(0)`) and this test let go can be handed out again, to any process,
/// before the child binds it ("Address already in use"). So the ports come from below
/// the ephemeral range (32768 and up), which the kernel never hands out, from a block of
/// this test process's own (by its pid), each checked free when taken.
fn free_port() -> u16 {
    const BLOCK: u32 = 40;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let first = 10_000 + (std::process::id() % 500) * BLOCK;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(n < 4 * BLOCK, "no free port in this test's block from {first}");
        let port = (first + n % BLOCK) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The downstream service: every resolved event it was handed, with how many times,
/// and the trace context each delivery came with.
#[derive(Clone, Default)]
struct Downstream {
    seen: Arc<Mutex<HashMap<String, (String, u32)>>>,
    traceparents: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl EventConsumerService for Downstream {
    async fn deliver(&self, request: Request<DeliverRequest>) -> Result<Response<DeliverResponse>, Status> {
        if let Some(traceparent) = request.metadata().get("traceparent").and_then(|v| v.to_str().ok()) {
            self.traceparents.lock().unwrap().push(traceparent.to_owned());
        }
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

fn server_section(grpc: u16, http: u16) -> String {
    format!(
        "[server]\ngrpc_addr = \"127.0.0.1:{grpc}\"\nhttp_addr = \"127.0.0.1:{http}\"\n\
         metrics_addr = \"127.0.0.1:{}\"\ndrain_timeout = \"2s\"\n[telemetry]\nlog_filter = \"error\"\n",
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

/// Ingestion, identity, scoring and orchestration as processes of their own over a
/// fresh database, identity handing its log to scoring, orchestration and this test's
/// downstream, and the keys to call them with.
struct Cluster {
    _dir: TempDir,
    admin: String,
    ingestion_port: u16,
    http_port: u16,
    identity_port: u16,
    scoring_port: u16,
    orchestration_port: u16,
    measurement_port: u16,
    downstream: Downstream,
    downstream_addr: SocketAddr,
    downstream_up: CancellationToken,
    /// Held to keep the process (killed when dropped).
    _ingestion: Process,
    identity: Process,
    scoring: Process,
    _orchestration: Process,
    _measurement: Process,
}

impl Cluster {
    /// `None` (skip) without the test servers; `env` goes to every process.
    async fn start(env: &[(&'static str, String)]) -> Option<Self> {
        let (server, redis) = (corvus_test_support::postgres_url()?, corvus_test_support::redis_url()?);
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
        let downstream_up = serve_downstream(&downstream, downstream_addr);

        let (ingestion_port, http_port, identity_port) = (free_port(), free_port(), free_port());
        let (scoring_port, orchestration_port, measurement_port) = (free_port(), free_port(), free_port());
        let identity_config = write_config(
            dir.path(),
            "identity",
            &format!(
                "{}[identity]\nbatch_size = 500\nscoring_endpoint = \"http://127.0.0.1:{scoring_port}\"\n\
                 [identity.log]\nretry_max = \"300ms\"\n\
                 [[identity.consumers]]\nname = \"downstream\"\nendpoint = \"http://{downstream_addr}\"\n\
                 [[identity.consumers]]\nname = \"ingestion\"\nendpoint = \"http://127.0.0.1:{ingestion_port}\"\n\
                 changes_only = true\n\
                 [[identity.consumers]]\nname = \"scoring\"\nendpoint = \"http://127.0.0.1:{scoring_port}\"\n\
                 [[identity.consumers]]\nname = \"orchestration\"\n\
                 endpoint = \"http://127.0.0.1:{orchestration_port}\"\n\
                 [[identity.consumers]]\nname = \"measurement\"\n\
                 endpoint = \"http://127.0.0.1:{measurement_port}\"\n",
                server_section(identity_port, free_port())
            ),
        );
        let ingestion_config = write_config(
            dir.path(),
            "ingestion",
            &format!(
                "{}[ingestion.outbox]\nretry_max = \"300ms\"\n\
                 [[ingestion.consumers]]\nname = \"identity\"\nendpoint = \"http://127.0.0.1:{identity_port}\"\n\
                 batch_size = 500\n",
                server_section(ingestion_port, http_port)
            ),
        );
        // The service key as a deployment gives it: one variable for every consumer.
        let mut env: Vec<(&'static str, String)> = env.to_vec();
        env.extend([
            ("DATABASE_URL", database),
            ("REDIS_URL", redis),
            ("CORVUS_STORAGE__CACHE_NAMESPACE", storage.cache_namespace.clone()),
            ("CORVUS_SERVER__SERVICE_KEY", service),
        ]);
        let scoring_config = write_config(dir.path(), "scoring", &server_section(scoring_port, free_port()));
        // Orchestration reads people from identity and targets from scoring, over gRPC,
        // and hands its decisions to measurement.
        let orchestration_config = write_config(
            dir.path(),
            "orchestration",
            &format!(
                "{}[orchestration]\nidentity_endpoint = \"http://127.0.0.1:{identity_port}\"\n\
                 scoring_endpoint = \"http://127.0.0.1:{scoring_port}\"\n\
                 [[orchestration.consumers]]\nname = \"measurement-exposures\"\n\
                 endpoint = \"http://127.0.0.1:{measurement_port}\"\n",
                server_section(orchestration_port, free_port())
            ),
        );
        let measurement_config = write_config(
            dir.path(),
            "measurement",
            &server_section(measurement_port, free_port()),
        );
        let scoring = Process::start("scoring", scoring_config, env.clone());
        let orchestration = Process::start("orchestration", orchestration_config, env.clone());
        let measurement = Process::start("measurement", measurement_config, env.clone());
        let identity = Process::start("identity", identity_config, env.clone());
        let ingestion = Process::start("ingestion", ingestion_config, env);
        Some(Self {
            _dir: dir,
            admin,
            ingestion_port,
            http_port,
            identity_port,
            scoring_port,
            orchestration_port,
            measurement_port,
            downstream,
            downstream_addr,
            downstream_up,
            _ingestion: ingestion,
            identity,
            scoring,
            _orchestration: orchestration,
            _measurement: measurement,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_apart_lose_nothing_when_killed() {
    let Some(mut cluster) = Cluster::start(&[]).await else {
        return;
    };
    let Cluster {
        admin,
        ingestion_port,
        identity_port,
        scoring_port,
        orchestration_port,
        measurement_port,
        downstream,
        downstream_addr,
        ..
    } = &cluster;
    let (admin, ingestion_port, identity_port) = (admin.clone(), *ingestion_port, *identity_port);
    let (scoring_port, orchestration_port, measurement_port) = (*scoring_port, *orchestration_port, *measurement_port);
    let (downstream, downstream_addr) = (downstream.clone(), *downstream_addr);
    let bearer = Key::bearer(&admin);
    let mut client = IngestionServiceClient::with_interceptor(connect(ingestion_port).await, bearer.clone());
    let (batches, per_batch) = (40, 50);
    for b in 0..batches {
        match b {
            10 => cluster.identity.kill().await,
            15 => cluster.identity.spawn(),
            20 => cluster.downstream_up.cancel(),
            30 => cluster.downstream_up = serve_downstream(&downstream, downstream_addr),
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
                include_scores: false,
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

    // Scoring, in a process of its own, holds each person's events once (it was handed
    // some twice after the kill).
    let mut scoring = ScoringServiceClient::with_interceptor(connect(scoring_port).await, bearer.clone());
    for person in [0, 17, 49] {
        let profile = seen[&format!("e-{person:05}")].0.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let scores = scoring
                .get_scores(GetScoresRequest {
                    profile_id: profile.clone(),
                    as_of: None,
                    horizon: 0.0,
                })
                .await
                .map(|r| r.into_inner().features.unwrap().events);
            match scores {
                Ok(events) if events == (total / 50) as u64 => break,
                other => assert!(tokio::time::Instant::now() < deadline, "u-{person}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // GetProfile, in identity's process, carries the audiences scoring keeps in its own:
    // identity asks it with the caller's key.
    let everyone = scoring_pb::Condition {
        condition: Some(scoring_pb::condition::Condition::Compare(scoring_pb::Comparison {
            field: "features.events".into(),
            op: scoring_pb::Operator::Gte as i32,
            value: Some(corvus_proto::json::json_to_value(&serde_json::json!(1))),
        })),
    };
    scoring
        .create_audience(scoring_pb::CreateAudienceRequest {
            audience: Some(scoring_pb::Audience {
                name: "everyone".into(),
                definition: Some(everyone),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let profile_of_u17 = async |reader: &mut IdentityServiceClient<_>| {
        reader
            .get_profile(identity_pb::GetProfileRequest {
                lookup: Some(identity_pb::get_profile_request::Lookup::ProfileId(
                    seen["e-00017"].0.clone(),
                )),
                include_scores: true,
            })
            .await
            .unwrap()
            .into_inner()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let read = profile_of_u17(&mut reader).await;
        assert_eq!(read.scores_unavailable, "");
        if read.profile.unwrap().segments == ["everyone"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audience never reached the profile"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Measurement, in a process of its own, counts revenue per person after a decision.
    let mut measurement = MeasurementServiceClient::with_interceptor(connect(measurement_port).await, bearer.clone());
    measurement
        .create_metric(measurement_pb::CreateMetricRequest {
            metric: Some(measurement_pb::Metric {
                name: "revenue".into(),
                r#type: measurement_pb::MetricType::Count as i32,
                numerator: Some(measurement_pb::MetricEvent {
                    event: "Order Completed".into(),
                    value: "revenue".into(),
                    ..Default::default()
                }),
                window: Some(prost_types::Duration {
                    seconds: 86_400,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    // Orchestration, in a process of its own, decides for a person the load made: it
    // reads them from identity in another process, with the caller's key.
    let mut orchestration =
        OrchestrationServiceClient::with_interceptor(connect(orchestration_port).await, bearer.clone());
    orchestration
        .create_campaign(orchestration_pb::CreateCampaignRequest {
            campaign: Some(orchestration_pb::Campaign {
                name: "welcome".into(),
                actions: vec![orchestration_pb::Action {
                    name: "hello".into(),
                    kind: "message".into(),
                    subject: "Hello".into(),
                    ..Default::default()
                }],
                channels: vec![corvus_proto::common::v1::Channel::Email as i32],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    orchestration
        .set_campaign_state(orchestration_pb::SetCampaignStateRequest {
            name: "welcome".into(),
            state: orchestration_pb::CampaignState::Live as i32,
        })
        .await
        .unwrap();
    let decided = orchestration
        .decide(orchestration_pb::DecideRequest {
            person: Some(orchestration_pb::decide_request::Person::Identifier(
                corvus_proto::common::v1::Identifier {
                    kind: "user_id".into(),
                    value: "u-17".into(),
                },
            )),
            placement: "apart".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let decision = decided
        .decision
        .unwrap_or_else(|| panic!("no decision: {:?}", decided.explanation));
    assert_eq!(decision.profile_id, seen["e-00017"].0);
    assert_eq!(decision.campaign, "welcome");
    assert_eq!(decision.action, "hello");
    assert_eq!(decision.channel, corvus_proto::common::v1::Channel::Email as i32);

    // The person orders: measurement has the decision from orchestration's log and the
    // order from identity's, each over gRPC, and counts the order against the exposure.
    let mut order = event("order-17", &[("user_id", "u-17")]);
    order.event = "Order Completed".into();
    order.properties = Some(corvus_proto::raw::RawStruct::from_json(
        serde_json::json!({"revenue": 42.0}).as_object().unwrap(),
    ));
    client
        .ingest(IngestRequest {
            events: vec![order],
            sent_at: None,
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let results = measurement
            .get_experiment_results(measurement_pb::GetExperimentResultsRequest {
                experiment: "welcome".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner());
        let observed: Vec<(String, u64, f64)> = match &results {
            Ok(r) => r.metrics[0]
                .observed
                .iter()
                .map(|a| (a.name.clone(), a.users, a.mean))
                .collect(),
            Err(_) => Vec::new(),
        };
        if observed == [("default".to_owned(), 1, 42.0)] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{results:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
            .chain(identity.consumers.iter().map(|c| (c.name.clone(), c.lag)))
            .collect();
        if lags.iter().all(|(_, lag)| *lag == 0) {
            assert_eq!(lags.len(), 6, "{lags:?}");
            // Orchestration, apart, took identity's log to its end, and kept all of it.
            let orchestration = identity.consumers.iter().find(|c| c.name == "orchestration");
            let orchestration = orchestration.unwrap_or_else(|| panic!("{:?}", identity.consumers));
            assert!(orchestration.last_delivery_at.is_some(), "{orchestration:?}");
            assert_eq!(orchestration.dead_letters, 0, "{orchestration:?}");
            assert_eq!(orchestration.last_error, "", "{orchestration:?}");
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
            include_scores: false,
        })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    reader
        .forget_profile(identity_pb::ForgetProfileRequest {
            profile_id: person0.profile_id.clone(),
            allow_recreate: false,
        })
        .await
        .unwrap();
    // The receipt says what ingestion deleted, once it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let receipt = reader
            .get_erasure_receipt(identity_pb::GetErasureReceiptRequest {
                profile_id: person0.profile_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .receipt
            .unwrap();
        let ingestion = receipt.stores.iter().find(|s| s.store == "ingestion").unwrap();
        let scoring = receipt.stores.iter().find(|s| s.store == "scoring").unwrap();
        if !ingestion.pending && !scoring.pending {
            assert_eq!(ingestion.removed["events"], (total / 50) as u64, "{receipt:?}");
            assert_eq!(scoring.removed["facts"], (total / 50) as u64, "{receipt:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{receipt:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = stored_message_ids(&mut client).await;
        // The load less person 0's events, and u-17's order.
        if left.len() == total - total / 50 + 1 {
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
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Without scoring, GetProfile still answers, and says why the scores are missing.
    cluster.scoring.kill().await;
    let read = profile_of_u17(&mut reader).await;
    assert!(read.profile.unwrap().segments.is_empty());
    assert!(
        read.scores_unavailable.starts_with("scoring answered Unavailable"),
        "{}",
        read.scores_unavailable
    );
    cluster.downstream_up.cancel();
}

async fn stored_message_ids(client: &mut Client) -> Vec<String> {
    stored_events(client)
        .await
        .into_iter()
        .map(|e| e.event.unwrap().message_id)
        .collect()
}
