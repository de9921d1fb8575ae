//! The console: a web page served on the HTTP port at `/console`, its assets built into
//! the binary, that reads Corvus only through the services' public gRPC APIs (the reads
//! of `RELAYED`, nothing that changes data). Its calls,
//! `POST /console/api/{service}/{method}` with the request as proto3 JSON, are relayed
//! as gRPC calls with the caller's key (`Authorization: Bearer …`), the messages mapped
//! to and from JSON by the contracts' own descriptors; a server-streaming method, at
//! `/console/stream/{service}/{method}`, answers as server-sent events, one per message.

use std::convert::Infallible;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use tonic::transport::{Channel, Endpoint};

pub mod codec;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// The methods the console relays: the reads its page makes, nothing that changes data
/// or that only Corvus's own services call.
const RELAYED: [(&str, &str); 13] = [
    ("corvus.measurement.v1.MeasurementService", "ListExperiments"),
    ("corvus.measurement.v1.MeasurementService", "ListMetrics"),
    ("corvus.measurement.v1.MeasurementService", "GetExperimentResults"),
    ("corvus.measurement.v1.MeasurementService", "GetCampaignReport"),
    ("corvus.measurement.v1.MeasurementService", "GetSatisfaction"),
    ("corvus.measurement.v1.MeasurementService", "StreamMetrics"),
    ("corvus.orchestration.v1.OrchestrationService", "ListAlerts"),
    ("corvus.orchestration.v1.OrchestrationService", "StreamAlerts"),
    ("corvus.orchestration.v1.OrchestrationService", "ListCampaigns"),
    ("corvus.scoring.v1.ScoringService", "ListAudiences"),
    ("corvus.scoring.v1.ScoringService", "ListSegments"),
    ("corvus.scoring.v1.ScoringService", "DescribeSegment"),
    ("corvus.identity.v1.IdentityService", "GetProfile"),
];

#[derive(Clone)]
struct Gateway {
    channel: Channel,
    pool: DescriptorPool,
}

/// The console's routes, relaying its calls to the gRPC API at `endpoint` (this
/// process's own, or `[console] grpc_endpoint`).
pub fn router(endpoint: &str) -> anyhow::Result<Router> {
    let pool = DescriptorPool::decode(corvus_proto::FILE_DESCRIPTOR_SET)?;
    let channel = Endpoint::from_shared(endpoint.to_owned())?.connect_lazy();
    Ok(Router::new()
        .route("/console", get(|| async { page(INDEX, "text/html; charset=utf-8") }))
        .route(
            "/console/app.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/app.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/console/api/{service}/{method}", post(unary))
        .route("/console/stream/{service}/{method}", post(stream))
        .with_state(Gateway { channel, pool }))
}

fn page(body: &'static str, kind: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// A refusal as JSON: the HTTP status of the gRPC code, the message, and the field an
/// INVALID_ARGUMENT names.
fn refused(status: &tonic::Status) -> Response {
    use tonic::Code;
    use tonic_types::StatusExt as _;
    let http = match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let field = status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default();
    let body = serde_json::json!({
        "code": format!("{:?}", status.code()),
        "message": status.message(),
        "field": field,
    });
    (http, axum::Json(body)).into_response()
}

impl Gateway {
    /// The method named, if the console relays it; `streaming` tells which kind is
    /// wanted.
    fn method(&self, service: &str, method: &str, streaming: bool) -> Result<MethodDescriptor, tonic::Status> {
        let found = self
            .pool
            .get_service_by_name(service)
            .filter(|_| RELAYED.contains(&(service, method)))
            .and_then(|s| s.methods().find(|m| m.name() == method))
            .filter(|m| !m.is_client_streaming() && m.is_server_streaming() == streaming);
        found.ok_or_else(|| tonic::Status::not_found(format!("{service}/{method} is not a method the console relays")))
    }

    /// The request as gRPC would carry it: the JSON body as the method's input message,
    /// with the caller's key.
    fn request(
        &self,
        method: &MethodDescriptor,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<tonic::Request<Bytes>, tonic::Status> {
        let json: &[u8] = if body.is_empty() { b"{}" } else { body };
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let message = DynamicMessage::deserialize(method.input(), &mut deserializer).map_err(|e| {
            tonic::Status::invalid_argument(format!("the request is not a {}: {e}", method.input().name()))
        })?;
        let mut request = tonic::Request::new(Bytes::from(message.encode_to_vec()));
        if let Some(key) = headers.get(header::AUTHORIZATION)
            && let Ok(value) = key.to_str().unwrap_or_default().parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    fn path(method: &MethodDescriptor) -> http::uri::PathAndQuery {
        format!("/{}/{}", method.parent_service().full_name(), method.name())
            .parse()
            .expect("a service's path")
    }

    /// A message of the method's output type, as JSON.
    fn json(method: &MethodDescriptor, bytes: Bytes) -> Result<serde_json::Value, tonic::Status> {
        let message = DynamicMessage::decode(method.output(), bytes)
            .map_err(|e| tonic::Status::internal(format!("the answer is not a {}: {e}", method.output().name())))?;
        serde_json::to_value(&message).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

async fn unary(
    State(gateway): State<Gateway>,
    Path((service, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = async {
        let method = gateway.method(&service, &method, false)?;
        let request = gateway.request(&method, &headers, &body)?;
        let mut grpc = tonic::client::Grpc::new(gateway.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("the API is not reachable: {e}")))?;
        let response = grpc.unary(request, Gateway::path(&method), codec::BytesCodec).await?;
        Gateway::json(&method, response.into_inner())
    };
    match answer.await {
        Ok(json) => axum::Json(json).into_response(),
        Err(status) => refused(&status),
    }
}

async fn stream(
    State(gateway): State<Gateway>,
    Path((service, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let opened = async {
        let method = gateway.method(&service, &method, true)?;
        let request = gateway.request(&method, &headers, &body)?;
        let mut grpc = tonic::client::Grpc::new(gateway.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("the API is not reachable: {e}")))?;
        let messages = grpc
            .server_streaming(request, Gateway::path(&method), codec::BytesCodec)
            .await?
            .into_inner();
        Ok::<_, tonic::Status>((method, messages))
    };
    let (method, messages) = match opened.await {
        Ok(opened) => opened,
        Err(status) => return refused(&status),
    };
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(messages.map(move |message| {
            let event = match message.and_then(|bytes| Gateway::json(&method, bytes)) {
                Ok(json) => Event::default().data(json.to_string()),
                Err(status) => Event::default().event("error").data(status.message()),
            };
            Ok(event)
        }));
    Sse::new(events).into_response()
}
