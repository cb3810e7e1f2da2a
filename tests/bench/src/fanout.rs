//! `wisp-bench write-fanout`: what one write costs a whole `wisp up` process — the API server
//! decoding, filtering and sending it to every watch of its kind, and every in-process
//! component (scheduler, controllers, node agent, ingress) taking the event in — as the
//! process's CPU time (user + system, `/proc/<pid>/stat`) per write. One or two `wisp`
//! binaries (the code before a change as `--baseline`), alternating round by round in the
//! same run; the process's idle CPU (leases, bookmarks, the autoscaler's tick), measured
//! just before, is taken out.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wisp_api::{ConfigMap, Pod, Resource, Service};
use wisp_client::Client;

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    /// The `wisp` binary to measure.
    #[arg(long, env = "WISP_BIN")]
    wisp: PathBuf,
    /// A second binary (the code before a change), measured in the same run.
    #[arg(long, env = "WISP_BENCH_BASELINE")]
    baseline: Option<PathBuf>,
    /// Writes per kind and round.
    #[arg(long, default_value_t = 2000)]
    writes: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Rounds (every binary once per round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// One `wisp up` on a temporary directory; killed on drop.
pub(crate) struct Up {
    child: Child,
    pub(crate) url: String,
    pub(crate) token: String,
    /// The cluster CA the API server's certificate chains to.
    pub(crate) ca: Option<String>,
    drain: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Up {
    fn start(bin: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin, "127.0.0.1:0")
    }

    /// `wisp up` with its HTTPS ingress on `tls_listen`.
    pub(crate) fn start_with(bin: &Path, tls_listen: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config");
        let mut child = Command::new(bin)
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--ingress-listen",
                "127.0.0.1:0",
                "--ingress-tls-listen",
                tls_listen,
            ])
            .args(["--node-name", "bench", "--docker", "false", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("WISP_CONFIG", &config)
            .env("WISP_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line)?;
        // Keep reading what it prints (a closed pipe would fail its next line); the thread
        // ends when the process does and is joined on drop.
        let drain = std::thread::spawn(move || {
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("https://") || w.starts_with("http://"))
            .with_context(|| format!("unexpected first line from wisp: {line:?}"))?
            .to_owned();
        let config = wisp_client::Config::load(&config)?;
        Ok(Self {
            child,
            url,
            token: config.token,
            ca: config.ca,
            drain: Some(drain),
            _dir: dir,
        })
    }

    /// Its data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// The process's CPU time so far (user + system).
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad /proc stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
        // utime and stime are fields 14 and 15 (1-based), 12 and 13 after the ')'.
        let total = ticks(11)? + ticks(12)?;
        let hz = clock_ticks();
        Ok(Duration::from_micros(total * 1_000_000 / hz))
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Open watches by resource from `/metrics` (a build without the per-resource label reports
/// its total as `all`).
async fn watches(client: &Client) -> anyhow::Result<Vec<(String, u64)>> {
    let resp = client.raw(http::Method::GET, "/metrics", None).await?;
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("wisp_apiserver_watches")) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let n: u64 = value.parse().unwrap_or(0);
        let resource = name
            .split_once("resource=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map_or("all", |(r, _)| r);
        out.push((resource.to_owned(), n));
    }
    Ok(out)
}

/// `writes` unconditional updates of `obj` (a changing annotation) from `clients` writers.
async fn write_loop<T: Resource>(
    client: &Client,
    obj: &T,
    writes: usize,
    clients: usize,
) -> anyhow::Result<()> {
    let per = writes.div_ceil(clients.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients.max(1) {
        let (client, mut obj) = (client.clone(), obj.clone());
        tasks.spawn(async move {
            let api = client.api::<T>(obj.metadata().namespace.as_deref());
            for i in 0..per {
                let meta = obj.metadata_mut();
                meta.resource_version = None;
                meta.annotations.insert("bench/n".into(), format!("{c}-{i}"));
                // An unconditional update can still lose a race with another writer's (409):
                // write it again.
                loop {
                    match api.replace(&obj).await {
                        Err(e) if e.code() == Some(409) => continue,
                        r => break r.map(drop)?,
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

struct Sample {
    binary: String,
    kind: &'static str,
    watches_of_kind: String,
    cpu_per_write_us: f64,
    writes_per_s: f64,
}

async fn measure(label: &str, bin: &Path, args: &FanoutArgs) -> anyhow::Result<Vec<Sample>> {
    let up = Up::start(bin)?;
    let client = Client::with_ca(&up.url, &up.token, up.ca.as_deref())?;
    // Settled: the node registered and every component watching.
    let started = Instant::now();
    loop {
        if client
            .api::<wisp_api::Node>(None)
            .get_opt("bench")
            .await?
            .is_some()
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{label}: the node did not register within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open = watches(&client).await?;
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "wisp.dev/v1", "kind": "ConfigMap",
        "metadata": {"name": "fan", "namespace": "default"}, "data": {"k": "v"}
    }))?;
    // Bound to a node that does not exist: nothing runs it, every Pod watch still sees it.
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "wisp.dev/v1", "kind": "Pod",
        "metadata": {"name": "fan", "namespace": "default", "labels": {"app": "fan"}},
        "spec": {"nodeName": "ghost", "containers": [{"name": "c", "image": "example.invalid/fan:1"}]}
    }))?;
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "wisp.dev/v1", "kind": "Service",
        "metadata": {"name": "fan", "namespace": "default"},
        "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]}
    }))?;
    let cm = client.api::<ConfigMap>(Some("default")).create(&cm).await?;
    let pod = client.api::<Pod>(Some("default")).create(&pod).await?;
    let svc = client.api::<Service>(Some("default")).create(&svc).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = Vec::new();
    for kind in ["configmaps", "pods", "services"] {
        // The process's idle CPU rate, just before.
        let (c0, t0) = (up.cpu()?, Instant::now());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rate = (up.cpu()? - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
        let (c0, t0) = (up.cpu()?, Instant::now());
        match kind {
            "configmaps" => write_loop(&client, &cm, args.writes, args.clients).await?,
            "pods" => write_loop(&client, &pod, args.writes, args.clients).await?,
            _ => write_loop(&client, &svc, args.writes, args.clients).await?,
        }
        let wrote = t0.elapsed();
        // Let the last events reach every watcher.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let spent = (up.cpu()? - c0).as_secs_f64() - idle_rate * t0.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let n = args.writes as f64;
        let of_kind: u64 = open.iter().filter(|(r, _)| r == kind).map(|(_, n)| n).sum();
        let total: u64 = open.iter().map(|(_, n)| n).sum();
        out.push(Sample {
            binary: label.to_owned(),
            kind,
            watches_of_kind: if open.iter().any(|(r, _)| r != "all") {
                format!("{of_kind} (of {total})")
            } else {
                format!("? (of {total})")
            },
            cpu_per_write_us: spent.max(0.0) * 1e6 / n,
            writes_per_s: n / wrote.as_secs_f64(),
        });
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub async fn run(args: &FanoutArgs) -> anyhow::Result<String> {
    let mut bins = vec![("this build".to_owned(), args.wisp.clone())];
    if let Some(b) = &args.baseline {
        bins.push(("baseline".to_owned(), b.clone()));
    }
    let mut samples = Vec::new();
    for round in 0..args.rounds.max(1) {
        // Alternate which binary goes first.
        let order: Vec<_> = if round % 2 == 0 {
            bins.iter().collect()
        } else {
            bins.iter().rev().collect()
        };
        for (label, bin) in order {
            crate::progress(&format!("write fan-out, round {}: {label}", round + 1));
            samples.extend(measure(label, bin, args).await?);
        }
    }
    let mut out = format!(
        "write fan-out: {} unconditional updates per kind from {} writers, {} rounds; \
         CPU of the whole `wisp up` process per write, idle CPU taken out (median)\n\n\
         | binary | kind written | watches of that kind open (of all) | CPU µs / write | writes/s |\n\
         | --- | --- | --- | ---: | ---: |\n",
        args.writes, args.clients, args.rounds
    );
    for (label, _) in &bins {
        for kind in ["configmaps", "pods", "services"] {
            let of: Vec<&Sample> = samples
                .iter()
                .filter(|s| &s.binary == label && s.kind == kind)
                .collect();
            let Some(first) = of.first() else { continue };
            out.push_str(&format!(
                "| {label} | {kind} | {} | {:.0} | {:.0} |\n",
                first.watches_of_kind,
                median(of.iter().map(|s| s.cpu_per_write_us).collect()),
                median(of.iter().map(|s| s.writes_per_s).collect()),
            ));
        }
    }
    Ok(out)
}
