//! wisp-ingress owns the HTTP front door of a node: Routes (host + longest path prefix →
//! weighted Services) resolved to the Services' ready endpoints, kept in memory from watches
//! and swapped in whole ([`table`]: no lock on the request path); least-outstanding balancing
//! (power of two choices); a wasm endpoint on this node called in process through the
//! sandbox contract's `InProcessHttp` ([`InProcess`], no socket), others over pooled
//! HTTP/1.1; and the **activator**: a Service with no
//! ready endpoint holds its requests in a bounded queue, is woken (one activation per burst:
//! a Deployment at zero replicas is set to one through the API) and releases them as soon as
//! an endpoint is ready, with `x-wisp-cold-start` headers. It counts requests and in-flight
//! requests per Service for the autoscaler (`GET /.wisp/stats`) and serves Prometheus
//! metrics on `GET /.wisp/metrics`.
//!
//! It talks to the control plane only through the API, to runtimes only through the
//! `wisp-sandbox` traits (it names none), and must not schedule, scale beyond waking a
//! Service from zero (the autoscaler decides), or run pods.

mod activator;
pub mod metrics;
mod proxy;
pub mod table;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wisp_api::{Endpoints, Node, Pod, Route, Service};
use wisp_client::{Client, ListParams, WatchParams};
use wisp_runtime::{Informers, ObjectRef, Store, Writer, reflector, watcher_stream};
use wisp_sandbox::InProcessHttp;

pub use crate::proxy::{
    Body, COLD_START_HEADER, COLD_START_WAIT_HEADER, Gateway, node_port_service, serve, serve_gateway,
};
use crate::table::{Backend, RouteEntry, ServiceState, Services, Table, Target};
pub use crate::tls::serve_tls;

/// How long the route table waits after a change before it is rebuilt. A scale-up changes a
/// pod (created, bound, ready), its readiness here and its Endpoints within a few
/// milliseconds: one rebuild instead of four, and none at the moment a pod becomes ready,
/// when a request held for it admits it itself (`admit_local`) and a rebuild would hold the
/// lock that takes and the cores the request's call needs. Pods going away are out sooner:
/// a request never picks a sandbox that is stopping.
const REBUILD_COALESCE: Duration = Duration::from_millis(5);

/// Tuning of one ingress.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// This node: its wasm endpoints are called in process.
    pub node_name: String,
    /// Requests held per Service while it wakes (default 1,000).
    pub queue_limit: usize,
    /// How long a held request waits for an endpoint (default 30 s).
    pub queue_timeout: Duration,
    /// Time allowed per request when its Route sets none (default 60 s).
    pub request_timeout: Duration,
    /// Largest request body (default 16 MiB).
    pub body_limit: usize,
    /// Time allowed to read a request's headers (default 10 s).
    pub header_read_timeout: Duration,
    /// Requests served at once (default 10,000).
    pub concurrency_limit: usize,
    /// How long in-flight requests may finish after shutdown (default 10 s).
    pub shutdown_grace: Duration,
    /// Threads serving the public listener's connections, each its own event loop: a
    /// connection, its requests and their in-process guests stay on one thread (default: one
    /// per core; 0: on the caller's runtime). See `wisp_http`.
    pub event_loops: usize,
    /// How long an event loop polls for its next request instead of sleeping, after its
    /// connections last had traffic (see `wisp_http::spin`; default 200 µs; zero: off).
    pub busy_poll: Duration,
    /// The node agent's in-process view of which of its pods are ready: such a pod is a
    /// backend as soon as the agent finds it ready, before its status write reaches this
    /// ingress through the API (`None`: only the API's view counts).
    pub local_readiness: Option<wisp_node::LocalReadiness>,
    /// Connections open at once on each listener (default 10,000).
    pub max_connections: usize,
    /// Which backend addresses requests may be sent to (besides the addresses nodes report
    /// for their pods): the node's egress policy, with its own listeners.
    pub egress: wisp_sandbox::EgressPolicy,
}

impl IngressConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            queue_limit: 1000,
            queue_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            body_limit: 16 << 20,
            header_read_timeout: Duration::from_secs(10),
            concurrency_limit: 10_000,
            shutdown_grace: Duration::from_secs(10),
            event_loops: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            busy_poll: Duration::from_micros(200),
            local_readiness: None,
            max_connections: 10_000,
            egress: wisp_sandbox::EgressPolicy::default(),
        }
    }
}

/// What the ingress knows of the cluster, from watches ([`Ingress::sync`]).
pub(crate) struct Caches {
    pub(crate) routes: Store<Route>,
    endpoints: Store<Endpoints>,
    services: Store<Service>,
    /// Pods on this node (their uid → sandbox id).
    pods: Store<Pod>,
    nodes: Store<Node>,
}

/// The caches' writers, taken by the one [`Ingress::sync`].
struct Writers {
    routes: Writer<Route>,
    endpoints: Writer<Endpoints>,
    services: Writer<Service>,
    pods: Writer<Pod>,
    nodes: Writer<Node>,
}

