//! The node agent against a real API server (embedded store, HTTP on loopback) and the real
//! wasm runtime, with the guest components built from `examples/` (tests/build-guests.sh). Pods are bound by
//! hand (`spec.nodeName`), no scheduler or controllers run here. (Moved from node/agent/tests:
//! the agent crate knows no concrete runtime; its own tests run on the fake one.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio_util::sync::CancellationToken;
use wisp_api::{
    ConfigMap, Container, EnvVar, EnvVarSource, KeySelector, Lease, Node, ObjectMeta, Pod, PodPhase,
    Resource, RestartPolicy, Secret,
};
use wisp_apiserver::testutil::TestServer;
use wisp_client::Client;
use wisp_node::{Agent, AgentConfig, ApiArtifacts, Backoff, Runtimes};
use wisp_sandbox::{Sandbox, SandboxId};
use wisp_sandbox_wasm::{WasmConfig, WasmSandbox};

const NODE: &str = "node-a";

fn guest(name: &str) -> PathBuf {
    wisp_testkit::guests::path(name).unwrap_or_else(|e| panic!("{e}"))
}

struct Cluster {
    server: TestServer,
    client: Client,
    wasm: WasmSandbox,
    dir: tempfile::TempDir,
    /// What the agents publish for the node's ingress.
    readiness: wisp_node::LocalReadiness,
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        let server = TestServer::start().await?;
        let client = server.client();
        let dir = tempfile::tempdir()?;
        let mut config = WasmConfig::new(dir.path().join("wasm"));
        config.max_instances = 32;
        config.max_memory_per_instance = 256 << 20;
        let wasm = WasmSandbox::new(config, Some(Arc::new(ApiArtifacts(client.clone()))))?;
        Ok(Self {
            server,
            client,
            wasm,
            dir,
            readiness: wisp_node::LocalReadiness::default(),
        })
    }

    fn runtimes(&self) -> Runtimes {
        Runtimes::from_iter([Arc::new(self.wasm.clone()) as Arc<dyn Sandbox>])
    }

    /// Starts an agent over this cluster's wasm runtime; cancel the token to stop it.
    fn agent(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let mut config = AgentConfig::new(NODE, self.dir.path().join("node"));
        config.lease_duration = Duration::from_secs(2);
        config.local_readiness = self.readiness.clone();
        config.backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            reset_after: Duration::from_secs(60),
        };
        let agent = Agent::new(self.client.clone(), config, self.runtimes());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = Box::pin(agent.run(token)).await {
                panic!("agent failed: {e}");
            }
        });
        (stop, task)
    }

    /// Uploads a guest component; its digest (what a pod's `wasm:` names).
    async fn upload(&self, name: &str) -> anyhow::Result<String> {
        Ok(self
            .client
            .put_blob(Bytes::from(std::fs::read(guest(name))?))
            .await?)
    }

    async fn create(&self, pod: &Pod) -> anyhow::Result<Pod> {
        Ok(self.client.api::<Pod>(Some("default")).create(pod).await?)
    }

    /// Polls the pod until `check` holds (or fails after `secs`).
    async fn wait_pod(&self, name: &str, secs: u64, check: impl Fn(&Pod) -> bool) -> anyhow::Result<Pod> {
        wisp_testkit::wait_pod(&self.client, name, secs, check).await
    }
}

fn pod(name: &str, container: Container, policy: RestartPolicy) -> Pod {
    let mut p = Pod::new(ObjectMeta::namespaced("default", name));
    p.spec.containers = vec![container];
    p.spec.node_name = Some(NODE.into());
    p.spec.restart_policy = policy;
    p.spec.termination_grace_period_seconds = Some(1);
    p
}

fn wasm_container(wasm: &str, args: &[&str]) -> Container {
    Container {
        name: "main".into(),
        wasm: Some(wasm.into()),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Container::default()
    }
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.first())
        .map_or(0, |c| c.restart_count)
}

