//! wisp-sandbox-wasm owns running Wasm components on a node with wasmtime: one [`Engine`] per
//! node (Cranelift, pooling allocator when the host allows it, epoch interruption driven by a
//! ticker thread), components fetched by digest, verified, compiled once and cached on disk,
//! `wasi:cli/run` components as processes with an exit status and captured logs, and
//! `wasi:http/proxy` components served in-process — the contract's [`InProcessHttp`]
//! capability, or [`WasmSandbox::handle`] directly — with a fresh `Store` per request, a
//! memory cap and a deadline.
//!
//! Guests get no ambient authority: exactly the spec's env and args, files only through the
//! spec's mounts (preopened directories), no sockets, outbound HTTP only to the spec's allowed
//! hosts.
//!
//! It must not know about the API server, pods as API objects, or Docker; it implements the
//! [`Sandbox`] trait of `wisp-sandbox` and nothing of Wisp above it.
//!
//! [`Engine`]: wasmtime::Engine

mod component;
mod engine;
#[doc(hidden)]
mod host;
mod http;
mod kind;
mod logs;
mod outbound;
mod process;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime::component::Linker;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wisp_sandbox::{
    ArtifactSource, BoxError, Endpoint, ExitStatus, HttpBody, InProcessHttp, Kind, LogLine, LogOptions,
    Result, Sandbox, SandboxError, SandboxId, SandboxSpec, SandboxStatus, State,
};

pub use crate::component::digest_of;
pub use crate::http::InstantiateTimings;
pub use wasmtime_wasi_http::Error as WasiHttpError;
pub use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
pub use wisp_sandbox::HandleError;

use crate::host::{CtxTemplate, Host};
use crate::logs::LogBuffer;
use crate::process::{KILLED, exit};

/// How the node's wasm runtime is set up.
#[derive(Clone, Debug)]
pub struct WasmConfig {
    /// Fetched blobs (`blobs/`) and compiled code (`compiled/`, wasmtime's cache) live here.
    pub cache_dir: PathBuf,
    /// Use the pooling allocator when the host allows it (else on-demand).
    pub pooling: bool,
    /// Component instances alive at once (pool size): running processes + in-flight requests.
    pub max_instances: u32,
    /// Largest linear memory any instance may have (a pool slot's size).
    pub max_memory_per_instance: usize,
    /// Bytes of each pooled memory kept resident between instances (1/8 of it for tables);
    /// default 2 MiB. Within it a memory is reset in place (its dirty pages with
    /// `pagemap_scan`, else the whole first `keep_resident` bytes by `memset` and copying its
    /// data image back): no `madvise`, so no page faults on the next instance and no TLB
    /// shootdown of the other cores per request (a Rust guest's initial memory — 1 MiB of stack
    /// plus its data — is just over 1 MiB; with 1 MiB kept, every request paid both, and the
    /// hello component served half the requests per second at 16 connections,
    /// BENCHMARKS.md). What lies beyond is `madvise`d (and, with `pagemap_scan`, whatever the
    /// scan cannot cover: swapped-out pages, more than 32 separate dirty runs). Costs up to
    /// this much resident memory per pool slot used.
    pub keep_resident: usize,
    /// Reset only the slot's private pages within the kept-resident bytes — those the
    /// instance (or an earlier one since they were last dropped) wrote — found with Linux's
    /// `PAGEMAP_SCAN` (6.7+; where it is unavailable wasmtime falls back to the `memset`),
    /// instead of `memset`ting all of them; on by default. Measured
    /// (`examples/bench_instantiate.rs`): instance teardown 15 → 3 µs, in-process request p50
    /// about halved for the hello component; warm requests through the ingress 1.6–1.9× faster
    /// (BENCHMARKS.md).
    ///
    /// Dirty pages that are swapped out or being migrated at teardown are decommitted: the
    /// workspace carries that fix to wasmtime 48 (`sandboxes/wasm/vendor/`, cf.
    /// bytecodealliance/wasmtime#14357), shown by `tests/swap.rs`.
    pub pagemap_scan: bool,
    /// Epoch interruption granularity: deadlines are precise to one tick.
    pub epoch_tick: Duration,
    pub max_wasm_stack: usize,
    /// Log lines kept per sandbox.
    pub log_lines: usize,
    /// Request deadline when the spec sets none.
    pub default_request_timeout: Duration,
    /// The node's ingress: outbound calls to `<service>.<namespace>.svc` (when allowed by
    /// the spec) are sent there, which routes them to the Service's ready pods.
    pub service_gateway: Option<std::net::SocketAddr>,
    /// Where guests' other outbound calls may connect, checked on the resolved address (no
    /// loopback, link-local, private ranges or node listeners unless allowed).
    pub egress: wisp_sandbox::EgressPolicy,
    /// HTTP requests one namespace may have running at once on this node (its share of
    /// `max_instances`); past it a request is refused at once (503), so one tenant's flood
    /// never takes the slots another's requests need.
    pub namespace_slots: u32,
    /// The longest a request may run, whatever its spec asks for.
    pub max_request_timeout: Duration,
    /// The memory cap of an instance whose spec sets no memory limit (default 256 MiB; a
    /// namespace's LimitRange gives its containers their own defaults).
    pub default_memory_limit: Option<usize>,
}

