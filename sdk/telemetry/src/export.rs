//! The OTLP exporter: spans batched on the SDK's own thread and sent as protobuf over HTTP
//! with the workspace's hyper client, run on the process's tokio runtime.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use crate::{Error, Otlp};

/// One export (connect, send, read the answer) takes at most this long (less than the 5 s the
/// guard gives the last one at exit).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(4);
/// A failing collector is reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// A collector's answer is read up to this size (it is a status, or a partial-success count).
const MAX_ANSWER: usize = 64 * 1024;

/// The exporter's HTTP client: each send runs as a task on the process's runtime (the SDK's
/// batch thread has none) and is awaited from there.
struct Sender {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    /// When a failure was last logged.
    reported: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// Logs an export that failed, at most every [`REPORT_EVERY`] (the SDK drops the batch).
fn report(reported: &std::sync::Mutex<Option<std::time::Instant>>, why: &dyn std::fmt::Display) {
    let mut last = reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(error = %why, "cannot export traces to the OTLP endpoint; spans are dropped");
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sender")
    }
}

impl HttpClient for Sender {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let http = self.http.clone();
        let reported = self.reported.clone();
        let task = self.runtime.spawn(async move {
            let sent = tokio::time::timeout(EXPORT_TIMEOUT, async move {
                let resp = http.request(request.map(Full::new)).await?;
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            })
            .await
            .map_err(|_| HttpError::from(format!("no answer within {EXPORT_TIMEOUT:?}")))
            .and_then(|r| r);
            match &sent {
                Ok(r) if !r.status().is_success() => {
                    report(&reported, &format!("the collector answered {}", r.status()));
                }
                Ok(_) => {}
                Err(e) => report(&reported, e),
            }
            sent
        });
        Box::pin(async move { task.await.map_err(HttpError::from)? })
    }
}

/// The URL spans are posted to: `endpoint` with `/v1/traces` when it has no path.
pub(crate) fn traces_url(endpoint: &str) -> Result<http::Uri, Error> {
    let bad = |reason: &str| Error::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(bad(
            "an http:// or https:// URL with a host is needed (an OTLP/HTTP receiver, port 4318 by convention)",
        ));
    }
    if uri.query().is_some() {
        return Err(bad("a query is not allowed"));
    }
    if matches!(uri.path(), "" | "/") {
        let base = endpoint.trim_end_matches('/');
        return format!("{base}/v1/traces")
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()));
    }
    Ok(uri)
}

pub(crate) fn provider(otlp: &Otlp, runtime: &tokio::runtime::Handle) -> Result<SdkTracerProvider, Error> {
    if !(0.0..=1.0).contains(&otlp.sample_ratio) {
        return Err(Error::SampleRatio(otlp.sample_ratio));
    }
    let url = traces_url(&otlp.endpoint)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(wisp_tls::web_client_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    let sender = Sender {
        http: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
        runtime: runtime.clone(),
        reported: std::sync::Arc::default(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(sender)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.to_string())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(Error::Exporter)?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("wisp");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            otlp.instance.clone(),
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            otlp.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}
