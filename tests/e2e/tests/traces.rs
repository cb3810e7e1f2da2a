//! Traces through `wisp up --otlp-endpoint`, received by a collector stand-in in this test (an
//! OTLP/HTTP receiver decoding the protobuf): a request that wakes a Function from zero and
//! whose guest calls out makes one trace — the caller's `traceparent` → `ingress` →
//! `activator` and `sandbox` → `guest.http`, whose `traceparent` the upstream receives — and
//! the cold start it caused shows in the same trace from the controllers, the scheduler and
//! the node.

#![allow(clippy::print_stderr)] // the test reports the trace it found

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use wisp_api::{Container, Function, ObjectMeta, Resource};
use wisp_e2e::{Options, Wisp, until};

/// One exported span, as the test reads it.
#[derive(Clone, Debug)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
    attrs: BTreeMap<String, String>,
    instance: String,
}

fn value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// An OTLP/HTTP receiver on a free loopback port: every span it was sent.
async fn collector() -> anyhow::Result<(String, Arc<Mutex<Vec<Span>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let seen = spans.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let ok = req.uri().path() == "/v1/traces"
                            && req
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .is_some_and(|c| c == "application/x-protobuf");
                        let body = req.into_body().collect().await?.to_bytes();
                        let decoded = ExportTraceServiceRequest::decode(body);
                        let status = match (ok, decoded) {
                            (true, Ok(msg)) => {
                                let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                                for rs in msg.resource_spans {
                                    let instance = rs
                                        .resource
                                        .iter()
                                        .flat_map(|r| &r.attributes)
                                        .find(|kv| kv.key == "service.instance.id")
                                        .map(|kv| value(kv.value.as_ref()))
                                        .unwrap_or_default();
                                    for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                                        seen.push(Span {
                                            name: s.name,
                                            trace: hex(&s.trace_id),
                                            id: hex(&s.span_id),
                                            parent: hex(&s.parent_span_id),
                                            attrs: s
                                                .attributes
                                                .iter()
                                                .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
                                                .collect(),
                                            instance: instance.clone(),
                                        });
                                    }
                                }
                                200
                            }
                            _ => 400,
                        };
                        let mut r = http::Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
                        Ok::<_, hyper::Error>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    Ok((url, spans))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An upstream the guest calls: answers `pong` and keeps each request's `traceparent`.
async fn upstream() -> anyhow::Result<(std::net::SocketAddr, Arc<Mutex<Vec<String>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = seen.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tp = req
                        .headers()
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    keep.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(tp);
                    async { Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from("pong")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    Ok((addr, seen))
}

fn trace_of(spans: &Mutex<Vec<Span>>, trace: &str) -> Vec<Span> {
    spans
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|s| s.trace == trace)
        .cloned()
        .collect()
}