impl WasmConfig {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            pooling: true,
            max_instances: 1000,
            max_memory_per_instance: 1 << 30,
            keep_resident: 2 << 20,
            pagemap_scan: true,
            epoch_tick: Duration::from_millis(10),
            max_wasm_stack: 512 << 10,
            log_lines: 10_000,
            default_request_timeout: Duration::from_secs(30),
            service_gateway: None,
            egress: wisp_sandbox::EgressPolicy::default(),
            namespace_slots: 250,
            max_request_timeout: Duration::from_secs(600),
            default_memory_limit: Some(256 << 20),
        }
    }
}

enum Runnable {
    Command(CommandPre<Host>),
    Proxy(ProxyPre<Host>),
}

struct Entry {
    spec: SandboxSpec,
    runnable: Runnable,
    template: Arc<CtxTemplate>,
    logs: Arc<LogBuffer>,
    state: watch::Sender<State>,
    /// Kill: ends the process / every in-flight request at once.
    cancel: CancellationToken,
    /// An HTTP sandbox being stopped takes no new requests.
    stopping: CancellationToken,
    /// In-flight requests (HTTP) or the process task.
    tasks: TaskTracker,
}

impl Entry {
    fn status(&self) -> SandboxStatus {
        let state = self.state.borrow().clone();
        let endpoint = match (&self.runnable, &state) {
            (Runnable::Proxy(_), State::Running { .. }) => Some(Endpoint::InProcess),
            _ => None,
        };
        SandboxStatus {
            id: self.spec.id.clone(),
            state,
            endpoint,
            listen: None,
            labels: self.spec.labels.clone(),
        }
    }

    fn exited(&self) -> Option<ExitStatus> {
        match &*self.state.borrow() {
            State::Exited {
                exit_code, reason, ..
            } => Some(ExitStatus {
                exit_code: *exit_code,
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// Records the exit (once) and ends log followers.
    fn finish(&self, status: &ExitStatus) {
        for sink in self.template.sinks() {
            sink.finish();
        }
        self.logs.close();
        self.state.send_if_modified(|s| {
            if matches!(s, State::Exited { .. }) {
                return false;
            }
            *s = State::Exited {
                exit_code: status.exit_code,
                reason: status.reason.clone(),
                finished_at: SystemTime::now(),
            };
            true
        });
    }

    async fn wait(&self) -> ExitStatus {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we hold it.
        let _ = rx.wait_for(|s| matches!(s, State::Exited { .. })).await;
        self.exited().unwrap_or_else(|| exit(KILLED, Some("Killed")))
    }
}

struct Inner {
    engine: engine::EngineHandle,
    linker: Linker<Host>,
    components: component::Components,
    sandboxes: Mutex<HashMap<SandboxId, Arc<Entry>>>,
    config: WasmConfig,
    egress: Arc<wisp_sandbox::EgressPolicy>,
    /// Each namespace's share of the instance slots, for HTTP requests.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Every sandbox's task and request; cancelled when the runtime is dropped.
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.tasks.close();
    }
}

/// The wasm runtime of one node. Cheap to clone; the engine's ticker thread stops and every
/// guest is cancelled when the last clone is dropped.
#[derive(Clone)]
pub struct WasmSandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WasmSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmSandbox")
            .field("pooling", &self.inner.engine.pooling)
            .field("cache_dir", &self.inner.config.cache_dir)
            .finish_non_exhaustive()
    }
}

impl WasmSandbox {
    /// Builds the engine and linker. `artifacts` serves [`Source::WasmDigest`] sources.
    ///
    /// [`Source::WasmDigest`]: wisp_sandbox::Source::WasmDigest
    pub fn new(config: WasmConfig, artifacts: Option<Arc<dyn ArtifactSource>>) -> Result<Self> {
        let unavailable = |e: wasmtime::Error| SandboxError::unavailable("cannot set up the wasm engine", e);
        let engine = engine::build(&config).map_err(unavailable)?;
        let mut linker = Linker::new(&engine.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(unavailable)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(unavailable)?;
        let components = component::Components::new(engine.engine.clone(), &config.cache_dir, artifacts);
        tracing::info!(pooling = engine.pooling, cache = %config.cache_dir.display(), "wasm runtime ready");
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                components,
                sandboxes: Mutex::default(),
                egress: Arc::new(config.egress.clone()),
                slots: Mutex::default(),
                config,
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// Whether the engine got the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.inner.engine.pooling
    }

    fn sandboxes(&self) -> MutexGuard<'_, HashMap<SandboxId, Arc<Entry>>> {
        self.inner.sandboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, id: &SandboxId) -> Result<Arc<Entry>> {
        self.sandboxes()
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxError::NotFound(id.clone()))
    }

