//! One task per pod bound to this node: prepares its sandboxes, starts them, restarts them
//! per the lifecycle's decisions, probes readiness, and writes the pod's status (a
//! compare-and-swap on the last `resourceVersion` it saw, so a status someone else wrote —
//! the node lifecycle controller's `NodeLost` — is never overwritten).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wisp_api::{
    Condition, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, ObjectReference, Pod, PodStatus,
};
use wisp_client::Client;
use wisp_sandbox::{
    Endpoint, ExitStatus, Kind, Sandbox, SandboxError, SandboxId, SandboxSpec, SandboxStatus, Source, State,
};

use crate::lifecycle::{self, Backoff, Lifecycle, Stage, Terminated};
use crate::probe;
use crate::spec::{self, PrepareError};

/// The waiting reason of a pod whose runtime is down.
const REASON_UNAVAILABLE: &str = "RuntimeUnavailable";
/// Event reasons, as the kubelet's.
const REASON_PULLING: &str = "Pulling";
const REASON_PULLED: &str = "Pulled";
const REASON_FAILED: &str = "Failed";
const REASON_STARTED: &str = "Started";
const REASON_KILLING: &str = "Killing";
const REASON_BACK_OFF: &str = "BackOff";
const REASON_UNHEALTHY: &str = "Unhealthy";
const REASON_OOM_KILLED: &str = "OOMKilled";
/// How often preparing is retried while a runtime is down.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(2);
/// How often a slow preparation's progress is read for the pod's status.
const PROGRESS_PERIOD: Duration = Duration::from_millis(500);

/// The runtimes of this node, by name ([`Sandbox::runtime`]): the agent knows them only
/// through the `wisp-sandbox` contract.
#[derive(Clone, Default)]
pub struct Runtimes(std::collections::BTreeMap<&'static str, Arc<dyn Sandbox>>);

impl std::fmt::Debug for Runtimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl FromIterator<Arc<dyn Sandbox>> for Runtimes {
    /// A later runtime of the same name replaces an earlier one.
    fn from_iter<I: IntoIterator<Item = Arc<dyn Sandbox>>>(iter: I) -> Self {
        Self(iter.into_iter().map(|s| (s.runtime(), s)).collect())
    }
}

impl Runtimes {
    /// Adds `runtime` (replacing one of the same name).
    pub fn insert(&mut self, runtime: Arc<dyn Sandbox>) {
        self.0.insert(runtime.runtime(), runtime);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Sandbox>> {
        self.0.get(name).cloned()
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().map(|&n| n.to_owned()).collect()
    }

    pub fn all(&self) -> Vec<Arc<dyn Sandbox>> {
        self.0.values().cloned().collect()
    }

    /// The runtimes that have a service outside the process to check ([`Sandbox::health`]).
    pub fn checked(&self) -> Vec<Arc<dyn Sandbox>> {
        self.0
            .values()
            .filter(|s| s.health().is_some())
            .cloned()
            .collect()
    }

    /// Whether runtime `name` serves HTTP sandboxes in process.
    pub fn serves_in_process(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|s| s.in_process_http().is_some())
    }
}

/// What every pod worker shares.
pub struct Ctx {
    pub client: Client,
    /// What happens to pods, as Events (Pulling, Started, BackOff, Killing…).
    pub events: wisp_runtime::Recorder,
    pub node: String,
    /// The address reported as the pod's IP (the node's).
    pub address: String,
    pub runtimes: Runtimes,
    pub backoff: Backoff,
    /// Volumes live under `<pods_dir>/<pod uid>/`.
    pub pods_dir: PathBuf,
    /// This node's in-process view of which pods are ready (read by its ingress).
    pub readiness: crate::LocalReadiness,
    /// The process's shared watch caches, when the agent reads pods from them (`wisp up`)
    /// instead of watching its own.
    pub informers: Option<wisp_runtime::Informers>,
    /// Components pulled from registries.
    pub oci: crate::oci::OciCache,
}

struct Prepared {
    name: String,
    runtime: Arc<dyn Sandbox>,
    spec: SandboxSpec,
}

#[derive(Default)]
struct ProbeState {
    next: Option<Instant>,
    successes: i32,
    failures: i32,
    /// No probe was declared: the container is ready at its first HTTP answer, checked
    /// every few milliseconds (a container's published port accepts before it serves).
    until_first_answer: bool,
}

/// How soon a container without a readiness probe is checked again until it first answers
/// (doubling per miss up to [`FIRST_ANSWER_MAX`]).
const FIRST_ANSWER_PERIOD: Duration = Duration::from_millis(2);
const FIRST_ANSWER_MAX: Duration = Duration::from_millis(250);
/// The longest a readiness probe may take, whatever its `timeoutSeconds`.
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(10);

pub(crate) struct Worker {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    life: Lifecycle,
    prepared: Vec<Prepared>,
    /// Sandboxes found running for this pod when the agent started.
    adopted: HashMap<SandboxId, SandboxStatus>,
    /// Generation of each container's current run, so a stale exit is ignored.
    generation: HashMap<String, u64>,
    exits: JoinSet<(String, u64, Result<ExitStatus, SandboxError>)>,
    probes: HashMap<String, ProbeState>,
    /// Where each running container serves HTTP, when it is reached over a socket (docker).
    endpoints: HashMap<String, std::net::SocketAddr>,
    /// Where each such container listens on its own network (readiness by TCP connect).
    listens: HashMap<String, std::net::SocketAddr>,
    status_retry_at: Option<Instant>,
    /// The pod was ended by someone else (e.g. `NodeLost`): nothing runs, nothing is written.
    ended_elsewhere: bool,
    /// The API says the pod is gone.
    deleted: bool,
    /// A pod made for a cold start: its start, in that trace, until it is first ready.
    starting: tracing::Span,
}

fn stamp(t: SystemTime) -> Option<String> {
    jiff::Timestamp::try_from(t).ok().map(|t| t.to_string())
}

fn reason_of(err: &SandboxError, source: &Source) -> &'static str {
    match err {
        SandboxError::Fetch { .. } if matches!(source, Source::Image(_)) => "ImagePullBackOff",
        SandboxError::Fetch { .. } => "ArtifactPullBackOff",
        SandboxError::Compile { .. } => "InvalidComponent",
        SandboxError::InvalidSpec(_) => spec::REASON_CONFIG,
        SandboxError::Unavailable { .. } => REASON_UNAVAILABLE,
        _ => "PrepareError",
    }
}

