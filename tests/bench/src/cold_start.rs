//! `cold-start`: time from an HTTP request to the first byte of its response for a Function
//! at zero, through the whole chain of `wisp up` in one process (the request over loopback
//! HTTP; the components call the API in process, as `wisp up`'s do, or over loopback HTTP with
//! `WISP_BENCH_TRANSPORT=http`): ingress → activator (scales the Deployment 0 → 1 through the
//! API) → Deployment and ReplicaSet controllers → scheduler → node agent (compiled-cache hit),
//! whose word that the pod is ready releases the held request in the ingress. Also, for the same Functions once warm, the latency of a
//! request through the ingress and of the same request to the sandbox directly (the
//! ingress's own overhead).
//!
//! N Functions of the same component are created at zero (the first one compiles it, once,
//! untimed); then each gets one request, one after another.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wisp_api::{Container, Function, ObjectMeta, Resource};
use wisp_sandbox::Sandbox as _;

use crate::cluster::Cluster;
use crate::progress;
use crate::report::Latencies;

#[derive(clap::Args, Debug)]
pub struct ColdStartArgs {
    /// Functions, each started once from zero.
    #[arg(long, env = "WISP_BENCH_FUNCTIONS", default_value_t = 100)]
    pub functions: usize,
    /// Warm requests per path for the overhead comparison.
    #[arg(long, env = "WISP_BENCH_WARM", default_value_t = 5000)]
    pub warm: usize,
    /// Quiet time between two cold starts, in milliseconds.
    #[arg(long, env = "WISP_BENCH_GAP_MS", default_value_t = 150)]
    pub gap_ms: u64,
    /// Also report when each step of the chain shows in the API, seen by an observer that
    /// watches Deployments, ReplicaSets and pods in this process. Its three watches decode
    /// every event on the same cores as the chain, so it slows what it measures: off for the
    /// headline figures.
    #[arg(long, env = "WISP_BENCH_STEPS")]
    pub steps: bool,
}

fn function(name: &str, digest: &str) -> Function {
    let mut f = Function::new(ObjectMeta::namespaced("default", name));
    f.spec.scaling.min_scale = 0;
    f.spec.scaling.max_scale = 1;
    f.spec.scaling.scale_to_zero_after = "10m".into();
    f.spec.template.spec.containers = vec![Container {
        name: "hello".into(),
        wasm: Some(digest.into()),
        ..Container::default()
    }];
    f
}