    /// Serves one request with a started `wasi:http/proxy` sandbox, in process: a fresh store
    /// and instance per request, the response streamed as the guest writes it.
    pub async fn handle<B>(
        &self,
        id: &SandboxId,
        request: hyper::Request<B>,
    ) -> std::result::Result<hyper::Response<HyperOutgoingBody>, HandleError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        use http_body_util::BodyExt;
        let entry = self.serving(id)?;
        let slot = self.slot(&entry)?;
        let resp = http::handle(self.http_request(&entry)?, request, slot).await?;
        Ok(resp.map(BodyExt::boxed_unsync))
    }

    /// One of the sandbox's namespace's request slots, or `Busy` when it uses all of its share.
    fn slot(&self, entry: &Entry) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, HandleError> {
        let ns = entry
            .spec
            .labels
            .get(wisp_sandbox::LABEL_NAMESPACE)
            .cloned()
            .unwrap_or_default();
        let share = self.inner.config.namespace_slots.max(1);
        let sem = {
            let mut slots = self
                .inner
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slots.len() > 4096 {
                slots.retain(|_, s| Arc::strong_count(s) > 1);
            }
            slots
                .entry(ns.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(share as usize)))
                .clone()
        };
        sem.try_acquire_owned().map_err(|_| HandleError::Busy {
            namespace: ns,
            slots: share,
        })
    }

    /// Times what [`handle`](Self::handle) does before it calls the guest — a fresh store from
    /// the sandbox's template, its memory limiter and deadline, and the component's
    /// instantiation through the sandbox's engine, linker and pre-instantiation — then drops the
    /// instance without calling it. For benchmarks (`examples/bench_instantiate.rs`): it is
    /// the per-request cost that is not the guest's own work.
    pub async fn instantiate_only(
        &self,
        id: &SandboxId,
    ) -> std::result::Result<InstantiateTimings, HandleError> {
        let entry = self.serving(id)?;
        http::instantiate_only(self.http_request(&entry)?).await
    }

    /// Whether `id` is a started `wasi:http/proxy` sandbox taking requests now (an ingress
    /// checks before it hands a request over, so a stopping sandbox's request goes elsewhere).
    pub fn is_serving(&self, id: &SandboxId) -> bool {
        self.serving(id).is_ok()
    }

    /// A started `wasi:http/proxy` sandbox that takes requests.
    fn serving(&self, id: &SandboxId) -> std::result::Result<Arc<Entry>, HandleError> {
        let entry = self.entry(id).map_err(|_| HandleError::NotFound(id.clone()))?;
        if !matches!(entry.runnable, Runnable::Proxy(_))
            || !matches!(*entry.state.borrow(), State::Running { .. })
            || entry.stopping.is_cancelled()
        {
            return Err(HandleError::NotServing(id.clone()));
        }
        Ok(entry)
    }

    fn http_request<'a>(&'a self, entry: &'a Entry) -> std::result::Result<http::Request<'a>, HandleError> {
        let Runnable::Proxy(pre) = &entry.runnable else {
            return Err(HandleError::NotServing(entry.spec.id.clone()));
        };
        Ok(http::Request {
            engine: &self.inner.engine.engine,
            pre,
            template: &entry.template,
            deadline: entry
                .spec
                .limits
                .request_timeout
                .unwrap_or(self.inner.config.default_request_timeout)
                .min(self.inner.config.max_request_timeout),
            epoch_tick: self.inner.config.epoch_tick,
            tasks: &entry.tasks,
            cancel: &entry.cancel,
        })
    }

    async fn create_entry(&self, spec: &SandboxSpec) -> Result<()> {
        if self.sandboxes().contains_key(&spec.id) {
            return Err(SandboxError::AlreadyExists(spec.id.clone()));
        }
        let component = self.inner.components.load(&spec.source).await?;
        let compile = |e: wasmtime::Error| SandboxError::compile(spec.id.to_string(), e);
        let pre = self.inner.linker.instantiate_pre(&component).map_err(compile)?;
        let runnable = match spec.kind {
            Kind::Process => Runnable::Command(CommandPre::new(pre).map_err(compile)?),
            Kind::Http => Runnable::Proxy(ProxyPre::new(pre).map_err(compile)?),
        };
        let logs = LogBuffer::new(self.inner.config.log_lines);
        let mut template = CtxTemplate::new(spec, &spec.id.to_string(), &logs);
        template.gateway = self.inner.config.service_gateway;
        template.egress = self.inner.egress.clone();
        template.default_memory(self.inner.config.default_memory_limit);
        template.validate()?;
        let entry = Arc::new(Entry {
            spec: spec.clone(),
            runnable,
            template: Arc::new(template),
            logs,
            state: watch::Sender::new(State::Created),
            cancel: self.inner.shutdown.child_token(),
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        match self.sandboxes().entry(spec.id.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => {
                Err(SandboxError::AlreadyExists(spec.id.clone()))
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(entry);
                Ok(())
            }
        }
    }

    fn start_entry(&self, entry: &Arc<Entry>) -> Result<()> {
        let started = entry.state.send_if_modified(|s| {
            if !matches!(s, State::Created) {
                return false;
            }
            *s = State::Running {
                started_at: SystemTime::now(),
            };
            true
        });
        if !started {
            return Err(SandboxError::WrongState {
                id: entry.spec.id.clone(),
                reason: "already started".into(),
            });
        }
        if let Runnable::Command(pre) = &entry.runnable {
            let run = process::run(
                self.inner.engine.engine.clone(),
                pre.clone(),
                entry.template.clone(),
            );
            let task_entry = entry.clone();
            let fut = async move {
                let status = tokio::select! {
                    s = run => s,
                    () = task_entry.cancel.cancelled() => exit(KILLED, Some("Killed")),
                };
                task_entry.finish(&status);
            };
            entry.tasks.spawn(self.inner.tasks.track_future(fut));
        }
        Ok(())
    }

    async fn stop_entry(&self, entry: &Arc<Entry>, grace: Duration) -> ExitStatus {
        if let Some(done) = entry.exited() {
            return done;
        }
        if matches!(*entry.state.borrow(), State::Created) {
            entry.cancel.cancel();
            entry.finish(&exit(KILLED, Some("Killed")));
            return entry.wait().await;
        }
        match entry.runnable {
            Runnable::Command(_) => {
                // WASI has no signals: give the program its grace period, then kill it.
                if tokio::time::timeout(grace, entry.wait()).await.is_err() {
                    entry.cancel.cancel();
                }
                entry.wait().await
            }
            Runnable::Proxy(_) => {
                entry.stopping.cancel();
                entry.tasks.close();
                let status = if tokio::time::timeout(grace, entry.tasks.wait()).await.is_ok() {
                    exit(0, None)
                } else {
                    entry.cancel.cancel();
                    entry.tasks.wait().await;
                    exit(KILLED, Some("Killed"))
                };
                entry.finish(&status);
                entry.wait().await
            }
        }
    }

    async fn kill_entry(&self, entry: &Arc<Entry>) {
        entry.cancel.cancel();
        let running_command = matches!(entry.runnable, Runnable::Command(_))
            && matches!(*entry.state.borrow(), State::Running { .. });
        if running_command {
            // The task records the exit as it ends.
            entry.wait().await;
        } else {
            entry.stopping.cancel();
            entry.finish(&exit(KILLED, Some("Killed")));
        }
    }
}

impl Sandbox for WasmSandbox {
    fn runtime(&self) -> &'static str {
        "wasm"
    }

    fn prepare<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<()>> {
        async move {
            self.inner.components.load(&spec.source).await?;
            Ok(())
        }
        .boxed()
    }

    fn create<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<()>> {
        self.create_entry(spec).boxed()
    }

    fn start<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<()>> {
        async move {
            let entry = self.entry(id)?;
            self.start_entry(&entry)
        }
        .boxed()
    }

    fn stop<'a>(&'a self, id: &'a SandboxId, grace: Duration) -> BoxFuture<'a, Result<ExitStatus>> {
        async move {
            let entry = self.entry(id)?;
            Ok(self.stop_entry(&entry, grace).await)
        }
        .boxed()
    }

    fn kill<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<()>> {
        async move {
            let entry = self.entry(id)?;
            self.kill_entry(&entry).await;
            Ok(())
        }
        .boxed()
    }

    fn wait<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<ExitStatus>> {
        async move {
            let entry = self.entry(id)?;
            Ok(entry.wait().await)
        }
        .boxed()
    }

    fn status<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<SandboxStatus>> {
        async move { Ok(self.entry(id)?.status()) }.boxed()
    }

    fn logs<'a>(
        &'a self,
        id: &'a SandboxId,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<BoxStream<'static, LogLine>>> {
        async move { Ok(self.entry(id)?.logs.stream(options)) }.boxed()
    }

    fn delete<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<()>> {
        async move {
            let mut map = self.sandboxes();
            let entry = map.get(id).ok_or_else(|| SandboxError::NotFound(id.clone()))?;
            if matches!(*entry.state.borrow(), State::Running { .. }) {
                return Err(SandboxError::WrongState {
                    id: id.clone(),
                    reason: "still running: stop or kill it first".into(),
                });
            }
            if let Some(entry) = map.remove(id) {
                entry.cancel.cancel();
            }
            Ok(())
        }
        .boxed()
    }

    fn usage<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<wisp_sandbox::Usage>> {
        async move { Ok(self.entry(id)?.template.usage.usage()) }.boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxStatus>>> {
        async move {
            let mut all: Vec<_> = self.sandboxes().values().map(|e| e.status()).collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(all)
        }
        .boxed()
    }

    fn kind<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<Kind>> {
        self.kind_of(&spec.source).boxed()
    }

    fn in_process_http(&self) -> Option<&dyn InProcessHttp> {
        Some(self)
    }
}

/// A request body's error as wasi-http takes it (hyper's own errors keep their type).
fn wasi_http_error(e: BoxError) -> WasiHttpError {
    match e.downcast::<hyper::Error>() {
        Ok(e) => WasiHttpError::Hyper(*e),
        Err(e) => WasiHttpError::InternalError(Some(e.to_string())),
    }
}

/// The contract's in-process HTTP: the same path as [`WasmSandbox::handle`], with the
/// contract's body types. The request body is only wrapped (wasi-http boxes it once, as it
/// does any body) and the response body is boxed once.
impl InProcessHttp for WasmSandbox {
    fn is_serving(&self, id: &SandboxId) -> bool {
        WasmSandbox::is_serving(self, id)
    }

    fn handle<'a>(
        &'a self,
        id: &'a SandboxId,
        request: hyper::Request<HttpBody>,
    ) -> BoxFuture<'a, std::result::Result<hyper::Response<HttpBody>, HandleError>> {
        use http_body_util::BodyExt;
        async move {
            let entry = self.serving(id)?;
            let slot = self.slot(&entry)?;
            let request = request.map(|b| b.map_err(wasi_http_error));
            let resp = http::handle(self.http_request(&entry)?, request, slot).await?;
            Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
        }
        .boxed()
    }
}
