//! The ingress against a real API server, called in process (`Ingress::handle`): no route is a
//! 404 naming host and path; a Service with no ready endpoint holds requests up to its queue
//! limit (then 503 with `Retry-After`) and for the queue timeout (then 504 saying why); a
//! Deployment at zero behind it is woken once for the whole burst.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wisp_api::{
    Container, Deployment, LabelSelector, ObjectMeta, Resource, Route, RouteBackend, Service, ServicePort,
};
use wisp_apiserver::testutil::TestServer;
use wisp_client::Client;
use wisp_ingress::{Ingress, IngressConfig};

async fn body_of(resp: http::Response<wisp_ingress::Body>) -> anyhow::Result<(u16, Option<String>, String)> {
    let code = resp.status().as_u16();
    let retry = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_bytes();
    Ok((code, retry, String::from_utf8_lossy(&body).into_owned()))
}

/// A Service `name` selecting `app=name`, port 80, and a Route for `name.example.com` to it.
async fn routed_service(client: &Client, name: &str) -> anyhow::Result<()> {
    let mut svc = Service::new(ObjectMeta::namespaced("default", name));
    svc.spec.selector.insert("app".into(), name.into());
    svc.spec.ports = vec![ServicePort {
        port: 80,
        ..ServicePort::default()
    }];
    client.api::<Service>(Some("default")).create(&svc).await?;
    let mut route = Route::new(ObjectMeta::namespaced("default", name));
    route.spec.host = Some(format!("{name}.example.com"));
    route.spec.backends = vec![RouteBackend {
        service: name.into(),
        port: None,
        weight: 100,
    }];
    client.api::<Route>(Some("default")).create(&route).await?;
    Ok(())
}

/// An ingress (no wasm runtime) kept in sync until the token is cancelled, once it knows
/// Service `name`'s route.
async fn start_ingress(
    client: &Client,
    config: IngressConfig,
    name: &str,
) -> anyhow::Result<(
    Ingress,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
)> {
    let ingress = Ingress::new(client.clone(), config, None);
    let stop = tokio_util::sync::CancellationToken::new();
    let sync = tokio::spawn({
        let (i, s) = (ingress.clone(), stop.clone());
        async move { i.sync(s).await }
    });
    wisp_testkit::wait("the route loaded")
        .within(Duration::from_secs(10))
        .every(Duration::from_millis(10))
        .until(async || ingress.stats().iter().any(|s| s.name == name))
        .await?;
    Ok((ingress, stop, sync))
}

fn request(host: &str) -> anyhow::Result<http::Request<Empty<Bytes>>> {
    Ok(http::Request::get("/")
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_bounded_and_time_out_clearly_and_wake_the_service_once() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = Client::new(&server.url, &server.token);
    // A Service with no pods, routed, and a Deployment of the same name at zero replicas.
    routed_service(&client, "sleepy").await?;
    let mut d = Deployment::new(ObjectMeta::namespaced("default", "sleepy"));
    d.spec.replicas = 0;
    d.spec.selector = LabelSelector::from_labels([("app".to_owned(), "sleepy".to_owned())].into());
    d.spec
        .template
        .metadata
        .labels
        .insert("app".into(), "sleepy".into());
    d.spec.template.spec.containers = vec![Container {
        name: "main".into(),
        wasm: Some(format!("sha256:{}", "0".repeat(64))),
        ..Container::default()
    }];
    let deployments = client.api::<Deployment>(Some("default"));
    deployments.create(&d).await?;

    let mut config = IngressConfig::new("node-a");
    config.queue_limit = 3;
    config.queue_timeout = Duration::from_secs(2);
    let (ingress, stop, sync) = start_ingress(&client, config, "sleepy").await?;

    let (code, _, body) = body_of(ingress.handle(request("other.example.com")?).await).await?;
    assert_eq!(code, 404);
    assert!(body.contains("other.example.com/"), "{body}");

    // Three requests wait; the fourth overflows the queue.
    let mut held = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let i = ingress.clone();
        held.spawn(async move { body_of(i.handle(request("sleepy.example.com")?).await).await });
    }
    wisp_testkit::wait("3 requests held")
        .within(Duration::from_secs(5))
        .every(Duration::from_millis(5))
        .until(async || {
            ingress
                .stats()
                .iter()
                .find(|s| s.name == "sleepy")
                .map_or(0, |s| s.queued)
                >= 3
        })
        .await?;
    let (code, retry, body) = body_of(ingress.handle(request("sleepy.example.com")?).await).await?;
    assert_eq!((code, retry.as_deref()), (503, Some("1")), "{body}");
    assert!(body.contains("sleepy"), "{body}");

    // No pod ever becomes ready (no node runs it): each held request ends with a clear 504.
    while let Some(r) = held.join_next().await {
        let (code, _, body) = r??;
        assert_eq!(code, 504, "{body}");
        assert!(body.contains("no ready endpoint"), "{body}");
    }
    // The burst woke the Deployment once: 0 → 1.
    assert_eq!(deployments.get("sleepy").await?.spec.replicas, 1);
    let stats = ingress.stats();
    let s = stats.iter().find(|s| s.name == "sleepy").context("stats")?;
    assert_eq!((s.cold_starts, s.queued), (1, 0));
    stop.cancel();
    sync.await?;
    Ok(())
}

