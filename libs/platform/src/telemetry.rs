//! Logging, tracing and W3C trace-context propagation shared by every Corvus service.
//!
//! One call to [`init`] wires `tracing` to stdout (text or JSON) and to OpenTelemetry, so a
//! trace started by a caller continues through gRPC/HTTP hops and the outbox, and is exported
//! over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::collections::HashMap;
use std::sync::Mutex;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Instrument as _;
use tracing::Level;
use tracing::instrument::Instrumented;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

const TRACEPARENT: &str = "traceparent";

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON inside Kubernetes (`KUBERNETES_SERVICE_HOST` set) where logs are machine-collected,
    /// text elsewhere where a human reads them.
    #[default]
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Resolves `Auto` so the rest of the code only deals with concrete formats.
    fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto => {
                if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                }
            }
            other => other,
        }
    }
}

/// Telemetry settings, usually part of a service's configuration file.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// How log lines are written.
    pub log_format: LogFormat,
    /// `EnvFilter` directives; `RUST_LOG`, when set, wins so operators can raise verbosity
    /// without touching configuration.
    pub log_filter: String,
    /// `service.name` resource attribute, which is how traces are grouped in the backend.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Auto,
            log_filter: "info,opentelemetry=warn,opentelemetry_sdk=warn".to_owned(),
            service_name: "corvus".to_owned(),
        }
    }
}

/// Flushes and shuts down the tracer provider on drop, so spans still buffered are exported
/// before the process exits. Keep it alive for the lifetime of `main`.
///
/// Drop it while a multi-thread Tokio runtime is still running (e.g. at the end of
/// `#[tokio::main]`): on a current-thread runtime the final export cannot make progress and
/// gives up after 5 s.
///
/// It only owns something when OTLP export is enabled: without an exporter there is nothing to
/// flush, and shutting the provider down would stop spans from getting trace ids (which would
/// break propagation for anything that runs later in the same process, e.g. other tests).
#[must_use = "dropping the guard shuts telemetry down"]
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The final export needs the runtime to drive tonic's connection; on a multi-thread
        // worker, hand the worker's other tasks off while blocking so it cannot starve them.
        let on_multi_thread_runtime = tokio::runtime::Handle::try_current()
            .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let result = if on_multi_thread_runtime {
            tokio::task::block_in_place(|| provider.shutdown())
        } else {
            provider.shutdown()
        };
        if let Err(err) = result {
            // The subscriber may be the thing failing, so report on stderr directly.
            eprintln!("telemetry: failed to shut down the tracer provider: {err}");
        }
    }
}

/// Serialises `init` and remembers whether it already installed the global subscriber.
static INSTALLED: Mutex<bool> = Mutex::new(false);

