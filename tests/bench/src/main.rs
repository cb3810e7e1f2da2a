//! wisp-bench: Wisp's benchmark harness. It prints figures (a Markdown table for
//! BENCHMARKS.md); it never passes or fails on timing.
//!
//! `wisp-bench store-api` measures the control plane's store on both backends (embedded
//! redb and a real etcd started on loopback ports) at two levels: the `Store` trait called
//! directly, and the HTTP API server driven through `wisp-client`.

mod api_level;
mod cluster;
mod cold_start;
mod docker_cold_start;
mod drive;
mod fanout;
mod forward;
mod https;
mod pod_start;
mod report;
mod scenario;
mod store_level;

use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use wisp_store::{EmbeddedStore, Store};

use crate::report::Row;
use crate::scenario::Sizes;

#[derive(Parser, Debug)]
#[command(name = "wisp-bench", version, about = "Wisp's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store and API throughput and latency, and watch delivery, on embedded and etcd.
    StoreApi(StoreApiArgs),
    /// Wasm pod create → Running and ready, seen through a watch (API + scheduler + agent).
    PodStart(pod_start::PodStartArgs),
    /// A Function at zero: request → first byte through the whole chain; ingress overhead.
    ColdStart(cold_start::ColdStartArgs),
    /// Scale-from-zero of a Docker-backed Function through the ingress vs raw `docker run`.
    DockerColdStart(docker_cold_start::DockerColdStartArgs),
    /// What one write costs a whole `wisp up` process (every watch of its kind), per binary.
    WriteFanout(fanout::FanoutArgs),
    /// Warm throughput through a node's HTTPS listener beside its HTTP one.
    Https(https::AlternatingArgs),
    /// Warm throughput to a pod on another node (forwarded over TLS) beside its own node's.
    Forward(https::AlternatingArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Embedded,
    Etcd,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Etcd => "etcd",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Level {
    /// The `Store` trait, called directly.
    Store,
    /// The HTTP API server through `wisp-client`.
    Api,
}

#[derive(clap::Args, Debug)]
struct StoreApiArgs {
    /// Operations per create or update scenario, split between its clients.
    #[arg(long, env = "WISP_BENCH_OPS", default_value_t = 10_000)]
    ops: usize,
    /// Time cap of one create or update scenario, in seconds (it stops early when reached).
    #[arg(long, env = "WISP_BENCH_DURATION", default_value_t = 5.0)]
    duration: f64,
    /// Concurrent client counts for creates and updates.
    #[arg(long, env = "WISP_BENCH_CLIENTS", value_delimiter = ',', default_values_t = [1, 64])]
    clients: Vec<usize>,
    /// Watchers in the watch delivery scenario.
    #[arg(long, env = "WISP_BENCH_WATCHERS", default_value_t = 100)]
    watchers: usize,
    /// Writes the watchers must see.
    #[arg(long, env = "WISP_BENCH_WATCH_WRITES", default_value_t = 200)]
    watch_writes: usize,
    /// Seconds the watched writes are spread over.
    #[arg(long, env = "WISP_BENCH_WATCH_SECS", default_value_t = 2.0)]
    watch_secs: f64,
    /// Backends to measure.
    #[arg(long, env = "WISP_BENCH_BACKENDS", value_enum, value_delimiter = ',', default_values_t = [Backend::Embedded, Backend::Etcd])]
    backends: Vec<Backend>,
    /// Levels to measure.
    #[arg(long, env = "WISP_BENCH_LEVELS", value_enum, value_delimiter = ',', default_values_t = [Level::Store, Level::Api])]
    levels: Vec<Level>,
}

fn started() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A progress line on stderr (stdout carries only the report).
pub(crate) fn progress(msg: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "[{:6.1}s] {msg}",
        started().elapsed().as_secs_f64()
    );
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{what} must be a positive number of seconds, not {s}"))
}

