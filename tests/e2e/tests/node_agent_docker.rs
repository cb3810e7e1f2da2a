//! The node agent with the Docker runtime, against a real API server and the real Docker
//! engine (the wisp-echo image from examples/container-echo): a container pod runs, is ready
//! when it answers HTTP, serves on its published port and logs through the API; a restarted
//! agent adopts it and removes an orphan; an OOM kill is reported; a missing image is
//! `ImagePullBackOff`; with the daemon down the node stays up with `DockerReady=False`, Wasm
//! pods run, Docker pods wait with `RuntimeUnavailable`, and start once the daemon is back.
//! In CI an unreachable engine fails these tests; elsewhere they skip with a notice. (Moved
//! from node/agent/tests: the agent crate knows no concrete runtime.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use wisp_api::{
    Container, ContainerPort, Node, ObjectMeta, Pod, PodPhase, Probe, Quantity, Resource, RestartPolicy,
    TcpSocketAction,
};
use wisp_apiserver::testutil::TestServer;
use wisp_client::Client;
use wisp_node::{Agent, AgentConfig, ApiArtifacts, Backoff, Runtimes};
use wisp_sandbox::Sandbox;
use wisp_sandbox_docker::testing::{self, Cleanup, ECHO_IMAGE, SocketProxy};
use wisp_sandbox_docker::{DockerConfig, DockerSandbox};
use wisp_sandbox_wasm::{WasmConfig, WasmSandbox};

struct Cluster {
    _server: TestServer,
    client: Client,
    wasm: WasmSandbox,
    docker: DockerSandbox,
    node: String,
    dir: tempfile::TempDir,
    _cleanup: Cleanup,
}

impl Cluster {
    /// `None` when Docker tests cannot run here (never in CI: there it panics).
    async fn start(test: &str, socket: Option<std::path::PathBuf>) -> anyhow::Result<Option<Self>> {
        if !testing::available(test) {
            return Ok(None);
        }
        testing::ensure_echo_image();
        let server = TestServer::start().await?;
        let client = server.client();
        let dir = tempfile::tempdir()?;
        let mut config = WasmConfig::new(dir.path().join("wasm"));
        config.max_instances = 16;
        let wasm = WasmSandbox::new(config, Some(Arc::new(ApiArtifacts(client.clone()))))?;
        // The node name is the owner label: unique per test, so tests sharing the daemon
        // never adopt or remove each other's containers.
        let node = testing::unique_owner(test);
        let mut docker = DockerConfig::new(node.clone());
        if let Some(s) = socket {
            docker.socket = s;
        }
        Ok(Some(Self {
            _server: server,
            client,
            wasm,
            docker: DockerSandbox::new(docker),
            _cleanup: Cleanup::new(&node),
            node,
            dir,
        }))
    }

    fn agent(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let mut config = AgentConfig::new(&self.node, self.dir.path().join("node"));
        config.lease_duration = Duration::from_secs(2);
        config.backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            reset_after: Duration::from_secs(60),
        };
        let runtimes = Runtimes::from_iter([
            Arc::new(self.wasm.clone()) as Arc<dyn Sandbox>,
            Arc::new(self.docker.clone()),
        ]);
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

    fn pod(&self, name: &str, container: Container, policy: RestartPolicy) -> Pod {
        let mut p = Pod::new(ObjectMeta::namespaced("default", name));
        p.spec.containers = vec![container];
        p.spec.node_name = Some(self.node.clone());
        p.spec.restart_policy = policy;
        p.spec.termination_grace_period_seconds = Some(1);
        p
    }

    async fn create(&self, pod: &Pod) -> anyhow::Result<Pod> {
        Ok(self.client.api::<Pod>(Some("default")).create(pod).await?)
    }

    async fn wait_pod(&self, name: &str, secs: u64, check: impl Fn(&Pod) -> bool) -> anyhow::Result<Pod> {
        wisp_testkit::wait_pod(&self.client, name, secs, check).await
    }