pub async fn run(args: &ColdStartArgs) -> anyhow::Result<String> {
    let component = wisp_testkit::guests::path("hello").map_err(anyhow::Error::msg)?;
    let bytes = std::fs::read(&component)?;
    let cluster = Cluster::start("bench-node", None).await?;
    let (client, ingress, wasm) = (
        cluster.client.clone(),
        cluster.ingress.clone(),
        cluster.wasm.clone(),
    );
    let digest = client.put_blob(Bytes::from(bytes)).await?;
    let functions = client.api::<Function>(Some("default"));
    progress("warm-up function (compiles the component)");
    functions.create(&function("warmup", &digest)).await?;
    let host = |name: &str| format!("{name}.default.localhost");
    cluster.wait_routed("warmup").await?;
    let (code, _, first) = cluster.get(&host("warmup")).await?;
    anyhow::ensure!(code == 200, "warm-up answered {code}");

    progress(&format!("{} functions at zero", args.functions));
    for i in 0..args.functions {
        functions.create(&function(&format!("fn-{i}"), &digest)).await?;
    }
    for i in 0..args.functions {
        cluster.wait_routed(&format!("fn-{i}")).await?;
    }
    progress("one cold request each");
    let timeline = args.steps.then(|| Timeline::watch(&client));
    // Let the observers' watches connect before the first request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut cold = Vec::with_capacity(args.functions);
    let mut window_cpu = Vec::with_capacity(args.functions);
    let cpu_before = process_cpu();
    let mut stages: Vec<Vec<Duration>> = vec![Vec::new(); STAGES.len()];
    for i in 0..args.functions {
        let name = format!("fn-{i}");
        let ran_before = threads_ran();
        let sent = Instant::now();
        let (code, was_cold, t) = cluster.get(&host(&name)).await?;
        if let (Some(after), Some(before)) = (threads_ran(), ran_before) {
            window_cpu.push(after.saturating_sub(before));
        }
        // Each cold start on an otherwise quiet cluster: the writes that follow one (pod
        // and Endpoints status, the controllers' status updates) settle before the next
        // request, and reach the observers.
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
        let seen = timeline.as_ref().map(|t| t.stages(&name)).unwrap_or_default();
        for (k, at) in seen.into_iter().enumerate() {
            if let Some(at) = at {
                stages[k].push(at.saturating_duration_since(sent));
            }
        }
        anyhow::ensure!(
            code == 200 && was_cold,
            "{name}: answered {code}, cold {was_cold}"
        );
        cold.push(t);
    }
    let cpu_per_start = process_cpu().zip(cpu_before).map(|(after, before)| {
        after.saturating_sub(before) / u32::try_from(args.functions.max(1)).unwrap_or(1)
    });

    progress(&format!(
        "{} warm requests through the ingress and to the sandbox",
        args.warm
    ));
    let mut via_ingress = Vec::with_capacity(args.warm);
    let mut direct = Vec::with_capacity(args.warm);
    let pod_id = wasm
        .list()
        .await?
        .into_iter()
        .find(|s| {
            s.labels
                .get(wisp_sandbox::LABEL_POD)
                .is_some_and(|p| p.starts_with("fn-0-"))
        })
        .map(|s| s.id)
        .context("fn-0's sandbox")?;
    for _ in 0..args.warm {
        let t = Instant::now();
        let resp = ingress
            .handle(
                http::Request::get("http://fn-0.default.localhost/")
                    .header(http::header::HOST, host("fn-0"))
                    .body(Empty::<Bytes>::new())?,
            )
            .await;
        anyhow::ensure!(resp.status() == 200, "warm request answered {}", resp.status());
        resp.into_body()
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        via_ingress.push(t.elapsed());
        let t = Instant::now();
        let resp = wasm
            .handle(
                &pod_id,
                http::Request::get("http://localhost/").body(Empty::<Bytes>::new())?,
            )
            .await?;
        resp.into_body().collect().await?;
        direct.push(t.elapsed());
    }
    let observed = timeline.is_some();
    if let Some(t) = timeline {
        t.stop();
    }
    cluster.stop().await;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "first request of the warm-up function (compiles the component): {:.1} ms\n",
        first.as_secs_f64() * 1000.0
    );
    let _ = writeln!(out, "| what | n | p50 | p90 | p99 | max |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let ms =
        |d: Option<Duration>| d.map_or_else(|| "—".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1000.0));
    let us =
        |d: Option<Duration>| d.map_or_else(|| "—".into(), |d| format!("{:.1} µs", d.as_secs_f64() * 1e6));
    for (what, all, fmt) in [
        (
            "cold start: request → first byte, HTTP through the ingress",
            cold,
            &ms as &dyn Fn(Option<Duration>) -> String,
        ),
        (
            "warm, in process: `Ingress::handle` (route, balance, call)",
            via_ingress,
            &us,
        ),
        ("warm, in process: `WasmSandbox::handle` directly", direct, &us),
    ] {
        let cells = Latencies::new(all).cells(&[50.0, 90.0, 99.0], true, fmt);
        let _ = writeln!(out, "| {what} | {cells} |");
    }
    if let Some(p50) = Latencies::new(window_cpu).percentile(50.0) {
        let _ = writeln!(
            out,
            "\nCPU the process's threads used while a cold request was answered (sent to body \
             read, the /proc scan included; {} × the cold start's time would be every core \
             busy throughout), p50: {:.2} ms",
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            p50.as_secs_f64() * 1000.0
        );
    }
    if let Some(cpu) = cpu_per_start {
        let _ = writeln!(
            out,
            "\nCPU of the whole process (user + system, both cores) per cold start, the {} ms \
             that follow each included: {:.2} ms",
            args.gap_ms,
            cpu.as_secs_f64() * 1000.0
        );
    }
    if !observed {
        let _ = writeln!(
            out,
            "\n(`--steps` adds when each step of the chain shows in the API.)"
        );
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "\nWhere a cold start's time goes: when an observer watching the API (a separate watch \
         client in this process, which slows the chain a little) saw each step, from the \
         request being sent:\n"
    );
    let _ = writeln!(out, "| step seen | n | p50 | p90 | p99 |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    for (what, all) in STAGES.iter().zip(stages) {
        let cells = Latencies::new(all).cells(&[50.0, 90.0, 99.0], false, &ms);
        let _ = writeln!(out, "| {what} | {cells} |");
    }
    Ok(out)
}

