//! `pod-start`: how long a wasm pod takes from `create` to Running and ready, as a client
//! sees it through a watch. The whole chain runs in this process but over real HTTP, as in
//! `wisp up`: the API server on an embedded store, the scheduler (binds the pod), and a node
//! agent with the wasm runtime (prepares from its compiled cache, starts, writes status).
//!
//! Scenarios: `sequential` (one pod at a time: create, wait until it is ready, next) and
//! `burst` (N pods created at once, each timed from its own create).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wisp_api::{Container, ObjectMeta, Pod, Resource};
use wisp_apiserver::testutil::TestServer;
use wisp_client::{Client, WatchParams, WatcherEvent};

use crate::progress;
use crate::report::Latencies;

#[derive(clap::Args, Debug)]
pub struct PodStartArgs {
    /// Pods created one after another.
    #[arg(long, env = "WISP_BENCH_SEQUENTIAL", default_value_t = 200)]
    pub sequential: usize,
    /// Pods created at once.
    #[arg(long, env = "WISP_BENCH_BURST", default_value_t = 100)]
    pub burst: usize,
    /// The component (default: examples/target/wasm32-wasip2/release/hello.wasm).
    #[arg(long, env = "WISP_BENCH_COMPONENT")]
    pub component: Option<std::path::PathBuf>,
}

fn pod(name: &str, digest: &str) -> Pod {
    let mut p = Pod::new(ObjectMeta::namespaced("default", name));
    p.spec.containers = vec![Container {
        name: "hello".into(),
        wasm: Some(digest.into()),
        ..Container::default()
    }];
    p
}

/// Sends `(name, when)` the first time each pod is seen Running and ready.
fn ready_events(client: &Client, stop: CancellationToken) -> mpsc::UnboundedReceiver<(String, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = client.api::<Pod>(Some("default")).watcher(WatchParams::default());
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        loop {
            let event = tokio::select! {
                e = watcher.next() => e,
                () = stop.cancelled() => return,
            };
            let pods = match event {
                Ok(WatcherEvent::Restarted(pods)) => pods,
                Ok(WatcherEvent::Applied(p)) => vec![p],
                Ok(WatcherEvent::Deleted(_)) => continue,
                Err(_) => return,
            };
            let now = Instant::now();
            for p in pods {
                if p.phase() == wisp_api::PodPhase::Running
                    && p.is_ready()
                    && seen.insert(p.metadata.name.clone())
                    && tx.send((p.metadata.name, now)).is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

pub async fn run(args: &PodStartArgs) -> anyhow::Result<String> {
    let component = match &args.component {
        Some(c) => c.clone(),
        None => wisp_testkit::guests::path("hello").map_err(anyhow::Error::msg)?,
    };
    let bytes = std::fs::read(&component).with_context(|| format!("cannot read {}", component.display()))?;
    let server = TestServer::start().await?;
    let client = Client::new(&server.url, &server.token);
    let shutdown = CancellationToken::new();
    let dir = tempfile::tempdir()?;
    let mut config = wisp_node::AgentConfig::new("bench-node", dir.path());
    config.capacity.insert(
        "pods".into(),
        wisp_api::Quantity::from_units(100_000, wisp_api::QuantityFormat::DecimalSI),
    );
    let artifacts: std::sync::Arc<dyn wisp_sandbox::ArtifactSource> =
        std::sync::Arc::new(wisp_node::ApiArtifacts(client.clone()));
    let wasm = wisp_sandbox_wasm::WasmSandbox::new(
        wisp_sandbox_wasm::WasmConfig::new(dir.path().join("wasm")),
        Some(artifacts),
    )?;
    let pooling = wasm.pooling();
    let mut runtimes = wisp_node::Runtimes::default();
    runtimes.insert(std::sync::Arc::new(wasm));
    let agent = wisp_node::Agent::new(client.clone(), config, runtimes);
    let scheduler = tokio::spawn(wisp_scheduler::run(
        wisp_runtime::Informers::new(client.clone(), shutdown.clone()),
        wisp_scheduler::SchedulerConfig::default(),
        shutdown.clone(),
    ));
    let stop = shutdown.clone();
    let agent_task = tokio::spawn(async move { Box::pin(agent.run(stop)).await });
    let digest = client.put_blob(Bytes::from(bytes)).await?;
    let mut ready = ready_events(&client, shutdown.clone());
    let api = client.api::<Pod>(Some("default"));

    // Warm-up: the first pod compiles the component (cached afterwards, like a node that ran
    // the function before).
    progress("warm-up pod (compiles the component)");
    let t = Instant::now();
    api.create(&pod("warmup", &digest)).await?;
    let cold = wait_for(&mut ready, "warmup").await? - t;

    progress(&format!("{} sequential pods", args.sequential));
    let mut sequential = Vec::with_capacity(args.sequential);
    for i in 0..args.sequential {
        let name = format!("seq-{i}");
        let t = Instant::now();
        api.create(&pod(&name, &digest)).await?;
        sequential.push(wait_for(&mut ready, &name).await? - t);
    }

    progress(&format!("a burst of {} pods", args.burst));
    let started: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..args.burst {
        let (api, digest, started) = (api.clone(), digest.clone(), started.clone());
        creates.spawn(async move {
            let name = format!("burst-{i}");
            let t = Instant::now();
            started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), t);
            api.create(&pod(&name, &digest)).await.map(|_| ())
        });
    }
    let burst_t0 = Instant::now();
    let mut burst = Vec::with_capacity(args.burst);
    while burst.len() < args.burst {
        let (name, at) = tokio::time::timeout(Duration::from_secs(60), ready.recv())
            .await
            .context("burst pods did not all become ready within 60 s")?
            .context("watch ended")?;
        if let Some(t) = started.lock().unwrap_or_else(|e| e.into_inner()).get(&name) {
            burst.push(at - *t);
        }
    }
    let burst_wall = burst_t0.elapsed();
    while let Some(r) = creates.join_next().await {
        r??;
    }
    shutdown.cancel();
    let _ = scheduler.await;
    let _ = agent_task.await;
    drop(server);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "pooling allocator: {}; first pod (compiles the component): {:.1} ms\n",
        if pooling { "on" } else { "off (not granted)" },
        cold.as_secs_f64() * 1000.0
    );
    let _ = writeln!(out, "| scenario | pods | p50 ms | p90 ms | p99 ms | max ms |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, all) in [
        ("sequential (one at a time)".to_owned(), sequential),
        (
            format!(
                "burst (all at once; last ready after {:.0} ms)",
                burst_wall.as_secs_f64() * 1000.0
            ),
            burst,
        ),
    ] {
        let ms = |d: Option<Duration>| {
            d.map_or_else(|| "—".into(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0))
        };
        let cells = Latencies::new(all).cells(&[50.0, 90.0, 99.0], true, &ms);
        let _ = writeln!(out, "| {name} | {cells} |");
    }
    Ok(out)
}

async fn wait_for(
    ready: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    name: &str,
) -> anyhow::Result<Instant> {
    loop {
        let (got, at) = tokio::time::timeout(Duration::from_secs(60), ready.recv())
            .await
            .with_context(|| format!("pod {name} was not ready within 60 s"))?
            .context("watch ended")?;
        if got == name {
            return Ok(at);
        }
    }
}
