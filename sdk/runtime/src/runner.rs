//! The work queue behind a controller, independent of HTTP and of any object type: takes a
//! stream of triggers (object keys) and runs `work(key)` with per-key exclusivity (a trigger
//! arriving while the key runs is coalesced into one run afterwards), bounded concurrency,
//! delayed requeues and per-key exponential backoff on failure.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::{Stream, StreamExt};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::reflector::ObjectRef;

/// What to do after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `after` (unless a change triggers it sooner).
    pub fn requeue(after: Duration) -> Self {
        Self {
            requeue_after: Some(after),
        }
    }

    /// Reconcile again only when something changes (or at the next resync). Returned from an
    /// error policy, it means "retry with the per-object exponential backoff".
    pub fn await_change() -> Self {
        Self { requeue_after: None }
    }

    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// How one run of `work` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded: the key's backoff is reset and the action's requeue (if any) is scheduled.
    Done(Action),
    /// Failed: the action's requeue if it has one, else the key's next backoff delay.
    Failed(Action),
    /// The object no longer exists: nothing is scheduled and the key's state is forgotten.
    Gone,
}

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Most keys worked on at once.
    pub concurrency: usize,
    /// Per-key backoff after failures; reset on success.
    pub backoff: ExponentialBuilder,
    /// How long in-flight work may finish after shutdown before it is aborted.
    pub shutdown_grace: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            backoff: ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(30))
                .with_factor(2.0)
                .without_max_times(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Delayed triggers, earliest deadline per key.
#[derive(Default)]
struct Delays {
    by_time: BTreeMap<(Instant, u64), ObjectRef>,
    by_key: HashMap<ObjectRef, (Instant, u64)>,
    seq: u64,
}

impl Delays {
    fn schedule(&mut self, key: ObjectRef, at: Instant) {
        if let Some(old) = self.by_key.get(&key) {
            if old.0 <= at {
                return;
            }
            self.by_time.remove(old);
        }
        self.seq += 1;
        self.by_time.insert((at, self.seq), key.clone());
        self.by_key.insert(key, (at, self.seq));
    }

    fn cancel(&mut self, key: &ObjectRef) {
        if let Some(slot) = self.by_key.remove(key) {
            self.by_time.remove(&slot);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.by_time.keys().next().map(|(at, _)| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Vec<ObjectRef> {
        let mut due = Vec::new();
        while let Some(entry) = self.by_time.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.by_key.remove(&key);
            due.push(key);
        }
        due
    }
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<ObjectRef>,
    queued: HashSet<ObjectRef>,
    running: HashSet<ObjectRef>,
    dirty: HashSet<ObjectRef>,
    delays: Delays,
    backoffs: HashMap<ObjectRef, ExponentialBackoff>,
}

impl Queue {
    /// An immediate trigger: supersedes any delayed one; coalesced if the key is running.
    fn trigger(&mut self, key: ObjectRef) {
        self.delays.cancel(&key);
        if self.running.contains(&key) {
            self.dirty.insert(key);
        } else if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    fn finished(&mut self, key: ObjectRef, outcome: Outcome, backoff: &ExponentialBuilder) {
        self.running.remove(&key);
        let after = match outcome {
            Outcome::Done(action) => {
                self.backoffs.remove(&key);
                action.requeue_after
            }
            Outcome::Gone => {
                self.backoffs.remove(&key);
                None
            }
            Outcome::Failed(action) => action.requeue_after.or_else(|| {
                let b = self
                    .backoffs
                    .entry(key.clone())
                    .or_insert_with(|| backoff.build());
                Some(b.next().unwrap_or(Duration::from_secs(30)))
            }),
        };
        if self.dirty.remove(&key) {
            self.trigger(key);
        } else if let Some(after) = after {
            self.delays.schedule(key, Instant::now() + after);
        }
    }
}

enum Event {
    Shutdown,
    Finished(Id, Outcome),
    Trigger(Option<ObjectRef>),
    Timer,
}

/// Runs `work` for triggered keys until `shutdown`; then lets in-flight work finish for up to
/// `config.shutdown_grace` and aborts the rest. A panicking `work` counts as a failure.
pub async fn run<S, F, Fut>(triggers: S, work: F, config: RunnerConfig, shutdown: CancellationToken)
where
    S: Stream<Item = ObjectRef>,
    F: Fn(ObjectRef) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let mut triggers = std::pin::pin!(triggers);
    let mut inputs_open = true;
    let mut q = Queue::default();
    let mut tasks = JoinSet::new();
    let mut ids: HashMap<Id, ObjectRef> = HashMap::new();
    let concurrency = config.concurrency.max(1);
    loop {
        while q.running.len() < concurrency {
            let Some(key) = q.ready.pop_front() else {
                break;
            };
            q.queued.remove(&key);
            q.running.insert(key.clone());
            let id = tasks.spawn(work(key.clone())).id();
            ids.insert(id, key);
        }
        let deadline = q.delays.next_deadline();
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => Event::Shutdown,
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => match done {
                Ok((id, outcome)) => Event::Finished(id, outcome),
                Err(e) => {
                    tracing::error!(error = %e, "reconcile task failed");
                    Event::Finished(e.id(), Outcome::Failed(Action::await_change()))
                }
            },
            t = triggers.next(), if inputs_open => Event::Trigger(t),
            () = sleep_until(deadline), if deadline.is_some() => Event::Timer,
        };
        match event {
            Event::Shutdown => break,
            Event::Finished(id, outcome) => {
                if let Some(key) = ids.remove(&id) {
                    q.finished(key, outcome, &config.backoff);
                }
            }
            Event::Trigger(Some(key)) => q.trigger(key),
            Event::Trigger(None) => inputs_open = false,
            Event::Timer => {
                for key in q.delays.pop_due(Instant::now()) {
                    q.trigger(key);
                }
            }
        }
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(config.shutdown_grace, drain).await.is_err() {
        tracing::warn!("reconciles still running after the shutdown grace period; aborting");
    }
    tasks.shutdown().await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
