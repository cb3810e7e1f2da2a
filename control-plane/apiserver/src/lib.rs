//! wisp-apiserver owns Wisp's HTTP API: Kubernetes-shaped REST and watch for every kind
//! under `/apis/wisp.dev/v1`; bearer tokens for three kinds of principal (the admin, namespace
//! tokens bound to their namespace's uid, node credentials) with authorization by verb,
//! resource, subresource and namespace (`authz`); admission (validation through `wisp-api`,
//! then what a principal may write: no `spec.nodeName` from tenants, Route hosts a namespace
//! owns, its own blobs, LimitRanges and ResourceQuotas); namespace deletion; server-set
//! metadata; the content-addressed blob store for Wasm components (per-namespace, streamed,
//! collected when unused); fair sharing (per-token rates, in-flight caps, separate permits
//! for in-process components, body and header timeouts); pod logs (proxied to the agent of
//! the pod's node); `/openapi/v3`, health and Prometheus metrics.
//!
//! It is the only component that touches the store; it must not run workloads or
//! controllers. [`ApiServer::service`] can be called without sockets (tests), and
//! [`ApiServer::handle_in_process`] answers the components sharing its process (`wisp up`,
//! through `wisp-client`'s in-process transport, which this crate does not depend on);
//! [`serve`] runs it on a listener with graceful shutdown.

mod admission;
pub mod auth;
pub mod authz;
pub mod blobs;
pub mod body;
pub mod error;
pub mod fairness;
mod logs;
pub mod metrics;
mod namespaces;
pub mod openapi;
mod quota;
pub mod resources;
#[cfg(feature = "test-util")]
pub mod testutil;
mod ui;
mod usage;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::BoxCloneService;
use tracing::Instrument;
use wisp_store::Store;

pub use crate::admission::may_claim;
use crate::auth::{Auth, Principal, TokenInfo};
use crate::authz::{Decision, Verb};
use crate::blobs::BlobStore;
use crate::body::{ApiBody, BodyTimeouts, error_response, full, json_response, read_limited};
use crate::error::ApiError;
use crate::fairness::{Fairness, FairnessConfig};
use crate::metrics::{Metrics, RequestLabels, VerbLabel};
use crate::resources::{Filter, Target};

/// The longest a watch may ask to stay open (`timeoutSeconds` is capped to it).
const MAX_WATCH_SECONDS: u64 = 24 * 3600;

/// Where nodes keep their heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "wisp-system";

/// Namespaces that cannot be deleted.
const PROTECTED_NAMESPACES: &[&str] = &["default", LEASE_NAMESPACE];

/// API server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest accepted object body (default 3 MiB).
    pub body_limit: usize,
    /// Largest accepted blob (default 256 MiB); uploads stream to disk.
    pub blob_limit: u64,
    /// Quiet time after which a watch gets a BOOKMARK (default 10 s).
    pub bookmark_interval: Duration,
    /// Where blobs live on disk.
    pub blob_dir: PathBuf,
    /// Requests external clients (HTTP) may have in flight at once (watches count only
    /// while opening).
    pub concurrency_limit: usize,
    /// The same for the control plane's own components in this process: apart, so that
    /// slow or numerous external requests never hold the permits the controllers, the
    /// scheduler and the in-process node need.
    pub internal_concurrency_limit: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Connections open at once (default 2,048); more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one remote address may hold (default 128; loopback excepted).
    pub max_connections_per_ip: usize,
    /// Time allowed to read a request's headers (default 10 s).
    pub header_read_timeout: Duration,
    /// Time allowed for an object's body (default: 10 s between pieces, 30 s in all).
    pub body_timeouts: BodyTimeouts,
    /// Time allowed for a blob's body (default: 30 s between pieces, 30 min in all).
    pub blob_timeouts: BodyTimeouts,
    /// Route hosts of namespace `ns` live under `<ns>.<cluster_domain>` (default `localhost`).
    pub cluster_domain: String,
    /// The largest `timeoutMs` any container may ask for (default 10 min).
    pub max_timeout_ms: u64,
    /// The largest `terminationGracePeriodSeconds` any pod may ask for (default 10 min).
    pub max_grace_seconds: i64,
    /// Per-token request budgets.
    pub fairness: FairnessConfig,
    /// Capabilities of `wisp_api::OPT_IN_CAPABILITIES` containers may add (default none).
    pub allowed_capabilities: Vec<String>,
    /// Blobs nothing uses are removed this long after their last use (default 1 h).
    pub blob_grace: Duration,
    /// How often blob garbage collection runs (default 10 min).
    pub blob_gc_interval: Duration,
}

