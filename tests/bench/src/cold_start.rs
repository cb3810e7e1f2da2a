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
use tokio_util::sync::CancellationToken;
use wisp_api::{Container, Function, ObjectMeta, Resource};
use wisp_apiserver::testutil::TestServer;
use wisp_client::Client;
use wisp_sandbox::Sandbox as _;

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

type Http =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn get(http: &Http, url: &str, host: &str) -> anyhow::Result<(u16, bool, Duration)> {
    let t = Instant::now();
    let req = http::Request::get(url)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let resp = http.request(req).await?;
    let first_byte = t.elapsed();
    let code = resp.status().as_u16();
    let cold = resp.headers().contains_key(wisp_ingress::COLD_START_HEADER);
    resp.into_body().collect().await?;
    Ok((code, cold, first_byte))
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

#[allow(clippy::too_many_lines)]
pub async fn run(args: &ColdStartArgs) -> anyhow::Result<String> {
    let component = wisp_sandbox_wasm::guests::path("hello").map_err(anyhow::Error::msg)?;
    let bytes = std::fs::read(&component)?;
    let server = TestServer::start().await?;
    let client = Client::new(&server.url, &server.token);
    let shutdown = CancellationToken::new();
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ingress_url = format!("http://{}", listener.local_addr()?);
    let mut config = wisp_node::AgentConfig::new("bench-node", dir.path());
    config.ingress_url = Some(ingress_url.clone());
    config.capacity.insert(
        "pods".into(),
        wisp_api::Quantity::from_units(100_000, wisp_api::QuantityFormat::DecimalSI),
    );
    let agent = wisp_node::Agent::new(client.clone(), config)?;
    let wasm = agent.runtimes().wasm.clone().context("wasm runtime")?;
    let ingress = wisp_ingress::Ingress::new(
        client.clone(),
        wisp_ingress::IngressConfig::new("bench-node"),
        Some(wasm.clone()),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let s = shutdown.clone();
    tasks.spawn(async move {
        let _ = Box::pin(agent.run(s)).await;
    });
    let (i, s) = (ingress.clone(), shutdown.clone());
    tasks.spawn(async move { i.sync(s).await });
    let (i, s) = (ingress.clone(), shutdown.clone());
    tasks.spawn(wisp_ingress::serve(i, listener, s));
    let (c, s) = (client.clone(), shutdown.clone());
    tasks.spawn(async move {
        let _ = wisp_scheduler::run(c, wisp_scheduler::SchedulerConfig::default(), s).await;
    });
    let (c, s) = (client.clone(), shutdown.clone());
    tasks.spawn(wisp_controllers::run(c, wisp_controllers::Config::default(), s));

    let digest = client.put_blob(Bytes::from(bytes)).await?;
    let http: Http =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let functions = client.api::<Function>(Some("default"));
    progress("warm-up function (compiles the component)");
    functions.create(&function("warmup", &digest)).await?;
    let host = |name: &str| format!("{name}.default.localhost");
    wait_routed(&http, &ingress_url, "warmup").await?;
    let (code, _, first) = get(&http, &format!("{ingress_url}/"), &host("warmup")).await?;
    anyhow::ensure!(code == 200, "warm-up answered {code}");

    progress(&format!("{} functions at zero", args.functions));
    for i in 0..args.functions {
        functions.create(&function(&format!("fn-{i}"), &digest)).await?;
    }
    for i in 0..args.functions {
        wait_routed(&http, &ingress_url, &format!("fn-{i}")).await?;
    }
    progress("one cold request each");
    let mut cold = Vec::with_capacity(args.functions);
    for i in 0..args.functions {
        let name = format!("fn-{i}");
        let (code, was_cold, t) = get(&http, &format!("{ingress_url}/"), &host(&name)).await?;
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
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    drop(server);

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

/// Waits until the ingress knows `name`'s route (its Service shows in the stats).
async fn wait_routed(http: &Http, ingress: &str, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let needle = format!("\"name\":\"{name}\"");
    loop {
        let req = http::Request::get(format!("{ingress}/.wisp/stats")).body(Empty::<Bytes>::new())?;
        let body = http.request(req).await?.into_body().collect().await?.to_bytes();
        if String::from_utf8_lossy(&body).contains(&needle) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name}: no route in the ingress after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