impl Writers {
    fn new() -> (Self, Caches) {
        let w = Self {
            routes: Writer::new(),
            endpoints: Writer::new(),
            services: Writer::new(),
            pods: Writer::new(),
            nodes: Writer::new(),
        };
        let c = Caches {
            routes: w.routes.as_reader(),
            endpoints: w.endpoints.as_reader(),
            services: w.services.as_reader(),
            pods: w.pods.as_reader(),
            nodes: w.nodes.as_reader(),
        };
        (w, c)
    }
}

/// Where an ingress's caches come from.
enum Source {
    /// Watches of its own.
    Own(Writers),
    /// The process's shared watches.
    Shared(Informers),
}

#[cfg(test)]
impl Source {
    fn own(self) -> Writers {
        match self {
            Source::Own(w) => w,
            Source::Shared(_) => panic!("this ingress reads shared caches"),
        }
    }
}

/// One candidate backend while the table is built: pod uid, pod name, node, target.
type Candidate = (String, String, Option<String>, Target);

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) config: IngressConfig,
    pub(crate) in_process: Option<InProcess>,
    pub(crate) table: ArcSwap<Table>,
    pub(crate) services: Services,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) caches: Caches,
    /// Where the caches are filled from, taken by the one [`Ingress::sync`].
    writers: std::sync::Mutex<Option<Source>>,
    /// Held while Services' backends are recomputed (a whole rebuild, or one Service's pods
    /// of this node being admitted by a waiting request), so an older computation never
    /// overwrites a newer one.
    backends_lock: std::sync::Mutex<()>,
    /// Bumped on every change the watches bring (before the table's rebuild, which waits
    /// for the burst): a held request looks again at once for a pod of this node to admit
    /// (the agent may report it ready before this ingress's pod cache holds it).
    pub(crate) caches_changed: tokio::sync::watch::Sender<()>,
    pub(crate) http:
        hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, proxy::Body>,
    /// Other nodes this ingress forwards to, by node name (their connection pools outlive
    /// table rebuilds while their URL and CA stay).
    pub(crate) peers: std::sync::Mutex<std::collections::HashMap<String, Arc<table::Peer>>>,
    /// Tokens checked for `/.wisp/` (digest → when, allowed).
    pub(crate) internal_tokens:
        std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, bool)>>,
    /// How fast tokens not seen before are looked up with the API for `/.wisp/`.
    pub(crate) token_lookups: governor::DefaultDirectRateLimiter,
    /// The activator's scale-ups, which outlive the request that started them: cancelled
    /// (`stopping`) and waited for when [`Ingress::sync`] ends.
    pub(crate) tasks: TaskTracker,
    pub(crate) stopping: CancellationToken,
    /// Cold starts, as Events of the Function (or Service) woken.
    pub(crate) events: wisp_runtime::Recorder,
    /// Its writer, run by the one [`Ingress::sync`].
    recorder: std::sync::Mutex<Option<wisp_runtime::RecorderTask>>,
}

/// The runtime of this node whose sandboxes the ingress calls in process (no socket, no
/// serialization), through the `wisp-sandbox` contract.
#[derive(Clone)]
pub struct InProcess {
    /// The runtime's name, as pods' containers name theirs (`wasm`).
    pub runtime: String,
    pub http: Arc<dyn InProcessHttp>,
}

impl InProcess {
    pub fn new(runtime: impl Into<String>, http: Arc<dyn InProcessHttp>) -> Self {
        Self {
            runtime: runtime.into(),
            http,
        }
    }
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

/// A node's ingress. Cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    pub(crate) inner: Arc<Inner>,
}

impl Ingress {
    /// `in_process`: the runtime of this node whose pods are called in process (none: every
    /// endpoint is reached over HTTP).
    pub fn new(client: Client, config: IngressConfig, in_process: Option<InProcess>) -> Self {
        let (writers, caches) = Writers::new();
        Self::build(client, config, in_process, caches, Source::Own(writers))
    }

    /// Like [`Ingress::new`], reading the process's shared watch caches (`wisp up`: the same
    /// watches as the scheduler, the controllers and the node agent) instead of opening
    /// watches of its own. Only pods bound to this node are ever taken for local ones.
    pub fn on_informers(
        client: Client,
        config: IngressConfig,
        in_process: Option<InProcess>,
        informers: &Informers,
    ) -> Self {
        let caches = Caches {
            routes: informers.store(),
            endpoints: informers.store(),
            services: informers.store(),
            pods: informers.store(),
            nodes: informers.store(),
        };
        Self::build(
            client,
            config,
            in_process,
            caches,
            Source::Shared(informers.clone()),
        )
    }

