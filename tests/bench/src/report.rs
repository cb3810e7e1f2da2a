//! Figures: latency percentiles, result rows, the Markdown table and the machine facts.

use std::fmt::Write as _;
use std::time::Duration;

/// Latencies of one scenario, sorted once.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn new(mut all: Vec<Duration>) -> Self {
        all.sort_unstable();
        Self(all)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Nearest-rank percentile (`p` in 0..=100); `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.0.is_empty() {
            return None;
        }
        let n = self.0.len();
        // Nearest rank: ceil(p/100 * n), 1-based.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.0.get(rank.clamp(1, n) - 1).copied()
    }

    pub fn max(&self) -> Option<Duration> {
        self.0.last().copied()
    }

    /// Cells of a Markdown table row: the count, then each of `percentiles` and (with `max`)
    /// the maximum, formatted by `fmt`, joined with ` | `.
    pub fn cells(&self, percentiles: &[f64], max: bool, fmt: &dyn Fn(Option<Duration>) -> String) -> String {
        let mut cells = vec![self.len().to_string()];
        cells.extend(percentiles.iter().map(|p| fmt(self.percentile(*p))));
        if max {
            cells.push(fmt(self.max()));
        }
        cells.join(" | ")
    }
}

/// One line of the result table.
#[derive(Debug)]
pub struct Row {
    pub backend: &'static str,
    pub level: &'static str,
    pub scenario: String,
    pub clients: String,
    /// Operations (or deliveries) that completed.
    pub done: usize,
    /// Operations (or deliveries) that were asked for.
    pub wanted: usize,
    /// Completed per second of wall time; `None` where a rate means nothing (watch rows).
    pub rate: Option<f64>,
    pub latencies: Latencies,
    /// Failed operations or a note (e.g. the time cap was hit).
    pub note: String,
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.2}", d.as_secs_f64() * 1000.0),
        None => "—".into(),
    }
}

/// The Markdown table, one row per backend, level and scenario.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| backend | level | scenario | clients | done/asked | ops/s | p50 ms | p99 ms | max ms | note |\n",
    );
    out.push_str("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    for r in rows {
        let rate = r.rate.map_or_else(|| "—".to_owned(), |v| format!("{v:.0}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |",
            r.backend,
            r.level,
            r.scenario,
            r.clients,
            r.done,
            r.wanted,
            rate,
            ms(r.latencies.percentile(50.0)),
            ms(r.latencies.percentile(99.0)),
            ms(r.latencies.max()),
            r.note,
        );
    }
    out
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
}

fn proc_field(file: &str, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// Where and when the figures were taken, as a Markdown list.
pub fn machine_facts(etcd_binary: &str) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next().and_then(|kb| kb.parse::<u64>().ok()))
        .map_or_else(
            || "unknown".to_owned(),
            |kb| {
                #[allow(clippy::cast_precision_loss)]
                let gib = kb as f64 / (1024.0 * 1024.0);
                format!("{gib:.1} GiB")
            },
        );
    let model = proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned());
    let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_else(|| "unknown".into());
    let etcd = first_line(etcd_binary, &["--version"]).unwrap_or_else(|| "not found".into());
    let tmp = std::env::temp_dir();
    format!(
        "- date: {date}\n- cpus (nproc): {cpus} ({model})\n- memory: {mem}\n- kernel: {kernel}\n\
         - etcd: {etcd}\n- data directories: under {} (embedded redb file and etcd data dir on the same filesystem)\n",
        tmp.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latencies::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(l.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(l.percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(l.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(l.percentile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(l.max(), Some(Duration::from_millis(100)));
        assert_eq!(Latencies::default().percentile(50.0), None);
    }
}
