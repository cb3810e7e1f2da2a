//! The scheduling loop: one task owns the [`Cache`] and the queues; binds and status writes
//! run concurrently in a `JoinSet` and report back to it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wisp_api::{Condition, Node, ObjectReference, Pod, Resource};
use wisp_client::{Api, Client, ClientError, WatcherEvent};
use wisp_runtime::{Informers, ObjectRef, Recorder};

use crate::cache::{Cache, Decision};
use crate::plugins::PodRequirements;
use crate::{REASON_SCHEDULED, REASON_UNSCHEDULABLE, SchedulerConfig, SchedulerError};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Conflicts a bind retries on a fresh read before giving the pod back to the queue.
const BIND_ATTEMPTS: usize = 3;

/// How one bind ended.
enum BindOutcome {
    /// Bound by us: the stored pod.
    Bound(Pod),
    /// Someone else bound it first (or it changed so it is no longer ours): the stored pod.
    Changed(Pod),
    /// Deleted meanwhile.
    Gone,
    Failed(ClientError),
}

enum TaskResult {
    Bind {
        key: ObjectRef,
        node: String,
        /// The pod carried `PodScheduled=False` before the bind.
        was_unschedulable: bool,
        outcome: BindOutcome,
    },
    Status {
        key: ObjectRef,
        outcome: Result<Pod, ClientError>,
    },
}

pub(crate) struct Scheduler {
    client: Client,
    events: Recorder,
    config: SchedulerConfig,
    cache: Cache,
    queue: VecDeque<ObjectRef>,
    queued: HashSet<ObjectRef>,
    /// Fit nowhere; waiting for a node change or released resources.
    parked: HashSet<ObjectRef>,
    /// Waiting out a backoff after a failed API call.
    retries: BinaryHeap<Reverse<(Instant, ObjectRef)>>,
    retrying: HashSet<ObjectRef>,
    failures: HashMap<ObjectRef, u32>,
    tasks: JoinSet<TaskResult>,
    nodes_listed: bool,
    pods_listed: bool,
}

fn pod_api(client: &Client, key: &ObjectRef) -> Api<Pod> {
    client.api::<Pod>(key.namespace.as_deref())
}

fn unbound(pod: &Pod) -> bool {
    pod.spec.node_name.as_deref().is_none_or(str::is_empty)
}