    async fn wait_node(&self, secs: u64, check: impl Fn(&Node) -> bool) -> anyhow::Result<Node> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(n) = self.client.api::<Node>(None).get_opt(&self.node).await?
                && check(&n)
            {
                return Ok(n);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("node {} not as expected after {secs} s", self.node);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn echo(args: &[&str], port: bool) -> Container {
    Container {
        name: "main".into(),
        image: Some(ECHO_IMAGE.into()),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ports: if port {
            vec![ContainerPort {
                container_port: 8080,
                ..ContainerPort::default()
            }]
        } else {
            Vec::new()
        },
        ..Container::default()
    }
}

fn docker_ready(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == wisp_api::NODE_DOCKER_READY)
        .map(|c| c.status.clone())
}

fn waiting(p: &Pod) -> Option<(String, String)> {
    let w = p
        .status
        .as_ref()?
        .container_statuses
        .first()?
        .state
        .as_ref()?
        .waiting
        .clone()?;
    Some((w.reason.unwrap_or_default(), w.message.unwrap_or_default()))
}

async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    c.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_pod_serves_logs_and_is_adopted_after_restart() -> anyhow::Result<()> {
    let Some(c) = Cluster::start("agent_docker_adopt", None).await? else {
        return Ok(());
    };
    let (stop, task) = c.agent();
    let node = c
        .wait_node(10, |n| docker_ready(n).as_deref() == Some("True"))
        .await?;
    let runtimes = node.status.context("status")?.runtimes;
    assert!(runtimes.contains(&"docker".to_owned()), "{runtimes:?}");

    let created = c
        .create(&c.pod("web", echo(&[], true), RestartPolicy::Always))
        .await?;
    let before = c.wait_pod("web", 60, Pod::is_ready).await?;
    let port = before
        .status
        .as_ref()
        .and_then(|s| s.host_port)
        .context("hostPort")?;
    // Ready means it answers already: no retry here.
    let body = http_get(port, "/hi").await?;
    assert!(
        body.starts_with("HTTP/1.1 200") && body.contains("echo from"),
        "{body}"
    );
    let cid = before.status.as_ref().context("status")?.container_statuses[0]
        .container_id
        .clone();
    assert!(
        cid.as_deref().is_some_and(|id| id.starts_with("docker://")),
        "{cid:?}"
    );

    // Logs through the API server's proxy to the agent.
    let resp = c
        .client
        .raw(
            http::Method::GET,
            "/apis/wisp.dev/v1/namespaces/default/pods/web/log",
            None,
        )
        .await?;
    let text = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
    assert!(text.contains("listening on 8080"), "logs: {text:?}");

    stop.cancel();
    task.await?;
    // While no agent runs, a container pod bound here is deleted: its container is an orphan.
    let orphan = c
        .create(&c.pod("orphan", echo(&["sleep", "x"], false), RestartPolicy::Always))
        .await?;
    let (stop, task) = c.agent();
    c.wait_pod("orphan", 60, Pod::is_ready).await?;
    stop.cancel();
    task.await?;
    c.client.api::<Pod>(Some("default")).delete("orphan").await?;
    assert_eq!(c.docker.list().await?.len(), 2);

    let (_stop, _task) = c.agent();
    let web_uid = created.metadata.uid.clone().context("uid")?;
    let orphan_uid = orphan.metadata.uid.clone().context("uid")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = c.docker.list().await?;
        let uids: Vec<String> = list
            .iter()
            .filter_map(|s| s.labels.get(wisp_sandbox::LABEL_POD_UID).cloned())
            .collect();
        if uids == [web_uid.clone()] {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "expected only the adopted container, found {uids:?} (orphan {orphan_uid})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = c.wait_pod("web", 10, Pod::is_ready).await?;
    let running_since = |p: &Pod| {
        p.status.as_ref().and_then(|s| {
            s.container_statuses[0]
                .state
                .as_ref()
                .and_then(|st| st.running.as_ref())
                .and_then(|r| r.started_at.clone())
        })
    };
    assert_eq!(
        running_since(&after),
        running_since(&before),
        "adopted, not restarted"
    );
    assert_eq!(after.status.as_ref().and_then(|s| s.host_port), Some(port));
    assert_eq!(c.docker.list().await?.len(), 1, "no duplicate");
    let body = http_get(port, "/").await?;
    assert!(body.contains("echo from"), "{body}");

    // Deleting the pod removes its container.
    c.client.api::<Pod>(Some("default")).delete("web").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !c.docker.list().await?.is_empty() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "container not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A `tcpSocket` readiness probe: the pod is ready while its container accepts connections
/// on its port, and not ready once the container closes the port while it runs on (with no
/// probe the agent would have stopped looking after the first answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_socket_probe_follows_the_port_accepting() -> anyhow::Result<()> {
    let Some(c) = Cluster::start("agent_docker_tcp_probe", None).await? else {
        return Ok(());
    };
    let (_stop, _task) = c.agent();
    let mut listener = echo(&["listen", "8"], true);
    listener.readiness_probe = Some(Probe {
        tcp_socket: Some(TcpSocketAction { port: 8080 }),
        period_seconds: 1,
        failure_threshold: 1,
        ..Probe::default()
    });
    c.create(&c.pod("tcp", listener, RestartPolicy::Always)).await?;
    c.wait_pod("tcp", 60, Pod::is_ready).await?;
    let p = c
        .wait_pod("tcp", 30, |p| p.phase() == PodPhase::Running && !p.is_ready())
        .await?;
    let restarts = p.status.as_ref().context("status")?.container_statuses[0].restart_count;
    assert_eq!(restarts, 0, "the container ran on; only its port closed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_and_missing_images_are_reported() -> anyhow::Result<()> {
    let Some(c) = Cluster::start("agent_docker_oom", None).await? else {
        return Ok(());
    };
    let (_stop, _task) = c.agent();
    let mut hog = echo(&["alloc", "256"], false);
    hog.resources.limits.insert(
        "memory".into(),
        "32Mi".parse::<Quantity>().map_err(anyhow::Error::msg)?,
    );
    c.create(&c.pod("hog", hog, RestartPolicy::Never)).await?;
    let p = c.wait_pod("hog", 60, |p| p.phase().is_terminal()).await?;
    assert_eq!(p.phase(), PodPhase::Failed);
    let t = p.status.as_ref().context("status")?.container_statuses[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .context("terminated")?;
    assert_eq!((t.reason.as_deref(), t.exit_code), (Some("OOMKilled"), 137));

    let mut missing = echo(&[], false);
    missing.image = Some("127.0.0.1:9/wisp/none:missing".into());
    c.create(&c.pod("missing", missing, RestartPolicy::Always))
        .await?;
    let p = c
        .wait_pod("missing", 60, |p| {
            waiting(p).is_some_and(|(r, _)| r == "ImagePullBackOff")
        })
        .await?;
    let (_, message) = waiting(&p).context("waiting")?;
    assert!(message.contains("127.0.0.1:9/wisp/none:missing"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_down_keeps_the_node_and_wasm_pods_up_and_docker_pods_start_when_it_returns()
-> anyhow::Result<()> {
    let sockets = tempfile::tempdir()?;
    let socket = sockets.path().join("docker.sock");
    let Some(c) = Cluster::start("agent_docker_down", Some(socket.clone())).await? else {
        return Ok(());
    };
    let (_stop, task) = c.agent();
    let node = c
        .wait_node(10, |n| docker_ready(n).as_deref() == Some("False"))
        .await?;
    assert!(node.is_ready(), "the node itself is Ready");

    let hello = wisp_testkit::guests::path("hello").map_err(anyhow::Error::msg)?;
    let digest = c
        .client
        .put_blob(bytes::Bytes::from(std::fs::read(hello)?))
        .await?;
    let wasm = Container {
        name: "main".into(),
        wasm: Some(digest),
        ..Container::default()
    };
    c.create(&c.pod("wasm", wasm, RestartPolicy::Always)).await?;
    c.create(&c.pod("box", echo(&[], true), RestartPolicy::Always))
        .await?;
    c.wait_pod("wasm", 60, Pod::is_ready).await?;
    let p = c
        .wait_pod("box", 30, |p| {
            waiting(p).is_some_and(|(r, _)| r == "RuntimeUnavailable")
        })
        .await?;
    let (_, message) = waiting(&p).context("waiting")?;
    assert!(
        message.contains(&socket.display().to_string()),
        "names the socket: {message}"
    );
    // Some seconds later the agent is still there and the pod still waits (no crash loop).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!task.is_finished(), "the agent keeps running");
    let p = c.wait_pod("box", 1, |_| true).await?;
    assert_eq!(p.phase(), PodPhase::Pending);

    // The daemon returns.
    let _proxy = SocketProxy::start(socket, wisp_sandbox_docker::default_socket())?;
    c.wait_node(10, |n| docker_ready(n).as_deref() == Some("True"))
        .await?;
    let p = c.wait_pod("box", 60, Pod::is_ready).await?;
    let port = p.status.as_ref().and_then(|s| s.host_port).context("hostPort")?;
    assert!(http_get(port, "/").await?.contains("echo from"));
    assert!(
        c.wait_pod("wasm", 1, Pod::is_ready).await.is_ok(),
        "the wasm pod kept running"
    );
    Ok(())
}
