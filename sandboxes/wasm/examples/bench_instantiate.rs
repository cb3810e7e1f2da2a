//! Per-request cost of a `wasi:http/proxy` sandbox, in process: instantiation of the hello
//! component (p50/p90/p99/max over N sequential instantiations, through
//! [`WasmSandbox::instantiate_only`]) and full requests through [`WasmSandbox::handle`]
//! (`GET /`, body collected and checked), with the pooling allocator and with on-demand
//! allocation, all in one run. Prints a Markdown table on stdout.
//!
//! ```text
//! tests/build-guests.sh   # once: builds examples/target/…/hello.wasm
//! cargo run --release -p wisp-sandbox-wasm --example bench_instantiate [-- -n 20000]
//! ```
//!
//! `-n N` / `WISP_BENCH_ITERATIONS` sets the samples per row (default 20,000; a tenth of
//! that, at least 100, warms up first); `--only TEXT` runs only the engine set-ups whose name
//! contains TEXT (for profiling one); `WISP_GUESTS_DIR` points at another guests directory.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wisp_sandbox::{Kind, Sandbox, SandboxId, SandboxSpec, Source};
use wisp_sandbox_wasm::{WasmConfig, WasmSandbox};

const DEFAULT_ITERATIONS: usize = 20_000;
const HELLO: &str = "Hello from Wisp";

/// One engine set-up to measure.
struct Variant {
    name: &'static str,
    config: fn(&mut WasmConfig),
}

/// The default set-up first, then alternatives to compare it with.
const VARIANTS: &[Variant] = &[
    Variant {
        name: "pooling (default config: pagemap_scan on)",
        config: |_| {},
    },
    Variant {
        name: "pooling, pagemap_scan off (memset; the default before 2026-12-06)",
        config: |c| c.pagemap_scan = false,
    },
    Variant {
        name: "pooling, pagemap_scan off, keep_resident = 1 MiB (before 2026-11-26)",
        config: |c| {
            c.pagemap_scan = false;
            c.keep_resident = 1 << 20;
        },
    },
    Variant {
        name: "pooling, keep_resident = 0",
        config: |c| c.keep_resident = 0,
    },
    Variant {
        name: "on-demand",
        config: |c| c.pooling = false,
    },
];

fn main() -> anyhow::Result<()> {
    let Args { iterations, only } = args()?;
    let warmup = (iterations / 10).max(100);
    let hello = guest("hello")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let workers = rt.metrics().num_workers();
    let mut rows = Vec::new();
    for variant in VARIANTS {
        if only.as_ref().is_some_and(|o| !variant.name.contains(o.as_str())) {
            continue;
        }
        eprintln!(
            "{}: {iterations} samples per row after {warmup} warm-up",
            variant.name
        );
        // On a worker thread, as an ingress's connection task is: `handle` spawns the guest's
        // task there too (no hand-off from the blocked main thread on every request).
        let run = rt.spawn(bench(variant, hello.clone(), iterations, warmup));
        rows.extend(rt.block_on(run)??);
    }

    println!(
        "hello component ({}), {iterations} sequential samples per row, tokio multi-thread \
         runtime with {workers} workers, PAGEMAP_SCAN {}available, times in µs\n",
        hello.display(),
        if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
            ""
        } else {
            "not "
        },
    );
    println!("| allocator | what | p50 | p90 | p99 | max | mean |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.allocator,
            r.what,
            us(r.stats.p50),
            us(r.stats.p90),
            us(r.stats.p99),
            us(r.stats.max),
            us(r.stats.mean)
        );
    }
    Ok(())
}

struct Row {
    allocator: String,
    what: &'static str,
    stats: Stats,
}

