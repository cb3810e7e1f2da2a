//! `cold-start`: time from an HTTP request to the first byte of its response for a Function
//! at zero, through the whole chain of `wisp up` in one process over loopback HTTP: ingress →
//! activator (scales the Deployment 0 → 1 through the API) → Deployment and ReplicaSet
//! controllers → scheduler → node agent (compiled-cache hit) → Endpoints controller →
//! ingress releases the request. Also, for the same Functions once warm, the latency of a
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
    let component = wisp_sandbox_wasm::guests::path("hello").map_err(anyhow::Error::msg)?;
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
    let mut cold = Vec::with_capacity(args.functions);
    for i in 0..args.functions {
        let name = format!("fn-{i}");
        let (code, was_cold, t) = cluster.get(&host(&name)).await?;
        anyhow::ensure!(
            code == 200 && was_cold,
            "{name}: answered {code}, cold {was_cold}"
        );
        cold.push(t);
    }

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
        let l = Latencies::new(all);
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {} | {} |",
            l.len(),
            fmt(l.percentile(50.0)),
            fmt(l.percentile(90.0)),
            fmt(l.percentile(99.0)),
            fmt(l.max())
        );
    }
    Ok(out)
}