impl Config {
    pub fn new(blob_dir: PathBuf) -> Self {
        Self {
            body_limit: 3 * 1024 * 1024,
            blob_limit: 256 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(10),
            blob_dir,
            concurrency_limit: 4096,
            internal_concurrency_limit: 4096,
            shutdown_grace: Duration::from_secs(5),
            max_connections: 2048,
            max_connections_per_ip: 128,
            header_read_timeout: Duration::from_secs(10),
            body_timeouts: BodyTimeouts {
                idle: Duration::from_secs(10),
                total: Duration::from_secs(30),
            },
            blob_timeouts: BodyTimeouts {
                idle: Duration::from_secs(30),
                total: Duration::from_secs(30 * 60),
            },
            cluster_domain: "localhost".into(),
            max_timeout_ms: 600_000,
            max_grace_seconds: 600,
            fairness: FairnessConfig::default(),
            allowed_capabilities: Vec::new(),
            blob_grace: Duration::from_secs(3600),
            blob_gc_interval: Duration::from_secs(600),
        }
    }
}

/// Shared state of all requests.
pub struct State {
    pub store: Arc<dyn Store>,
    pub auth: Auth,
    pub blobs: BlobStore,
    pub config: Config,
    pub metrics: Metrics,
    pub openapi: Bytes,
    pub shutdown: CancellationToken,
    /// Objects of recent events, decoded once for all watchers.
    pub events: Arc<resources::EventCache>,
    /// `config.concurrency_limit` permits, for requests over HTTP.
    limit: Arc<tokio::sync::Semaphore>,
    /// `config.internal_concurrency_limit` permits, for in-process requests.
    internal_limit: Arc<tokio::sync::Semaphore>,
    fairness: Fairness,
    quota_locks: quota::Locks,
    /// The metrics API's last gathering of the nodes' usage.
    usage: usage::Cache,
    /// Pods deleted lately: uid → (`namespace/name@node`, when), so that their node may still
    /// report stopping their containers (`Killing`).
    pub(crate) deleted_pods:
        std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    /// The dashboard's sessions.
    ui: ui::Sessions,
}

/// The API server, cheap to clone.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<State>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenRequest {
    /// A token confined to this namespace.
    namespace: Option<String>,
    /// A node credential for this node.
    node: Option<String>,
    /// Expire after this many seconds.
    ttl_seconds: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    token: String,
    #[serde(flatten)]
    info: TokenInfo,
}

/// `GET /apis/wisp.dev/v1/whoami`: who the caller's token speaks for.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    /// `admin`, `namespace`, `node`, `scraper` or `podLogs`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod a log ticket reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Whom a log ticket reads for: the caller the API server authorized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

impl From<&Principal> for WhoAmI {
    fn from(p: &Principal) -> Self {
        let (namespace, node, pod) = p.parts();
        Self {
            kind: p.kind().into(),
            namespace: namespace.map(str::to_owned),
            node: node.map(str::to_owned),
            pod: pod.map(str::to_owned),
            on_behalf_of: match p {
                Principal::PodLogs { on_behalf_of, .. } => Some(on_behalf_of.clone()),
                _ => None,
            },
        }
    }
}

