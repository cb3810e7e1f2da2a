//! The scheduler against a real API server over loopback (embedded store).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wisp_api::{Condition, Container, Node, NodeStatus, ObjectMeta, OwnerReference, Pod, Quantity, Resource};
use wisp_client::{Api, Client};
use wisp_scheduler::SchedulerConfig;
use wisp_testkit::try_eventually as eventually;

struct Cluster {
    client: Client,
    shutdown: CancellationToken,
    scheduler: tokio::task::JoinHandle<Result<(), wisp_scheduler::SchedulerError>>,
    _server: wisp_apiserver::testutil::TestServer,
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        let server = wisp_apiserver::testutil::TestServer::start().await?;
        let shutdown = server.shutdown.clone();
        let client = Client::new(&server.url, &server.token);
        let config = SchedulerConfig {
            // Keep the periodic retry out of the picture: only events may unpark pods.
            unschedulable_retry: Duration::from_secs(3600),
            ..SchedulerConfig::default()
        };
        let scheduler = tokio::spawn(wisp_scheduler::run(
            wisp_runtime::Informers::new(client.clone(), shutdown.clone()),
            config,
            shutdown.clone(),
        ));
        Ok(Self {
            client,
            shutdown,
            scheduler,
            _server: server,
        })
    }

    fn pods(&self) -> Api<Pod> {
        self.client.api::<Pod>(Some("default"))
    }

    async fn node(&self, spec: NodeSpec<'_>) -> anyhow::Result<Node> {
        let api = self.client.api::<Node>(None);
        let mut node = Node::new(ObjectMeta::named(spec.name));
        node.metadata.labels = spec
            .labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        node.spec.unschedulable = spec.cordoned;
        let mut node = api.create(&node).await?;
        node.status = Some(NodeStatus {
            allocatable: [
                ("cpu".to_owned(), Quantity::parse(spec.cpu)?),
                ("memory".to_owned(), Quantity::parse(spec.memory)?),
            ]
            .into(),
            runtimes: spec.runtimes.iter().map(|r| (*r).to_owned()).collect(),
            conditions: vec![Condition::new("Ready", spec.ready, "AgentReady", "")],
            ..NodeStatus::default()
        });
        Ok(api.replace_status(&node).await?)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.scheduler.await??;
        Ok(())
    }
}

struct NodeSpec<'a> {
    name: &'a str,
    cpu: &'a str,
    memory: &'a str,
    runtimes: &'a [&'a str],
    labels: &'a [(&'a str, &'a str)],
    ready: bool,
    cordoned: bool,
}

impl<'a> NodeSpec<'a> {
    fn wasm(name: &'a str) -> Self {
        Self {
            name,
            cpu: "4",
            memory: "8Gi",
            runtimes: &["wasm"],
            labels: &[],
            ready: true,
            cordoned: false,
        }
    }
}

fn wasm_pod(name: &str, cpu: &str, memory: &str) -> anyhow::Result<Pod> {
    let mut c = Container {
        name: "main".into(),
        wasm: Some(format!("sha256:{}", "0".repeat(64))),
        ..Container::default()
    };
    if !cpu.is_empty() {
        c.resources.requests.insert("cpu".into(), Quantity::parse(cpu)?);
    }
    if !memory.is_empty() {
        c.resources
            .requests
            .insert("memory".into(), Quantity::parse(memory)?);
    }
    let mut pod = Pod::new(ObjectMeta::namespaced("default", name));
    pod.spec.containers.push(c);
    Ok(pod)
}

fn docker_pod(name: &str) -> Pod {
    let mut pod = Pod::new(ObjectMeta::namespaced("default", name));
    pod.spec.containers.push(Container {
        name: "main".into(),
        image: Some("nginx:1".into()),
        ..Container::default()
    });
    pod
}

async fn bound_node(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    eventually(&format!("pod {name} bound"), async || {
        Ok(pods.get(name).await?.spec.node_name)
    })
    .await
}

fn scheduled(pod: &Pod) -> Option<Condition> {
    pod.status
        .as_ref()
        .and_then(|s| wisp_api::meta::find_condition(&s.conditions, wisp_api::POD_SCHEDULED).cloned())
}