impl Worker {
    pub(crate) fn new(ctx: Arc<Ctx>, pod: Arc<Pod>, adopted: Vec<SandboxStatus>) -> Self {
        let life = Lifecycle::new(
            pod.spec.restart_policy,
            ctx.backoff,
            pod.spec.containers.iter().map(|c| c.name.as_str()),
        );
        Self {
            ctx,
            pod,
            life,
            prepared: Vec::new(),
            adopted: adopted.into_iter().map(|s| (s.id.clone(), s)).collect(),
            generation: HashMap::new(),
            exits: JoinSet::new(),
            probes: HashMap::new(),
            endpoints: HashMap::new(),
            listens: HashMap::new(),
            status_retry_at: None,
            ended_elsewhere: false,
            deleted: false,
            starting: tracing::Span::none(),
        }
    }

    fn normal(&self, reason: &str, message: String) {
        self.ctx
            .events
            .normal(ObjectReference::to(self.pod.as_ref()), reason, message);
    }

    fn warning(&self, reason: &str, message: String) {
        self.ctx
            .events
            .warning(ObjectReference::to(self.pod.as_ref()), reason, message);
    }

    fn api(&self) -> wisp_client::Api<Pod> {
        self.ctx.client.api::<Pod>(self.pod.metadata.namespace.as_deref())
    }