/// Installs the global subscriber: fmt layer (text or JSON) filtered by the `EnvFilter`, and the
/// OpenTelemetry layer.
///
/// The OpenTelemetry layer is always installed, and sees info-level spans whatever the log
/// filter, so spans carry real trace/span ids and an incoming trace context is continued by
/// outgoing calls. Spans are exported (OTLP/gRPC, batch span processor, resource `service.name`)
/// only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; export
/// then requires being called inside a Tokio runtime. Always installs the W3C `TraceContext`
/// propagator globally.
///
/// Safe to call more than once in a process (tests call it per test): later calls, or calls made
/// after something else installed a global subscriber, return a guard that does nothing.
///
/// # Errors
///
/// When the log filter (or `RUST_LOG`) does not parse, or OTLP export is enabled and the exporter
/// cannot be built or no Tokio runtime is running.
pub fn init(config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());

    let mut installed = INSTALLED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if *installed || tracing::dispatcher::has_been_set() {
        return Ok(TelemetryGuard::default());
    }

    let log_filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(&directives).with_context(|| format!("invalid RUST_LOG filter {directives:?}"))?
        }
        _ => EnvFilter::try_new(&config.log_filter)
            .with_context(|| format!("invalid log filter {:?}", config.log_filter))?,
    };

    let export = otlp_endpoint_configured();
    let mut provider = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(config.service_name.clone())
            .build(),
    );
    if export {
        // tonic's lazy channel spawns its connection task on the current runtime; without one it
        // would panic, so fail with a clear message instead.
        tokio::runtime::Handle::try_current()
            .context("telemetry::init must run inside a Tokio runtime when OTLP export is enabled")?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .context("building the OTLP span exporter")?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let tracer = provider.tracer(env!("CARGO_PKG_NAME"));

    let fmt = match config.log_format.resolve() {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        _ => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
    };

    // The log filter only applies to log output: tracing keeps its own, fixed filter so that a
    // quiet log level (e.g. RUST_LOG=warn) does not disable the request spans that carry trace
    // context between services. The exporter's own transport (hyper, h2, tonic's channel,
    // tower's buffer) is kept out so that an export does not produce more spans to export.
    let otel_filter = Targets::new()
        .with_default(Level::INFO)
        .with_targets(TRANSPORT_TARGETS.iter().map(|target| (*target, LevelFilter::OFF)));
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(otel_filter);

    let result = tracing_subscriber::registry()
        .with(fmt.with_filter(log_filter))
        .with(otel)
        .try_init();
    if result.is_err() {
        // Someone else won the race to install a global subscriber (or a `log` logger); keep
        // their setup rather than failing the caller.
        return Ok(TelemetryGuard::default());
    }

    global::set_tracer_provider(provider.clone());
    *installed = true;
    Ok(TelemetryGuard {
        provider: export.then_some(provider),
    })
}

fn otlp_endpoint_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|value| !value.trim().is_empty()))
}

/// Target prefixes of the crates an OTLP/gRPC export goes through.
const TRANSPORT_TARGETS: [&str; 4] = ["h2", "hyper", "tower", "tonic::transport"];

/// The W3C `traceparent` of the current span, if it has a valid context (used to carry a trace
/// through the outbox).
#[must_use]
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `traceparent` the parent of `span` (used when a worker picks an event from the outbox).
///
/// Must be called before `span` is first entered; an invalid `traceparent` is ignored so a bad
/// outbox row never stops processing.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if !cx.span().span_context().is_valid() {
        tracing::debug!(traceparent, "ignoring invalid traceparent");
        return;
    }
    set_parent(span, cx);
}

fn set_parent(span: &tracing::Span, cx: Context) {
    // Fails when the span is disabled by the filter, already started, or the OpenTelemetry layer
    // is not installed; in every case the only consequence is a broken trace, not a failed call.
    if let Err(err) = span.set_parent(cx) {
        tracing::debug!(error = %err, "could not set the parent of a span");
    }
}

/// Injects the current span's context into outgoing gRPC metadata.
pub fn inject(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut MetadataInjector(metadata));
    });
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// A tonic client interceptor that injects the W3C trace context of the current span into every
/// call, so the server continues the caller's trace.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject(request.metadata_mut());
        Ok(request)
    }
}

/// A tower layer for servers (tonic and axum, i.e. any `Service<http::Request<B>>`) that runs
/// each request in an info-level span named `request` continuing the caller's W3C trace context.
///
/// The span has `rpc.method` (the URI path), `otel.kind = "server"` and an empty `code` for
/// whoever knows the outcome to record.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextLayer;

/// The service produced by [`TraceContextLayer`].
#[derive(Clone, Debug)]
pub struct TraceContextService<S> {
    inner: S,
}

impl<S> TraceContextService<S> {
    /// Wraps `inner`; the same as applying [`TraceContextLayer`].
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> tower::Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService::new(inner)
    }
}

