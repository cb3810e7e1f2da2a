//! What this node uses, for `GET /.wisp/usage` on the node's port (read by the API server's
//! metrics API, like the kubelet's summary for metrics-server): the node's own CPU and
//! memory from the OS (`/proc/stat`, `/proc/meminfo`), and each running sandbox's from its
//! runtime ([`wisp_sandbox::Sandbox::usage`]). CPU is a rate: two readings at least half a
//! second and at most ten seconds apart (the previous report's, else one taken a second
//! before).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use wisp_api::usage::{ContainerUsage, NodeReport, NodeUsage, PodUsage};
use wisp_sandbox::{LABEL_CONTAINER, LABEL_NAMESPACE, LABEL_POD, LABEL_POD_UID, SandboxId, State};

use crate::worker::Runtimes;

/// Readings further apart average too long; closer, too noisy.
pub const WINDOW_MIN: Duration = Duration::from_millis(500);
pub const WINDOW_MAX: Duration = Duration::from_secs(10);
/// The window when there is no usable previous reading.
pub const WINDOW_FRESH: Duration = Duration::from_secs(1);
/// `/proc/stat` counts in USER_HZ, 100 a second on Linux.
const NS_PER_TICK: u64 = 10_000_000;

/// Busy CPU time of the whole machine from `/proc/stat` (user, nice, system, irq, softirq,
/// steal; not idle or iowait), in nanoseconds.
pub fn parse_proc_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle).saturating_mul(NS_PER_TICK))
}

/// (in use, total) bytes from `/proc/meminfo`: total less available.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total.saturating_sub(available), total))
}

/// How many CPUs `/proc/stat` lists (`cpu0`, `cpu1`, …): the machine's, as its busy time is.
pub fn proc_stat_cpus(text: &str) -> usize {
    text.lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
}

/// One sandbox read: its runtime, labels, usage, and when.
type SandboxReading = (
    &'static str,
    std::collections::BTreeMap<String, String>,
    wisp_sandbox::Usage,
    Instant,
);

/// One reading of everything, each part stamped when it was read.
struct Reading {
    at: Instant,
    node_busy_ns: u64,
    cpus: usize,
    sandboxes: HashMap<SandboxId, SandboxReading>,
}

async fn read(runtimes: &Runtimes) -> Reading {
    let stat = tokio::fs::read_to_string("/proc/stat").await.unwrap_or_default();
    let at = Instant::now();
    let node_busy_ns = parse_proc_stat(&stat).unwrap_or(0);
    let mut sandboxes = HashMap::new();
    for runtime in runtimes.all() {
        let Ok(list) = runtime.list().await else { continue };
        for s in list {
            if !matches!(s.state, State::Running { .. }) {
                continue;
            }
            if let Ok(u) = runtime.usage(&s.id).await {
                sandboxes.insert(s.id.clone(), (runtime.runtime(), s.labels, u, Instant::now()));
            }
        }
    }
    Reading {
        at,
        node_busy_ns,
        cpus: proc_stat_cpus(&stat),
        sandboxes,
    }
}

/// The node's reports, one at a time: each starts from the reading the last one kept, and
/// within [`WINDOW_MIN`] of it the last report is the answer.
#[derive(Default)]
pub struct Sampler {
    last: tokio::sync::Mutex<Option<(Reading, NodeReport)>>,
}

fn millicores(used_ns: u64, window: Duration) -> u64 {
    let window_ns = window.as_nanos().max(1);
    u64::try_from(u128::from(used_ns) * 1000 / window_ns).unwrap_or(u64::MAX)
}