fn scheduled_condition(pod: &Pod) -> Option<&Condition> {
    pod.status
        .as_ref()
        .and_then(|s| wisp_api::meta::find_condition(&s.conditions, wisp_api::POD_SCHEDULED))
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// PUT `pod` with `spec.nodeName = node`, compare-and-swap on its resourceVersion. On a
/// conflict, re-read: already bound or changed → give it back; else retry on the fresh copy.
async fn bind(api: Api<Pod>, pod: Arc<Pod>, node: String) -> BindOutcome {
    let mut current = (*pod).clone();
    for _ in 0..BIND_ATTEMPTS {
        let mut bound = current.clone();
        bound.spec.node_name = Some(node.clone());
        match api.replace(&bound).await {
            Ok(p) => return BindOutcome::Bound(p),
            Err(e) if e.code() == Some(404) => return BindOutcome::Gone,
            Err(e) if e.code() == Some(409) => match api.get_opt(&pod.metadata.name).await {
                Ok(Some(fresh)) => {
                    let same = fresh.spec.containers == pod.spec.containers
                        && fresh.spec.node_selector == pod.spec.node_selector
                        && fresh.metadata.owner_references == pod.metadata.owner_references;
                    if !unbound(&fresh) || fresh.phase().is_terminal() || !same {
                        return BindOutcome::Changed(fresh);
                    }
                    current = fresh;
                }
                Ok(None) => return BindOutcome::Gone,
                Err(e) => return BindOutcome::Failed(e),
            },
            Err(e) => return BindOutcome::Failed(e),
        }
    }
    BindOutcome::Changed(current)
}

/// Sets `PodScheduled` through the status subresource (CAS on the pod's resourceVersion).
async fn write_condition(api: Api<Pod>, pod: Arc<Pod>, condition: Condition) -> Result<Pod, ClientError> {
    let mut p = (*pod).clone();
    let status = p.status.get_or_insert_default();
    wisp_api::meta::set_condition(&mut status.conditions, condition, &now());
    api.replace_status(&p).await
}

impl Scheduler {
    pub(crate) fn new(client: Client, config: SchedulerConfig, events: Recorder) -> Self {
        Self {
            client,
            events,
            config,
            cache: Cache::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            parked: HashSet::new(),
            retries: BinaryHeap::new(),
            retrying: HashSet::new(),
            failures: HashMap::new(),
            tasks: JoinSet::new(),
            nodes_listed: false,
            pods_listed: false,
        }
    }

    pub(crate) async fn run(
        mut self,
        informers: &Informers,
        shutdown: CancellationToken,
    ) -> Result<(), SchedulerError> {
        // Its own cache is built from the shared watches' events (the scheduler assumes
        // binds in it before the API has confirmed them).
        let node_events = informers.subscribe::<Node>();
        let pod_events = informers.subscribe::<Pod>();
        let mut node_events = std::pin::pin!(node_events);
        let mut pod_events = std::pin::pin!(pod_events);
        let mut resync = tokio::time::interval(self.config.unschedulable_retry);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        tracing::info!("scheduler started");
        let result = loop {
            if self.nodes_listed && self.pods_listed {
                self.dispatch();
            }
            let next_retry = self.retries.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(r) => self.on_task(r),
                    Err(e) => tracing::error!(error = %e, "scheduler task failed"),
                },
                Some(ev) = node_events.next() => match ev {
                    Ok(ev) => self.on_node_event(ev),
                    Err(e) => if let Err(e) = fatal::<Node>(e) { break Err(e) },
                },
                Some(ev) = pod_events.next() => match ev {
                    Ok(ev) => self.on_pod_event(ev),
                    Err(e) => if let Err(e) = fatal::<Pod>(e) { break Err(e) },
                },
                () = tokio::time::sleep_until(next_retry.unwrap_or_else(Instant::now)), if next_retry.is_some() => {
                    self.due_retries();
                }
                _ = resync.tick() => self.unpark_all(),
            }
        };
        let grace = self.config.shutdown_grace;
        let drain = async {
            while let Some(done) = self.tasks.join_next().await {
                if let Ok(r) = done {
                    self.on_task(r);
                }
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(?grace, "binds still in flight at shutdown; abandoning them");
        }
        self.tasks.abort_all();
        tracing::info!("scheduler stopped");
        result
    }

    fn enqueue(&mut self, key: ObjectRef) {
        if !self.parked.contains(&key) && !self.retrying.contains(&key) && self.queued.insert(key.clone()) {
            self.queue.push_back(key);
        }
    }

    /// Puts every unschedulable pod back in the queue.
    fn unpark_all(&mut self) {
        let parked: Vec<ObjectRef> = self.parked.drain().collect();
        for key in parked {
            self.enqueue(key);
        }
    }

    fn retry_later(&mut self, key: ObjectRef) {
        self.parked.remove(&key);
        let n = self.failures.entry(key.clone()).or_default();
        *n = (*n + 1).min(16);
        let wait = self
            .config
            .error_backoff
            .saturating_mul(1 << (*n - 1).min(15))
            .min(MAX_BACKOFF);
        if self.retrying.insert(key.clone()) {
            self.retries.push(Reverse((Instant::now() + wait, key)));
        }
    }

    fn due_retries(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.retries.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, key))) = self.retries.pop() {
                self.retrying.remove(&key);
                self.enqueue(key);
            }
        }
    }

    fn on_node_event(&mut self, ev: WatcherEvent<Node>) {
        let changed = match ev {
            WatcherEvent::Restarted(nodes) => {
                self.nodes_listed = true;
                tracing::debug!(nodes = nodes.len(), "nodes listed");
                self.cache.restart_nodes(nodes)
            }
            WatcherEvent::Applied(node) => self.cache.apply_node(node),
            WatcherEvent::Deleted(node) => {
                self.cache.delete_node(&node.metadata.name);
                false
            }
        };
        if changed {
            self.unpark_all();
        }
    }

    fn on_pod_event(&mut self, ev: WatcherEvent<Pod>) {
        match ev {
            WatcherEvent::Restarted(pods) => {
                self.pods_listed = true;
                tracing::debug!(pods = pods.len(), "pods listed");
                self.cache.restart_pods(pods);
                self.unpark_all();
                for key in self.cache.pending_keys() {
                    self.enqueue(key);
                }
            }
            WatcherEvent::Applied(pod) => {
                let key = ObjectRef::from_obj(&pod);
                let change = self.cache.apply_pod(pod, false);
                if change.freed {
                    self.unpark_all();
                }
                if change.pending {
                    if change.spec_changed {
                        self.parked.remove(&key);
                    }
                    self.enqueue(key);
                }
            }
            WatcherEvent::Deleted(pod) => {
                let key = ObjectRef::from_obj(&pod);
                self.parked.remove(&key);
                self.failures.remove(&key);
                if self.cache.delete_pod(&key) {
                    self.unpark_all();
                }
            }
        }
    }

    /// Schedules queued pods until the queue is empty or enough tasks are in flight.
    fn dispatch(&mut self) {
        let max = self.config.max_concurrent_binds.max(1);
        while self.tasks.len() < max {
            let Some(key) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&key);
            let Some(pod) = self.cache.pending(&key) else {
                continue;
            };
            let req = PodRequirements::of(&pod);
            let decision = self.cache.schedule(
                &req,
                self.config.percentage_of_nodes_to_score,
                self.config.min_feasible_nodes,
            );
            match decision {
                Decision::Bind(node) => {
                    self.cache.assume(&key, &node);
                    let was_unschedulable = scheduled_condition(&pod).is_some_and(|c| !c.is_true());
                    let api = pod_api(&self.client, &key);
                    let span = tracing::debug_span!("bind", pod = %key, node = %node);
                    // A pod made for a cold start: its binding is part of that trace.
                    let traced = match pod.metadata.annotations.get(wisp_api::TRACEPARENT_ANNOTATION) {
                        Some(tp) => {
                            let s = tracing::info_span!(
                                target: wisp_telemetry::TARGET,
                                "scheduler.bind",
                                wisp.pod = %key,
                                wisp.node = %node,
                            );
                            wisp_telemetry::follow_traceparent(&s, tp);
                            s
                        }
                        None => tracing::Span::none(),
                    };
                    let task_key = key.clone();
                    self.tasks.spawn(
                        async move {
                            let outcome = bind(api, pod, node.clone()).instrument(traced).await;
                            TaskResult::Bind {
                                key: task_key,
                                node,
                                was_unschedulable,
                                outcome,
                            }
                        }
                        .instrument(span),
                    );
                }
                Decision::Unschedulable(message) => {
                    self.parked.insert(key.clone());
                    // Every attempt counts on the one event (the condition is written once).
                    self.events.warning(
                        ObjectReference::to(pod.as_ref()),
                        crate::REASON_FAILED_SCHEDULING,
                        message.clone(),
                    );
                    let current = scheduled_condition(&pod);
                    let same = current.is_some_and(|c| {
                        !c.is_true()
                            && c.reason.as_deref() == Some(REASON_UNSCHEDULABLE)
                            && c.message.as_deref() == Some(message.as_str())
                    });
                    if same {
                        continue;
                    }
                    tracing::info!(pod = %key, %message, "pod fits on no node");
                    let condition =
                        Condition::new(wisp_api::POD_SCHEDULED, false, REASON_UNSCHEDULABLE, message);
                    self.spawn_status(key, pod, condition);
                }
            }
        }
    }

    fn spawn_status(&mut self, key: ObjectRef, pod: Arc<Pod>, condition: Condition) {
        let api = pod_api(&self.client, &key);
        self.tasks.spawn(async move {
            let outcome = write_condition(api, pod, condition).await;
            TaskResult::Status { key, outcome }
        });
    }

    fn on_task(&mut self, result: TaskResult) {
        match result {
            TaskResult::Bind {
                key,
                node,
                was_unschedulable,
                outcome,
            } => self.on_bind(key, &node, was_unschedulable, outcome),
            TaskResult::Status { key, outcome } => match outcome {
                Ok(pod) => {
                    // Still parked: this write changed only the status.
                    self.cache.apply_pod(pod, false);
                }
                Err(e) if e.code() == Some(404) => {}
                Err(e) => {
                    tracing::debug!(pod = %key, error = %e, "writing PodScheduled failed; will retry");
                    self.retry_later(key);
                }
            },
        }
    }

    fn on_bind(&mut self, key: ObjectRef, node: &str, was_unschedulable: bool, outcome: BindOutcome) {
        match outcome {
            BindOutcome::Bound(pod) => {
                tracing::debug!(pod = %key, node, "bound");
                self.events.normal(
                    ObjectReference::to(&pod),
                    REASON_SCHEDULED,
                    format!("assigned {key} to {node}"),
                );
                self.failures.remove(&key);
                self.cache.apply_pod(pod, false);
                self.cache.forget(&key);
                if was_unschedulable && let Some(pod) = self.cache.pod(&key) {
                    let condition = Condition::new(
                        wisp_api::POD_SCHEDULED,
                        true,
                        REASON_SCHEDULED,
                        format!("bound to {node}"),
                    );
                    self.spawn_status(key, pod, condition);
                }
            }
            BindOutcome::Changed(pod) => {
                tracing::debug!(pod = %key, "pod changed under the bind; re-queued if still pending");
                self.cache.apply_pod(pod, false);
                if self.cache.forget(&key) {
                    self.enqueue(key);
                }
            }
            BindOutcome::Gone => {
                self.cache.forget(&key);
                self.cache.delete_pod(&key);
            }
            BindOutcome::Failed(e) => {
                tracing::warn!(pod = %key, node, error = %e, "bind failed; will retry");
                if self.cache.forget(&key) {
                    self.retry_later(key);
                }
            }
        }
    }
}

/// Errors the watcher cannot fix by itself end the scheduler when they are about access;
/// anything else is logged and the watch goes on.
fn fatal<T: Resource>(e: ClientError) -> Result<(), SchedulerError> {
    if matches!(e.code(), Some(401 | 403)) {
        return Err(SchedulerError::Watch {
            kind: T::KIND,
            source: e,
        });
    }
    tracing::warn!(kind = T::KIND, error = %e, "watch error");
    Ok(())
}