    fn build(
        client: Client,
        config: IngressConfig,
        in_process: Option<InProcess>,
        caches: Caches,
        source: Source,
    ) -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let (events, recorder) = wisp_runtime::Recorder::new(
            client.clone(),
            "ingress",
            &config.node_name,
            wisp_runtime::RecorderConfig::default(),
        );
        Self {
            inner: Arc::new(Inner {
                client,
                config,
                in_process,
                table: ArcSwap::from_pointee(Table::default()),
                services: Services::default(),
                metrics: metrics::Metrics::default(),
                caches,
                writers: std::sync::Mutex::new(Some(source)),
                backends_lock: std::sync::Mutex::new(()),
                caches_changed: tokio::sync::watch::channel(()).0,
                http,
                peers: std::sync::Mutex::default(),
                internal_tokens: std::sync::Mutex::default(),
                token_lookups: governor::RateLimiter::direct(governor::Quota::per_second(
                    std::num::NonZeroU32::new(20).unwrap_or(std::num::NonZeroU32::MIN),
                )),
                tasks: TaskTracker::new(),
                stopping: CancellationToken::new(),
                events,
                recorder: std::sync::Mutex::new(Some(recorder)),
            }),
        }
    }

    /// Keeps the route table current from watches until `shutdown`. Called once per
    /// ingress (a second call returns at once, logging why).
    pub async fn sync(&self, shutdown: CancellationToken) {
        let recorder = self
            .inner
            .recorder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let done = CancellationToken::new();
        let work = async {
            if self.keep_in_sync(shutdown).await {
                // The activator's scale-ups in flight stop with it.
                self.inner.stopping.cancel();
                self.inner.tasks.close();
                self.inner.tasks.wait().await;
            }
            done.cancel();
        };
        let record = async {
            if let Some(r) = recorder {
                Box::pin(r.run(done.clone())).await;
            }
        };
        tokio::join!(work, record);
    }

    /// `false` when another call already keeps this ingress in sync.
    async fn keep_in_sync(&self, shutdown: CancellationToken) -> bool {
        let client = &self.inner.client;
        let taken = self
            .inner
            .writers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let writers = match taken {
            Some(Source::Own(writers)) => writers,
            Some(Source::Shared(informers)) => {
                let streams = vec![
                    informers.subscribe::<Route>().map(|_| ()).boxed(),
                    informers.subscribe::<Endpoints>().map(|_| ()).boxed(),
                    informers.subscribe::<Service>().map(|_| ()).boxed(),
                    informers.subscribe::<Pod>().map(|_| ()).boxed(),
                    informers.subscribe::<Node>().map(|_| ()).boxed(),
                ];
                self.follow(futures::stream::select_all(streams), shutdown).await;
                return true;
            }
            None => {
                tracing::error!("this ingress is already being kept in sync");
                return false;
            }
        };
        let Writers {
            routes: rw,
            endpoints: ew,
            services: sw,
            pods: pw,
            nodes: nw,
        } = writers;
        let local = WatchParams {
            list: ListParams {
                label_selector: None,
                field_selector: Some(format!("spec.nodeName={}", self.inner.config.node_name)),
            },
            ..WatchParams::default()
        };
        let streams = vec![
            reflector(
                rw,
                watcher_stream(client.api::<Route>(None).watcher(WatchParams::default())),
            )
            .map(|_| ())
            .boxed(),
            reflector(
                ew,
                watcher_stream(client.api::<Endpoints>(None).watcher(WatchParams::default())),
            )
            .map(|_| ())
            .boxed(),
            reflector(
                sw,
                watcher_stream(client.api::<Service>(None).watcher(WatchParams::default())),
            )
            .map(|_| ())
            .boxed(),
            reflector(pw, watcher_stream(client.api::<Pod>(None).watcher(local)))
                .map(|_| ())
                .boxed(),
            reflector(
                nw,
                watcher_stream(client.api::<Node>(None).watcher(WatchParams::default())),
            )
            .map(|_| ())
            .boxed(),
        ];
        self.follow(futures::stream::select_all(streams), shutdown).await;
        true
    }

    /// Rebuilds the table after each burst of `events` (and of the agent's readiness word)
    /// until `shutdown`.
    async fn follow(&self, mut events: impl futures::Stream<Item = ()> + Unpin, shutdown: CancellationToken) {
        let caches = &self.inner.caches;
        let mut local = self.inner.config.local_readiness.as_ref().map(|r| r.subscribe());
        // A change schedules a rebuild REBUILD_COALESCE later; the changes until then fold
        // into it.
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let rebuild_due = async move {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                e = events.next() => {
                    if e.is_none() { return }
                    self.inner.caches_changed.send_replace(());
                }
                () = local_change(&mut local) => {}
                () = rebuild_due => {
                    due = None;
                    let started = std::time::Instant::now();
                    self.rebuild(caches);
                    tracing::debug!(took_us = started.elapsed().as_micros(), "route table rebuilt");
                    continue;
                }
                () = shutdown.cancelled() => return,
            }
            due.get_or_insert_with(|| tokio::time::Instant::now() + REBUILD_COALESCE);
        }
    }

    fn rebuild(&self, c: &Caches) {
        let inner = &self.inner;
        let node = &inner.config.node_name;
        let _computing = inner
            .backends_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Looked up per address below: built once per rebuild.
        let listeners = self.listeners(&c.nodes);
        // Other nodes' ports (their agents, which hand a forwarded request to their
        // ingress), where they report them: HTTPS at one of the node's own addresses, with
        // the CA the node published, never at another listener of the cluster (the API
        // server, an ingress, this node's gateway), never link-local, and loopback or private
        // only where this node is itself on loopback or a private network (a cluster on one
        // machine, a private node network). A node's credential cannot make this ingress a
        // proxy to anything else, and only the node that wrote the CA can answer there.
        let own_class = c
            .nodes
            .list()
            .iter()
            .find(|n| n.metadata.name == *node)
            .and_then(|n| n.status.as_ref())
            .and_then(|st| st.addresses.first())
            .and_then(|a| a.address.parse::<std::net::IpAddr>().ok())
            .map(wisp_sandbox::egress::restricted_class);
        // The API server's, every ingress's and this node's own listeners: no agent is there.
        let not_agent: std::collections::HashSet<SocketAddr> = wisp_client::url_addr(inner.client.server())
            .into_iter()
            .chain(c.nodes.list().iter().filter_map(|n| {
                n.status
                    .as_ref()?
                    .ingress_url
                    .as_deref()
                    .and_then(wisp_client::url_addr)
            }))
            .chain(inner.config.egress.listeners.iter().copied())
            .collect();
        let mut peers = inner
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let agents: std::collections::HashMap<String, Arc<table::Peer>> = c
            .nodes
            .list()
            .iter()
            .filter(|n| n.metadata.name != *node)
            .filter_map(|n| {
                // HTTPS at one of the node's own addresses, with its CA (as everyone checks).
                let (addr, ca) = wisp_client::node_port(n)
                    .inspect_err(|why| tracing::debug!(node = %n.metadata.name, %why, "not forwarding there"))
                    .ok()?;
                let reachable = match wisp_sandbox::egress::restricted_class(addr.ip()) {
                    None => true,
                    Some("link-local" | "unspecified" | "multicast or reserved") => false,
                    Some(c) => own_class == Some(Some(c)),
                };
                if !reachable || is_listener(&not_agent, addr) {
                    return None;
                }
                let url = format!("https://{addr}");
                let name = n.metadata.name.clone();
                let peer = match peers.get(&name) {
                    Some(p) if p.url == url && p.ca == ca => p.clone(),
                    _ => match table::Peer::new(&url, ca) {
                        Ok(p) => Arc::new(p),
                        Err(e) => {
                            tracing::warn!(node = %name, error = %e, "not forwarding to this node");
                            return None;
                        }
                    },
                };
                Some((name, peer))
            })
            .collect();
        peers.clone_from(&agents);
        drop(peers);
        let wasm_containers = in_process_containers(
            &c.pods,
            &self.inner.config.node_name,
            self.inner.in_process.as_ref(),
        );
        let ready_locally = self.ready_locally();
        // Candidates per Service: what its Endpoints list, then this node's pods that are
        // ready and match its selector but are not listed yet (a cold start is released as
        // soon as the pod is ready here, one Endpoints write and watch sooner). Only pods of
        // the Service's own namespace, reached where this ingress knows them to be — in
        // process, at a port this node published, or through their node's ingress — never
        // at an address written in an object.
        let mut wanted: std::collections::HashMap<(String, String), Vec<Candidate>> =
            std::collections::HashMap::new();
        for ep in c.endpoints.list() {
            let ns = ep.metadata.namespace.clone().unwrap_or_default();
            let list = wanted.entry((ns.clone(), ep.metadata.name.clone())).or_default();
            for a in ep.subsets.iter().flat_map(|s| s.addresses.iter()) {
                let Some(r) = &a.target_ref else { continue };
                if r.kind != "Pod" || r.namespace.as_deref() != Some(ns.as_str()) {
                    continue;
                }
                let uid = r.uid.clone().unwrap_or_default();
                // A pod of this node its agent has just found not ready (stopping, exited,
                // failing its probe) is out before the Endpoints say so.
                if ready_locally.get(&uid) == Some(&false) {
                    continue;
                }
                let target = if a.node_name.as_deref() == Some(node.as_str()) {
                    // This node's pod: known here, in the Service's namespace.
                    match (wasm_containers.get(&uid), a.port) {
                        (Some((pod_ns, _)), _) if *pod_ns != ns => None,
                        (Some((_, c)), _) if inner.in_process.is_some() => {
                            Some(Target::Local(wisp_sandbox::SandboxId::new(&uid, c)))
                        }
                        (_, Some(port)) => self.published(port, &listeners),
                        _ => None,
                    }
                } else {
                    a.node_name
                        .as_ref()
                        .and_then(|n| agents.get(n).cloned())
                        .map(Target::Node)
                };
                if let Some(target) = target {
                    list.push((uid, r.name.clone(), a.node_name.clone(), target));
                }
            }
        }
        let ready_here = ready_here(&c.pods, &self.inner.config.node_name, &ready_locally);
        if !ready_here.is_empty() {
            for svc in c.services.list() {
                let ns = svc.metadata.namespace.clone().unwrap_or_default();
                let list = wanted.entry((ns, svc.metadata.name.clone())).or_default();
                self.local_candidates(&svc, &ready_here, &wasm_containers, &listeners, list);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for ((ns, name), candidates) in wanted {
            let svc = inner.services.get_or_create(&ns, &name);
            seen.insert((ns, name));
            set_candidates(&svc, candidates);
        }
        let exists = |ns: &str, name: &str| c.services.get(&ObjectRef::new(name).within(ns)).is_some();
        for svc in inner.services.all() {
            if !seen.contains(&(svc.namespace.clone(), svc.name.clone())) {
                svc.set_backends(Vec::new());
            }
            // A Service that is gone leaves no state behind once idle (Routes may name any
            // number of Services that never exist: those get none).
            if !exists(&svc.namespace, &svc.name)
                && svc.in_flight.load(std::sync::atomic::Ordering::Relaxed) == 0
                && svc.queued.load(std::sync::atomic::Ordering::Relaxed) == 0
            {
                inner.services.remove(&svc.namespace, &svc.name);
            }
        }
        // Every Service answers on `<service>.<namespace>.svc` too (Wasm guests call
        // Services by that name through this ingress).
        let service_routes = c.endpoints.list().into_iter().map(|ep| {
            let ns = ep.metadata.namespace.clone().unwrap_or_default();
            RouteEntry {
                host: Some(format!("{}.{ns}.svc", ep.metadata.name)),
                prefix: String::new(),
                backends: vec![(inner.services.get_or_create(&ns, &ep.metadata.name), 1)],
                timeout: None,
                gateway_only: true,
                created: String::new(),
                name: format!("service:{}", ep.metadata.name),
                namespace: ns,
            }
        });
        let entries = c
            .routes
            .list()
            .iter()
            .map(|r| {
                let ns = r.metadata.namespace.clone().unwrap_or_default();
                RouteEntry {
                    namespace: ns.clone(),
                    name: r.metadata.name.clone(),
                    host: r.spec.host.clone(),
                    prefix: r.spec.path_prefix.clone(),
                    backends: r
                        .spec
                        .backends
                        .iter()
                        .filter(|b| exists(&ns, &b.service))
                        .map(|b| (inner.services.get_or_create(&ns, &b.service), b.weight))
                        .collect(),
                    timeout: r.spec.timeout_seconds.map(|s| Duration::from_secs(u64::from(s))),
                    gateway_only: false,
                    created: r.metadata.creation_timestamp.clone().unwrap_or_default(),
                }
            })
            .chain(service_routes)
            .collect();
        inner.table.store(Arc::new(Table::new(entries)));
    }

    /// Every listener of the cluster's processes this ingress knows: the API server, and
    /// each node's agent and ingress (as the Nodes report them), besides the node's own
    /// (`IngressConfig::egress`). No request is ever sent to one of them as a backend.
    fn listeners(&self, nodes: &Store<Node>) -> std::collections::HashSet<SocketAddr> {
        let mut out: std::collections::HashSet<SocketAddr> =
            self.inner.config.egress.listeners.iter().copied().collect();
        out.extend(wisp_client::url_addr(self.inner.client.server()));
        for n in nodes.list() {
            let Some(st) = n.status.as_ref() else { continue };
            out.extend(st.agent_url.as_deref().and_then(wisp_client::url_addr));
            out.extend(st.ingress_url.as_deref().and_then(wisp_client::url_addr));
        }
        out
    }

    /// A port this node's runtime published for one of its pods (on loopback, where only
    /// this node reaches it), unless it is one of the cluster's own listeners.
    fn published(&self, port: u16, listeners: &std::collections::HashSet<SocketAddr>) -> Option<Target> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if listeners.contains(&addr)
            || listeners
                .iter()
                .any(|l| l.port() == port && (l.ip().is_unspecified() || l.ip().is_loopback()))
            || self.inner.config.egress.is_listener(addr)
        {
            tracing::warn!(
                port,
                "a pod reports one of the cluster's listeners as its port: not a backend"
            );
            return None;
        }
        Some(Target::Addr(addr))
    }

    /// Ready by this node's agent (its status write may be on the way); pods it has no word
    /// on are judged by the API.
    fn ready_locally(&self) -> Arc<wisp_node::ReadinessMap> {
        self.inner
            .config
            .local_readiness
            .as_ref()
            .map(wisp_node::LocalReadiness::snapshot)
            .unwrap_or_default()
    }

    /// Adds to `list` this node's ready pods that `svc` selects and `list` lacks.
    fn local_candidates(
        &self,
        svc: &Service,
        ready_here: &[Arc<Pod>],
        wasm_containers: &WasmContainers,
        listeners: &std::collections::HashSet<SocketAddr>,
        list: &mut Vec<Candidate>,
    ) {
        if svc.spec.selector.is_empty() {
            return;
        }
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let selector = wisp_api::LabelSelector::from_labels(svc.spec.selector.clone());
        for p in ready_here {
            let Some(uid) = p.metadata.uid.clone() else {
                continue;
            };
            if p.metadata.namespace.as_deref().unwrap_or_default() != ns
                || !selector.matches(&p.metadata.labels)
                || list.iter().any(|(u, ..)| *u == uid)
            {
                continue;
            }
            let status = p.status.as_ref();
            let target = match (wasm_containers.get(&uid), status.and_then(|s| s.host_port)) {
                (Some((_, c)), _) if self.inner.in_process.is_some() => {
                    Target::Local(wisp_sandbox::SandboxId::new(&uid, c))
                }
                (_, Some(port)) => match self.published(port, listeners) {
                    Some(t) => t,
                    None => continue,
                },
                _ => continue,
            };
            list.push((
                uid,
                p.metadata.name.clone(),
                Some(self.inner.config.node_name.clone()),
                target,
            ));
        }
    }

    /// A request waiting for `svc` (its Service has no usable backend) adds the pods of this
    /// node its agent has just found ready, without waiting for the next table rebuild: the
    /// agent's readiness wakes the waiter itself. Returns whether any was added.
    pub(crate) fn admit_local(&self, svc: &ServiceState) -> bool {
        let inner = &self.inner;
        if inner.config.local_readiness.is_none() {
            return false;
        }
        let Some(service) = inner
            .caches
            .services
            .get(&ObjectRef::new(svc.name.as_str()).within(svc.namespace.as_str()))
        else {
            return false;
        };
        // Most wake-ups are for other Services' pods: find that out without the lock (every
        // request held for any Service is woken by any pod of this node becoming ready).
        if self.local_admissions(&service, svc).is_none() {
            return false;
        }
        let _computing = inner
            .backends_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.local_admissions(&service, svc) {
            Some(list) => {
                set_candidates(svc, list);
                true
            }
            None => false,
        }
    }

    /// `svc`'s backends plus the pods of this node its agent says are ready and `service`
    /// selects, if that adds any.
    fn local_admissions(&self, service: &Service, svc: &ServiceState) -> Option<Vec<Candidate>> {
        let pods = &self.inner.caches.pods;
        let ready_locally = self.ready_locally();
        let current = svc.backends.load_full();
        if !ready_locally
            .iter()
            .any(|(uid, ready)| *ready && !current.iter().any(|b| b.pod_uid == *uid))
        {
            return None;
        }
        let ready_here: Vec<Arc<Pod>> = ready_here(pods, &self.inner.config.node_name, &ready_locally)
            .into_iter()
            .filter(|p| {
                p.metadata
                    .uid
                    .as_ref()
                    .is_some_and(|u| ready_locally.get(u) == Some(&true))
            })
            .collect();
        let mut list: Vec<Candidate> = current
            .iter()
            .map(|b| (b.pod_uid.clone(), b.pod.clone(), b.node.clone(), b.target.clone()))
            .collect();
        let before = list.len();
        let listeners = self.listeners(&self.inner.caches.nodes);
        self.local_candidates(
            service,
            &ready_here,
            &in_process_containers(pods, &self.inner.config.node_name, self.inner.in_process.as_ref()),
            &listeners,
            &mut list,
        );
        (list.len() > before).then_some(list)
    }

    /// Per-Service counters, for the autoscaler.
    pub fn stats(&self) -> Vec<ServiceStats> {
        let mut all: Vec<ServiceStats> = self
            .inner
            .services
            .all()
            .iter()
            .map(|s| {
                use std::sync::atomic::Ordering::Relaxed;
                ServiceStats {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    in_flight: s.in_flight.load(Relaxed),
                    busy_us: s.busy_us(),
                    requests: s.requests.load(Relaxed),
                    last_request_ms: s.last_request_ms.load(Relaxed),
                    queued: s.queued.load(Relaxed),
                    cold_starts: s.cold_starts.load(Relaxed),
                    ready_backends: s.backend_count(),
                    errors: s.errors.load(Relaxed),
                    latency_buckets: s.latency.iter().map(|b| b.load(Relaxed)).collect(),
                }
            })
            .collect();
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }
}

