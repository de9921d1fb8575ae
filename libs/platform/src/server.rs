//! Server bootstrap: one gRPC port with health and reflection beside the services, an
//! optional HTTP port, the metrics port, one tower stack, and graceful shutdown.
//!
//! The gRPC stack, outermost first:
//! 1. timeout (tonic's): the smaller of the client's `grpc-timeout` and the server
//!    default, so every request has a deadline;
//! 2. trace context: the span of the request, a child of the caller's W3C context; it
//!    sits outside everything else so that all that follows is traced;
//! 3. metrics: counts every request by method and code, refused ones included;
//! 4. admission: a concurrency limit that sheds load at once (UNAVAILABLE with a retry
//!    hint) instead of queueing, so an overloaded server stays fast for what it admits;
//! 5. auth: resolves the API key to a principal; inside admission so that a flood of
//!    bad keys is shed too, and outside the handlers so none can forget it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::ServerConfig;
use crate::auth::{AuthError, Authenticator};
use crate::error::retryable;
use crate::metrics::MetricsLayer;
use crate::telemetry::TraceContextLayer;

/// The metadata key (gRPC) and header (HTTP) with which a caller names the workspace it
/// acts for; a key of another workspace is then refused.
pub const WORKSPACE_HEADER: &str = "x-corvus-workspace";

/// Bound sockets, so that tests can bind port 0 and read the port before serving.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &ServerConfig, http: bool) -> std::io::Result<Self> {
        let metrics = match config.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            grpc: TcpListener::bind(config.grpc_addr).await?,
            http: if http {
                Some(TcpListener::bind(config.http_addr).await?)
            } else {
                None
            },
            metrics,
        })
    }

    /// Every port on 127.0.0.1:0, for tests.
    pub async fn ephemeral() -> std::io::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind("127.0.0.1:0").await?,
            http: Some(TcpListener::bind("127.0.0.1:0").await?),
            metrics: Some(TcpListener::bind("127.0.0.1:0").await?),
        })
    }
}

/// A check that the service's storage answers; health says SERVING only while it passes.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What a process serves: gRPC routes with the names health reports them under, and an
/// optional HTTP router.
pub struct Services {
    pub grpc: tonic::service::Routes,
    pub names: Vec<String>,
    pub http: Option<axum::Router>,
}

/// Serves until `shutdown` is cancelled, then drains: health turns NOT_SERVING, the
/// listeners stop accepting, and in-flight requests get `drain_timeout` to finish.
pub async fn serve(
    config: &ServerConfig,
    listeners: Listeners,
    services: Services,
    auth: Arc<Authenticator>,
    readiness: ReadinessCheck,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // "liveness" answers SERVING for as long as the process runs, whatever its storage
    // does, so that a liveness probe never restarts a pod that only waits for a database.
    health.set_service_status("liveness", ServingStatus::Serving).await;
    let mut names = services.names.clone();
    names.push(String::new());
    for name in &names {
        health.set_service_status(name, ServingStatus::NotServing).await;
    }
    tokio::spawn(report_readiness(health.clone(), names, readiness, shutdown.clone()));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(corvus_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(corvus_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let admission = Arc::new(Semaphore::new(config.concurrency_limit));
    let grpc = tonic::transport::Server::builder()
        .timeout(config.request_timeout)
        .tcp_nodelay(true)
        .http2_adaptive_window(Some(true))
        .layer(TraceContextLayer)
        .layer(MetricsLayer::grpc())
        .layer(AdmissionLayer::new(admission.clone(), grpc_overloaded))
        .layer(GrpcAuthLayer { auth })
        .add_routes(services.grpc)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)), {
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { grpc.await.map_err(anyhow::Error::from) });
    if let (Some(listener), Some(router)) = (listeners.http, services.http) {
        let router = router
            .layer(AdmissionLayer::new(admission, http_overloaded))
            .layer(MetricsLayer::http())
            .layer(TraceContextLayer);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .map_err(anyhow::Error::from)
        });
    }
    if let Some(listener) = listeners.metrics {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(listener, crate::metrics::router())
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .map_err(anyhow::Error::from)
        });
    }

    let drain = config.drain_timeout;
    let joined = async {
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        anyhow::Ok(())
    };
    tokio::pin!(joined);
    tokio::select! {
        result = &mut joined => result,
        () = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(timeout = ?drain, "drain timed out, dropping in-flight requests");
            Ok(())
        }
    }
}

