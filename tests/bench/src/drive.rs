//! The two measurement loops, independent of level and backend: N concurrent clients each
//! doing a bounded number of timed operations, and one paced writer observed by many
//! watchers. Every loop is bounded in count and in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::report::Latencies;

/// Longest one operation (or one preparation) may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long watchers may lag behind the last write before they are stopped.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// One benchmark client.
pub trait Worker: Send + 'static {
    /// Untimed preparation: open connections, create the object to update.
    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// One timed operation; `seq` counts this worker's operations from 0.
    fn op(&mut self, seq: usize) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// What a run of concurrent clients achieved.
#[derive(Debug)]
pub struct Outcome {
    pub latencies: Latencies,
    pub done: usize,
    pub failed: usize,
    /// From the common start to the last worker's end.
    pub elapsed: Duration,
    /// Some worker stopped because the time cap was reached.
    pub capped: bool,
    pub first_error: Option<String>,
}

impl Outcome {
    /// Completed operations per second of wall time.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            #[allow(clippy::cast_precision_loss)]
            let done = self.done as f64;
            done / secs
        } else {
            0.0
        }
    }

    /// Failures and the time cap, for the table's note column.
    pub fn note(&self) -> String {
        let mut parts = Vec::new();
        if self.capped {
            parts.push("time cap reached".to_owned());
        }
        if self.failed > 0 {
            parts.push(format!(
                "{} failed: {}",
                self.failed,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        parts.join("; ")
    }
}

struct WorkerResult {
    latencies: Vec<Duration>,
    failed: usize,
    capped: bool,
    end: Instant,
    first_error: Option<String>,
}

/// Run `workers` concurrently, `total_ops` operations split evenly between them, each
/// worker stopping early once `cap` has passed since the common start.
pub async fn drive<W: Worker>(workers: Vec<W>, total_ops: usize, cap: Duration) -> anyhow::Result<Outcome> {
    let n = workers.len().max(1);
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut set = JoinSet::new();
    for (i, mut worker) in workers.into_iter().enumerate() {
        let count = total_ops / n + usize::from(i < total_ops % n);
        let barrier = barrier.clone();
        set.spawn(async move {
            let prepared = tokio::time::timeout(OP_TIMEOUT, worker.prepare()).await;
            // Every worker reaches the barrier, even a failed one, or the others would hang.
            barrier.wait().await;
            match prepared {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.context("preparing a benchmark client")),
                Err(_) => anyhow::bail!("preparing a benchmark client took over {OP_TIMEOUT:?}"),
            }
            let deadline = Instant::now() + cap;
            let mut out = WorkerResult {
                latencies: Vec::with_capacity(count),
                failed: 0,
                capped: false,
                end: Instant::now(),
                first_error: None,
            };
            for seq in 0..count {
                if Instant::now() >= deadline {
                    out.capped = true;
                    break;
                }
                let t0 = Instant::now();
                match tokio::time::timeout(OP_TIMEOUT, worker.op(seq)).await {
                    Ok(Ok(())) => out.latencies.push(t0.elapsed()),
                    Ok(Err(e)) => {
                        out.failed += 1;
                        out.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                    Err(_) => {
                        out.failed += 1;
                        out.first_error
                            .get_or_insert_with(|| format!("operation took over {OP_TIMEOUT:?}"));
                    }
                }
            }
            out.end = Instant::now();
            Ok(out)
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut all = Vec::with_capacity(total_ops);
    let (mut failed, mut capped, mut end, mut first_error) = (0, false, start, None);
    while let Some(joined) = set.join_next().await {
        let r = joined??;
        all.extend(r.latencies);
        failed += r.failed;
        capped |= r.capped;
        end = end.max(r.end);
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let done = all.len();
    Ok(Outcome {
        latencies: Latencies::new(all),
        done,
        failed,
        elapsed: end.duration_since(start),
        capped,
        first_error,
    })
}

/// A watch seen from the benchmark: `Some(i)` when write number `i` of this run arrives,
/// `None` for anything else (bookmarks, other objects).
pub type Deliveries = BoxStream<'static, anyhow::Result<Option<usize>>>;

/// The writer's part of a write: one future per write number.
pub type WriteFn = Box<dyn FnMut(usize) -> BoxFuture<'static, anyhow::Result<()>> + Send>;

/// What the watchers saw.
#[derive(Debug)]
pub struct WatchOutcome {
    /// Arrival minus the moment the writer sent the write.
    pub from_send: Latencies,
    /// Arrival minus the moment the write was acknowledged (0 when the event came first).
    pub from_ack: Latencies,
    /// Deliveries expected: watchers × acknowledged writes.
    pub wanted: usize,
    pub writes_failed: usize,
    pub watch_errors: usize,
    pub first_error: Option<String>,
}

impl WatchOutcome {
    pub fn note(&self) -> String {
        let mut parts = Vec::new();
        if self.writes_failed > 0 {
            parts.push(format!("{} writes failed", self.writes_failed));
        }
        if self.watch_errors > 0 {
            parts.push(format!("{} watches broke", self.watch_errors));
        }
        if let Some(e) = &self.first_error {
            parts.push(e.clone());
        }
        parts.join("; ")
    }
}

struct Seen {
    arrivals: Vec<(usize, Instant)>,
    error: Option<String>,
}

async fn collect(mut stream: Deliveries, want: usize, stop: CancellationToken) -> Seen {
    let mut seen = Seen {
        arrivals: Vec::with_capacity(want),
        error: None,
    };
    while seen.arrivals.len() < want {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = stream.next() => next,
        };
        match next {
            None => {
                seen.error = Some("watch ended early".into());
                break;
            }
            Some(Ok(Some(i))) => seen.arrivals.push((i, Instant::now())),
            Some(Ok(None)) => {}
            Some(Err(e)) => {
                seen.error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    seen
}

/// Write `writes` objects evenly spread over `span` while every stream in `watchers` (all
/// already established) records when each write reaches it.
pub async fn watch_delivery(
    watchers: Vec<Deliveries>,
    writes: usize,
    span: Duration,
    mut write: WriteFn,
) -> anyhow::Result<WatchOutcome> {
    let stop = CancellationToken::new();
    let n = watchers.len();
    let mut set = JoinSet::new();
    for w in watchers {
        set.spawn(collect(w, writes, stop.clone()));
    }
    let period = span
        .checked_div(u32::try_from(writes.max(1)).unwrap_or(u32::MAX))
        .unwrap_or(Duration::from_millis(10))
        .max(Duration::from_micros(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The writer may overrun its span (slow commits), but never by more than this.
    let writer_deadline = Instant::now() + span * 3 + OP_TIMEOUT;
    let mut sent: Vec<Option<(Instant, Instant)>> = vec![None; writes];
    let (mut writes_failed, mut first_error) = (0, None);
    for (i, slot) in sent.iter_mut().enumerate() {
        tick.tick().await;
        if Instant::now() >= writer_deadline {
            writes_failed += 1;
            first_error.get_or_insert_with(|| "writer ran out of time".to_owned());
            continue;
        }
        let t0 = Instant::now();
        match tokio::time::timeout(OP_TIMEOUT, write(i)).await {
            Ok(Ok(())) => *slot = Some((t0, Instant::now())),
            Ok(Err(e)) => {
                writes_failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(_) => {
                writes_failed += 1;
                first_error.get_or_insert_with(|| format!("write took over {OP_TIMEOUT:?}"));
            }
        }
    }
    let mut seen = Vec::with_capacity(n);
    let _ = tokio::time::timeout(DRAIN_GRACE, async {
        while let Some(s) = set.join_next().await {
            seen.push(s);
        }
    })
    .await;
    stop.cancel();
    while let Some(s) = set.join_next().await {
        seen.push(s);
    }
    let (mut from_send, mut from_ack) = (Vec::new(), Vec::new());
    let mut watch_errors = 0;
    for s in seen {
        let s = s?;
        if let Some(e) = s.error {
            watch_errors += 1;
            first_error.get_or_insert(e);
        }
        for (i, arrived) in s.arrivals {
            if let Some(Some((sent_at, acked_at))) = sent.get(i) {
                from_send.push(arrived.saturating_duration_since(*sent_at));
                from_ack.push(arrived.saturating_duration_since(*acked_at));
            }
        }
    }
    let acked = sent.iter().filter(|s| s.is_some()).count();
    Ok(WatchOutcome {
        from_send: Latencies::new(from_send),
        from_ack: Latencies::new(from_ack),
        wanted: n * acked,
        writes_failed,
        watch_errors,
        first_error,
    })
}