    /// Runs until the pod is deleted (its sandboxes are then stopped and removed) or the
    /// agent shuts down (sandboxes are left running, for the next agent to adopt).
    pub(crate) async fn run(
        mut self,
        mut updates: watch::Receiver<Option<Arc<Pod>>>,
        shutdown: CancellationToken,
    ) {
        let span =
            tracing::info_span!("pod", pod = %self.pod.metadata.name, ns = ?self.pod.metadata.namespace);
        // A pod made for a cold start and not started yet (an agent that restarts and adopts
        // its sandboxes does not add to that trace).
        let unstarted =
            self.adopted.is_empty() && self.pod.status.as_ref().is_none_or(|s| s.start_time.is_none());
        if let Some(tp) = self
            .pod
            .metadata
            .annotations
            .get(wisp_api::TRACEPARENT_ANNOTATION)
            && unstarted
        {
            self.starting = tracing::info_span!(
                target: wisp_telemetry::TARGET,
                "node.start",
                wisp.namespace = self.pod.metadata.namespace.as_deref().unwrap_or_default(),
                wisp.pod = %self.pod.metadata.name,
                wisp.node = %self.ctx.node,
            );
            wisp_telemetry::follow_traceparent(&self.starting, tp);
        }
        async move {
            loop {
                // `changed()` below marks the value seen, so read it on every pass.
                let latest = updates.borrow_and_update().clone();
                match latest {
                    // Our own status writes may be newer than the watch's copy.
                    Some(p) if newer(&p, &self.pod) => self.pod = p,
                    Some(_) => {}
                    None => return self.terminate().await,
                }
                if shutdown.is_cancelled() {
                    return;
                }
                self.step(&shutdown).await;
                if self.deleted {
                    return self.terminate().await;
                }
                let wakeup = self.wakeup();
                tokio::select! {
                    changed = updates.changed() => {
                        if changed.is_err() {
                            return; // the agent is gone
                        }
                    }
                    Some(done) = self.exits.join_next(), if !self.exits.is_empty() => {
                        if let Ok((name, generation, result)) = done {
                            self.on_exit(&name, generation, result);
                        }
                    }
                    () = sleep_until(wakeup) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
        .instrument(span)
        .await;
    }
}

impl Worker {
    /// One pass: react to the pod's state, prepare, start what is due, probe, report.
    async fn step(&mut self, shutdown: &CancellationToken) {
        if self.pod.phase().is_terminal() {
            // Ended without being ready: the start's span ends too.
            self.starting = tracing::Span::none();
        }
        if self.pod.phase().is_terminal() && !matches!(self.life.stage(), Stage::Done(_)) {
            if !self.ended_elsewhere {
                tracing::info!(phase = ?self.pod.phase(), reason = ?self.pod.status.as_ref().and_then(|s| s.reason.clone()),
                    "pod ended by the control plane; stopping its sandboxes");
                self.ended_elsewhere = true;
                self.stop_all(Duration::ZERO).await;
            }
            return;
        }
        if self.ended_elsewhere {
            return;
        }
        let now = Instant::now();
        if self.life.should_prepare(now) {
            // Steps of a traced start only (a span with no parent would start a trace).
            let preparing = if self.starting.is_none() {
                tracing::Span::none()
            } else {
                tracing::info_span!(target: wisp_telemetry::TARGET, parent: &self.starting, "prepare")
            };
            self.prepare(shutdown).instrument(preparing).await;
            tracing::debug!(took_us = now.elapsed().as_micros(), "prepared");
            if shutdown.is_cancelled() || self.deleted {
                return;
            }
        }
        let now = Instant::now();
        for name in self.life.due_starts(now) {
            let starting = if self.starting.is_none() {
                tracing::Span::none()
            } else {
                tracing::info_span!(target: wisp_telemetry::TARGET, parent: &self.starting, "container.start", container = %name)
            };
            self.start_container(&name).instrument(starting).await;
            tracing::debug!(container = %name, took_us = now.elapsed().as_micros(), "started");
        }
        self.run_probes().await;
        // The node's ingress learns of a change in readiness at once, before the status
        // write (and its watch) reach it — also while status writes are failing.
        if self.publish_readiness()
            && self
                .ctx
                .readiness
                .is_ready(self.pod.metadata.uid.as_deref().unwrap_or_default())
        {
            // Started: the cold start's node span ends here.
            self.starting = tracing::Span::none();
            // Just became ready: a request held for this pod was woken by that, onto this
            // worker thread's next-task slot. Give it the thread before the status write,
            // whose API call (in process under `wisp up`) would otherwise run first and keep it
            // waiting ~0.3 ms (a scheduling hint: the yielded task runs after the ready ones).
            // The status is for the rest of the cluster; the request is what a client waits for.
            tokio::task::yield_now().await;
        }
        if self.status_retry_at.is_none_or(|t| t <= Instant::now()) {
            self.sync_status().await;
        }
    }

    /// Tells the node's ingress (in process) whether this pod is ready; true if that changed.
    fn publish_readiness(&self) -> bool {
        let Some(uid) = &self.pod.metadata.uid else {
            return false;
        };
        let ready = self.life.ready()
            && self.pod.metadata.deletion_timestamp.is_none()
            && !self.ended_elsewhere
            && !self.deleted;
        self.ctx.readiness.set(uid, ready)
    }

    fn wakeup(&self) -> Option<Instant> {
        if self.ended_elsewhere {
            return None;
        }
        let probes = self.probes.values().filter_map(|p| p.next);
        self.life
            .next_wakeup()
            .into_iter()
            .chain(probes)
            .chain(self.status_retry_at)
            .min()
    }

    async fn prepare(&mut self, shutdown: &CancellationToken) {
        self.life.preparing();
        let began = Instant::now();
        let mut slow = false;
        // Report `Preparing` only when preparing is not instant (a compiled-cache hit is).
        let (ctx, pod) = (self.ctx.clone(), self.pod.clone());
        let work = async move { prepare(&ctx, &pod).await };
        tokio::pin!(work);
        let result = tokio::select! {
            r = &mut work => r,
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                slow = true;
                self.normal(REASON_PULLING, format!("preparing {}", self.sources()));
                self.sync_status().await;
                // Report what a slow preparation is doing (an image pull's progress).
                loop {
                    tokio::select! {
                        r = &mut work => break r,
                        () = tokio::time::sleep(PROGRESS_PERIOD) => {
                            let progress = self.progress();
                            if progress.is_some() && progress != self.life.message {
                                self.life.message = progress;
                                self.sync_status().await;
                            }
                        }
                        () = shutdown.cancelled() => return,
                    }
                }
            }
            () = shutdown.cancelled() => return,
        };
        match result {
            Ok(prepared) => {
                if slow {
                    self.normal(
                        REASON_PULLED,
                        format!(
                            "prepared {} in {} ms",
                            self.sources(),
                            began.elapsed().as_millis()
                        ),
                    );
                }
                self.prepared = prepared;
                self.life.prepared();
            }
            Err(e) => {
                tracing::warn!(reason = e.reason, message = %e.message, "cannot prepare the pod");
                self.warning(REASON_FAILED, format!("{}: {}", e.reason, e.message));
                let now = Instant::now();
                self.life.prepare_failed(now, e.reason, &e.message);
                if e.reason == REASON_UNAVAILABLE {
                    self.life.retry_prepare_by(now + UNAVAILABLE_RETRY);
                }
            }
        }
    }

    /// What a pod's containers run, for events: `image nginx, component sha256:ab…`.
    fn sources(&self) -> String {
        self.pod
            .spec
            .containers
            .iter()
            .map(|c| match (&c.image, &c.wasm) {
                (Some(image), _) => format!("image {image}"),
                (None, Some(wasm)) => format!("component {}", wasm.chars().take(19).collect::<String>()),
                (None, None) => format!("container {}", c.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What the runtimes say about this pod's preparation, if anything.
    fn progress(&self) -> Option<String> {
        let lines: Vec<String> = self
            .pod
            .spec
            .containers
            .iter()
            .filter_map(|c| {
                let source = spec::source_of(c).ok()?;
                let runtime = self.ctx.runtimes.get(c.runtime())?;
                runtime.progress(&SandboxSpec::new(
                    spec::sandbox_id(&self.pod, &c.name),
                    source,
                    Kind::Process,
                ))
            })
            .collect();
        (!lines.is_empty()).then(|| lines.join("; "))
    }

    async fn start_container(&mut self, name: &str) {
        let Some(p) = self.prepared.iter().find(|p| p.name == name) else {
            return;
        };
        let runtime = p.runtime.clone();
        let spec = p.spec.clone();
        let id = spec.id.clone();
        // Adopt what is already running for this container (left by a previous agent, or
        // found running after the runtime was unreachable) instead of starting a duplicate;
        // remove a previous run that has ended.
        let existing = match self.adopted.remove(&id) {
            Some(found) => Some(found),
            None => runtime.status(&id).await.ok(),
        };
        if let Some(found) = existing {
            if let State::Running { started_at } = found.state {
                tracing::info!(container = name, "adopted a running sandbox");
                self.set_endpoint(name, &found);
                self.life.started(name, Instant::now(), started_at);
                self.watch_exit(name, &runtime, &id);
                self.after_start(name, &spec);
                return;
            }
            if runtime.delete(&id).await.is_err() {
                let _ = runtime.kill(&id).await;
                let _ = runtime.delete(&id).await;
            }
        }
        if let Err(e) = runtime.create(&spec).await {
            tracing::warn!(container = name, error = %e, "cannot create the sandbox");
            self.warning(REASON_FAILED, format!("cannot create container {name}: {e}"));
            self.life
                .start_failed(name, Instant::now(), "CreateContainerError", &e.to_string());
            return;
        }
        if let Err(e) = runtime.start(&id).await {
            tracing::warn!(container = name, error = %e, "cannot start the sandbox");
            self.warning(REASON_FAILED, format!("cannot start container {name}: {e}"));
            let _ = runtime.delete(&id).await;
            self.life
                .start_failed(name, Instant::now(), "StartError", &e.to_string());
            return;
        }
        // The runtime's start time, so that an agent adopting this sandbox later reports the
        // same one.
        let started_at = match runtime.status(&id).await {
            Ok(status) => {
                self.set_endpoint(name, &status);
                match status.state {
                    State::Running { started_at } => started_at,
                    _ => SystemTime::now(),
                }
            }
            Err(_) => SystemTime::now(),
        };
        self.normal(REASON_STARTED, format!("started container {name}"));
        self.life.started(name, Instant::now(), started_at);
        self.watch_exit(name, &runtime, &id);
        self.after_start(name, &spec);
    }

    fn watch_exit(&mut self, name: &str, runtime: &Arc<dyn Sandbox>, id: &SandboxId) {
        let generation = self.generation.entry(name.to_owned()).or_default();
        *generation += 1;
        let generation = *generation;
        let runtime = runtime.clone();
        let id = id.clone();
        let name = name.to_owned();
        self.exits.spawn(async move {
            let r = runtime.wait(&id).await;
            (name, generation, r)
        });
    }

    fn set_endpoint(&mut self, name: &str, status: &SandboxStatus) {
        match status.endpoint {
            Some(Endpoint::Http(addr)) => {
                self.endpoints.insert(name.to_owned(), addr);
            }
            _ => {
                self.endpoints.remove(name);
            }
        }
        match status.listen {
            Some(addr) => {
                self.listens.insert(name.to_owned(), addr);
            }
            None => {
                self.listens.remove(name);
            }
        }
    }

    /// Whether `name` runs in a sandbox reached over a socket (not in process).
    fn over_socket(&self, name: &str) -> bool {
        self.pod
            .spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .is_some_and(|c| c.runtime() != wisp_api::RUNTIME_WASM)
    }

    /// Readiness after a start: probed when the container declares a readiness probe (HTTP,
    /// or a TCP connect for a container reached over a socket);
    /// a container with ports reached over a socket without one is ready once it accepts a
    /// connection on its own address or answers HTTP on its published port; anything else is
    /// ready at once (an HTTP component is ready when it is instantiable,
    /// which `create` checked).
    fn after_start(&mut self, name: &str, spec: &SandboxSpec) {
        if let Some(p) = self.probe_of(name, spec) {
            let delay = Duration::from_secs(u64::try_from(p.initial_delay_seconds.max(0)).unwrap_or(0));
            self.probes.insert(
                name.to_owned(),
                ProbeState {
                    next: Some(Instant::now() + delay),
                    ..ProbeState::default()
                },
            );
        } else if spec.kind == Kind::Http && self.over_socket(name) {
            self.probes.insert(
                name.to_owned(),
                ProbeState {
                    next: Some(Instant::now()),
                    until_first_answer: true,
                    ..ProbeState::default()
                },
            );
        } else {
            self.life.set_ready(name, true);
        }
    }

    fn probe_of(&self, name: &str, spec: &SandboxSpec) -> Option<wisp_api::Probe> {
        let c = self.pod.spec.containers.iter().find(|c| c.name == name)?;
        let probe = c.readiness_probe.clone()?;
        let reachable = self.endpoints.contains_key(name)
            || (spec.kind == Kind::Http && self.ctx.runtimes.serves_in_process(c.runtime()));
        let probed =
            (probe.http_get.is_some() && reachable) || (probe.tcp_socket.is_some() && self.over_socket(name));
        probed.then_some(probe)
    }

    async fn run_probes(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .probes
            .iter()
            .filter(|(_, p)| p.next.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let running = self
                .life
                .container(&name)
                .is_some_and(lifecycle::Container::is_running);
            if !running {
                self.probes.remove(&name);
                continue;
            }
            if self.probes.get(&name).is_some_and(|p| p.until_first_answer) {
                if self.first_answer(&name).await {
                    self.probes.remove(&name);
                    self.life.set_ready(&name, true);
                } else if let Some(state) = self.probes.get_mut(&name) {
                    state.failures = state.failures.saturating_add(1);
                    let doublings = u32::try_from(state.failures.clamp(0, 10)).unwrap_or(10);
                    let delay = (FIRST_ANSWER_PERIOD * 2u32.pow(doublings)).min(FIRST_ANSWER_MAX);
                    state.next = Some(Instant::now() + delay);
                }
                continue;
            }
            let Some(probe) = self
                .pod
                .spec
                .containers
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.readiness_probe.clone())
            else {
                continue;
            };
            let path = probe
                .http_get
                .as_ref()
                .map_or("/", |g| g.path.as_str())
                .to_owned();
            // A probe runs inline in the pod's worker: a container that never answers holds it
            // (deletion, shutdown) for at most PROBE_TIMEOUT_MAX, whatever the pod asks.
            let timeout = Duration::from_secs(u64::try_from(probe.timeout_seconds.max(1)).unwrap_or(1))
                .min(PROBE_TIMEOUT_MAX);
            let ok = if probe.tcp_socket.is_some() {
                self.accepts(&name, timeout).await
            } else {
                self.answers(&name, &path, true, timeout).await
            };
            if !ok {
                let how = if probe.tcp_socket.is_some() {
                    "no TCP connection".to_owned()
                } else {
                    format!("no 2xx/3xx answer to GET {path}")
                };
                self.warning(
                    REASON_UNHEALTHY,
                    format!("readiness probe of container {name} failed: {how} within {timeout:?}"),
                );
            }
            let Some(state) = self.probes.get_mut(&name) else {
                continue;
            };
            if ok {
                state.successes += 1;
                state.failures = 0;
            } else {
                state.failures += 1;
                state.successes = 0;
            }
            let period = Duration::from_secs(u64::try_from(probe.period_seconds.max(1)).unwrap_or(10));
            state.next = Some(Instant::now() + period);
            let ready_now = self.life.container(&name).is_some_and(|c| c.ready);
            if !ready_now && state.successes >= probe.success_threshold.max(1) {
                self.life.set_ready(&name, true);
            } else if ready_now && state.failures >= probe.failure_threshold.max(1) {
                self.life.set_ready(&name, false);
            }
        }
    }

    /// Whether a container without a readiness probe is up: it accepts a TCP connection on
    /// its own address, or answers HTTP on its published port (not a bare connect there:
    /// Docker's proxy accepts before the program listens). Its addresses are read again
    /// while unknown.
    async fn first_answer(&mut self, name: &str) -> bool {
        if !self.endpoints.contains_key(name) {
            self.read_addresses(name).await;
        }
        if !self.endpoints.contains_key(name) {
            return false;
        }
        if let Some(addr) = self.listens.get(name).copied() {
            // Short: where container addresses are not routable (rootless Docker, a VM) the
            // HTTP check below decides.
            let connect = tokio::net::TcpStream::connect(addr);
            if matches!(
                tokio::time::timeout(Duration::from_millis(50), connect).await,
                Ok(Ok(_))
            ) {
                return true;
            }
        }
        self.answers(name, "/", false, Duration::from_millis(500)).await
    }

    /// Reads container `name`'s addresses (published endpoint, own address) from its runtime.
    async fn read_addresses(&mut self, name: &str) {
        if let Some(p) = self.prepared.iter().find(|p| p.name == name)
            && let Ok(status) = p.runtime.status(&p.spec.id).await
        {
            self.set_endpoint(name, &status);
        }
    }

    /// A `tcpSocket` probe: whether the container accepts a TCP connection on its own address
    /// (its first port, which admission holds the probe's port to) within `timeout`. Not on
    /// the published port: Docker's proxy there accepts before the program listens. Its
    /// address is read again while unknown.
    async fn accepts(&mut self, name: &str, timeout: Duration) -> bool {
        if !self.listens.contains_key(name) {
            self.read_addresses(name).await;
        }
        let Some(addr) = self.listens.get(name).copied() else {
            return false;
        };
        matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        )
    }

    /// One HTTP GET of `path` to the container: over its published address when it has one,
    /// else in process (through its runtime's in-process HTTP). With `need_success`, only a
    /// 2xx/3xx counts; without, any HTTP answer does.
    async fn answers(&self, name: &str, path: &str, need_success: bool, timeout: Duration) -> bool {
        let Ok(request) = http::Request::get(format!("http://localhost{path}"))
            .header(http::header::USER_AGENT, "wisp-probe")
            .body(Empty::<Bytes>::new())
        else {
            return false;
        };
        let judge =
            |status: http::StatusCode| !need_success || status.is_success() || status.is_redirection();
        let call = async {
            if let Some(addr) = self.endpoints.get(name) {
                let status = probe::get(*addr, request).await?;
                return Some(judge(status));
            }
            let container = self.pod.spec.containers.iter().find(|c| c.name == name)?;
            let runtime = self.ctx.runtimes.get(container.runtime())?;
            let http = runtime.in_process_http()?;
            let id = spec::sandbox_id(&self.pod, name);
            let request = request.map(|b| b.map_err(|never| match never {}).boxed_unsync());
            let resp = http.handle(&id, request).await.ok()?;
            let ok = judge(resp.status());
            resp.into_body().collect().await.ok()?;
            Some(ok)
        };
        matches!(tokio::time::timeout(timeout, call).await, Ok(Some(true)))
    }

    fn on_exit(&mut self, name: &str, generation: u64, result: Result<ExitStatus, SandboxError>) {
        if self.generation.get(name) != Some(&generation) {
            return;
        }
        let exit = result.unwrap_or_else(|e| ExitStatus {
            exit_code: 137,
            reason: Some(format!("Lost: {e}")),
        });
        tracing::info!(container = name, code = exit.exit_code, reason = ?exit.reason, "container exited");
        if exit.reason.as_deref() == Some(REASON_OOM_KILLED) {
            self.warning(
                REASON_OOM_KILLED,
                format!("container {name} ran out of memory and was killed"),
            );
        }
        self.probes.remove(name);
        self.endpoints.remove(name);
        self.listens.remove(name);
        let code = exit.exit_code;
        if let Some(at) = self.life.exited(name, exit, Instant::now(), SystemTime::now()) {
            let delay = at.saturating_duration_since(Instant::now());
            self.warning(
                REASON_BACK_OFF,
                format!(
                    "back-off restarting container {name} (exit code {code}), next start in {} s",
                    delay.as_secs_f64().ceil()
                ),
            );
        }
    }

    /// The status this worker would report now, from the pod's current one.
    fn desired_status(&self) -> PodStatus {
        let mut st = self.pod.status.clone().unwrap_or_default();
        let now = jiff::Timestamp::now().to_string();
        st.phase = self.life.phase();
        st.node_name = Some(self.ctx.node.clone());
        st.host_ip = Some(self.ctx.address.clone());
        st.pod_ip = matches!(self.life.stage(), Stage::Running).then(|| self.ctx.address.clone());
        // A container reached over a socket (docker) serves on its published port.
        st.host_port = self
            .pod
            .spec
            .containers
            .iter()
            .find_map(|c| self.endpoints.get(&c.name))
            .map(std::net::SocketAddr::port);
        if st.start_time.is_none() {
            st.start_time = Some(now.clone());
        }
        st.reason = None;
        st.message = self.life.message.clone();
        st.container_statuses = self
            .life
            .containers()
            .iter()
            .map(|c| container_status(&self.pod, c))
            .collect();
        let ready = self.life.ready();
        let (reason, message) = if ready {
            ("PodReady", String::new())
        } else {
            let waiting: Vec<&str> = self
                .life
                .containers()
                .iter()
                .filter(|c| !c.ready)
                .map(|c| c.name.as_str())
                .collect();
            (
                "ContainersNotReady",
                format!("containers not ready: {}", waiting.join(", ")),
            )
        };
        for type_ in [wisp_api::POD_READY, wisp_api::CONTAINERS_READY] {
            wisp_api::meta::set_condition(
                &mut st.conditions,
                Condition {
                    type_: type_.into(),
                    status: if ready { "True" } else { "False" }.into(),
                    reason: Some(reason.into()),
                    message: (!message.is_empty()).then(|| message.clone()),
                    ..Condition::default()
                },
                &now,
            );
        }
        st
    }

    /// Writes the status when it differs from the pod's, as a CAS on the pod's
    /// resourceVersion; on a conflict the pod is read again and the next pass decides.
    async fn sync_status(&mut self) {
        let desired = self.desired_status();
        if self.pod.status.as_ref() == Some(&desired) {
            self.status_retry_at = None;
            return;
        }
        let mut next = (*self.pod).clone();
        next.status = Some(desired);
        match self.api().replace_status(&next).await {
            Ok(written) => {
                self.pod = Arc::new(written);
                self.status_retry_at = None;
            }
            Err(e) if e.code() == Some(409) => match self.api().get_opt(&self.pod.metadata.name).await {
                Ok(Some(fresh)) if fresh.metadata.uid == self.pod.metadata.uid => {
                    self.pod = Arc::new(fresh);
                    self.status_retry_at = Some(Instant::now());
                }
                Ok(_) => self.deleted = true,
                Err(e) => self.retry_status_later(&e),
            },
            Err(e) if e.code() == Some(404) => self.deleted = true,
            Err(e) => self.retry_status_later(&e),
        }
    }

    fn retry_status_later(&mut self, e: &wisp_client::ClientError) {
        tracing::warn!(error = %e, "cannot write the pod status; retrying");
        self.status_retry_at = Some(Instant::now() + Duration::from_millis(500));
    }

    async fn stop_all(&mut self, grace: Duration) {
        if let Some(uid) = &self.pod.metadata.uid {
            self.ctx.readiness.set(uid, false);
        }
        self.exits.abort_all();
        self.probes.clear();
        self.endpoints.clear();
        self.listens.clear();
        for p in &self.prepared {
            match p.runtime.stop(&p.spec.id, grace).await {
                Ok(_) | Err(SandboxError::NotFound(_)) => {}
                Err(e) => tracing::warn!(container = %p.name, error = %e, "cannot stop the sandbox"),
            }
        }
        for (id, found) in std::mem::take(&mut self.adopted) {
            if let Some(runtime) = self.runtime_of(&found) {
                let _ = runtime.stop(&id, grace).await;
                let _ = runtime.delete(&id).await;
            }
        }
    }

    fn runtime_of(&self, found: &SandboxStatus) -> Option<Arc<dyn Sandbox>> {
        self.ctx.runtimes.get(found.labels.get(crate::LABEL_RUNTIME)?)
    }

    /// The pod is gone: stop its sandboxes within its grace period, remove them and its
    /// volumes.
    async fn terminate(mut self) {
        let grace = Duration::from_secs(
            u64::try_from(
                self.pod
                    .spec
                    .termination_grace_period_seconds
                    .unwrap_or(30)
                    .max(0),
            )
            .unwrap_or(30),
        );
        tracing::info!(?grace, "pod deleted; stopping its sandboxes");
        for p in &self.prepared {
            self.normal(
                REASON_KILLING,
                format!("stopping container {} (grace {} s)", p.name, grace.as_secs()),
            );
        }
        self.stop_all(grace).await;
        for p in &self.prepared {
            match p.runtime.delete(&p.spec.id).await {
                Ok(()) | Err(SandboxError::NotFound(_)) => {}
                Err(e) => tracing::warn!(container = %p.name, error = %e, "cannot remove the sandbox"),
            }
        }
        if let Some(uid) = &self.pod.metadata.uid {
            self.ctx.readiness.forget(uid);
            let dir = self.ctx.pods_dir.join(uid);
            if dir.exists()
                && let Err(e) = tokio::fs::remove_dir_all(&dir).await
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the pod directory");
            }
        }
    }
}

fn container_status(pod: &Pod, c: &lifecycle::Container) -> ContainerStatus {
    let terminated = |t: &Terminated| ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit.exit_code,
            reason: t.exit.reason.clone().or_else(|| {
                Some(
                    if t.exit.exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .into(),
                )
            }),
            message: None,
            started_at: t.started_at.and_then(stamp),
            finished_at: stamp(t.finished_at),
        }),
        ..ContainerState::default()
    };
    let state = match &c.state {
        lifecycle::ContainerState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        lifecycle::ContainerState::Running { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: stamp(*started_at),
            }),
            ..ContainerState::default()
        },
        lifecycle::ContainerState::Terminated(t) => terminated(t),
    };
    let id = spec::sandbox_id(pod, &c.name);
    let runtime = pod
        .spec
        .containers
        .iter()
        .find(|x| x.name == c.name)
        .map_or("wasm", wisp_api::Container::runtime);
    ContainerStatus {
        name: c.name.clone(),
        ready: c.ready,
        restart_count: c.restarts,
        state: Some(state),
        last_state: c.last_terminated.as_ref().map(terminated),
        container_id: Some(format!("{runtime}://{id}")),
    }
}