/// A pod of this node that its agent has found ready takes the held requests at once, while
/// the API still shows it not ready (its status write on the way); once the agent says it is
/// not ready any more, and the API never said it was, new requests wait again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_ready_by_the_local_agent_takes_requests_before_its_status_is_written() -> anyhow::Result<()> {
    use wisp_api::{Pod, PodPhase, PodStatus};
    let server = TestServer::start().await?;
    let client = Client::new(&server.url, &server.token);
    // The pod's "container": an HTTP server on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let backend = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"from the pod"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    routed_service(&client, "early").await?;
    // Bound to this node, running, published port known — but not Ready in the API.
    let mut pod = Pod::new(ObjectMeta::namespaced("default", "early-1"));
    pod.metadata.labels.insert("app".into(), "early".into());
    pod.spec.node_name = Some("node-a".into());
    pod.spec.containers = vec![Container {
        name: "main".into(),
        image: Some("example/early:1".into()),
        ..Container::default()
    }];
    let pods = client.api::<Pod>(Some("default"));
    let mut pod = pods.create(&pod).await?;
    pod.status = Some(PodStatus {
        phase: PodPhase::Running,
        pod_ip: Some("127.0.0.1".into()),
        host_port: Some(port),
        ..PodStatus::default()
    });
    let pod = pods.replace_status(&pod).await?;
    assert!(!pod.is_ready());
    let uid = pod.metadata.uid.clone().context("uid")?;

    let readiness = wisp_node::LocalReadiness::default();
    let mut config = IngressConfig::new("node-a");
    config.queue_timeout = Duration::from_secs(10);
    config.local_readiness = Some(readiness.clone());
    let (ingress, stop, sync) = start_ingress(&client, config, "early").await?;
    // Not ready anywhere: the request is held.
    let held = tokio::spawn({
        let i = ingress.clone();
        async move { body_of(i.handle(request("early.example.com")?).await).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "answered before the pod was ready");
    // The agent finds it ready: the held request is answered by the pod at once.
    let t = std::time::Instant::now();
    readiness.set(&uid, true);
    let (code, _, body) = tokio::time::timeout(Duration::from_secs(5), held).await???;
    assert_eq!((code, body.as_str()), (200, "from the pod"));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "released after {:?}",
        t.elapsed()
    );
    assert!(
        !pods.get("early-1").await?.is_ready(),
        "the API still says not ready"
    );
    let (code, _, _) = body_of(ingress.handle(request("early.example.com")?).await).await?;
    assert_eq!(code, 200);
    // Not ready any more by the agent (and never by the API): requests wait again.
    readiness.set(&uid, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ingress
        .stats()
        .iter()
        .find(|s| s.name == "early")
        .map_or(1, |s| s.ready_backends)
        > 0
    {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "still a backend");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let again = tokio::spawn({
        let i = ingress.clone();
        async move { body_of(i.handle(request("early.example.com")?).await).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!again.is_finished(), "a pod no longer ready took a request");
    again.abort();
    // The API now says Ready (a late status write) while the agent says it is not: the
    // agent's word on its own pod wins, and once it says nothing the API's view counts.
    let mut pod = pods.get("early-1").await?;
    if let Some(st) = pod.status.as_mut() {
        st.conditions = vec![wisp_api::Condition {
            type_: wisp_api::POD_READY.into(),
            status: "True".into(),
            ..wisp_api::Condition::default()
        }];
    }
    let pod = pods.replace_status(&pod).await?;
    assert!(pod.is_ready());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ingress
            .stats()
            .iter()
            .find(|s| s.name == "early")
            .map(|s| s.ready_backends),
        Some(0),
        "the agent said not ready"
    );
    readiness.forget(&uid);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ingress
        .stats()
        .iter()
        .find(|s| s.name == "early")
        .map_or(0, |s| s.ready_backends)
        == 0
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the API's Ready was ignored"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (code, _, body) = body_of(ingress.handle(request("early.example.com")?).await).await?;
    assert_eq!((code, body.as_str()), (200, "from the pod"));
    stop.cancel();
    sync.await?;
    backend.abort();
    Ok(())
}