/// A request's query parameters, decoded (`application/x-www-form-urlencoded`: `+` is a
/// space, `%XX` a byte); a name given twice keeps its last value.
fn query_map(req_query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(req_query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// Marks a request of the in-process client: the control plane's own components, which have
/// permits of their own and no per-token budget.
#[derive(Clone, Copy, Debug)]
struct InProcess;

impl ApiServer {
    /// Build a server over `store`; `shutdown` ends open watches.
    pub fn new(store: Arc<dyn Store>, config: Config, shutdown: CancellationToken) -> Self {
        let openapi = serde_json::to_vec(&openapi::document())
            .unwrap_or_default()
            .into();
        let state = State {
            auth: Auth::new(store.clone()),
            blobs: BlobStore::new(&config.blob_dir),
            store,
            metrics: Metrics::default(),
            openapi,
            shutdown,
            events: Arc::default(),
            limit: Arc::new(tokio::sync::Semaphore::new(config.concurrency_limit)),
            internal_limit: Arc::new(tokio::sync::Semaphore::new(config.internal_concurrency_limit)),
            fairness: Fairness::new(config.fairness.clone()),
            quota_locks: quota::Locks::default(),
            usage: usage::Cache::default(),
            deleted_pods: std::sync::Mutex::default(),
            ui: ui::Sessions::default(),
            config,
        };
        Self {
            state: Arc::new(state),
        }
    }

    pub fn auth(&self) -> &Auth {
        &self.state.auth
    }

    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// Create the `default` namespace and `wisp-system` (node leases) if missing, and on
    /// first start the admin token.
    pub async fn bootstrap(&self) -> Result<Option<String>, ApiError> {
        for name in PROTECTED_NAMESPACES {
            let ns = serde_json::json!({
                "apiVersion": wisp_api::API_VERSION, "kind": "Namespace", "metadata": { "name": name }
            });
            let target = Target {
                kind: kind("namespaces")?,
                namespace: None,
                name: None,
            };
            match resources::create(
                &self.state,
                &Principal::Admin,
                &target,
                ns.to_string().as_bytes(),
                None,
            )
            .await
            {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.state.auth.bootstrap_admin().await
    }

    /// One pass of blob garbage collection (see [`blobs::collect`]); how many were removed.
    pub async fn collect_blobs(&self) -> Result<usize, ApiError> {
        blobs::collect(&self.state, self.state.config.blob_grace).await
    }

    /// The server's background work until `shutdown`: blob garbage collection, the rate
    /// limiter's housekeeping and the dashboard's chart samples.
    pub async fn background(&self, shutdown: CancellationToken) {
        let mut gc = tokio::time::interval(self.state.config.blob_gc_interval);
        let mut shrink = tokio::time::interval(Fairness::SHRINK_EVERY);
        let mut charts = tokio::time::interval(ui::SAMPLE_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = charts.tick() => ui::sample(&self.state).await,
                _ = gc.tick() => {
                    if let Err(e) = self.collect_blobs().await {
                        tracing::warn!(error = %e, "blob garbage collection failed");
                    }
                }
                _ = shrink.tick() => self.state.fairness.shrink(),
            }
        }
    }

    /// Handle one request (no socket needed).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ApiBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let verb = verb_of(&req);
        let span = tracing::debug_span!("request", method = %req.method(), path = %req.uri().path());
        let resp = match self.route(req).instrument(span.clone()).await {
            Ok(r) => r,
            Err(e) => {
                if e.code() >= 500 {
                    tracing::warn!(error = %e, "request failed");
                }
                error_response(&e)
            }
        };
        span.in_scope(|| {
            tracing::debug!(
                status = resp.status().as_u16(),
                took_us = started.elapsed().as_micros(),
                "answered"
            );
        });
        let m = &self.state.metrics;
        m.requests
            .get_or_create(&RequestLabels {
                verb: verb.to_owned(),
                code: resp.status().as_u16(),
            })
            .inc();
        m.latency
            .get_or_create(&VerbLabel {
                verb: verb.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        resp
    }

    /// A tower service with the server's layers (the external clients' concurrency limit),
    /// for hyper.
    pub fn service(&self) -> BoxCloneService<Request<hyper::body::Incoming>, Response<ApiBody>, Infallible> {
        let this = self.clone();
        ServiceBuilder::new()
            .boxed_clone()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                self.state.limit.clone(),
            ))
            .service(tower::service_fn(move |req: Request<hyper::body::Incoming>| {
                let this = this.clone();
                async move { Ok::<_, Infallible>(this.handle(req).await) }
            }))
    }

    /// Handles a request from a component that shares this server's process (`wisp up`), as
    /// if it had come over HTTP — same token check, authorization, validation,
    /// compare-and-swap and watch streams — without a socket, HTTP framing or the wake-ups of
    /// a loopback connection on either side. Such requests take permits of their own
    /// (`internal_concurrency_limit`), never those of external clients. The client side of
    /// this transport is `wisp_client::Client::in_process`, wired where the components are
    /// (the CLI's `up`); this crate does not depend on the client.
    pub fn handle_in_process(
        &self,
        mut req: Request<http_body_util::Full<Bytes>>,
    ) -> impl Future<Output = Response<ApiBody>> + Send + use<> {
        let this = self.clone();
        req.extensions_mut().insert(InProcess);
        async move {
            // Closed only if the semaphore is, which it never is.
            let _permit = this.state.internal_limit.clone().acquire_owned().await.ok();
            // A panic in a handler must not unwind into the calling component (over HTTP
            // it would have ended one connection): it answers 500, like a server error.
            std::panic::AssertUnwindSafe(this.handle(req))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!("a request handler panicked");
                    error_response(&ApiError::Internal(
                        "the API server failed on this request".into(),
                    ))
                })
        }
    }

    async fn route<B>(&self, req: Request<B>) -> Result<Response<ApiBody>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        // Health and readiness say nothing about the cluster: no token needed.
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["healthz"]) => return Ok(text(StatusCode::OK, "ok")),
            // The dashboard: its own login (a session cookie), then API requests as that token.
            (_, ["ui", rest @ ..]) => return Ok(self.ui(req, rest).await),
            (&Method::GET, ["readyz"]) => {
                return match self.state.store.revision().await {
                    Ok(_) => Ok(text(StatusCode::OK, "ok")),
                    Err(e) => Err(ApiError::Unavailable(format!("store not ready: {e}"))),
                };
            }
            _ => {}
        }
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let token = auth::bearer(authorization.as_deref())?;
        let token_key = auth::digest(token);
        let in_process = req.extensions().get::<InProcess>().is_some();
        let principal = self
            .state
            .auth
            .authenticate_digest(&token_key, in_process)
            .await?;
        let query = query_map(req.uri().query());
        let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let slot = if in_process {
            None
        } else {
            self.state.fairness.admit(&principal, &token_key, watching)?
        };
        let method = req.method().clone();
        let (parts, body) = req.into_parts();
        let state = &self.state;
        let result = match segments.as_slice() {
            // Every namespace's traffic, by resource and verb: the admin's only (not the
            // statistics credential, which every node's ingress is shown).
            ["metrics"] if method == Method::GET && !principal.is_admin() => Err(ApiError::Forbidden(
                "/metrics describes the whole cluster's traffic: it needs the admin token".into(),
            )),
            ["metrics"] if method == Method::GET => {
                let mut resp = text(StatusCode::OK, &self.state.metrics.encode());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                Ok(resp)
            }
            ["openapi", "v3"] => Ok(json_bytes(state.openapi.clone())),
            ["blobs", digest] => self.blob(&principal, &method, digest, &parts.headers, body).await,
            ["apis", "wisp.dev", "v1", "whoami"] if method == Method::GET => {
                Ok(json_response(StatusCode::OK, &WhoAmI::from(&principal)))
            }
            ["apis", "metrics.wisp.dev", "v1", ..]
                if method == Method::GET
                    && !matches!(principal, Principal::Admin | Principal::Namespace { .. }) =>
            {
                Err(ApiError::Forbidden(format!(
                    "{} cannot read the metrics API: it is for the admin and namespace tokens (a node reports \
                     its usage, it does not read the cluster's)",
                    principal.scope()
                )))
            }
            ["apis", "metrics.wisp.dev", "v1", rest @ ..] if method == Method::GET => {
                let kind = |plural: &str| {
                    wisp_api::kind_by_plural(plural)
                        .ok_or_else(|| ApiError::Internal(format!("no {plural} kind")))
                };
                let (plural, namespace) = match rest {
                    ["nodes"] => ("nodes", None),
                    ["pods"] => ("pods", None),
                    ["namespaces", ns, "pods"] => ("pods", Some((*ns).to_owned())),
                    _ => {
                        return Err(ApiError::NotFound(format!(
                            "{path}: the metrics API has nodes, pods and namespaces/<namespace>/pods"
                        )));
                    }
                };
                // Whoever may list the objects may read their usage.
                let target = Target {
                    kind: kind(plural)?,
                    namespace,
                    name: None,
                };
                authz::authorize(&principal, Verb::List, &target, None)?;
                if plural == "nodes" {
                    usage::nodes(state, principal.is_admin()).await
                } else {
                    usage::pods(state, target.namespace.as_deref(), principal.is_admin()).await
                }
            }
            ["apis", "wisp.dev", "v1", "tokens", rest @ ..] => {
                let data = match method {
                    Method::POST => {
                        read_limited(
                            &parts.headers,
                            body,
                            state.config.body_limit,
                            state.config.body_timeouts,
                        )
                        .await?
                    }
                    _ => Bytes::new(),
                };
                self.tokens(&principal, &method, rest, &data).await
            }
            ["apis", "wisp.dev", "v1", rest @ ..] => {
                let (target, subresource) = parse_target(rest)?;
                let verb = match (&method, &target.name) {
                    (&Method::GET | &Method::HEAD, Some(_)) => Verb::Get,
                    (&Method::GET | &Method::HEAD, None) if watching => Verb::Watch,
                    (&Method::GET | &Method::HEAD, None) => Verb::List,
                    (&Method::POST, _) => Verb::Create,
                    (&Method::PUT, _) => Verb::Update,
                    (&Method::DELETE, _) => Verb::Delete,
                    _ => {
                        return Err(ApiError::MethodNotAllowed(format!(
                            "{method} is not supported on {path}"
                        )));
                    }
                };
                let decision = authz::authorize(&principal, verb, &target, subresource)?;
                if subresource == Some("log") {
                    // A log stream holds its slot too (below), like a watch.
                    match (&target.name, &method) {
                        (Some(name), &Method::GET) if target.kind.plural == "pods" => {
                            logs::pod_log(state, &principal, &target, name, &query).await
                        }
                        _ => Err(ApiError::NotFound(format!(
                            "{method} {path}: logs are read with GET on a pod's log subresource"
                        ))),
                    }
                } else {
                    let data = match method {
                        Method::POST | Method::PUT => {
                            read_limited(
                                &parts.headers,
                                body,
                                state.config.body_limit,
                                state.config.body_timeouts,
                            )
                            .await?
                        }
                        _ => Bytes::new(),
                    };
                    self.dispatch(
                        &principal,
                        &decision,
                        &method,
                        &target,
                        subresource,
                        &query,
                        &data,
                    )
                    .await
                }
            }
            _ => Err(ApiError::NotFound(format!("no such path: {path}"))),
        };
        // A streamed answer (a watch, a blob) holds its place in the token's budget until
        // its body ends, not just until its head is sent.
        match slot {
            Some(slot) => result.map(|resp| {
                resp.map(|body| {
                    body.map_frame(move |f| {
                        let _held = &slot;
                        f
                    })
                    .boxed_unsync()
                })
            }),
            None => result,
        }
    }

    /// `GET|HEAD|PUT /blobs/sha256:<hex>`.
    async fn blob<B>(
        &self,
        principal: &Principal,
        method: &Method,
        digest: &str,
        headers: &http::HeaderMap,
        body: B,
    ) -> Result<Response<ApiBody>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let state = &self.state;
        match *method {
            Method::GET | Method::HEAD => {
                blobs::authorize_read(state, principal, digest).await?;
                let (file, len) = state.blobs.open(digest).await?;
                let mut resp = if *method == Method::HEAD {
                    Response::new(full(Bytes::new()))
                } else {
                    Response::new(blobs::file_body(file))
                };
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                h.insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
                Ok(resp)
            }
            Method::PUT => {
                if !matches!(principal, Principal::Admin | Principal::Namespace { .. }) {
                    return Err(ApiError::Forbidden(format!(
                        "{} cannot put blobs: components are uploaded by the admin and tenants",
                        principal.scope()
                    )));
                }
                let hex = blobs::parse_digest(digest)?.to_owned();
                let declared = headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > state.config.blob_limit) {
                    return Err(ApiError::TooLarge {
                        limit: usize::try_from(state.config.blob_limit).unwrap_or(usize::MAX),
                    });
                }
                let tenant = match principal {
                    Principal::Namespace {
                        namespace,
                        namespace_uid,
                    } => Some((namespace.as_str(), namespace_uid.as_str())),
                    _ => None,
                };
                let had = match tenant {
                    Some((ns, uid)) => blobs::namespace_has(state, ns, uid, digest).await?,
                    None => false,
                };
                // A declared size over the namespace's quota is refused before any byte is read.
                if let (Some((ns, _)), Some(n), false) = (tenant, declared, had) {
                    drop(quota::admit_blob_bytes(state, ns, n).await?);
                }
                let (created, size) = state
                    .blobs
                    .put(digest, body, state.config.blob_limit, state.config.blob_timeouts)
                    .await?;
                let mut recorded = false;
                if let Some((ns, uid)) = tenant
                    && !blobs::namespace_has(state, ns, uid, digest).await?
                {
                    let _quota = match quota::admit_blob_bytes(state, ns, size).await {
                        Ok(guard) => guard,
                        Err(e) => {
                            // Over the quota: a blob stored just now for nothing goes again.
                            if created {
                                state.blobs.remove_unrecorded(state, &hex).await;
                            }
                            return Err(e);
                        }
                    };
                    blobs::record(state, ns, uid, &hex, size).await?;
                    recorded = true;
                }
                // New to this namespace: 201, whether another namespace had the same bytes or
                // not (which a tenant must not learn).
                let code = if created || recorded {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(json_response(
                    code,
                    &serde_json::json!({ "digest": digest, "size": size }),
                ))
            }
            _ => Err(ApiError::MethodNotAllowed(format!(
                "{method} is not supported on blobs"
            ))),
        }
    }

    /// `POST|GET /apis/wisp.dev/v1/tokens`, `DELETE /apis/wisp.dev/v1/tokens/<id>` (admin).
    async fn tokens(
        &self,
        principal: &Principal,
        method: &Method,
        rest: &[&str],
        data: &[u8],
    ) -> Result<Response<ApiBody>, ApiError> {
        let state = &self.state;
        let verb = match *method {
            Method::POST => Verb::Create,
            Method::GET => Verb::List,
            Method::DELETE => Verb::Delete,
            _ => Verb::Update,
        };
        if !principal.is_admin() {
            return Err(authz::forbidden(
                principal,
                verb,
                "tokens",
                None,
                "only the cluster admin manages tokens",
            ));
        }
        match (method, rest) {
            (&Method::POST, []) => {
                let req: TokenRequest = serde_json::from_slice(data)
                    .map_err(|e| ApiError::BadRequest(format!("token request: {e}")))?;
                let principal = match (&req.namespace, &req.node) {
                    (Some(_), Some(_)) => {
                        return Err(ApiError::BadRequest(
                            "token request: give a namespace or a node, not both".into(),
                        ));
                    }
                    (Some(ns), None) => {
                        if ns == LEASE_NAMESPACE {
                            return Err(ApiError::Forbidden(format!(
                                "namespace {ns:?} holds the nodes' leases: it has no tokens"
                            )));
                        }
                        let uid = namespaces::uid_of(state, ns).await?;
                        Principal::Namespace {
                            namespace: ns.clone(),
                            namespace_uid: uid,
                        }
                    }
                    (None, Some(node)) => {
                        let errs = wisp_api::validation::validate_dns1123_subdomain(node, "node");
                        if let Some(e) = errs.first() {
                            return Err(ApiError::BadRequest(format!("token request: {e}")));
                        }
                        Principal::Node { node: node.clone() }
                    }
                    (None, None) => Principal::Admin,
                };
                if req.ttl_seconds == Some(0) {
                    return Err(ApiError::BadRequest("ttlSeconds: must be greater than 0".into()));
                }
                let ttl = req.ttl_seconds.map(Duration::from_secs);
                let (token, info) = state.auth.issue(&principal, ttl).await?;
                Ok(json_response(StatusCode::CREATED, &TokenResponse { token, info }))
            }
            (&Method::GET, []) => {
                let items = state.auth.list().await?;
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "items": items }),
                ))
            }
            (&Method::DELETE, [id]) => {
                let info = state.auth.revoke(id).await?;
                Ok(json_response(StatusCode::OK, &info))
            }
            _ => Err(ApiError::MethodNotAllowed(format!(
                "{method} is not supported on tokens{}",
                if rest.is_empty() { "" } else { "/<id>" }
            ))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn dispatch(
        &self,
        principal: &Principal,
        decision: &Decision,
        method: &Method,
        target: &Target,
        subresource: Option<&str>,
        query: &HashMap<String, String>,
        data: &[u8],
    ) -> Result<Response<ApiBody>, ApiError> {
        let state = &self.state;
        let q = |k: &str| query.get(k).map(String::as_str);
        let condition = match decision {
            Decision::Allow => None,
            Decision::AllowIf(c) => Some(c),
        };
        match (&target.name, subresource, method) {
            (None, None, &Method::GET) => {
                let filter = Filter::parse(q("labelSelector"), q("fieldSelector"))?;
                if q("watch").is_some_and(|w| w == "true" || w == "1") {
                    let timeout = match q("timeoutSeconds") {
                        // Capped like Kubernetes' request timeout ceiling; no overflow possible.
                        Some(t) => Some(Duration::from_secs(
                            t.parse::<u64>()
                                .map_err(|_| {
                                    ApiError::BadRequest(format!("timeoutSeconds: {t:?} is not a number"))
                                })?
                                .min(MAX_WATCH_SECONDS),
                        )),
                        None => None,
                    };
                    resources::watch(state, target, filter, q("resourceVersion"), timeout).await
                } else {
                    let page = resources::Page::parse(q("limit"), q("continue"))?;
                    resources::list(state, target, &filter, &page).await
                }
            }
            (None, None, &Method::POST) => {
                if target.kind.namespaced && target.namespace.is_none() {
                    return Err(ApiError::MethodNotAllowed(format!(
                        "create {} under /apis/wisp.dev/v1/namespaces/<namespace>/{}",
                        target.kind.plural, target.kind.plural
                    )));
                }
                resources::create(state, principal, target, data, condition).await
            }
            (Some(name), None | Some("status"), &Method::GET) => {
                resources::get(state, principal, target, name, condition).await
            }
            (Some(name), None, &Method::PUT) => {
                resources::update(state, principal, target, name, data, false, condition).await
            }
            (Some(name), Some("status"), &Method::PUT) => {
                resources::update(state, principal, target, name, data, true, condition).await
            }
            (Some(name), None, &Method::DELETE) if target.kind.plural == "namespaces" => {
                namespaces::delete(state, name, q("resourceVersion")).await
            }
            (Some(name), None, &Method::DELETE) => {
                resources::delete(state, target, name, q("resourceVersion")).await
            }
            _ => Err(ApiError::MethodNotAllowed(format!(
                "{method} is not supported on this path of {}",
                target.kind.plural
            ))),
        }
    }
}

