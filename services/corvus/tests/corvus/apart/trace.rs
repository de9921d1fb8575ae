//! One trace follows an event from the HTTP request through both logs and both
//! processes to the downstream, as an OTLP collector in the test receives it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use tonic::{Request, Response, Status};

use super::{Cluster, connect};

/// An OTLP/gRPC collector in the test: the spans each process exports, as
/// (service.name, span name, trace id in hex).
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                spans.push((service.clone(), span.name, trace));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_event_across_processes() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        // Export within a tenth of a second rather than every five.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let Some(cluster) = Cluster::start(&env).await else {
        return;
    };
    connect(cluster.ingestion_port).await;
    connect(cluster.identity_port).await;

    // Sent over the Segment HTTP API, as an SDK would, in a trace of the caller's.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let batch = serde_json::json!({"batch": [{
        "type": "identify", "messageId": "traced-1", "userId": "u-traced",
        "traits": {"email": "traced@example.com"},
    }]});
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/batch", cluster.http_port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sent = http
            .post(&url)
            .basic_auth(&cluster.admin, Some(""))
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .json(&batch)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => break,
            other => assert!(tokio::time::Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The downstream is called in the trace, two logs and two processes later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cluster.downstream.seen.lock().unwrap().contains_key("traced-1") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event never reached the downstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let traceparents = cluster.downstream.traceparents.lock().unwrap().clone();
    assert!(
        traceparents.iter().any(|t| t.split('-').nth(1) == Some(trace)),
        "{traceparents:?}"
    );

    // Each process exported its part of the same trace: ingestion took the request and
    // delivered to identity; identity took the delivery and delivered to the downstream,
    // to scoring and to orchestration, which took it.
    let wanted = [
        ("corvus-ingestion", "request"),
        ("corvus-ingestion", "outbox.deliver"),
        ("corvus-identity", "request"),
        ("corvus-identity", "outbox.deliver"),
        ("corvus-scoring", "request"),
        ("corvus-orchestration", "request"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let spans = collector.spans.lock().unwrap().clone();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(service, name)| !spans.iter().any(|s| s.0 == *service && s.1 == *name && s.2 == trace))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no span {missing:?} in trace {trace}; exported: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