/// Resolves the pod's containers and has each runtime fetch and compile (or pull) its code.
async fn prepare(ctx: &Ctx, pod: &Pod) -> Result<Vec<Prepared>, PrepareError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("unknown");
    let drafts = spec::drafts(&ctx.client, &ctx.oci, pod, &ctx.pods_dir.join(uid)).await?;
    let mut out = Vec::with_capacity(drafts.len());
    for (draft, c) in drafts.into_iter().zip(&pod.spec.containers) {
        let Some(runtime) = ctx.runtimes.get(draft.runtime) else {
            return Err(PrepareError {
                reason: REASON_UNAVAILABLE,
                message: format!(
                    "container {:?} needs the {} runtime, which node {} does not have",
                    c.name, draft.runtime, ctx.node
                ),
            });
        };
        let mut spec = draft.spec;
        runtime.prepare(&spec).await.map_err(|e| PrepareError {
            reason: reason_of(&e, &spec.source),
            message: format!("container {:?}: {e}", c.name),
        })?;
        spec.kind = runtime.kind(&spec).await.map_err(|e| PrepareError {
            reason: reason_of(&e, &spec.source),
            message: format!("container {:?}: {e}", c.name),
        })?;
        out.push(Prepared {
            name: c.name.clone(),
            runtime,
            spec,
        });
    }
    Ok(out)
}

/// Whether `a` is a later version of the pod than `b` (by resourceVersion).
fn newer(a: &Pod, b: &Pod) -> bool {
    let rv = |p: &Pod| {
        p.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (rv(a), rv(b)) {
        (Some(x), Some(y)) => x > y,
        _ => true,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