impl StoreApiArgs {
    fn sizes(&self) -> anyhow::Result<Sizes> {
        anyhow::ensure!(self.ops > 0, "--ops must be at least 1");
        anyhow::ensure!(
            !self.clients.is_empty() && self.clients.iter().all(|&c| c > 0),
            "--clients must be positive"
        );
        anyhow::ensure!(
            self.watchers > 0 && self.watch_writes > 0,
            "--watchers and --watch-writes must be at least 1"
        );
        Ok(Sizes {
            ops: self.ops,
            cap: seconds(self.duration, "--duration")?,
            clients: self.clients.clone(),
            watchers: self.watchers,
            watch_writes: self.watch_writes,
            watch_span: seconds(self.watch_secs, "--watch-secs")?,
        })
    }
}

/// A fresh store of one backend; the guard keeps etcd running until dropped.
struct Opened {
    store: Arc<dyn Store>,
    _guard: Option<Box<dyn Send>>,
}

#[cfg(feature = "etcd")]
async fn open_etcd() -> anyhow::Result<Opened> {
    let server = tokio::task::spawn_blocking(wisp_store::testutil::EtcdServer::start)
        .await?
        .map_err(anyhow::Error::msg)
        .context("starting etcd")?;
    let store = wisp_store::etcd::EtcdStore::connect(std::slice::from_ref(&server.endpoint))
        .await
        .context("connecting to etcd")?;
    Ok(Opened {
        store: Arc::new(store),
        _guard: Some(Box::new(server)),
    })
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd() -> anyhow::Result<Opened> {
    anyhow::bail!("built without the `etcd` feature")
}

async fn open(backend: Backend, dir: &std::path::Path) -> anyhow::Result<Opened> {
    match backend {
        Backend::Embedded => Ok(Opened {
            store: Arc::new(EmbeddedStore::open(&dir.join("store"), Default::default())?),
            _guard: None,
        }),
        Backend::Etcd => open_etcd().await,
    }
}

async fn run_level(backend: Backend, level: Level, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let opened = open(backend, dir.path()).await?;
    progress(&format!("{}/{level:?}: store ready", backend.name()));
    let rows = match level {
        Level::Store => Box::pin(store_level::run(backend.name(), opened.store.clone(), sizes)).await?,
        Level::Api => {
            Box::pin(api_level::run(
                backend.name(),
                opened.store.clone(),
                dir.path(),
                sizes,
            ))
            .await?
        }
    };
    drop(opened);
    Ok(rows)
}

fn find<'a>(rows: &'a [Row], backend: &str, like: &Row) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.backend == backend
            && r.level == like.level
            && r.scenario == like.scenario
            && r.clients == like.clients
    })
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "—".into(), |d| format!("{:.2}", d.as_secs_f64() * 1000.0))
}

/// Embedded against etcd, row by row.
fn ratios(rows: &[Row]) -> String {
    let mut out = String::from(
        "| level | scenario | clients | embedded ops/s | etcd ops/s | embedded ÷ etcd | embedded p99 ms | etcd p99 ms | etcd p99 ÷ embedded p99 |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for e in rows.iter().filter(|r| r.backend == "embedded") {
        let Some(d) = find(rows, "etcd", e) else { continue };
        let rate = |r: &Row| r.rate.map_or_else(|| "—".into(), |v| format!("{v:.0}"));
        let throughput = match (e.rate, d.rate) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
            _ => "—".into(),
        };
        let (ep, dp) = (e.latencies.percentile(99.0), d.latencies.percentile(99.0));
        let p99 = match (ep, dp) {
            (Some(a), Some(b)) if !a.is_zero() => format!("{:.1}×", b.as_secs_f64() / a.as_secs_f64()),
            _ => "—".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {throughput} | {} | {} | {p99} |\n",
            e.level,
            e.scenario,
            e.clients,
            rate(e),
            rate(d),
            ms(ep),
            ms(dp)
        ));
    }
    out
}