async fn bench(
    variant: &'static Variant,
    hello: PathBuf,
    iterations: usize,
    warmup: usize,
) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let mut config = WasmConfig::new(dir.path().join("cache"));
    (variant.config)(&mut config);
    let wanted_pooling = config.pooling;
    let sandbox = WasmSandbox::new(config, None).context("wasm runtime")?;
    let allocator = match (wanted_pooling, sandbox.pooling()) {
        (true, true) => format!("{} (granted)", variant.name),
        (true, false) => format!("{} (NOT granted: on-demand)", variant.name),
        (false, _) => variant.name.to_owned(),
    };
    eprintln!("  allocator: {allocator}");

    let spec = spec(&hello);
    sandbox.prepare(&spec).await.context("prepare")?;
    sandbox.create(&spec).await.context("create")?;
    sandbox.start(&spec.id).await.context("start")?;

    for _ in 0..warmup {
        sandbox.instantiate_only(&spec.id).await?;
    }
    let mut instantiate = Vec::with_capacity(iterations);
    let mut teardown = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = sandbox.instantiate_only(&spec.id).await?;
        instantiate.push(t.instantiate);
        teardown.push(t.teardown);
    }

    for _ in 0..warmup {
        request(&sandbox, &spec.id).await?;
    }
    let mut requests = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        request(&sandbox, &spec.id).await?;
        requests.push(started.elapsed());
    }

    sandbox
        .stop(&spec.id, Duration::from_secs(5))
        .await
        .context("stop")?;
    Ok(vec![
        Row {
            allocator: allocator.clone(),
            what: "instantiate (store + instance)",
            stats: Stats::of(instantiate),
        },
        Row {
            allocator: allocator.clone(),
            what: "teardown (drop the store)",
            stats: Stats::of(teardown),
        },
        Row {
            allocator,
            what: "request via `handle` (GET /, body collected)",
            stats: Stats::of(requests),
        },
    ])
}

async fn request(sandbox: &WasmSandbox, id: &SandboxId) -> anyhow::Result<()> {
    let req = hyper::Request::get("http://fn.local/").body(Empty::<Bytes>::new())?;
    let resp = sandbox.handle(id, req).await?;
    ensure!(resp.status() == 200, "status {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    ensure!(body == HELLO, "unexpected body {body:?}");
    Ok(())
}

struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

impl Stats {
    /// Nearest-rank percentiles.
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let n = samples.len();
        let rank = |p: f64| {
            // n is at most a few million: exact in f64.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let r = (p * n as f64).ceil() as usize;
            samples[r.clamp(1, n) - 1]
        };
        let total: Duration = samples.iter().sum();
        Self {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: samples[n - 1],
            mean: total / u32::try_from(n).unwrap_or(u32::MAX),
        }
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

struct Args {
    iterations: usize,
    /// Only the variants whose name contains this.
    only: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut only = None;
    let mut n = match std::env::var("WISP_BENCH_ITERATIONS") {
        Ok(v) => Some(v.parse().context("WISP_BENCH_ITERATIONS")?),
        Err(_) => None,
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "-n" | "--iterations" => {
                let v = args.next().context("-n needs a number")?;
                n = Some(v.parse().with_context(|| format!("-n {v}"))?);
            }
            "--only" => only = Some(args.next().context("--only needs a variant name")?),
            "-h" | "--help" => {
                println!(
                    "usage: bench_instantiate [-n ITERATIONS] [--only VARIANT-SUBSTRING]\n\
                     -n: or WISP_BENCH_ITERATIONS, default {DEFAULT_ITERATIONS}; \
                     WISP_GUESTS_DIR: where hello.wasm is"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let iterations = n.unwrap_or(DEFAULT_ITERATIONS);
    ensure!(iterations > 0, "at least one iteration");
    Ok(Args { iterations, only })
}

fn guest(name: &str) -> anyhow::Result<PathBuf> {
    let path = wisp_testkit::guests::path(name).map_err(anyhow::Error::msg)?;
    Ok(path.canonicalize()?)
}

fn spec(hello: &std::path::Path) -> SandboxSpec {
    SandboxSpec::new(
        SandboxId::new("uid-bench-hello", "main"),
        Source::WasmFile(hello.to_owned()),
        Kind::Http,
    )
}