/// Resolves when the node agent's readiness of its pods changes; never without an agent
/// (or once it is gone).
pub(crate) async fn local_change(
    local: &mut Option<tokio::sync::watch::Receiver<Arc<wisp_node::ReadinessMap>>>,
) {
    let open = match local.as_mut() {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    };
    if !open {
        std::future::pending::<()>().await;
    }
}

/// This node's pods' containers run by the in-process runtime (wasm): pod uid → (namespace,
/// container name).
type WasmContainers = std::collections::HashMap<String, (String, String)>;

/// The pods of `pods` bound to `node` (a shared cache holds every node's).
fn on_node(pods: &Store<Pod>, node: &str) -> Vec<Arc<Pod>> {
    pods.list()
        .into_iter()
        .filter(|p| p.spec.node_name.as_deref() == Some(node))
        .collect()
}

fn in_process_containers(pods: &Store<Pod>, node: &str, in_process: Option<&InProcess>) -> WasmContainers {
    let Some(runtime) = in_process.map(|p| p.runtime.as_str()) else {
        return WasmContainers::new();
    };
    on_node(pods, node)
        .iter()
        .filter_map(|p| {
            let uid = p.metadata.uid.clone()?;
            let c = p.spec.containers.iter().find(|c| c.runtime() == runtime)?;
            Some((
                uid,
                (p.metadata.namespace.clone().unwrap_or_default(), c.name.clone()),
            ))
        })
        .collect()
}

