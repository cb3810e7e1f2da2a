//! The ingress with a node agent on the in-memory fake runtime of `wisp-sandbox` (no wasmtime,
//! no Docker), against a real API server, called in process (`Ingress::handle`): a request
//! for a Service whose pod runs on this node reaches the runtime's in-process handler through
//! the sandbox contract, held by the activator until the agent finds the pod ready.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::FutureExt;
use http_body_util::{BodyExt, Empty};
use wisp_api::{
    Container, ObjectMeta, Pod, Resource, RestartPolicy, Route, RouteBackend, Service, ServicePort,
};
use wisp_apiserver::testutil::TestServer;
use wisp_client::Client;
use wisp_ingress::{InProcess, Ingress, IngressConfig};
use wisp_node::{Agent, AgentConfig, LocalReadiness, Runtimes};
use wisp_sandbox::fake::{FakeSandbox, body};
use wisp_sandbox::{Kind, Sandbox, Source};

const NODE: &str = "node-fake";

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

async fn get(ingress: &Ingress, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let resp = ingress.handle(req).await;
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaches_the_fake_runtimes_in_process_handler() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = Client::new(&server.url, &server.token);
    let dir = tempfile::tempdir()?;
    routed_service(&client, "web").await?;

    // One fake runtime, shared by the agent (which runs the pod) and the ingress (which
    // calls it in process), as `wisp node` shares its wasm runtime.
    let fake = FakeSandbox::new(wisp_api::RUNTIME_WASM);
    let digest = client.put_blob(Bytes::from_static(b"an http component")).await?;
    fake.provide(Source::WasmDigest(digest.clone()), Kind::Http);
    fake.set_handler(Arc::new(|id, req| {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = format!("{id} served {} for {host}", req.uri().path());
        async move { http::Response::new(body(text)) }.boxed()
    }));
    let readiness = LocalReadiness::default();
    let mut agent_config = AgentConfig::new(NODE, dir.path());
    agent_config.local_readiness = readiness.clone();
    let runtimes: Runtimes = [Arc::new(fake.clone()) as Arc<dyn Sandbox>].into_iter().collect();
    let agent = Agent::new(client.clone(), agent_config, runtimes);

    let mut config = IngressConfig::new(NODE);
    config.queue_timeout = Duration::from_secs(15);
    config.local_readiness = Some(readiness.clone());
    let in_process = InProcess::new(wisp_api::RUNTIME_WASM, Arc::new(fake.clone()));
    let ingress = Ingress::new(client.clone(), config, Some(in_process));

    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let (i, s) = (ingress.clone(), stop.clone());
        async move { i.sync(s).await }
    });
    tasks.spawn({
        let s = stop.clone();
        async move {
            if let Err(e) = Box::pin(agent.run(s)).await {
                panic!("agent failed: {e}");
            }
        }
    });
    wisp_testkit::wait("the route loaded")
        .within(Duration::from_secs(10))
        .every(Duration::from_millis(10))
        .until(async || ingress.stats().iter().any(|s| s.name == "web"))
        .await?;

    // The request comes first: it is held until the pod the agent runs is ready.
    let held = tokio::spawn({
        let i = ingress.clone();
        async move { get(&i, "web.example.com", "/hello").await }
    });
    let mut p = Pod::new(ObjectMeta::namespaced("default", "web-1"));
    p.metadata.labels.insert("app".into(), "web".into());
    p.spec.containers = vec![Container {
        name: "main".into(),
        wasm: Some(digest.clone()),
        ..Container::default()
    }];
    p.spec.node_name = Some(NODE.into());
    p.spec.restart_policy = RestartPolicy::Always;
    p.spec.termination_grace_period_seconds = Some(1);
    let pod = client.api::<Pod>(Some("default")).create(&p).await?;
    let uid = pod.metadata.uid.clone().context("uid")?;
    let (code, text) = tokio::time::timeout(Duration::from_secs(15), held).await???;
    assert_eq!(
        (code, text.as_str()),
        (
            200,
            format!("{uid}/main served /hello for web.example.com").as_str()
        ),
        "answered by the fake's in-process handler"
    );
    assert!(readiness.is_ready(&uid));
    let (code, text) = get(&ingress, "web.example.com", "/again").await?;
    assert_eq!(
        (code, text.as_str()),
        (
            200,
            format!("{uid}/main served /again for web.example.com").as_str()
        )
    );

    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}
