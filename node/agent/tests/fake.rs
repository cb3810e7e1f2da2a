//! The node agent against a real API server (embedded store, HTTP on loopback) and the
//! in-memory fake runtime of `wisp-sandbox` (no wasmtime, no Docker): the agent knows
//! runtimes only through the sandbox contract, so what it does with a pod — run it, probe it
//! in process, publish its readiness, report its exit, stop it on delete, report a runtime's
//! service as down and back — is shown here on the fake. Pods are bound by hand (`spec.nodeName`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use wisp_api::{Container, Node, ObjectMeta, Pod, PodPhase, Resource, RestartPolicy};
use wisp_apiserver::testutil::TestServer;
use wisp_client::Client;
use wisp_node::{Agent, AgentConfig, Backoff, LocalReadiness, Runtimes};
use wisp_sandbox::fake::FakeSandbox;
use wisp_sandbox::{Kind, Sandbox, SandboxId, Source, State};

const NODE: &str = "node-fake";

struct Cluster {
    _server: TestServer,
    client: Client,
    dir: tempfile::TempDir,
    readiness: LocalReadiness,
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        let server = TestServer::start().await?;
        let client = Client::new(&server.url, &server.token);
        Ok(Self {
            _server: server,
            client,
            dir: tempfile::tempdir()?,
            readiness: LocalReadiness::default(),
        })
    }

    /// Starts an agent over `runtimes`; cancel the token to stop it.
    fn agent(&self, runtimes: Runtimes) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let mut config = AgentConfig::new(NODE, self.dir.path().join("node"));
        config.lease_duration = Duration::from_secs(2);
        config.local_readiness = self.readiness.clone();
        config.backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            reset_after: Duration::from_secs(60),
        };
        let agent = Agent::new(self.client.clone(), config, runtimes);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = Box::pin(agent.run(token)).await {
                panic!("agent failed: {e}");
            }
        });
        (stop, task)
    }

    /// A digest in the API's blob store, as a pod's `wasm:` names one.
    async fn upload(&self, content: &'static str) -> anyhow::Result<String> {
        Ok(self
            .client
            .put_blob(Bytes::from_static(content.as_bytes()))
            .await?)
    }
}

fn pod(name: &str, wasm: &str, args: &[&str], policy: RestartPolicy) -> Pod {
    let mut p = Pod::new(ObjectMeta::namespaced("default", name));
    p.spec.containers = vec![Container {
        name: "main".into(),
        wasm: Some(wasm.into()),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Container::default()
    }];
    p.spec.node_name = Some(NODE.into());
    p.spec.restart_policy = policy;
    p.spec.termination_grace_period_seconds = Some(1);
    p
}

fn runtimes(fakes: &[&FakeSandbox]) -> Runtimes {
    fakes
        .iter()
        .map(|f| Arc::new((*f).clone()) as Arc<dyn Sandbox>)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_bound_to_the_node_runs_and_is_ready_on_the_fake_runtime() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let fake = FakeSandbox::new("wasm");
    let digest = c.upload("an http component").await?;
    fake.provide(Source::WasmDigest(digest.clone()), Kind::Http);
    let (stop, task) = c.agent(runtimes(&[&fake]));

    let created = c
        .client
        .api::<Pod>(Some("default"))
        .create(&pod("web", &digest, &[], RestartPolicy::Always))
        .await?;
    let uid = created.metadata.uid.clone().context("uid")?;
    let running = wisp_testkit::wait_pod(&c.client, "web", 20, |p| {
        p.phase() == PodPhase::Running && p.is_ready()
    })
    .await?;
    let st = running.status.as_ref().context("status")?;
    assert_eq!(st.node_name.as_deref(), Some(NODE));
    assert!(st.container_statuses[0].ready);
    assert_eq!(
        st.container_statuses[0].container_id.as_deref(),
        Some(format!("wasm://{uid}/main").as_str())
    );
    assert!(
        c.readiness.is_ready(&uid),
        "published as ready to the node's ingress"
    );

    // The sandbox runs in the fake, as an HTTP sandbox (the kind came from the runtime).
    let id = SandboxId::new(&uid, "main");
    let status = fake.status(&id).await?;
    assert!(matches!(status.state, State::Running { .. }), "{status:?}");
    assert_eq!(status.endpoint, Some(wisp_sandbox::Endpoint::InProcess));
    let http = fake.in_process_http().context("in process")?;
    let request = http::Request::get("/hi").body(wisp_sandbox::fake::body(""))?;
    let body = http
        .handle(&id, request)
        .await?
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(&body.to_bytes()[..], format!("{uid}/main GET /hi").as_bytes());

    let node = c.client.api::<Node>(None).get(NODE).await?;
    assert_eq!(node.status.context("node status")?.runtimes, ["wasm"]);

    // Deleted: the agent stops the sandbox and takes back its word on readiness.
    c.client.api::<Pod>(Some("default")).delete("web").await?;
    wisp_testkit::wait("the sandbox and its readiness gone with the pod")
        .within(Duration::from_secs(10))
        .until(async || -> anyhow::Result<bool> {
            Ok(fake.list().await?.is_empty() && !c.readiness.is_ready(&uid))
        })
        .await?;
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_to_completion_pods_on_the_fake_report_their_exit_codes() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let fake = FakeSandbox::new("wasm");
    let digest = c.upload("a cli component").await?;
    fake.provide(Source::WasmDigest(digest.clone()), Kind::Process);
    let (_stop, _task) = c.agent(runtimes(&[&fake]));
    let pods = c.client.api::<Pod>(Some("default"));
    pods.create(&pod("ok", &digest, &["exit", "0", "done"], RestartPolicy::Never))
        .await?;
    pods.create(&pod("bad", &digest, &["exit", "4", "no"], RestartPolicy::Never))
        .await?;
    wisp_testkit::wait_pod(&c.client, "ok", 20, |p| p.phase() == PodPhase::Succeeded).await?;
    let bad = wisp_testkit::wait_pod(&c.client, "bad", 20, |p| p.phase() == PodPhase::Failed).await?;
    let terminated = bad
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .context("terminated")?;
    assert_eq!(terminated.exit_code, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_whose_service_is_down_is_reported_on_the_node() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let wasm = FakeSandbox::new("wasm");
    let docker = FakeSandbox::new("docker");
    docker.set_health(Some(Err("the daemon does not answer".into())));
    let (_stop, _task) = c.agent(runtimes(&[&wasm, &docker]));
    let nodes = c.client.api::<Node>(None);
    let c = wisp_testkit::wait("a DockerReady condition")
        .within(Duration::from_secs(10))
        .until(async || -> anyhow::Result<Option<wisp_api::Condition>> {
            Ok(nodes.get_opt(NODE).await?.and_then(|n| {
                n.status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == wisp_api::NODE_DOCKER_READY)
            }))
        })
        .await?
        .0;
    assert_eq!(c.status, "False");
    assert!(
        c.message
            .as_deref()
            .unwrap_or_default()
            .contains("does not answer"),
        "{c:?}"
    );

    // Back: the condition turns True.
    docker.set_health(Some(Ok("27.0".into())));
    wisp_testkit::wait("DockerReady back to True")
        .within(Duration::from_secs(10))
        .until(async || -> anyhow::Result<bool> {
            Ok(nodes.get(NODE).await?.status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == wisp_api::NODE_DOCKER_READY && c.status == "True")
            }))
        })
        .await?;
    Ok(())
}
