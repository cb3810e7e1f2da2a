//! wisp-ingress owns the HTTP front door of a node: Routes (host + longest path prefix →
//! weighted Services) resolved to the Services' ready endpoints, kept in memory from watches
//! and swapped in whole ([`table`]: no lock on the request path); least-outstanding balancing
//! (power of two choices); a wasm endpoint on this node called in process through the
//! sandbox (no socket), others over pooled HTTP/1.1; and the **activator**: a Service with no
//! ready endpoint holds its requests in a bounded queue, is woken (one activation per burst:
//! a Deployment at zero replicas is set to one through the API) and releases them as soon as
//! an endpoint is ready, with `x-wisp-cold-start` headers. It counts requests and in-flight
//! requests per Service for the autoscaler (`GET /.wisp/stats`) and serves Prometheus
//! metrics on `GET /.wisp/metrics`.
//!
//! It talks to the control plane only through the API and must not schedule, scale beyond
//! waking a Service from zero (the autoscaler decides), or run pods.

mod activator;
pub mod metrics;
mod proxy;
pub mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use wisp_api::{Endpoints, Node, Pod, Route, Service};
use wisp_client::{Client, ListParams, WatchParams};
use wisp_runtime::{Store, Writer, reflector, watcher_stream};
use wisp_sandbox_wasm::WasmSandbox;

pub use crate::proxy::{Body, COLD_START_HEADER, COLD_START_WAIT_HEADER, Gateway, serve, serve_gateway};
use crate::table::{Backend, RouteEntry, Services, Table, Target};

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
    /// The node agent's in-process view of which of its pods are ready: such a pod is a
    /// backend as soon as the agent finds it ready, before its status write reaches this
    /// ingress through the API (`None`: only the API's view counts).
    pub local_readiness: Option<wisp_sandbox::LocalReadiness>,
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
            local_readiness: None,
        }
    }
}

struct Caches {
    routes: Store<Route>,
    endpoints: Store<Endpoints>,
    services: Store<Service>,
    /// Pods on this node (their uid → sandbox id).
    pods: Store<Pod>,
    nodes: Store<Node>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) config: IngressConfig,
    pub(crate) wasm: Option<WasmSandbox>,
    pub(crate) table: ArcSwap<Table>,
    pub(crate) services: Services,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) http:
        hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, proxy::Body>,
}

/// A node's ingress. Cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    pub(crate) inner: Arc<Inner>,
}