async fn report_readiness(
    health: tonic_health::server::HealthReporter,
    names: Vec<String>,
    readiness: ReadinessCheck,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let status = match readiness().await {
            Ok(()) => ServingStatus::Serving,
            Err(cause) => {
                tracing::warn!(error = %cause, "not ready");
                ServingStatus::NotServing
            }
        };
        if shutdown.is_cancelled() {
            break;
        }
        if last != Some(status) {
            for name in &names {
                health.set_service_status(name, status).await;
            }
            last = Some(status);
        }
        let pause = if status == ServingStatus::Serving { 2000 } else { 250 };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(pause)) => {}
        }
    }
    for name in &names {
        health.set_service_status(name, ServingStatus::NotServing).await;
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => futures::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = futures::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("shutdown signal received, draining");
        token.cancel();
    });
}

fn grpc_overloaded() -> http::Response<tonic::body::Body> {
    retryable(
        tonic::Code::Unavailable,
        "server overloaded, retry",
        Duration::from_millis(100),
    )
    .into_http()
}

fn http_overloaded() -> http::Response<axum::body::Body> {
    let mut res = http::Response::new(axum::body::Body::from(
        r#"{"code":"overloaded","message":"server overloaded, retry"}"#,
    ));
    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    res
}

/// A concurrency limit that refuses at once when full (load shedding) instead of
/// queueing; `reject` builds the refusal in the protocol's own terms.
pub struct AdmissionLayer<R> {
    permits: Arc<Semaphore>,
    reject: fn() -> R,
}

impl<R> Clone for AdmissionLayer<R> {
    fn clone(&self) -> Self {
        Self {
            permits: self.permits.clone(),
            reject: self.reject,
        }
    }
}

impl<R> AdmissionLayer<R> {
    pub fn new(permits: Arc<Semaphore>, reject: fn() -> R) -> Self {
        Self { permits, reject }
    }
}

impl<S, R> tower::Layer<S> for AdmissionLayer<R> {
    type Service = AdmissionService<S, R>;
    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            permits: self.permits.clone(),
            reject: self.reject,
        }
    }
}

pub struct AdmissionService<S, R> {
    inner: S,
    permits: Arc<Semaphore>,
    reject: fn() -> R,
}

impl<S: Clone, R> Clone for AdmissionService<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            permits: self.permits.clone(),
            reject: self.reject,
        }
    }
}

impl<S, Req, R> tower::Service<Req> for AdmissionService<S, R>
where
    S: tower::Service<Req, Response = R>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = R;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<R, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit: OwnedSemaphorePermit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics::counter!("corvus_requests_shed_total").increment(1);
                let res = (self.reject)();
                return Box::pin(async move { Ok(res) });
            }
        };
        let future = self.inner.call(req);
        Box::pin(async move {
            let res = future.await;
            drop(permit);
            res
        })
    }
}

/// Resolves `authorization: Bearer <key>` to a [`crate::Principal`] in the request's
/// extensions. Health and reflection are open, as probes and tools carry no key.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    auth: Arc<Authenticator>,
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcAuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

impl<S, B> tower::Service<http::Request<B>> for GrpcAuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is ready only after poll_ready; swap so the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let key = header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|k| k.trim().to_owned());
        let workspace = header(WORKSPACE_HEADER).map(str::to_owned);
        Box::pin(async move {
            if is_open(req.uri().path()) {
                return inner.call(req).await;
            }
            let result = match key.as_deref() {
                None => Err(AuthError::MissingKey),
                Some(key) => auth.authenticate(key, workspace.as_deref()).await,
            };
            match result {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Err(err) => Ok(Status::from(err).into_http()),
            }
        })
    }
}

/// The caller's principal, put there by the auth layer.
pub fn principal<T>(req: &tonic::Request<T>) -> Result<&crate::Principal, Status> {
    req.extensions()
        .get::<crate::Principal>()
        .ok_or_else(|| Status::unauthenticated("missing API key"))
}

/// The caller's principal, once it is known to hold `role` for `action`.
pub fn authorise<T>(
    req: &tonic::Request<T>,
    role: crate::Role,
    action: &'static str,
) -> Result<crate::Principal, Status> {
    let principal = principal(req)?.clone();
    principal.require(role, action)?;
    Ok(principal)
}
