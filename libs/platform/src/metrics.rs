//! Prometheus metrics: one process-wide recorder, a tower layer that counts requests
//! by method and code and times them, and the `/metrics` endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// Installs the recorder once per process and returns its handle.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("valid buckets")
            .install_recorder()
            .expect("the metrics recorder is installed only here")
    })
}

/// An axum router serving `GET /metrics`.
pub fn router() -> axum::Router {
    let handle = recorder();
    axum::Router::new().route("/metrics", axum::routing::get(move || async move { handle.render() }))
}

/// Counts requests (`corvus_requests_total{protocol, method, code}`) and times them
/// (`corvus_request_duration_seconds{protocol, method}`). For gRPC the code is the
/// `grpc-status` of a trailers-only response (every error tonic returns from a handler),
/// else OK; for HTTP it is the status code.
#[derive(Clone, Copy, Debug)]
pub struct MetricsLayer {
    protocol: &'static str,
}

impl MetricsLayer {
    pub fn grpc() -> Self {
        Self { protocol: "grpc" }
    }

    pub fn http() -> Self {
        Self { protocol: "http" }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        recorder();
        MetricsService {
            inner,
            protocol: self.protocol,
        }
    }
}

#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    protocol: &'static str,
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let protocol = self.protocol;
        let started = Instant::now();
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(res) if protocol == "grpc" => grpc_code_name(res.headers()),
                Ok(res) => res.status().as_str().to_owned(),
                Err(_) => "error".to_owned(),
            };
            metrics::counter!("corvus_requests_total", "protocol" => protocol, "method" => method.clone(), "code" => code)
                .increment(1);
            metrics::histogram!("corvus_request_duration_seconds", "protocol" => protocol, "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

fn grpc_code_name(headers: &http::HeaderMap) -> String {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    format!("{:?}", tonic::Code::from_i32(code))
}