async fn get_text(wasm: &WasmSandbox, id: &SandboxId, path: &str) -> anyhow::Result<(u16, String)> {
    let req = http::Request::get(format!("http://localhost{path}")).body(Empty::<Bytes>::new())?;
    let resp = wasm.handle(id, req).await?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn registers_the_node_and_renews_its_lease() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let (stop, task) = c.agent();
    let nodes = c.client.api::<Node>(None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let node = loop {
        if let Some(n) = nodes.get_opt(NODE).await?
            && n.is_ready()
        {
            break n;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "node never became Ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = node.status.context("status")?;
    assert_eq!(status.runtimes, ["wasm"]);
    assert!(status.capacity.contains_key("cpu") && status.capacity.contains_key("memory"));
    let agent_url = status.agent_url.clone().context("agentUrl")?;
    assert!(agent_url.starts_with("https://127.0.0.1:"), "{agent_url}");
    // The node's port speaks TLS only, with a certificate from the CA the node published.
    let ca = status.agent_ca.clone().context("agentCa")?;
    let plain = Client::new(&agent_url.replace("https://", "http://"), "t")
        .raw(http::Method::GET, "/.wisp/containerLogs/default/p/c", None)
        .await;
    assert!(
        plain.as_ref().is_err_and(|e| e.code().is_none()),
        "plain HTTP on the node's port gets no HTTP answer: {plain:?}"
    );
    let stranger = wisp_tls::Ca::create_named(wisp_tls::NODE_CA)?;
    let other = Client::with_ca(&agent_url, "t", Some(stranger.cert_pem()))?
        .raw(http::Method::GET, "/.wisp/containerLogs/default/p/c", None)
        .await;
    assert!(
        other.as_ref().is_err_and(|e| e.code().is_none()),
        "a client trusting another CA gets no HTTP answer: {other:?}"
    );
    let bad = Client::with_ca(&agent_url, "not-a-ticket", Some(&ca))?
        .raw(http::Method::GET, "/.wisp/containerLogs/default/p/c", None)
        .await;
    assert_eq!(
        bad.as_ref().err().and_then(|e| e.code()),
        Some(401),
        "over TLS with the node's CA, a token that is no ticket: {bad:?}"
    );
    let leases = c.client.api::<Lease>(Some("wisp-system"));
    let first = leases.get(NODE).await?.spec.renew_time.context("renewTime")?;
    // Renewed every lease_duration / 4 = 500 ms.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = leases.get(NODE).await?.spec.renew_time.context("renewTime")?;
    assert_ne!(first, later, "the lease was not renewed");

    // Marked NotReady by the node lifecycle controller → the agent says Ready again.
    let mut n = nodes.get(NODE).await?;
    let st = n.status.as_mut().context("status")?;
    wisp_api::meta::set_condition(
        &mut st.conditions,
        wisp_api::Condition::new("Ready", false, "NodeStatusUnknown", "test"),
        "2026-01-01T00:00:00Z",
    );
    nodes.replace_status(&n).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !nodes.get(NODE).await?.is_ready() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the agent did not report Ready again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn http_pod_runs_ready_and_is_removed_on_delete() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let (_stop, _task) = c.agent();
    // The component comes from the API's blob store, by digest.
    let digest = c
        .client
        .put_blob(Bytes::from(std::fs::read(guest("hello"))?))
        .await?;
    let created = c
        .create(&pod("web", wasm_container(&digest, &[]), RestartPolicy::Always))
        .await?;
    let running = c
        .wait_pod("web", 30, |p| p.phase() == PodPhase::Running && p.is_ready())
        .await?;
    let st = running.status.as_ref().context("status")?;
    assert_eq!(st.pod_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(st.node_name.as_deref(), Some(NODE));
    assert!(st.container_statuses[0].ready);
    let uid = created.metadata.uid.as_deref().context("uid")?;
    let id = SandboxId::new(uid, "main");
    let (code, body) = get_text(&c.wasm, &id, "/").await?;
    assert_eq!((code, body.as_str()), (200, "Hello from Wisp"));
    // The node's ingress was told in process too.
    assert!(c.readiness.is_ready(uid), "not published as ready on the node");

    c.client.api::<Pod>(Some("default")).delete("web").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !c.wasm.list().await?.is_empty() || c.readiness.is_ready(uid) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the sandbox outlived its pod"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn crashing_container_restarts_with_backoff_and_crash_loop_reason() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let (_stop, _task) = c.agent();
    let file = c.upload("cli-fixture").await?;
    c.create(&pod(
        "crash",
        wasm_container(&file, &["exit", "3", "bye"]),
        RestartPolicy::Always,
    ))
    .await?;
    let p = c.wait_pod("crash", 30, |p| restarts(p) >= 3).await?;
    assert_eq!(p.phase(), PodPhase::Running, "a crash-looping pod stays Running");
    assert!(!p.is_ready());
    let cs = &p.status.as_ref().context("status")?.container_statuses[0];
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("lastState")?;
    assert_eq!(last.exit_code, 3);
    // Between restarts it waits as CrashLoopBackOff (delays 100, 200, 400, 800 ms…).
    c.wait_pod("crash", 30, |p| {
        waiting_reason(p).as_deref() == Some("CrashLoopBackOff")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn run_to_completion_pods_succeed_or_fail_per_exit_code() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let (_stop, _task) = c.agent();
    let file = c.upload("cli-fixture").await?;
    c.create(&pod(
        "ok",
        wasm_container(&file, &["exit", "0", "done"]),
        RestartPolicy::OnFailure,
    ))
    .await?;
    c.create(&pod(
        "bad",
        wasm_container(&file, &["exit", "4", "no"]),
        RestartPolicy::Never,
    ))
    .await?;
    let ok = c.wait_pod("ok", 30, |p| p.phase().is_terminal()).await?;
    assert_eq!(ok.phase(), PodPhase::Succeeded);
    let bad = c.wait_pod("bad", 30, |p| p.phase().is_terminal()).await?;
    assert_eq!(bad.phase(), PodPhase::Failed);
    let t = bad.status.as_ref().context("status")?.container_statuses[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .context("terminated")?;
    assert_eq!((t.exit_code, restarts(&bad)), (4, 0));
    // Logs of the finished container, through the API server's proxy to the agent.
    let resp = c
        .client
        .raw(
            http::Method::GET,
            "/apis/wisp.dev/v1/namespaces/default/pods/ok/log",
            None,
        )
        .await?;
    let text = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
    assert!(text.contains("done"), "logs: {text:?}");
    Ok(())
}

#[tokio::test]
async fn missing_component_backs_off_then_runs_once_uploaded() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let (_stop, _task) = c.agent();
    let bytes = Bytes::from(std::fs::read(guest("hello"))?);
    let digest = wisp_sandbox_wasm::digest_of(&bytes);
    c.create(&pod("later", wasm_container(&digest, &[]), RestartPolicy::Always))
        .await?;
    let waiting = c
        .wait_pod("later", 30, |p| {
            waiting_reason(p).as_deref() == Some("ArtifactPullBackOff")
        })
        .await?;
    assert_eq!(waiting.phase(), PodPhase::Pending);
    let msg = waiting
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(msg.contains(&digest), "the message names the digest: {msg}");
    c.client.put_blob(bytes).await?;
    c.wait_pod("later", 30, |p| p.is_ready()).await?;
    Ok(())
}

#[tokio::test]
async fn env_from_config_map_and_secret_reaches_the_guest_and_nothing_else() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let (_stop, _task) = c.agent();
    let mut cm = ConfigMap::new(ObjectMeta::namespaced("default", "cfg"));
    cm.data.insert("greeting".into(), "hi from a configmap".into());
    c.client.api::<ConfigMap>(Some("default")).create(&cm).await?;
    let mut secret = Secret::new(ObjectMeta::namespaced("default", "creds"));
    secret.data.insert("password".into(), "czNjcjN0".into()); // "s3cr3t"
    c.client.api::<Secret>(Some("default")).create(&secret).await?;
    let from = |cm: Option<&str>, secret: Option<&str>, key: &str| EnvVarSource {
        config_map_key_ref: cm.map(|n| KeySelector {
            name: n.into(),
            key: key.into(),
            optional: None,
        }),
        secret_key_ref: secret.map(|n| KeySelector {
            name: n.into(),
            key: key.into(),
            optional: None,
        }),
    };
    let mut container = wasm_container(&c.upload("fault").await?, &[]);
    container.env = vec![
        EnvVar {
            name: "GREETING".into(),
            value: None,
            value_from: Some(from(Some("cfg"), None, "greeting")),
        },
        EnvVar {
            name: "PASSWORD".into(),
            value: None,
            value_from: Some(from(None, Some("creds"), "password")),
        },
    ];
    let created = c.create(&pod("env", container, RestartPolicy::Always)).await?;
    c.wait_pod("env", 30, |p| p.is_ready()).await?;
    let id = SandboxId::new(created.metadata.uid.as_deref().context("uid")?, "main");
    assert_eq!(
        get_text(&c.wasm, &id, "/env?name=GREETING").await?,
        (200, "hi from a configmap".into())
    );
    assert_eq!(
        get_text(&c.wasm, &id, "/env?name=PASSWORD").await?,
        (200, "s3cr3t".into())
    );
    assert_eq!(
        get_text(&c.wasm, &id, "/env?name=HOME").await?.0,
        404,
        "no ambient env"
    );

    // A missing key is a clear configuration error naming it.
    let mut broken = wasm_container(&c.upload("fault").await?, &[]);
    broken.env = vec![EnvVar {
        name: "X".into(),
        value: None,
        value_from: Some(from(Some("cfg"), None, "nope")),
    }];
    c.create(&pod("broken", broken, RestartPolicy::Always)).await?;
    let p = c
        .wait_pod("broken", 30, |p| {
            waiting_reason(p).as_deref() == Some("CreateContainerConfigError")
        })
        .await?;
    let msg = p.status.and_then(|s| s.message).unwrap_or_default();
    assert!(msg.contains("cfg") && msg.contains("nope"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn restarted_agent_adopts_running_sandboxes_without_duplicates() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let (stop, task) = c.agent();
    let file = c.upload("cli-fixture").await?;
    let created = c
        .create(&pod(
            "long",
            wasm_container(&file, &["sleep", "up"]),
            RestartPolicy::Always,
        ))
        .await?;
    let before = c.wait_pod("long", 30, |p| p.is_ready()).await?;
    stop.cancel();
    task.await?;

    // While no agent runs, a pod bound here is deleted: its sandbox is an orphan.
    let orphan = c
        .create(&pod(
            "orphan",
            wasm_container(&file, &["sleep", "x"]),
            RestartPolicy::Always,
        ))
        .await?;
    let (stop, task) = c.agent();
    c.wait_pod("orphan", 30, |p| p.is_ready()).await?;
    stop.cancel();
    task.await?;
    c.client.api::<Pod>(Some("default")).delete("orphan").await?;
    assert_eq!(c.wasm.list().await?.len(), 2);

    let (_stop, _task) = c.agent();
    let long_id = SandboxId::new(created.metadata.uid.as_deref().context("uid")?, "main");
    let orphan_id = SandboxId::new(orphan.metadata.uid.as_deref().context("uid")?, "main");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<SandboxId> = c.wasm.list().await?.into_iter().map(|s| s.id).collect();
        if ids == [long_id.clone()] {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "expected only the adopted sandbox, found {ids:?} (orphan {orphan_id})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a duplicate start every chance to happen, then check there was none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = c.wait_pod("long", 10, |p| p.is_ready()).await?;
    assert_eq!(restarts(&after), 0, "adopted, not restarted");
    let started = |p: &Pod| {
        p.status.as_ref().and_then(|s| {
            s.container_statuses[0]
                .state
                .as_ref()
                .and_then(|st| st.running.as_ref())
                .and_then(|r| r.started_at.clone())
        })
    };
    assert_eq!(started(&after), started(&before), "the same run continues");
    assert_eq!(c.wasm.list().await?.len(), 1);
    drop(c.server);
    Ok(())
}