/// Whether `addr` is one of `listeners` (one bound to every address counts for its port).
fn is_listener(listeners: &std::collections::HashSet<SocketAddr>, addr: SocketAddr) -> bool {
    listeners.contains(&addr)
        || listeners
            .iter()
            .any(|l| l.ip().is_unspecified() && l.port() == addr.port())
}

/// This node's pods that take requests: ready by the agent's word on its own pod (which
/// overrides the API's, as that lags it), else by the API; not being deleted or finished.
fn ready_here(pods: &Store<Pod>, node: &str, ready_locally: &wisp_node::ReadinessMap) -> Vec<Arc<Pod>> {
    on_node(pods, node)
        .into_iter()
        .filter(|p| {
            let ready = p
                .metadata
                .uid
                .as_ref()
                .and_then(|uid| ready_locally.get(uid).copied())
                .unwrap_or_else(|| p.is_ready());
            ready && p.metadata.deletion_timestamp.is_none() && !p.phase().is_terminal()
        })
        .collect()
}

/// Makes `candidates` the Service's backends, keeping the backends (and their in-flight
/// counts) that stay.
fn set_candidates(svc: &ServiceState, candidates: Vec<Candidate>) {
    let old = svc.backends.load_full();
    let next = candidates
        .into_iter()
        .map(|(uid, pod, node, target)| {
            old.iter()
                .find(|b| b.pod_uid == uid && b.target == target)
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(Backend {
                        pod_uid: uid,
                        pod,
                        node,
                        target,
                        outstanding: std::sync::atomic::AtomicUsize::new(0),
                    })
                })
        })
        .collect();
    svc.set_backends(next);
}