/// The pod's Unschedulable message once it reads `want`, or the last one seen after the
/// deadline. The scheduler may first judge a pod against a cache that has not yet seen the
/// latest node status (a node is created, then its status posted, as an agent does); it
/// writes the message again when that status arrives.
async fn unschedulable_message(pods: &Api<Pod>, name: &str, want: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut last = None;
    loop {
        let pod = pods.get(name).await?;
        anyhow::ensure!(pod.spec.node_name.is_none(), "{name} was bound");
        if let Some(msg) = scheduled(&pod)
            .filter(|c| !c.is_true() && c.reason.as_deref() == Some("Unschedulable"))
            .and_then(|c| c.message)
        {
            if msg == want {
                return Ok(msg);
            }
            last = Some(msg);
        }
        if tokio::time::Instant::now() >= deadline {
            return last.ok_or_else(|| anyhow::anyhow!("pod {name} was never marked unschedulable"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_pods_and_spreads_a_replicaset() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    for n in ["node-a", "node-b", "node-c"] {
        cluster.node(NodeSpec::wasm(n)).await?;
    }
    let pods = cluster.pods();
    let owner = OwnerReference {
        api_version: "wisp.dev/v1".into(),
        kind: "ReplicaSet".into(),
        name: "web".into(),
        uid: "3f1d8f0e-0000-4000-8000-000000000001".into(),
        controller: Some(true),
    };
    for i in 0..6 {
        let mut pod = wasm_pod(&format!("web-{i}"), "100m", "64Mi")?;
        pod.metadata.owner_references.push(owner.clone());
        pods.create(&pod).await?;
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(bound_node(&pods, &format!("web-{i}")).await?)
            .or_default() += 1;
    }
    assert_eq!(
        per_node,
        [("node-a".into(), 2), ("node-b".into(), 2), ("node-c".into(), 2)].into(),
        "replicas spread evenly"
    );
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pod_waits_for_a_docker_node() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster.node(NodeSpec::wasm("wasm-1")).await?;
    cluster.node(NodeSpec::wasm("wasm-2")).await?;
    let pods = cluster.pods();
    pods.create(&docker_pod("nginx")).await?;
    let want = "0/2 nodes are available: 2 runtime docker not supported.";
    let msg = unschedulable_message(&pods, "nginx", want).await?;
    assert_eq!(msg, want);

    // Nothing changes while nothing changes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pod = pods.get("nginx").await?;
    assert_eq!(pod.phase(), wisp_api::PodPhase::Pending);
    assert!(pod.spec.node_name.is_none());

    cluster
        .node(NodeSpec {
            runtimes: &["wasm", "docker"],
            ..NodeSpec::wasm("docker-1")
        })
        .await?;
    assert_eq!(bound_node(&pods, "nginx").await?, "docker-1");
    let cond = eventually("PodScheduled=True", async || {
        Ok(scheduled(&pods.get("nginx").await?).filter(Condition::is_true))
    })
    .await?;
    assert_eq!(cond.reason.as_deref(), Some("Scheduled"));
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_node_selector_resources_readiness_and_cordons() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster
        .node(NodeSpec {
            cpu: "1",
            memory: "1Gi",
            labels: &[("zone", "a")],
            ..NodeSpec::wasm("small")
        })
        .await?;
    cluster
        .node(NodeSpec {
            labels: &[("zone", "b")],
            ..NodeSpec::wasm("big")
        })
        .await?;
    cluster
        .node(NodeSpec {
            cpu: "64",
            memory: "256Gi",
            ready: false,
            ..NodeSpec::wasm("huge-down")
        })
        .await?;
    cluster
        .node(NodeSpec {
            cpu: "64",
            memory: "256Gi",
            cordoned: true,
            ..NodeSpec::wasm("huge-cordoned")
        })
        .await?;
    let pods = cluster.pods();

    // nodeSelector picks the small node even though the big one is emptier.
    let mut zoned = wasm_pod("zoned", "100m", "128Mi")?;
    zoned.spec.node_selector.insert("zone".into(), "a".into());
    pods.create(&zoned).await?;
    assert_eq!(bound_node(&pods, "zoned").await?, "small");

    // 2Gi only fits the big node.
    pods.create(&wasm_pod("wide", "500m", "2Gi")?).await?;
    assert_eq!(bound_node(&pods, "wide").await?, "big");

    // Fill the big node's memory with a second pod: 2Gi + 6Gi = 8Gi.
    pods.create(&wasm_pod("filler", "", "6Gi")?).await?;
    assert_eq!(bound_node(&pods, "filler").await?, "big");

    // Now 1Gi fits nowhere: the small node has 128Mi in use, the big one is full.
    pods.create(&wasm_pod("late", "", "1Gi")?).await?;
    let want = "0/4 nodes are available: 2 insufficient memory, 1 node not ready, 1 node unschedulable.";
    let msg = unschedulable_message(&pods, "late", want).await?;
    assert_eq!(msg, want);

    // Deleting a pod releases its memory; the waiting pod gets the room.
    pods.delete("filler").await?;
    assert_eq!(bound_node(&pods, "late").await?, "big");

    // A selector no node matches.
    let mut nowhere = wasm_pod("nowhere", "", "")?;
    nowhere.spec.node_selector.insert("zone".into(), "z".into());
    pods.create(&nowhere).await?;
    let want = "0/4 nodes are available: 2 node selector mismatch, 1 node not ready, 1 node unschedulable.";
    let msg = unschedulable_message(&pods, "nowhere", want).await?;
    assert_eq!(msg, want);
    // Relabelling a node lets it in.
    let nodes = cluster.client.api::<Node>(None);
    let mut small = nodes.get("small").await?;
    small.metadata.labels.insert("zone".into(), "z".into());
    nodes.replace(&small).await?;
    assert_eq!(bound_node(&pods, "nowhere").await?, "small");
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_bound_by_others_are_counted() -> anyhow::Result<()> {
    // A pod created already bound (by another writer) uses room the scheduler must see.
    let cluster = Cluster::start().await?;
    cluster
        .node(NodeSpec {
            cpu: "1",
            ..NodeSpec::wasm("only")
        })
        .await?;
    let pods = cluster.pods();
    let mut manual = wasm_pod("manual", "800m", "")?;
    manual.spec.node_name = Some("only".into());
    pods.create(&manual).await?;
    pods.create(&wasm_pod("next", "500m", "")?).await?;
    let want = "0/1 nodes are available: 1 insufficient cpu.";
    let msg = unschedulable_message(&pods, "next", want).await?;
    assert_eq!(msg, want);
    assert_eq!(pods.get("manual").await?.spec.node_name.as_deref(), Some("only"));
    cluster.stop().await
}