impl<S, B> tower::Service<http::Request<B>> for TraceContextService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = tracing::info_span!(
            "request",
            rpc.method = %request.uri().path(),
            otel.kind = "server",
            code = tracing::field::Empty,
        );
        let parent =
            global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(request.headers())));
        if parent.span().span_context().is_valid() {
            // Must happen before the span is entered, which starts it.
            set_parent(&span, parent);
        }
        // Entered during `call` too, since services may do work before returning the future.
        let future = span.in_scope(|| self.inner.call(request));
        future.instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::service::Interceptor as _;
    use tower::{Layer as _, ServiceExt as _};

    use super::*;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn trace_id(traceparent: &str) -> &str {
        traceparent.split('-').nth(1).expect("traceparent has a trace id")
    }

    fn span_id(traceparent: &str) -> &str {
        traceparent.split('-').nth(2).expect("traceparent has a span id")
    }

    fn setup() -> TelemetryGuard {
        init(&TelemetryConfig::default()).expect("telemetry init")
    }

    #[tokio::test]
    async fn layer_continues_the_incoming_trace() {
        let _guard = setup();
        let service = TraceContextLayer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(current_traceparent())
        }));
        let request = http::Request::builder()
            .uri("/corvus.v1.Test/Method")
            .header(TRACEPARENT, INCOMING)
            .body(())
            .unwrap();

        let seen = service
            .oneshot(request)
            .await
            .unwrap()
            .expect("a traceparent inside the service");

        assert_eq!(trace_id(&seen), trace_id(INCOMING));
        assert_ne!(
            span_id(&seen),
            span_id(INCOMING),
            "the server span is a child, not the caller"
        );
    }

    #[tokio::test]
    async fn layer_without_incoming_context_starts_a_trace() {
        let _guard = setup();
        let service = TraceContextLayer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(current_traceparent())
        }));
        let request = http::Request::builder().uri("/x").body(()).unwrap();

        let seen = service.oneshot(request).await.unwrap();

        assert!(seen.is_some());
    }

    #[test]
    fn inject_after_set_parent_from_traceparent_carries_the_trace() {
        let _guard = setup();
        let span = tracing::info_span!("worker");
        set_parent_from_traceparent(&span, INCOMING);
        let _entered = span.enter();

        let mut metadata = MetadataMap::new();
        inject(&mut metadata);

        let sent = metadata
            .get(TRACEPARENT)
            .expect("traceparent injected")
            .to_str()
            .unwrap();
        assert_eq!(trace_id(sent), trace_id(INCOMING));
        assert_eq!(current_traceparent().as_deref(), Some(sent));
    }

    #[test]
    fn interceptor_injects_traceparent() {
        let _guard = setup();
        let span = tracing::info_span!("client");
        set_parent_from_traceparent(&span, INCOMING);
        let _entered = span.enter();

        let request = TraceContextInterceptor.call(tonic::Request::new(())).unwrap();

        let sent = request.metadata().get(TRACEPARENT).expect("traceparent injected");
        assert_eq!(trace_id(sent.to_str().unwrap()), trace_id(INCOMING));
    }

    #[test]
    fn invalid_traceparent_and_no_span_do_not_panic() {
        let _guard = setup();
        let span = tracing::info_span!("worker");
        set_parent_from_traceparent(&span, "garbage");
        set_parent_from_traceparent(&tracing::Span::none(), INCOMING);
        assert_eq!(current_traceparent(), None, "no current span outside any span");

        let mut metadata = MetadataMap::new();
        inject(&mut metadata);
        assert!(metadata.get(TRACEPARENT).is_none());
    }

    #[test]
    fn init_can_be_called_twice() {
        let first = init(&TelemetryConfig::default());
        let second = init(&TelemetryConfig::default());
        assert!(first.is_ok());
        assert!(second.is_ok());
    }

    #[test]
    fn config_defaults_and_serde() {
        let config: TelemetryConfig = serde_json::from_str(r#"{"log_format":"json"}"#).unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        // The default filter parses, and keeps the SDK's own start-up chatter out of the logs.
        assert!(EnvFilter::try_new(&config.log_filter).is_ok());
        assert!(config.log_filter.starts_with("info,") && config.log_filter.contains("opentelemetry=warn"));
        assert_eq!(config.service_name, "corvus");
    }
}