/// One Service's traffic as this ingress saw it (the wire format of `/.wisp/stats`).
pub use wisp_api::IngressServiceStats as ServiceStats;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use wisp_api::{Container, ObjectMeta, PodPhase, PodStatus, Resource, RouteBackend};
    use wisp_client::WatcherEvent;

    use super::*;

    /// A loopback HTTP server answering `body`; its port.
    async fn pod_server(body: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                            body.as_bytes(),
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        port
    }

    /// The table is built once and never again (no `sync` runs): a held request is released
    /// by the agent's readiness alone, the waiter admitting the pod itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_request_admits_a_pod_the_agent_finds_ready_without_a_rebuild() {
        let port = pod_server("from the pod").await;
        let readiness = wisp_node::LocalReadiness::default();
        let mut config = IngressConfig::new("node-a");
        config.queue_timeout = Duration::from_secs(10);
        config.local_readiness = Some(readiness.clone());
        // No API server answers here: the activation fails (logged) and changes nothing.
        let ingress = Ingress::new(Client::new("http://127.0.0.1:1", "token"), config, None);
        let mut w = ingress
            .inner
            .writers
            .lock()
            .expect("lock")
            .take()
            .expect("writers")
            .own();

        let mut svc = Service::new(ObjectMeta::namespaced("default", "web"));
        svc.spec.selector.insert("app".into(), "web".into());
        let mut route = Route::new(ObjectMeta::namespaced("default", "web"));
        route.spec.host = Some("web.example.com".into());
        route.spec.backends = vec![RouteBackend {
            service: "web".into(),
            port: None,
            weight: 100,
        }];
        let pod = |name: &str, uid: &str, app: &str| {
            let mut p = Pod::new(ObjectMeta::namespaced("default", name));
            p.metadata.uid = Some(uid.into());
            p.metadata.labels.insert("app".into(), app.into());
            p.spec.node_name = Some("node-a".into());
            p.spec.containers = vec![Container {
                name: "main".into(),
                image: Some("example/web:1".into()),
                ..Container::default()
            }];
            // Running with its port published, not Ready in the API.
            p.status = Some(PodStatus {
                phase: PodPhase::Running,
                pod_ip: Some("127.0.0.1".into()),
                host_port: Some(port),
                ..PodStatus::default()
            });
            p
        };
        w.services.apply(&WatcherEvent::Restarted(vec![svc]));
        w.routes.apply(&WatcherEvent::Restarted(vec![route]));
        w.pods.apply(&WatcherEvent::Restarted(vec![
            pod("web-1", "uid-web", "web"),
            pod("other-1", "uid-other", "other"),
        ]));
        ingress.rebuild(&ingress.inner.caches);

        let request = || {
            http::Request::get("/")
                .header(http::header::HOST, "web.example.com")
                .body(Empty::<Bytes>::new())
                .expect("request")
        };
        let held = tokio::spawn({
            let i = ingress.clone();
            async move {
                let resp = i.handle(request()).await;
                let code = resp.status().as_u16();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                (code, body.map(|b| String::from_utf8_lossy(&b).into_owned()).ok())
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "answered with no ready pod");
        // A pod the Service does not select becomes ready: still held.
        readiness.set("uid-other", true);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "answered by a pod of another Service");
        readiness.set("uid-web", true);
        let (code, body) = tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("released")
            .expect("task");
        assert_eq!((code, body.as_deref()), (200, Some("from the pod")));
        let web = ingress.inner.services.get_or_create("default", "web");
        assert_eq!(
            web.backends
                .load()
                .iter()
                .map(|b| b.pod.as_str())
                .collect::<Vec<_>>(),
            ["web-1"],
            "admitted once, as a backend of its Service only"
        );
        drop(w);
    }

    /// A node credential writes its own Node, `agentUrl` and `agentCa` included: this ingress
    /// forwards to another node's port only over HTTPS with the CA it published, at an
    /// address of that node that is no other listener of the cluster (here: the API
    /// server's, another node's public ingress), never where the node points it otherwise.
    #[test]
    fn another_nodes_port_is_used_only_where_it_can_be_one() {
        use wisp_api::{EndpointAddress, EndpointSubset, NodeAddress, NodeStatus, ObjectReference};
        let api = "127.0.0.1:7700";
        let ingress = Ingress::new(
            Client::new(&format!("http://{api}"), "token"),
            IngressConfig::new("node-a"),
            None,
        );
        let mut w = ingress
            .inner
            .writers
            .lock()
            .expect("lock")
            .take()
            .expect("writers")
            .own();
        let ca = wisp_tls::Ca::create_named(wisp_tls::NODE_CA)
            .expect("ca")
            .cert_pem()
            .to_owned();
        let node = |name: &str, ip: &str, url: &str| {
            let mut n = Node::new(ObjectMeta::named(name));
            n.status = Some(NodeStatus {
                addresses: vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                }],
                ingress_url: Some(format!("http://{ip}:9{}", name.len())),
                agent_url: Some(url.into()),
                agent_ca: (name != "no-ca").then(|| ca.clone()),
                ..NodeStatus::default()
            });
            n
        };
        let svc = |name: &str| {
            let mut s = Service::new(ObjectMeta::namespaced("default", name));
            s.spec.selector.insert("app".into(), name.into());
            s
        };
        let endpoints = |name: &str, on: &str| {
            let mut ep = Endpoints::new(ObjectMeta::namespaced("default", name));
            ep.subsets = vec![EndpointSubset {
                addresses: vec![EndpointAddress {
                    ip: "127.0.0.1".into(),
                    port: None,
                    node_name: Some(on.into()),
                    target_ref: Some(ObjectReference {
                        kind: "Pod".into(),
                        name: format!("{name}-1"),
                        namespace: Some("default".into()),
                        uid: Some(format!("uid-{name}")),
                    }),
                }],
                ..EndpointSubset::default()
            }];
            ep
        };
        w.nodes.apply(&WatcherEvent::Restarted(vec![
            node("node-a", "127.0.0.1", "https://127.0.0.1:8080"),
            node("good", "127.0.0.1", "https://127.0.0.1:8081"),
            node("liar", "127.0.0.1", &format!("https://{api}")),
            node("stray", "127.0.0.1", "https://169.254.169.254:80"),
            node("elsewhere", "127.0.0.1", "https://10.9.9.9:8080"),
            node("plain", "127.0.0.1", "http://127.0.0.1:8082"),
            node("no-ca", "127.0.0.1", "https://127.0.0.1:8083"),
            // Another node's public ingress (`good`'s, port 9 + its name's length).
            node("ingress", "127.0.0.1", "https://127.0.0.1:94"),
        ]));
        w.services.apply(&WatcherEvent::Restarted(vec![
            svc("a"),
            svc("b"),
            svc("c"),
            svc("d"),
            svc("e"),
            svc("f"),
            svc("g"),
        ]));
        w.endpoints.apply(&WatcherEvent::Restarted(vec![
            endpoints("a", "good"),
            endpoints("b", "liar"),
            endpoints("c", "stray"),
            endpoints("d", "elsewhere"),
            endpoints("e", "plain"),
            endpoints("f", "no-ca"),
            endpoints("g", "ingress"),
        ]));
        ingress.rebuild(&ingress.inner.caches);
        let targets = |name: &str| {
            ingress
                .inner
                .services
                .get_or_create("default", name)
                .backends
                .load()
                .iter()
                .map(|b| b.target.clone())
                .collect::<Vec<_>>()
        };
        let good = targets("a");
        assert!(
            matches!(good.as_slice(), [Target::Node(p)] if p.url == "https://127.0.0.1:8081" && p.ca == ca),
            "{good:?}"
        );
        assert!(targets("e").is_empty(), "plain HTTP to another node");
        assert!(
            targets("f").is_empty(),
            "no CA to check the node's certificate with"
        );
        assert!(
            targets("g").is_empty(),
            "another node's public ingress as a node's port"
        );
        assert!(
            targets("b").is_empty(),
            "the API server as another node's ingress"
        );
        assert!(targets("c").is_empty(), "a metadata address, not the node's own");
        assert!(targets("d").is_empty(), "not at the node's own address");

        // The same node: the same pool. A new CA (the node restarted): a pool trusting it.
        let Some(Target::Node(first)) = good.first().cloned() else {
            panic!("{good:?}");
        };
        ingress.rebuild(&ingress.inner.caches);
        assert!(
            matches!(targets("a").as_slice(), [Target::Node(p)] if Arc::ptr_eq(p, &first)),
            "kept while the node keeps its URL and CA"
        );
        let new_ca = wisp_tls::Ca::create_named(wisp_tls::NODE_CA)
            .expect("ca")
            .cert_pem()
            .to_owned();
        let mut restarted = node("good", "127.0.0.1", "https://127.0.0.1:8081");
        if let Some(st) = restarted.status.as_mut() {
            st.agent_ca = Some(new_ca.clone());
        }
        w.nodes.apply(&WatcherEvent::Applied(restarted));
        ingress.rebuild(&ingress.inner.caches);
        assert!(
            matches!(targets("a").as_slice(), [Target::Node(p)] if p.ca == new_ca),
            "the node's new CA is the one trusted"
        );
        drop(w);
    }
}
