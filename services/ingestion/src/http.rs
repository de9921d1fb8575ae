//! The Segment-compatible HTTP API: `POST /v1/batch` and the single-event endpoints,
//! the write key as the Basic-auth user name, gzip bodies. Success is 200 with a JSON
//! body; errors are `{"code": …, "message": …}` with 400, 401, 403, 413, 429 or 503, the
//! shape both the Segment and the RudderStack SDKs read.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use corvus_platform::auth::AuthError;
use corvus_platform::server::WORKSPACE_HEADER;
use corvus_platform::{Authenticator, Principal, Role};
use corvus_proto::common::v1::EventType;
use corvus_storage::StorageError;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower_http::decompression::RequestDecompressionLayer;

use crate::domain::segment::{self, json_field};
use crate::domain::{Violation, validate::to_timestamp};
use crate::ingest::{IngestError, Ingestor, Outcome};

#[derive(Clone)]
struct HttpState {
    ingestor: Ingestor,
    auth: Arc<Authenticator>,
}

pub fn router(ingestor: Ingestor, auth: Arc<Authenticator>) -> Router {
    let state = HttpState { ingestor, auth };
    let single = |kind: EventType| {
        post(
            move |State(s): State<HttpState>, headers: HeaderMap, body: Body| async move {
                handle(s, headers, body, Some(kind)).await
            },
        )
    };
    Router::new()
        .route(
            "/v1/batch",
            post(
                |State(s): State<HttpState>, headers: HeaderMap, body: Body| async move {
                    handle(s, headers, body, None).await
                },
            ),
        )
        .route("/v1/track", single(EventType::Track))
        .route("/v1/identify", single(EventType::Identify))
        .route("/v1/page", single(EventType::Page))
        .route("/v1/screen", single(EventType::Screen))
        .route("/v1/group", single(EventType::Group))
        .route("/v1/alias", single(EventType::Alias))
        .layer(RequestDecompressionLayer::new().gzip(true))
        .with_state(state)
}

/// An HTTP error in the shape the SDKs read.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            axum::Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            res.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        res
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::MissingKey | AuthError::InvalidKey => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthorized", err.to_string())
            }
            AuthError::WrongWorkspace | AuthError::Forbidden { .. } => {
                Self::new(StatusCode::FORBIDDEN, "forbidden", err.to_string())
            }
            AuthError::Storage(e) => e.into(),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "storage unavailable");
                Self {
                    retry_after_secs: Some(1),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "storage is unavailable, retry",
                    )
                }
            }
            StorageError::Conflict(cause) | StorageError::Internal(cause) => {
                tracing::error!(error = %cause, "storage error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::QuotaExceeded { retry_after, .. } => Self {
                retry_after_secs: Some(retry_after.as_secs_f64().ceil() as u64),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", err.to_string())
            },
            IngestError::Storage(e) => e.into(),
        }
    }
}

/// The write key: the Basic-auth user name (Segment), or a Bearer token.
fn write_key(headers: &HeaderMap) -> Result<String, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::MissingKey)?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Ok(token.trim().to_owned());
    }
    let encoded = value.strip_prefix("Basic ").ok_or(AuthError::MissingKey)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| AuthError::MissingKey)?;
    let decoded = String::from_utf8(decoded).map_err(|_| AuthError::MissingKey)?;
    let user = decoded.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return Err(AuthError::MissingKey);
    }
    Ok(user.to_owned())
}

async fn authenticate(state: &HttpState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let key = write_key(headers)?;
    let workspace = headers.get(WORKSPACE_HEADER).and_then(|v| v.to_str().ok());
    let principal = state.auth.authenticate(&key, workspace).await?;
    principal.require(Role::Ingest, "ingest events")?;
    Ok(principal)
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )),
        Err(err) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("cannot read the body: {err}"),
        )),
    }
}

#[derive(serde::Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a serde_json::value::RawValue>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
    #[serde(default)]
    context: Option<serde_json::Map<String, Value>>,
}

async fn handle(state: HttpState, headers: HeaderMap, body: Body, kind: Option<EventType>) -> Response {
    match handle_inner(state, headers, body, kind).await {
        Ok(res) => res,
        Err(err) => err.into_response(),
    }
}