fn kind(plural: &str) -> Result<&'static wisp_api::KindInfo, ApiError> {
    wisp_api::kind_by_plural(plural).ok_or_else(|| {
        ApiError::NotFound(format!(
            "the server has no resource type {plural:?} in wisp.dev/v1"
        ))
    })
}

/// `rest` is the path after `/apis/wisp.dev/v1/`.
fn parse_target<'a>(rest: &[&'a str]) -> Result<(Target, Option<&'a str>), ApiError> {
    let t = |k, ns: Option<&str>, name: Option<&str>| Target {
        kind: k,
        namespace: ns.map(str::to_owned),
        name: name.map(str::to_owned),
    };
    let namespaced_only = |k: &'static wisp_api::KindInfo| {
        if k.namespaced {
            Ok(k)
        } else {
            Err(ApiError::NotFound(format!(
                "{} are cluster-scoped: use /apis/wisp.dev/v1/{}",
                k.plural, k.plural
            )))
        }
    };
    match rest {
        [plural] => Ok((t(kind(plural)?, None, None), None)),
        ["namespaces", ns, "status"] => Ok((t(kind("namespaces")?, None, Some(ns)), Some("status"))),
        ["namespaces", ns, plural] => Ok((t(namespaced_only(kind(plural)?)?, Some(ns), None), None)),
        ["namespaces", ns, plural, name] => {
            Ok((t(namespaced_only(kind(plural)?)?, Some(ns), Some(name)), None))
        }
        ["namespaces", ns, plural, name, sub] => Ok((
            t(namespaced_only(kind(plural)?)?, Some(ns), Some(name)),
            Some(*sub),
        )),
        [plural, name] => {
            let k = kind(plural)?;
            if k.namespaced {
                return Err(ApiError::NotFound(format!(
                    "{plural} are namespaced: use /apis/wisp.dev/v1/namespaces/<namespace>/{plural}/{name}"
                )));
            }
            Ok((t(k, None, Some(name)), None))
        }
        [plural, name, sub] => {
            let k = kind(plural)?;
            if k.namespaced {
                return Err(ApiError::NotFound(format!("{plural} are namespaced")));
            }
            Ok((t(k, None, Some(name)), Some(*sub)))
        }
        _ => Err(ApiError::NotFound(format!(
            "no such path: /apis/wisp.dev/v1/{}",
            rest.join("/")
        ))),
    }
    .and_then(|(target, sub)| match sub {
        None | Some("status") => Ok((target, sub)),
        Some("log") if target.kind.plural == "pods" => Ok((target, sub)),
        Some(other) => Err(ApiError::NotFound(format!(
            "no subresource {other:?}; only \"status\" (and \"log\" of pods)"
        ))),
    })
}