impl Ingress {
    /// `wasm`: this node's wasm runtime, for in-process calls (none: every endpoint is
    /// reached over HTTP).
    pub fn new(client: Client, config: IngressConfig, wasm: Option<WasmSandbox>) -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self {
            inner: Arc::new(Inner {
                client,
                config,
                wasm,
                table: ArcSwap::from_pointee(Table::default()),
                services: Services::default(),
                metrics: metrics::Metrics::default(),
                http,
            }),
        }
    }

    /// Keeps the route table current from watches until `shutdown`.
    pub async fn sync(&self, shutdown: CancellationToken) {
        let client = &self.inner.client;
        let (rw, ew, sw, pw, nw) = (
            Writer::<Route>::new(),
            Writer::<Endpoints>::new(),
            Writer::<Service>::new(),
            Writer::<Pod>::new(),
            Writer::<Node>::new(),
        );
        let caches = Caches {
            routes: rw.as_reader(),
            endpoints: ew.as_reader(),
            services: sw.as_reader(),
            pods: pw.as_reader(),
            nodes: nw.as_reader(),
        };
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
        let mut events = futures::stream::select_all(streams);
        let mut local = self.inner.config.local_readiness.as_ref().map(|r| r.subscribe());
        loop {
            let local_changed = async {
                let open = match local.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => false,
                };
                if !open {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                e = events.next() => if e.is_none() { return },
                () = local_changed => {}
                () = shutdown.cancelled() => return,
            }
            // Fold every change already waiting into one rebuild.
            while let Some(Some(())) = events.next().now_or_never() {}
            let started = std::time::Instant::now();
            self.rebuild(&caches);
            tracing::debug!(took_us = started.elapsed().as_micros(), "route table rebuilt");
        }
    }

    fn rebuild(&self, c: &Caches) {
        let inner = &self.inner;
        let node = &inner.config.node_name;
        // Looked up per address below: built once per rebuild.
        let ingress_urls: std::collections::HashMap<String, String> = c
            .nodes
            .list()
            .iter()
            .filter_map(|n| {
                let url = n.status.as_ref()?.ingress_url.clone()?;
                Some((n.metadata.name.clone(), url))
            })
            .collect();
        let wasm_containers: std::collections::HashMap<String, String> = c
            .pods
            .list()
            .iter()
            .filter_map(|p| {
                let uid = p.metadata.uid.clone()?;
                let c = p
                    .spec
                    .containers
                    .iter()
                    .find(|c| c.runtime() == wisp_api::RUNTIME_WASM)?;
                Some((uid, c.name.clone()))
            })
            .collect();
        // Ready by this node's agent (its status write may be on the way), else by the API.
        let ready_locally = inner
            .config
            .local_readiness
            .as_ref()
            .map(wisp_sandbox::LocalReadiness::snapshot)
            .unwrap_or_default();
        // Candidates per Service: what its Endpoints list, then this node's pods that are
        // ready and match its selector but are not listed yet (a cold start is released as
        // soon as the pod is ready here, one Endpoints write and watch sooner).
        type Candidate = (String, String, Option<String>, Target);
        let mut wanted: std::collections::HashMap<(String, String), Vec<Candidate>> =
            std::collections::HashMap::new();
        for ep in c.endpoints.list() {
            let ns = ep.metadata.namespace.clone().unwrap_or_default();
            let list = wanted.entry((ns, ep.metadata.name.clone())).or_default();
            for a in ep.subsets.iter().flat_map(|s| s.addresses.iter()) {
                let Some(r) = &a.target_ref else { continue };
                let uid = r.uid.clone().unwrap_or_default();
                // A pod of this node its agent has just found not ready (stopping, exited,
                // failing its probe) is out before the Endpoints say so.
                if ready_locally.get(&uid) == Some(&false) {
                    continue;
                }
                let target = if a.node_name.as_deref() == Some(node.as_str()) && inner.wasm.is_some() {
                    match (wasm_containers.get(&uid), a.port) {
                        (Some(c), _) => Some(Target::Local(wisp_sandbox::SandboxId::new(&uid, c))),
                        (None, Some(port)) => format!("{}:{port}", a.ip).parse().ok().map(Target::Addr),
                        (None, None) => None,
                    }
                } else if let Some(port) = a.port {
                    format!("{}:{port}", a.ip)
                        .parse::<SocketAddr>()
                        .ok()
                        .map(Target::Addr)
                } else {
                    a.node_name
                        .as_ref()
                        .and_then(|n| ingress_urls.get(n).cloned())
                        .map(Target::Node)
                };
                if let Some(target) = target {
                    list.push((uid, r.name.clone(), a.node_name.clone(), target));
                }
            }
        }
        let ready_here: Vec<Arc<Pod>> = c
            .pods
            .list()
            .into_iter()
            .filter(|p| {
                // The agent's word on its own pod overrides the API's (which lags it).
                let ready = p
                    .metadata
                    .uid
                    .as_ref()
                    .and_then(|uid| ready_locally.get(uid).copied())
                    .unwrap_or_else(|| p.is_ready());
                ready && p.metadata.deletion_timestamp.is_none() && !p.phase().is_terminal()
            })
            .collect();
        if !ready_here.is_empty() {
            for svc in c.services.list() {
                if svc.spec.selector.is_empty() {
                    continue;
                }
                let ns = svc.metadata.namespace.clone().unwrap_or_default();
                let selector = wisp_api::LabelSelector::from_labels(svc.spec.selector.clone());
                let list = wanted.entry((ns.clone(), svc.metadata.name.clone())).or_default();
                for p in &ready_here {
                    let Some(uid) = p.metadata.uid.clone() else {
                        continue;
                    };
                    if p.metadata.namespace.as_deref() != Some(ns.as_str())
                        || !selector.matches(&p.metadata.labels)
                        || list.iter().any(|(u, ..)| *u == uid)
                    {
                        continue;
                    }
                    let status = p.status.as_ref();
                    let target = match (wasm_containers.get(&uid), status.and_then(|s| s.host_port)) {
                        (Some(c), _) if inner.wasm.is_some() => {
                            Target::Local(wisp_sandbox::SandboxId::new(&uid, c))
                        }
                        (_, Some(port)) => {
                            let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()) else {
                                continue;
                            };
                            let Ok(addr) = format!("{ip}:{port}").parse::<SocketAddr>() else {
                                continue;
                            };
                            Target::Addr(addr)
                        }
                        _ => continue,
                    };
                    list.push((uid, p.metadata.name.clone(), Some(node.clone()), target));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for ((ns, name), candidates) in wanted {
            let svc = inner.services.get_or_create(&ns, &name);
            seen.insert((ns, name));
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
        for svc in inner.services.all() {
            if !seen.contains(&(svc.namespace.clone(), svc.name.clone())) {
                svc.set_backends(Vec::new());
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
                        .map(|b| (inner.services.get_or_create(&ns, &b.service), b.weight))
                        .collect(),
                    timeout: r.spec.timeout_seconds.map(|s| Duration::from_secs(u64::from(s))),
                    gateway_only: false,
                }
            })
            .chain(service_routes)
            .collect();
        inner.table.store(Arc::new(Table::new(entries)));
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
                }
            })
            .collect();
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }
}

/// One Service's traffic as this ingress saw it (the wire format of `/.wisp/stats`).
pub use wisp_api::IngressServiceStats as ServiceStats;

use futures::FutureExt as _;
