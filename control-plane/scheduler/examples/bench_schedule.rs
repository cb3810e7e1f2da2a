//! Scheduler throughput: 10,000 pods onto 5,000 registered fake nodes, bound and persisted,
//! on a real API server (embedded store) over loopback.
//!
//! ```sh
//! cargo run --release -p wisp-scheduler --example bench_schedule [-- PODS NODES]
//! ```
//!
//! Setup (untimed): register the nodes (create + Ready status) and create the pods, 64
//! requests at a time. Timed: from the scheduler's start until a watch of pods has seen every
//! pod with `spec.nodeName` set (each such event is a committed store write). Then checked: a
//! list with `fieldSelector=spec.nodeName=` returns no pod. Aborts after 120 s.
//! `WISP_BENCH_BINDS` overrides the scheduler's binds in flight (default 64).
#![allow(clippy::print_stdout, reason = "a benchmark prints its report")]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use wisp_api::{Condition, Container, Node, NodeStatus, ObjectMeta, OwnerReference, Pod, Quantity, Resource};
use wisp_client::{Client, ListParams, WatchParams, WatcherEvent};

const CONCURRENCY: usize = 64;
const REPLICASETS: usize = 100;
const DEADLINE: Duration = Duration::from_secs(120);

fn node(i: usize) -> anyhow::Result<(Node, NodeStatus)> {
    let mut n = Node::new(ObjectMeta::named(format!("node-{i:05}")));
    n.metadata.labels.insert("zone".into(), format!("z{}", i % 3));
    let status = NodeStatus {
        allocatable: [
            ("cpu".to_owned(), Quantity::parse("8")?),
            ("memory".to_owned(), Quantity::parse("32Gi")?),
            ("pods".to_owned(), Quantity::parse("110")?),
        ]
        .into(),
        runtimes: vec!["wasm".into(), "docker".into()],
        conditions: vec![Condition::new("Ready", true, "AgentReady", "")],
        ..NodeStatus::default()
    };
    Ok((n, status))
}

fn pod(i: usize) -> anyhow::Result<Pod> {
    let rs = i % REPLICASETS;
    let mut p = Pod::new(ObjectMeta::namespaced("default", format!("pod-{i:05}")));
    p.metadata.labels.insert("app".into(), format!("rs-{rs}"));
    p.metadata.owner_references.push(OwnerReference {
        api_version: "wisp.dev/v1".into(),
        kind: "ReplicaSet".into(),
        name: format!("rs-{rs}"),
        uid: format!("00000000-0000-4000-8000-{rs:012}"),
        controller: Some(true),
    });
    let mut c = Container {
        name: "main".into(),
        wasm: Some(format!("sha256:{}", "0".repeat(64))),
        ..Container::default()
    };
    c.resources
        .requests
        .insert("cpu".into(), Quantity::parse("100m")?);
    c.resources
        .requests
        .insert("memory".into(), Quantity::parse("128Mi")?);
    p.spec.containers.push(c);
    Ok(p)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let pods_n: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let nodes_n: usize = args.next().map_or(Ok(5_000), |a| a.parse())?;

    let server = wisp_apiserver::testutil::TestServer::start().await?;
    let shutdown = server.shutdown.clone();
    let client = Client::new(&server.url, &server.token);

    let t = Instant::now();
    let nodes = client.api::<Node>(None);
    futures::stream::iter(0..nodes_n)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let (n, status) = node(i)?;
                let mut n = nodes.create(&n).await?;
                n.status = Some(status);
                nodes.replace_status(&n).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    println!("registered {nodes_n} Ready nodes in {:.2?}", t.elapsed());

    let t = Instant::now();
    let pods = client.api::<Pod>(Some("default"));
    futures::stream::iter(0..pods_n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(&pod(i)?).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    println!("created {pods_n} pending pods in {:.2?}", t.elapsed());

    // Watch (own connection) what gets persisted; start it before the scheduler.
    let mut watcher = Client::new(&server.url, &server.token)
        .api::<Pod>(Some("default"))
        .watcher(WatchParams::default());
    let mut bound: HashSet<String> = HashSet::new();
    let mut placement: BTreeMap<String, usize> = BTreeMap::new();
    let mut note = |p: &Pod, bound: &mut HashSet<String>| {
        if let Some(n) = p.spec.node_name.as_deref().filter(|n| !n.is_empty())
            && bound.insert(p.metadata.name.clone())
        {
            *placement.entry(n.to_owned()).or_default() += 1;
        }
    };
    match watcher.next().await? {
        WatcherEvent::Restarted(list) => list.iter().for_each(|p| note(p, &mut bound)),
        other => anyhow::bail!("expected the initial list, got {other:?}"),
    }
    anyhow::ensure!(bound.is_empty(), "pods were bound before the scheduler started");

    let mut config = wisp_scheduler::SchedulerConfig::default();
    if let Ok(n) = std::env::var("WISP_BENCH_BINDS") {
        config.max_concurrent_binds = n.parse().context("WISP_BENCH_BINDS")?;
    }
    println!("scheduler: up to {} binds in flight", config.max_concurrent_binds);
    let sched_stop = CancellationToken::new();
    let start = Instant::now();
    let scheduler = tokio::spawn(wisp_scheduler::run(
        wisp_runtime::Informers::new(Client::new(&server.url, &server.token), sched_stop.clone()),
        config,
        sched_stop.clone(),
    ));
    let mut last_report = Instant::now();
    while bound.len() < pods_n {
        let remaining = DEADLINE.saturating_sub(start.elapsed());
        anyhow::ensure!(
            !remaining.is_zero(),
            "aborted after {DEADLINE:?}: {}/{pods_n} pods bound",
            bound.len()
        );
        match tokio::time::timeout(remaining, watcher.next()).await {
            Ok(ev) => match ev? {
                WatcherEvent::Applied(p) => note(&p, &mut bound),
                WatcherEvent::Restarted(list) => list.iter().for_each(|p| note(p, &mut bound)),
                WatcherEvent::Deleted(_) => {}
            },
            Err(_) => continue,
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            println!("  {:>6.1?}: {}/{pods_n} bound", start.elapsed(), bound.len());
            last_report = Instant::now();
        }
    }
    let elapsed = start.elapsed();
    sched_stop.cancel();
    scheduler.await??;

    let unbound = pods
        .list(&ListParams {
            label_selector: None,
            field_selector: Some("spec.nodeName=".into()),
        })
        .await?;
    anyhow::ensure!(
        unbound.items.is_empty(),
        "{} pods still unbound in the store",
        unbound.items.len()
    );
    let all = pods.list(&ListParams::default()).await?;
    let stored_bound = all.items.iter().filter(|p| p.spec.node_name.is_some()).count();
    anyhow::ensure!(
        stored_bound == pods_n,
        "{stored_bound}/{pods_n} bound in the store"
    );
    let per_node_max = placement.values().copied().max().unwrap_or(0);

    println!(
        "scheduled {pods_n} pods onto {nodes_n} nodes: bound and persisted in {elapsed:.2?} \
         = {:.0} pods/s (nodes used: {}, most pods on one node: {per_node_max})",
        pods_n as f64 / elapsed.as_secs_f64(),
        placement.len(),
    );
    shutdown.cancel();
    drop(server);
    Ok(())
}