fn verb_of<B>(req: &Request<B>) -> &'static str {
    match *req.method() {
        Method::GET if is_watch(req.uri().query()) => "watch",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// Whether a query asks for a watch (`watch=true` or `watch=1`, as the handler reads it).
fn is_watch(query: Option<&str>) -> bool {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
}

fn text(code: StatusCode, body: &str) -> Response<ApiBody> {
    let mut resp = Response::new(full(body.to_owned()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_bytes(data: Bytes) -> Response<ApiBody> {
    let mut resp = Response::new(full(data));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Serve `server` on `listener` (and run its background work) until `shutdown`, then drain
/// in-flight requests for the configured grace period.
pub async fn serve(
    server: ApiServer,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(server, listener, None, shutdown).await
}

/// [`serve`] over TLS (HTTPS only: a plain HTTP client gets no answer).
pub async fn serve_tls(
    server: ApiServer,
    listener: TcpListener,
    tls: Arc<wisp_http::rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(server, listener, Some(tls), shutdown).await
}

async fn serve_with(
    server: ApiServer,
    listener: TcpListener,
    tls: Option<Arc<wisp_http::rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let options = wisp_http::ServeOptions {
        header_read_timeout: Some(server.state.config.header_read_timeout),
        grace: server.state.config.shutdown_grace,
        event_loops: 0,
        busy_poll: std::time::Duration::ZERO,
        max_connections: server.state.config.max_connections,
        // The CLI, the nodes and the in-process transport speak HTTP/1.1.
        http1_only: true,
        max_connections_per_ip: server.state.config.max_connections_per_ip,
    };
    let service = server.service();
    let stop = shutdown.clone();
    let serving = async move {
        match tls {
            Some(tls) => wisp_http::serve_tls(listener, service, options, tls, stop).await,
            None => wisp_http::serve(listener, service, options, stop).await,
        }
    };
    tokio::join!(serving, server.background(shutdown));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_with_reserved_characters_and_unicode_decode_exactly() {
        let selector = "app in (a&b, c=d), tier!=100% été";
        let encoded = form_urlencoded::Serializer::new(String::new())
            .append_pair("labelSelector", selector)
            .append_pair("fieldSelector", "metadata.name=x y")
            .append_pair("watch", "true")
            .finish();
        let q = query_map(Some(&encoded));
        assert_eq!(q.get("labelSelector").map(String::as_str), Some(selector));
        assert_eq!(
            q.get("fieldSelector").map(String::as_str),
            Some("metadata.name=x y")
        );
        assert!(is_watch(Some(&encoded)));
        // Spaces as `%20` or `+`, a bare name, an empty pair, a stray `%`.
        let q = query_map(Some("a=x%20y+z&flag&&b=100%&c=%E2%9C%93"));
        assert_eq!(q.get("a").map(String::as_str), Some("x y z"));
        assert_eq!(q.get("flag").map(String::as_str), Some(""));
        assert_eq!(q.get("b").map(String::as_str), Some("100%"));
        assert_eq!(q.get("c").map(String::as_str), Some("✓"));
        assert!(!is_watch(Some("watch=false&x=watch%3Dtrue")));
        assert!(query_map(None).is_empty());
    }
}