async fn handle_inner(
    state: HttpState,
    headers: HeaderMap,
    body: Body,
    kind: Option<EventType>,
) -> Result<Response, ApiError> {
    // Authenticate before reading the body: an unauthenticated caller costs nothing.
    let principal = authenticate(&state, &headers).await?;
    let limits = state.ingestor.limits();
    let bytes = read_body(body, limits.max_batch_bytes).await?;
    let invalid_json = |e: serde_json::Error| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string());

    let (raws, sent_at, shared_context): (Vec<&serde_json::value::RawValue>, _, _) = match kind {
        None => {
            let batch: BatchBody = serde_json::from_slice(&bytes).map_err(invalid_json)?;
            if batch.batch.is_empty() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_batch",
                    "batch: at least one event",
                ));
            }
            let sent_at = match batch.sent_at {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(segment::parse_time(&s).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_batch",
                        "sentAt: not an ISO 8601 timestamp",
                    )
                })?),
                Some(_) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_batch",
                        "sentAt: must be a string",
                    ));
                }
            };
            (batch.batch, sent_at, batch.context)
        }
        Some(_) => {
            let raw: &serde_json::value::RawValue = serde_json::from_slice(&bytes).map_err(invalid_json)?;
            (vec![raw], None, None)
        }
    };

    let mut message_ids = Vec::with_capacity(raws.len());
    let events = raws
        .iter()
        .map(|raw| {
            let parsed: Result<Value, _> = serde_json::from_str(raw.get());
            // One id per message, parsed or not, so that statuses line up with the batch.
            let message_id = parsed
                .as_ref()
                .ok()
                .and_then(|v| v.get("messageId"))
                .and_then(Value::as_str);
            message_ids.push(message_id.unwrap_or_default().to_owned());
            let mut value = parsed.map_err(|e| Violation::new("", e.to_string()))?;
            let len = raw.get().len();
            if len > limits.max_event_bytes {
                return Err(Violation::new(
                    "",
                    format!("event is {len} bytes, the limit is {}", limits.max_event_bytes),
                ));
            }
            if let (Some(shared), Some(obj)) = (&shared_context, value.as_object_mut()) {
                merge_context(obj, shared);
            }
            segment::from_json(value, kind)
        })
        .collect::<Vec<_>>();

    let sent_at = sent_at.map(to_timestamp);
    let outcomes = state.ingestor.ingest(&principal, events, sent_at.as_ref()).await?;
    Ok(respond(&outcomes, &message_ids, kind.is_none()))
}

/// Batch-level context fills in what a message's own context leaves out.
fn merge_context(message: &mut serde_json::Map<String, Value>, shared: &serde_json::Map<String, Value>) {
    let context = message
        .entry("context")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(context) = context {
        for (k, v) in shared {
            context.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

fn respond(outcomes: &[Outcome], message_ids: &[String], batch: bool) -> Response {
    let (mut accepted, mut duplicates) = (0, 0);
    let mut rejected = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Outcome::Accepted(_) => accepted += 1,
            Outcome::Duplicate(_) => duplicates += 1,
            Outcome::Rejected(v) => {
                let field = match (batch, v.field.is_empty()) {
                    (true, true) => format!("batch[{i}]"),
                    (true, false) => format!("batch[{i}].{}", json_field(&v.field)),
                    (false, _) => json_field(&v.field),
                };
                rejected.push(json!({"index": i, "messageId": message_ids[i], "field": field, "reason": v.reason}));
            }
        }
    }
    if accepted + duplicates == 0 {
        let first = &rejected[0];
        let message = format!(
            "{} event(s) rejected; first: {}: {}",
            rejected.len(),
            first["field"].as_str().unwrap_or_default(),
            first["reason"].as_str().unwrap_or_default()
        );
        let body = json!({"code": "invalid_events", "message": message, "rejected": rejected});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    let body = json!({"success": true, "accepted": accepted, "duplicates": duplicates, "rejected": rejected});
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_key_is_the_basic_auth_user() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Basic Y3ZzX2tleTo=".parse().unwrap());
        assert_eq!(write_key(&headers).unwrap(), "cvs_key");
        headers.insert(header::AUTHORIZATION, "Bearer cvs_other".parse().unwrap());
        assert_eq!(write_key(&headers).unwrap(), "cvs_other");
        headers.insert(header::AUTHORIZATION, "Basic Og==".parse().unwrap());
        assert!(matches!(write_key(&headers), Err(AuthError::MissingKey)));
    }
}