/// The steps of a cold start as the API shows them, in chain order.
const STAGES: [&str; 5] = [
    "Deployment scaled to 1 (activator)",
    "ReplicaSet scaled to 1 (Deployment controller)",
    "pod created (ReplicaSet controller)",
    "pod bound to the node (scheduler)",
    "pod Ready (node agent)",
];

/// Watches Deployments, ReplicaSets and pods of `default` and stamps the first time each
/// step of [`STAGES`] shows for an object whose name starts with a Function's.
struct Timeline {
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, usize), Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Timeline {
    fn watch(client: &wisp_client::Client) -> Self {
        use wisp_api::{Deployment, Pod, ReplicaSet};
        use wisp_client::{WatchParams, WatcherEvent};
        let seen = std::sync::Arc::default();
        let stamp =
            |seen: &std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, usize), Instant>>>,
             name: &str,
             stage: usize| {
                let now = Instant::now();
                if let Ok(mut m) = seen.lock() {
                    m.entry((name.to_owned(), stage)).or_insert(now);
                }
            };
        let mut tasks = Vec::new();
        macro_rules! observe {
            ($kind:ty, |$o:ident| $stages:expr) => {{
                let seen = std::sync::Arc::clone(&seen);
                let mut w = client
                    .api::<$kind>(Some("default"))
                    .watcher(WatchParams::default());
                tasks.push(tokio::spawn(async move {
                    while let Ok(ev) = w.next().await {
                        let WatcherEvent::Applied($o) = ev else {
                            continue;
                        };
                        let name = $o.metadata.name.clone();
                        for stage in $stages {
                            stamp(&seen, &name, stage);
                        }
                    }
                }));
            }};
        }
        observe!(Deployment, |d| if d.spec.replicas > 0 { vec![0] } else { vec![] });
        observe!(ReplicaSet, |r| if r.spec.replicas > 0 { vec![1] } else { vec![] });
        observe!(Pod, |p| {
            let mut s = vec![2];
            if p.spec.node_name.is_some() {
                s.push(3);
            }
            if p.is_ready() {
                s.push(4);
            }
            s
        });
        Self { seen, tasks }
    }

    /// When each step was first seen for Function `name` (its objects are `name` or
    /// `name-…`).
    fn stages(&self, name: &str) -> [Option<Instant>; STAGES.len()] {
        let mut out = [None; STAGES.len()];
        let prefix = format!("{name}-");
        if let Ok(m) = self.seen.lock() {
            for ((object, stage), at) in m.iter() {
                if object == name || object.starts_with(&prefix) {
                    let slot = &mut out[*stage];
                    *slot = Some(slot.map_or(*at, |t: Instant| t.min(*at)));
                }
            }
        }
        out
    }

    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Time this process's threads have run on a CPU so far, to the nanosecond
/// (`/proc/self/task/*/schedstat`), where there are such files.
fn threads_ran() -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// User + system CPU time of this process so far (`/proc/self/stat`, in clock ticks of
/// 1/100 s), where there is such a file.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces) and its closing parenthesis: state is
    // the first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
