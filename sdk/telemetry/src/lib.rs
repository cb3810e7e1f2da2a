//! `wisp-telemetry`: what every Wisp process writes about itself.
//!
//! - **Logs**: the `tracing` subscriber every binary installs ([`init`]): lines on stderr, as
//!   text for people or JSON for a log pipeline, filtered by `WISP_LOG`.
//! - **Traces**: spans on the [`TARGET`] target (a request through the ingress, the
//!   activator, the sandbox and the guest's outgoing calls; a cold start through the
//!   controllers, the scheduler and the node) exported with OpenTelemetry as OTLP over HTTP
//!   (protobuf) when an endpoint is given ([`Otlp`]). Without one those spans are disabled at
//!   their call sites: a request pays one relaxed atomic load per span, nothing is allocated.
//! - **Propagation**: W3C trace context (`traceparent`, `tracestate`) read from a request's
//!   headers ([`follow`]) and written into the requests a span makes ([`inject`]), and carried
//!   through the API in an annotation, `wisp.dev/traceparent` ([`traceparent`],
//!   [`follow_traceparent`], [`carried`]).
//!
//! Attribute values a client or guest chooses (host, path, errors) are cut to [`bounded`].

mod export;

use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The target of the spans that make up traces (and only those): `tracing::info_span!(target:
/// wisp_telemetry::TARGET, "ingress", …)`. Log lines never show them.
pub const TARGET: &str = "wisp::trace";

/// A `tracestate` longer than this is not read: W3C asks vendors to pass on at least 512
/// characters; a client cannot make every span it starts carry kilobytes.
const MAX_TRACESTATE: usize = 512;

/// How log lines on stderr are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object a line: timestamp, level, target, fields, spans.
    Json,
}

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct Otlp {
    /// An OTLP/HTTP receiver (`http://` or `https://`, verified against the public web's
    /// roots). A URL with no path gets the traces path, `/v1/traces`, as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` does; one with a path is used as it is.
    pub endpoint: String,
    /// The share of traces started here that are recorded, 0 to 1. A request that arrives
    /// with a sampled `traceparent` is recorded whatever this says (parent-based sampling).
    pub sample_ratio: f64,
    /// `service.instance.id` of the exported spans (which process: `up`, `server`, a node's
    /// name as given, else the host's). `service.name` is `wisp` unless `OTEL_SERVICE_NAME` says otherwise.
    pub instance: String,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--otlp-endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("--otlp-sample-ratio {0}: must be between 0 and 1")]
    SampleRatio(f64),
    #[error("cannot build the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Keeps the exporter running; dropping it sends the spans still queued (for at most a few
/// seconds) and stops it.
#[must_use = "dropping the guard stops the export"]
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "the OTLP exporter did not stop cleanly");
        }
    }
}

/// Installs the process's subscriber: log lines on stderr (`WISP_LOG`, default `info`) and,
/// with `otlp`, the OTLP export of [`TARGET`] spans. The exporter sends from its own thread
/// through `runtime` (the process's tokio runtime, which must outlive the guard).
pub fn init(
    format: LogFormat,
    otlp: Option<&Otlp>,
    runtime: &tokio::runtime::Handle,
) -> Result<Guard, Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WISP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(
            format!("{TARGET}=off")
                .parse()
                .unwrap_or_else(|_| tracing_subscriber::filter::Directive::from(tracing::Level::ERROR)),
        );
    let Some(otlp) = otlp else {
        // Log lines only: one global filter over the fmt subscriber, as concrete types — a
        // disabled call site (every trace span) costs one cached load, nothing else.
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match format {
            LogFormat::Text => logs.try_init(),
            LogFormat::Json => logs
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .try_init(),
        }
        .map_err(Error::AlreadyInstalled)?;
        return Ok(Guard { provider: None });
    };
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().with_current_span(true).with_span_list(true).boxed(),
    }
    .with_filter(filter);
    let registry = tracing_subscriber::registry().with(lines);
    let provider = export::provider(otlp, runtime)?;
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "wisp");
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Each of these costs on every span or every poll of an instrumented future; the
        // spans name what they are.
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE));
    registry
        .with(spans)
        .try_init()
        .map_err(|e| Error::AlreadyInstalled(e.into()))?;
    Ok(Guard {
        provider: Some(provider),
    })
}

/// A subscriber that makes [`TARGET`] spans with their W3C contexts and exports nothing: for
/// tests of propagation (`tracing::subscriber::set_default`).
pub fn unexported() -> impl tracing::Subscriber + Send + Sync {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(opentelemetry::trace::TracerProvider::tracer(&provider, "wisp"))
            .with_filter(
                tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
            ),
    )
}

/// Headers as a propagator reads them: a `tracestate` over [`MAX_TRACESTATE`] is not there.
struct Reading<'a>(&'a HeaderMap);

impl Extractor for Reading<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let v = self.0.get(key)?.to_str().ok()?;
        (key != "tracestate" || v.len() <= MAX_TRACESTATE).then_some(v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Writing<'a>(&'a mut HeaderMap);

impl Injector for Writing<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Makes `span` a child of the trace context `headers` carry (W3C `traceparent`), if they
/// carry a well-formed one. Nothing is read for a span that is not recorded.
pub fn follow(span: &tracing::Span, headers: &HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Reading(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Writes `span`'s trace context into `headers` (`traceparent`, and `tracestate` when there
/// is one), replacing theirs. Nothing is written for a span that is not recorded: the headers
/// a request came with pass on as they are.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        // The caller's state went with the caller's parent.
        headers.remove("tracestate");
        TraceContextPropagator::new().inject_context(&cx, &mut Writing(headers));
    }
}

/// `span`'s `traceparent`, to carry in an annotation; `None` for a span not recorded.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut headers = HeaderMap::new();
    inject(span, &mut headers);
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Makes `span` a child of the trace a [`traceparent`] value names (from an annotation);
/// nothing for a malformed one.
pub fn follow_traceparent(span: &tracing::Span, value: &str) {
    if span.is_disabled() {
        return;
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(value) {
        headers.insert("traceparent", v);
        follow(span, &headers);
    }
}

/// Attribute text from outside (a Host header, a path, an error): at most 256 bytes, cut at a
/// character boundary, so a span costs little whatever a client sends.
pub fn bounded(s: &str) -> &str {
    const MAX: usize = 256;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A span following the cold-start trace an object carries in its `wisp.dev/traceparent`;
/// what the objects made for it carry on: this span's `traceparent` when it is recorded,
/// else the one that came (a process exporting nothing still passes the trace along).
pub fn carried(span: &tracing::Span, incoming: Option<&str>) -> Option<String> {
    if let Some(v) = incoming {
        follow_traceparent(span, v);
    }
    traceparent(span).or_else(|| incoming.map(str::to_owned))
}

/// The hex trace id of `span` if it is sampled (an exemplar's `trace_id`).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests;