/// The goals, stated as met or missed (informational: nothing fails on timing).
fn goals(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows.iter().filter(|r| r.backend == "embedded") {
        if r.clients == "64"
            && let Some(rate) = r.rate
        {
            let verdict = if rate >= 10_000.0 { "met" } else { "missed" };
            out.push_str(&format!(
                "- embedded {} {}, 64 clients: {rate:.0} writes/s — goal ≥ 10,000/s {verdict}\n",
                r.level, r.scenario
            ));
        }
        if r.scenario.contains("watch delivery")
            && let Some(p99) = r.latencies.percentile(99.0)
        {
            let verdict = if p99 <= Duration::from_millis(5) && r.done == r.wanted {
                "met"
            } else {
                "missed"
            };
            out.push_str(&format!(
                "- embedded {} {}: p99 {} ms over {}/{} deliveries — goal ≤ 5 ms {verdict}\n",
                r.level,
                r.scenario,
                ms(Some(p99)),
                r.done,
                r.wanted
            ));
        }
    }
    for r in rows
        .iter()
        .filter(|r| r.backend == "etcd" && r.clients == "1" && r.level == "store")
    {
        if let Some(rate) = r.rate {
            out.push_str(&format!(
                "- etcd store {}, 1 client: {rate:.0} ops/s (etcd's published single-client figure: 583 puts/s)\n",
                r.scenario
            ));
        }
    }
    out
}

async fn store_api(args: &StoreApiArgs) -> anyhow::Result<()> {
    let sizes = args.sizes()?;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for &backend in &args.backends {
        if backend == Backend::Etcd && !cfg!(feature = "etcd") {
            progress("etcd skipped: wisp-bench was built without `--features etcd`");
            skipped.push("etcd skipped: wisp-bench was built without `--features etcd`".to_owned());
            continue;
        }
        for &level in &args.levels {
            match run_level(backend, level, &sizes).await {
                Ok(r) => rows.extend(r),
                Err(e) => {
                    progress(&format!("{}/{level:?} failed: {e:#}", backend.name()));
                    skipped.push(format!("{}/{level:?} failed: {e:#}", backend.name()));
                }
            }
        }
    }

    let mut out = String::new();
    out.push_str("## wisp-bench store-api\n\n");
    out.push_str(&report::machine_facts(&wisp_store::testutil::etcd_binary()));
    out.push_str(&format!(
        "- sizes: {} ops per create/update scenario (split between clients, capped at {:.1} s), \
         clients {:?}, {} watchers × {} writes over {:.1} s\n\n",
        sizes.ops,
        sizes.cap.as_secs_f64(),
        sizes.clients,
        sizes.watchers,
        sizes.watch_writes,
        sizes.watch_span.as_secs_f64()
    ));
    out.push_str(&report::table(&rows));
    for s in &skipped {
        out.push_str(&format!("\n{s}\n"));
    }
    out.push_str("\n### embedded vs etcd\n\n");
    out.push_str(&ratios(&rows));
    out.push_str("\n### goals (informational)\n\n");
    out.push_str(&goals(&rows));
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

/// The same allocator as the `wisp` binary: the cluster this harness starts runs in process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    started();
    // WISP_BENCH_LOG=<filter> prints the components' logs (e.g. `wisp_apiserver=debug` for a
    // line per API request), with microsecond timestamps, to find where time goes; with
    // WISP_BENCH_SPANS set, also a line when each span closes, with its busy and idle time.
    if let Ok(filter) = std::env::var("WISP_BENCH_LOG") {
        let spans = if std::env::var_os("WISP_BENCH_SPANS").is_some() {
            tracing_subscriber::fmt::format::FmtSpan::CLOSE
        } else {
            tracing_subscriber::fmt::format::FmtSpan::NONE
        };
        tracing_subscriber::fmt()
            .with_span_events(spans)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::StoreApi(args) => store_api(args).await,
        Command::ColdStart(args) => match cold_start::run(args).await {
            Ok(report) => std::io::stdout()
                .write_all(report.as_bytes())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        },
        Command::DockerColdStart(args) => match docker_cold_start::run(args).await {
            Ok(report) => std::io::stdout()
                .write_all(report.as_bytes())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        },
        Command::WriteFanout(args) => match fanout::run(args).await {
            Ok(report) => std::io::stdout()
                .write_all(report.as_bytes())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        },
        Command::Forward(args) => match forward::run(args).await {
            Ok(report) => std::io::stdout()
                .write_all(report.as_bytes())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        },
        Command::Https(args) => match https::run(args).await {
            Ok(report) => std::io::stdout()
                .write_all(report.as_bytes())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        },
        Command::PodStart(args) => match pod_start::run(args).await {
            Ok(report) => std::io::stdout()
                .write_all(report.as_bytes())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
