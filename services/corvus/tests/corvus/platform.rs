//! What every server gives: health that tells the truth, reflection (v1 and v1alpha),
//! metrics, and a shutdown that drains in-flight work.

use std::time::Duration;

use corvus_proto::ingestion::v1::IngestStreamRequest;
use corvus_test_support::Backend;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{TestApp, batch, spawn, track};

async fn health(app: &TestApp, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(app.channel().await);
    let res = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap();
    res.into_inner().status()
}

async fn wait_for(app: &TestApp, service: &str, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health(app, service).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service:?} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics() {
    let Some(app) = spawn(Backend::Embedded).await else {
        return;
    };
    wait_for(&app, "", ServingStatus::Serving).await;
    wait_for(&app, "corvus.ingestion.v1.IngestionService", ServingStatus::Serving).await;
    assert_eq!(health(&app, "liveness").await, ServingStatus::Serving);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"corvus.ingestion.v1.IngestionService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        let mut alpha = ServerReflectionClient::new(app.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "corvus.ingestion.v1.IngestionService".into(),
            )),
        };
        let mut answers = alpha
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        assert!(answers.next().await.unwrap().unwrap().message_response.is_some());
    }

    let mut client = app.client(&app.ingest_key).await;
    client.ingest(batch(vec![track("m-1")])).await.unwrap();
    let _ = app.client(&app.read_key).await.ingest(batch(vec![track("m-2")])).await;
    let metrics = reqwest::get(&app.metrics).await.unwrap().text().await.unwrap();
    for needle in [
        "corvus_requests_total{protocol=\"grpc\",method=\"/corvus.ingestion.v1.IngestionService/Ingest\",code=\"Ok\"}",
        "code=\"PermissionDenied\"",
        "corvus_request_duration_seconds_bucket",
        "corvus_events_total{outcome=\"accepted\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_streams_then_stops() {
    let Some(app) = spawn(Backend::Embedded).await else {
        return;
    };
    wait_for(&app, "", ServingStatus::Serving).await;
    let mut client = app.client(&app.ingest_key).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut acks = client
        .ingest_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let send = |id: u64| IngestStreamRequest {
        batch_id: id,
        batch: Some(batch(vec![track(&format!("d-{id}"))])),
    };
    tx.send(send(1)).await.unwrap();
    assert_eq!(acks.message().await.unwrap().unwrap().batch_id, 1);

    // Shutdown begins while the stream is open: health stops saying SERVING at once...
    let mut health = HealthClient::new(app.channel().await);
    app.shutdown.cancel();
    let status = health.check(HealthCheckRequest::default()).await;
    assert!(status.is_err() || status.unwrap().into_inner().status() == ServingStatus::NotServing);
    // ...and the stream in flight still has its batches acknowledged.
    tx.send(send(2)).await.unwrap();
    let ack = acks.message().await.unwrap().unwrap();
    assert_eq!((ack.batch_id, ack.result.unwrap().accepted), (2, 1));
    drop(tx);
    assert!(acks.message().await.unwrap().is_none());
    tokio::time::timeout(Duration::from_secs(10), app.handle)
        .await
        .expect("stopped after draining")
        .unwrap()
        .unwrap();
}
