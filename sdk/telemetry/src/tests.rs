#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use http::HeaderMap;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn recording() -> impl tracing::Subscriber + Send + Sync {
    unexported()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    h
}

#[test]
fn a_span_follows_the_incoming_traceparent_and_passes_its_own_on() {
    tracing::subscriber::with_default(recording(), || {
        let span = tracing::info_span!(target: TARGET, "ingress");
        follow(
            &span,
            &headers(&[("traceparent", PARENT), ("tracestate", "wisp=1")]),
        );
        let child = span.in_scope(|| tracing::info_span!(target: TARGET, "sandbox"));
        let mut out = headers(&[(
            "traceparent",
            "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01",
        )]);
        inject(&child, &mut out);
        let tp = out.get("traceparent").unwrap().to_str().unwrap();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts[1], "0af7651916cd43dd8448eb211c80319c", "same trace: {tp}");
        assert_ne!(parts[2], "b7ad6b7169203331", "its own span id: {tp}");
        assert_eq!(out.get("tracestate").unwrap(), "wisp=1");
        assert_eq!(
            trace_id(&child).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(traceparent(&child).as_deref(), Some(tp));
    });
}

#[test]
fn malformed_or_oversized_context_is_not_followed() {
    tracing::subscriber::with_default(recording(), || {
        for bad in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01x",
        ] {
            let span = tracing::info_span!(target: TARGET, "ingress");
            follow(&span, &headers(&[("traceparent", bad)]));
            let id = trace_id(&span).unwrap();
            assert_ne!(id, "0af7651916cd43dd8448eb211c80319c", "{bad} was followed");
            assert_ne!(id, "00000000000000000000000000000000");
        }
        // A well-formed parent with a tracestate past the bound: the parent is followed, the
        // state is dropped.
        let span = tracing::info_span!(target: TARGET, "ingress");
        // Valid members (each under the SDK's own bounds), together past ours.
        let long = (0..30)
            .map(|i| format!("k{i:02}=vvvvvvvvvvvvvvvv"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(long.len() > MAX_TRACESTATE);
        follow(&span, &headers(&[("traceparent", PARENT), ("tracestate", &long)]));
        let mut out = HeaderMap::new();
        inject(&span, &mut out);
        assert!(
            out.get("traceparent")
                .unwrap()
                .to_str()
                .unwrap()
                .contains("0af7651916cd43dd8448eb211c80319c")
        );
        assert!(out.get("tracestate").is_none(), "{out:?}");
    });
}

#[test]
fn without_an_exporter_nothing_is_written_and_the_callers_context_passes_on() {
    // Log lines only: trace spans are disabled, the headers stay as they came.
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(tracing_subscriber::EnvFilter::new(format!("info,{TARGET}=off"))),
    );
    tracing::subscriber::with_default(subscriber, || {
        // (Not asserted `is_disabled`: another test's subscriber, alive on another thread,
        // takes part in the call site's interest.)
        let span = tracing::info_span!(target: TARGET, "ingress");
        let mut h = headers(&[("traceparent", PARENT)]);
        follow(&span, &h);
        inject(&span, &mut h);
        assert_eq!(h.get("traceparent").unwrap(), PARENT);
        assert_eq!(traceparent(&span), None);
        assert_eq!(trace_id(&span), None);
        // A process exporting nothing passes a cold start's trace on as it came.
        assert_eq!(carried(&span, Some(PARENT)).as_deref(), Some(PARENT));
        assert_eq!(carried(&span, None), None);
    });
}

#[test]
fn the_traces_url_is_the_endpoint_or_its_traces_path() {
    let url = |e: &str| export::traces_url(e).map(|u| u.to_string());
    assert_eq!(
        url("http://127.0.0.1:4318").unwrap(),
        "http://127.0.0.1:4318/v1/traces"
    );
    assert_eq!(url("http://c:4318/").unwrap(), "http://c:4318/v1/traces");
    assert_eq!(
        url("https://c/otlp/v1/traces").unwrap(),
        "https://c/otlp/v1/traces"
    );
    for bad in [
        "127.0.0.1:4318",
        "grpc://c:4317",
        "http://",
        "http://c/v1/traces?x=1",
        "not a url",
    ] {
        let e = url(bad).unwrap_err().to_string();
        assert!(e.contains("--otlp-endpoint"), "{bad}: {e}");
    }
}

/// The exporter posts protobuf to a real HTTP receiver on loopback.
#[test]
fn spans_reach_an_otlp_receiver() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let got: Arc<Mutex<Vec<(String, ExportTraceServiceRequest)>>> = Arc::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = got.clone();
    rt.spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = http_body_util::BodyExt::collect(req.into_body())
                            .await?
                            .to_bytes();
                        let msg = ExportTraceServiceRequest::decode(body).unwrap();
                        seen.lock().unwrap().push((path, msg));
                        Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::new(),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    let otlp = Otlp {
        endpoint: format!("http://{addr}"),
        sample_ratio: 1.0,
        instance: "unit".into(),
    };
    let provider = export::provider(&otlp, rt.handle()).unwrap();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("wisp"))
        .with_filter(tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE));
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        let span = tracing::info_span!(target: TARGET, "ingress", wisp.service = "hello");
        span.in_scope(|| drop(tracing::info_span!(target: TARGET, "sandbox")));
    });
    provider.force_flush().unwrap();
    provider.shutdown().unwrap();
    let got = got.lock().unwrap();
    let (path, req) = got.first().expect("an export arrived");
    assert_eq!(path, "/v1/traces");
    let rs = &req.resource_spans[0];
    let attrs: Vec<(String, String)> = rs
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), format!("{:?}", kv.value)))
        .collect();
    assert!(
        attrs
            .iter()
            .any(|(k, v)| k == "service.name" && v.contains("wisp")),
        "{attrs:?}"
    );
    assert!(
        attrs
            .iter()
            .any(|(k, v)| k == "service.instance.id" && v.contains("unit")),
        "{attrs:?}"
    );
    let spans: Vec<_> = rs.scope_spans.iter().flat_map(|s| &s.spans).collect();
    let ingress = spans.iter().find(|s| s.name == "ingress").unwrap();
    let sandbox = spans.iter().find(|s| s.name == "sandbox").unwrap();
    assert_eq!(sandbox.parent_span_id, ingress.span_id);
    assert_eq!(sandbox.trace_id, ingress.trace_id);
    assert!(ingress.attributes.iter().any(|kv| kv.key == "wisp.service"));
}