fn one<'a>(spans: &'a [Span], name: &str) -> anyhow::Result<&'a Span> {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    anyhow::ensure!(
        found.len() == 1,
        "one {name} span, not {}: {spans:#?}",
        found.len()
    );
    Ok(found[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_request_and_its_guests_outgoing_call_make_one_trace() -> anyhow::Result<()> {
    let (otlp, spans) = collector().await?;
    let (up_addr, upstream_saw) = upstream().await?;
    let w = Wisp::start(Options {
        command: Some("up".into()),
        args: vec![
            "--otlp-endpoint".into(),
            otlp,
            // The upstream is on loopback, which guests may not reach by default.
            "--allow-egress".into(),
            "127.0.0.1/32".into(),
        ],
        ..Options::default()
    })?;
    let client = w.client();
    let ingress = wisp_e2e::node_ingress(&client, "local").await?;
    let http = wisp_e2e::http_client();

    let digest = client
        .put_blob(Bytes::from(std::fs::read(wisp_e2e::guest("fault")?)?))
        .await?;
    let mut f = Function::new(ObjectMeta::namespaced("default", "traced"));
    f.spec.template.spec.containers = vec![Container {
        name: "fn".into(),
        wasm: Some(digest),
        allowed_outbound_hosts: vec![up_addr.to_string()],
        ..Container::default()
    }];
    client.api::<Function>(Some("default")).create(&f).await?;
    wisp_e2e::until_ingress_knows(&http, &ingress, &w.token, "traced-00001").await?;

    // The caller's own trace: the ingress continues it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let req = http::Request::get(format!("{ingress}/fetch?url=http://{up_addr}/"))
        .header(http::header::HOST, "traced.default.localhost")
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .body(Empty::<Bytes>::new())?;
    let resp = http.request(req).await?;
    let (status, cold) = (resp.status(), resp.headers().contains_key("x-wisp-cold-start"));
    let body = resp.into_body().collect().await?.to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(cold, "the request woke the Function");
    assert_eq!(&body[..], b"upstream 200: pong");

    // The upstream got the guest's call with a traceparent of the caller's trace.
    let sent = upstream_saw
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .first()
        .cloned()
        .context("the upstream was called")?;
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {sent:?}");
    assert_eq!(
        parts[1], trace,
        "the guest's call is in the caller's trace: {sent}"
    );

    // The spans arrive in the exporter's batches (every 5 s).
    until("the request's spans at the collector", 30, async || {
        let t = trace_of(&spans, trace);
        Ok(["ingress", "activator", "sandbox", "guest.http"]
            .iter()
            .all(|n| t.iter().any(|s| s.name == *n)))
    })
    .await?;
    let t = trace_of(&spans, trace);
    let ingress_span = one(&t, "ingress")?;
    // (A retried request may wait again; the one that woke the Service says so.)
    let activator = t
        .iter()
        .find(|s| s.name == "activator" && s.attrs.get("wisp.activated").is_some_and(|v| v == "true"))
        .context("the activator span that woke the Service")?;
    let sandbox = one(&t, "sandbox")?;
    let guest = one(&t, "guest.http")?;
    assert_eq!(
        ingress_span.parent, caller,
        "the ingress continues the caller's span"
    );
    assert_eq!(
        ingress_span
            .attrs
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    assert_eq!(
        ingress_span.attrs.get("wisp.service").map(String::as_str),
        Some("traced-00001")
    );
    assert_eq!(ingress_span.instance, "up");
    assert_eq!(
        activator.parent, ingress_span.id,
        "the activator is the ingress's child"
    );
    assert_eq!(
        sandbox.parent, ingress_span.id,
        "the sandbox call is the ingress's child"
    );
    assert_eq!(
        guest.parent, sandbox.id,
        "the guest's outgoing call is the sandbox's child"
    );
    assert_eq!(guest.id, parts[2], "the upstream's parent is the guest.http span");
    assert_eq!(
        guest.attrs.get("http.response.status_code").map(String::as_str),
        Some("200")
    );

    // The cold start it caused, in the same trace: the activator scales the Deployment, the
    // deployment controller its ReplicaSet, which makes the pod the scheduler binds and the
    // node starts.
    let chain = [
        "activate",
        "deployment.scale",
        "replicaset.create",
        "scheduler.bind",
        "node.start",
        "container.start",
    ];
    until("the cold start's spans at the collector", 30, async || {
        let t = trace_of(&spans, trace);
        Ok(chain.iter().all(|n| t.iter().any(|s| s.name == *n)))
    })
    .await?;
    let t = trace_of(&spans, trace);
    let activate = one(&t, "activate")?;
    let scale = one(&t, "deployment.scale")?;
    let create = one(&t, "replicaset.create")?;
    let bind = one(&t, "scheduler.bind")?;
    let start = one(&t, "node.start")?;
    let container = one(&t, "container.start")?;
    assert_eq!(activate.parent, activator.id, "activate: {t:#?}");
    assert_eq!(scale.parent, activate.id, "deployment.scale: {t:#?}");
    assert_eq!(create.parent, scale.id, "replicaset.create: {t:#?}");
    assert_eq!(bind.parent, create.id, "scheduler.bind: {t:#?}");
    assert_eq!(start.parent, create.id, "node.start: {t:#?}");
    assert_eq!(container.parent, start.id, "container.start: {t:#?}");
    assert_eq!(bind.attrs.get("wisp.node").map(String::as_str), Some("local"));
    eprintln!("one trace {trace}:");
    for s in &t {
        eprintln!("  {} {} (parent {}) {:?}", s.name, s.id, s.parent, s.attrs);
    }

    // The request's latency bucket names its trace (an OpenMetrics exemplar).
    let req = http::Request::get(format!("{ingress}/.wisp/metrics"))
        .header(http::header::AUTHORIZATION, format!("Bearer {}", w.token))
        .body(Empty::<Bytes>::new())?;
    let metrics = http.request(req).await?.into_body().collect().await?.to_bytes();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wisp_ingress_request_duration_seconds_bucket{")
                && l.contains("service=\"traced-00001\"")
                && l.contains(&format!("# {{trace_id=\"{trace}\"}}"))),
        "an exemplar with the trace id: {metrics}"
    );

    // A warm request without a traceparent starts its own trace at the ingress: no activator.
    let req = http::Request::get(format!("{ingress}/fetch?url=http://{up_addr}/"))
        .header(http::header::HOST, "traced.default.localhost")
        .body(Empty::<Bytes>::new())?;
    assert_eq!(http.request(req).await?.status(), 200);
    let second = upstream_saw
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(1)
        .cloned()
        .context("the second call")?;
    let second_trace = second.split('-').nth(1).unwrap_or_default().to_owned();
    assert_ne!(second_trace, trace);
    until("the second request's spans", 30, async || {
        let t = trace_of(&spans, &second_trace);
        Ok(["ingress", "sandbox", "guest.http"]
            .iter()
            .all(|n| t.iter().any(|s| s.name == *n)))
    })
    .await?;
    let t = trace_of(&spans, &second_trace);
    assert_eq!(
        one(&t, "ingress")?.parent,
        "",
        "a new trace starts at the ingress"
    );
    assert!(t.iter().all(|s| s.name != "activator"), "warm: {t:#?}");
    Ok(())
}
