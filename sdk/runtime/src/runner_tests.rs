//! Queue semantics with paused time and an in-memory trigger source.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::*;

type Script = dyn Fn(&str, usize) -> Outcome + Send + Sync;

/// Records every run as (key, start offset from t0) and checks exclusivity and concurrency.
struct Harness {
    tx: mpsc::UnboundedSender<ObjectRef>,
    runs: Arc<Mutex<Vec<(String, Duration)>>>,
    max_parallel: Arc<AtomicUsize>,
    overlap: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

fn key(name: &str) -> ObjectRef {
    ObjectRef::new(name).within("default")
}

fn start(config: RunnerConfig, work_time: Duration, script: Arc<Script>) -> Harness {
    let (tx, rx) = mpsc::unbounded_channel();
    let triggers = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|k| (k, rx)) });
    let runs = Arc::new(Mutex::new(Vec::new()));
    let max_parallel = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicUsize::new(0));
    let parallel = Arc::new(AtomicUsize::new(0));
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let t0 = Instant::now();
    let (r, m, o) = (runs.clone(), max_parallel.clone(), overlap.clone());
    let work = move |k: ObjectRef| {
        let (runs, max, overlap, parallel, active, script) = (
            r.clone(),
            m.clone(),
            o.clone(),
            parallel.clone(),
            active.clone(),
            script.clone(),
        );
        async move {
            let attempt = {
                let mut runs = runs.lock().expect("lock");
                runs.push((k.name.clone(), t0.elapsed()));
                runs.iter().filter(|(n, _)| *n == k.name).count()
            };
            if !active.lock().expect("lock").insert(k.name.clone()) {
                overlap.fetch_add(1, Ordering::SeqCst);
            }
            let now = parallel.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(now, Ordering::SeqCst);
            if !work_time.is_zero() {
                tokio::time::sleep(work_time).await;
            }
            parallel.fetch_sub(1, Ordering::SeqCst);
            active.lock().expect("lock").remove(&k.name);
            script(&k.name, attempt)
        }
    };
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run(triggers, work, config, shutdown.clone()));
    Harness {
        tx,
        runs,
        max_parallel,
        overlap,
        shutdown,
        handle,
    }
}

impl Harness {
    fn send(&self, name: &str) {
        self.tx.send(key(name)).expect("runner alive");
    }

    fn runs_of(&self, name: &str) -> Vec<Duration> {
        let runs = self.runs.lock().expect("lock");
        runs.iter().filter(|(n, _)| n == name).map(|(_, t)| *t).collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("runner task");
    }
}

/// Equal up to the timer wheel's 1ms rounding (which accumulates over chained sleeps).
#[track_caller]
fn assert_times(actual: &[Duration], expected: &[u64]) {
    let ok = actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(a, e)| *a >= ms(*e) && *a <= ms(*e + 10));
    assert!(ok, "runs at {actual:?}, expected about {expected:?} ms");
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn done() -> Arc<Script> {
    Arc::new(|_, _| Outcome::Done(Action::await_change()))
}

#[tokio::test(start_paused = true)]
async fn triggers_while_running_are_coalesced_into_one_rerun() {
    let h = start(RunnerConfig::default(), ms(1000), done());
    h.send("a");
    tokio::time::sleep(ms(100)).await;
    for _ in 0..5 {
        h.send("a");
    }
    tokio::time::sleep(ms(5000)).await;
    assert_times(&h.runs_of("a"), &[0, 1000]);
    assert_eq!(
        h.overlap.load(Ordering::SeqCst),
        0,
        "two runs of one key overlapped"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn queued_duplicates_run_once() {
    let config = RunnerConfig {
        concurrency: 1,
        ..RunnerConfig::default()
    };
    let h = start(config, ms(1000), done());
    h.send("a");
    h.send("b");
    h.send("b");
    h.send("b");
    tokio::time::sleep(ms(5000)).await;
    assert_times(&h.runs_of("a"), &[0]);
    assert_times(&h.runs_of("b"), &[1000]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_bounded() {
    let config = RunnerConfig {
        concurrency: 2,
        ..RunnerConfig::default()
    };
    let h = start(config, ms(1000), done());
    for name in ["a", "b", "c", "d", "e"] {
        h.send(name);
    }
    tokio::time::sleep(ms(10_000)).await;
    assert_eq!(h.max_parallel.load(Ordering::SeqCst), 2);
    assert_times(&h.runs_of("e"), &[2000]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_and_success_resets() {
    // Fails 4 times, then succeeds asking for a requeue in 10s, then fails again.
    let script: Arc<Script> = Arc::new(|_, attempt| match attempt {
        5 => Outcome::Done(Action::requeue(Duration::from_secs(10))),
        6 => Outcome::Failed(Action::await_change()),
        _ if attempt < 5 => Outcome::Failed(Action::await_change()),
        _ => Outcome::Done(Action::await_change()),
    });
    let h = start(RunnerConfig::default(), ms(0), script);
    h.send("a");
    tokio::time::sleep(Duration::from_secs(60)).await;
    // 100ms, 200ms, 400ms, 800ms backoff; then 10s requeue; then the backoff starts over.
    assert_times(&h.runs_of("a"), &[0, 100, 300, 700, 1500, 11_500, 11_600]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn backoff_is_capped() {
    let script: Arc<Script> = Arc::new(|_, _| Outcome::Failed(Action::await_change()));
    let h = start(RunnerConfig::default(), ms(0), script);
    h.send("a");
    tokio::time::sleep(Duration::from_secs(200)).await;
    let runs = h.runs_of("a");
    let gaps: Vec<Duration> = runs.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g <= Duration::from_secs(30)), "{gaps:?}");
    assert_eq!(gaps.last().copied(), Some(Duration::from_secs(30)));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn error_policy_requeue_overrides_backoff_and_gone_stops() {
    let script: Arc<Script> = Arc::new(|name, attempt| match (name, attempt) {
        ("a", 1) => Outcome::Failed(Action::requeue(Duration::from_secs(5))),
        ("a", _) => Outcome::Gone,
        _ => Outcome::Done(Action::requeue(Duration::from_secs(3))),
    });
    let h = start(RunnerConfig::default(), ms(0), script);
    h.send("a");
    h.send("b");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_times(&h.runs_of("a"), &[0, 5000]);
    assert_times(&h.runs_of("b"), &[0, 3000, 6000, 9000]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn immediate_trigger_supersedes_a_delayed_one() {
    let script: Arc<Script> = Arc::new(|_, _| Outcome::Done(Action::requeue(Duration::from_secs(60))));
    let h = start(RunnerConfig::default(), ms(0), script);
    h.send("a");
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.send("a");
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_times(&h.runs_of("a"), &[0, 1000, 61_000]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_work_after_the_grace_period() {
    let config = RunnerConfig {
        shutdown_grace: Duration::from_secs(1),
        ..RunnerConfig::default()
    };
    let h = start(config, Duration::from_secs(3600), done());
    h.send("a");
    tokio::time::sleep(ms(10)).await;
    let t = Instant::now();
    h.stop().await;
    assert!(t.elapsed() <= Duration::from_secs(2));
}