/// The report of the span from `before` to `now`.
fn compare(node: &str, before: &Reading, now: &Reading, memory: (u64, u64)) -> NodeReport {
    let stamp = jiff::Timestamp::now().to_string();
    let window = now.at.saturating_duration_since(before.at);
    let mut pods: HashMap<String, PodUsage> = HashMap::new();
    for (id, (runtime, labels, u, at)) in &now.sandboxes {
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        // Each sandbox over its own span (they are read one after another).
        let (prev_ns, span) = before
            .sandboxes
            .get(id)
            .map_or((u.cpu_ns, window), |(_, _, p, t)| {
                (p.cpu_ns, at.saturating_duration_since(*t))
            });
        let pod = pods.entry(label(LABEL_POD_UID)).or_insert_with(|| PodUsage {
            namespace: label(LABEL_NAMESPACE),
            name: label(LABEL_POD),
            uid: label(LABEL_POD_UID),
            node: node.to_owned(),
            timestamp: stamp.clone(),
            window_seconds: span.as_secs_f64(),
            containers: Vec::new(),
        });
        pod.containers.push(ContainerUsage {
            name: label(LABEL_CONTAINER),
            runtime: (*runtime).to_owned(),
            cpu_millicores: millicores(u.cpu_ns.saturating_sub(prev_ns), span),
            cpu_ns: u.cpu_ns,
            memory_bytes: u.memory_bytes,
        });
    }
    let cores = if now.cpus > 0 {
        now.cpus
    } else {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    };
    let node_usage = NodeUsage {
        name: node.to_owned(),
        timestamp: stamp,
        window_seconds: window.as_secs_f64(),
        cpu_millicores: millicores(now.node_busy_ns.saturating_sub(before.node_busy_ns), window),
        cpu_capacity_millicores: u64::try_from(cores).unwrap_or(1) * 1000,
        memory_bytes: memory.0,
        memory_capacity_bytes: memory.1,
    };
    let mut pods: Vec<PodUsage> = pods.into_values().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for p in &mut pods {
        p.containers.sort_by(|a, b| a.name.cmp(&b.name));
    }
    NodeReport {
        node: node_usage,
        pods,
    }
}

impl Sampler {
    pub async fn report(&self, node: &str, runtimes: &Runtimes) -> NodeReport {
        let mut last = self.last.lock().await;
        if let Some((r, report)) = &*last
            && r.at.elapsed() < WINDOW_MIN
        {
            return report.clone();
        }
        let fresh;
        let before = match &*last {
            Some((r, _)) if r.at.elapsed() <= WINDOW_MAX => r,
            _ => {
                fresh = read(runtimes).await;
                tokio::time::sleep(WINDOW_FRESH).await;
                &fresh
            }
        };
        let now = read(runtimes).await;
        let memory = tokio::fs::read_to_string("/proc/meminfo")
            .await
            .ok()
            .and_then(|t| parse_meminfo(&t))
            .unwrap_or_default();
        let report = compare(node, before, &now, memory);
        *last = Some((now, report.clone()));
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_figures_parse_and_cpu_becomes_a_rate() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        // user+nice+system+irq+softirq+steal = 161 ticks busy; idle and iowait are not.
        assert_eq!(parse_proc_stat(stat), Some(161 * NS_PER_TICK));
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        assert_eq!(proc_stat_cpus(stat), 1);
        let meminfo = "MemTotal:       16000 kB\nMemFree:  1000 kB\nMemAvailable:   12000 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some((4000 * 1024, 16000 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(millicores(500_000_000, Duration::from_secs(1)), 500);
        assert_eq!(millicores(3_000_000_000, Duration::from_secs(2)), 1500);
        assert_eq!(millicores(1, Duration::ZERO), 1000);
    }

    #[tokio::test]
    async fn a_report_reads_the_machine_and_runs_in_a_window() {
        let sampler = Sampler::default();
        let runtimes = Runtimes::default();
        let started = std::time::Instant::now();
        let first = sampler.report("n1", &runtimes).await;
        assert!(
            started.elapsed() >= WINDOW_FRESH,
            "a first report waits for a window"
        );
        assert!(first.node.memory_capacity_bytes > 0 && first.node.memory_bytes > 0);
        assert!(first.node.cpu_capacity_millicores >= 1000);
        assert!(first.node.window_seconds >= WINDOW_FRESH.as_secs_f64());
        assert!(first.pods.is_empty());
        tokio::time::sleep(WINDOW_MIN).await;
        let second = sampler.report("n1", &runtimes).await;
        assert!(
            second.node.window_seconds >= WINDOW_MIN.as_secs_f64()
                && second.node.window_seconds < 2.0 * WINDOW_FRESH.as_secs_f64(),
            "the next report within ten seconds starts from the last reading: {second:?}"
        );
        // Asked again at once: the same report, not a new wait.
        let third = sampler.report("n1", &runtimes).await;
        assert_eq!(third, second);
    }
}
