//! wisp-apiserver owns Wisp's HTTP API: Kubernetes-shaped REST and watch for every kind
//! under `/apis/wisp.dev/v1`, bearer-token auth with namespace confinement, admission
//! (validation through `wisp-api`), server-set metadata, the content-addressed blob store
//! for Wasm components, pod logs (proxied to the agent of the pod's node), `/openapi/v3`,
//! health and Prometheus metrics.
//!
//! It is the only component that touches the store; it must not run workloads or
//! controllers. [`ApiServer::service`] can be called without sockets (tests), and
//! [`ApiServer::in_process_client`] gives the components sharing its process (`wisp up`) a
//! client that calls it without one; [`serve`] runs it on a listener with graceful shutdown.

pub mod auth;
pub mod blobs;
pub mod body;
pub mod error;
mod logs;
pub mod metrics;
pub mod openapi;
pub mod resources;
#[cfg(feature = "test-util")]
pub mod testutil;

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

use crate::auth::{Auth, Principal};
use crate::blobs::BlobStore;
use crate::body::{ApiBody, error_response, full, json_response, read_limited};
use crate::error::ApiError;
use crate::metrics::{Metrics, RequestLabels, VerbLabel};
use crate::resources::{Filter, Target};

/// The longest a watch may ask to stay open (`timeoutSeconds` is capped to it).
const MAX_WATCH_SECONDS: u64 = 24 * 3600;

/// API server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest accepted object body (default 3 MiB).
    pub body_limit: usize,
    /// Largest accepted blob (default 256 MiB).
    pub blob_limit: usize,
    /// Quiet time after which a watch gets a BOOKMARK (default 10 s).
    pub bookmark_interval: Duration,
    /// Where blobs live on disk.
    pub blob_dir: PathBuf,
    /// In-flight request limit (watches count only while opening).
    pub concurrency_limit: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl Config {
    pub fn new(blob_dir: PathBuf) -> Self {
        Self {
            body_limit: 3 * 1024 * 1024,
            blob_limit: 256 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(10),
            blob_dir,
            concurrency_limit: 4096,
            shutdown_grace: Duration::from_secs(5),
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
    /// `config.concurrency_limit` permits, shared by HTTP and in-process requests.
    limit: Arc<tokio::sync::Semaphore>,
}

/// The API server, cheap to clone.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<State>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    namespace: Option<String>,
}

#[derive(Serialize)]
struct TokenResponse {
    token: String,
    namespace: Option<String>,
}

fn query_map(req_query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in req_query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ApiServer {
    /// Build a server over `store`; `shutdown` ends open watches.
    pub fn new(store: Arc<dyn Store>, config: Config, shutdown: CancellationToken) -> Self {
        let openapi = serde_json::to_vec(&openapi::document())
            .unwrap_or_default()
            .into();
        let config_limit = config.concurrency_limit;
        let state = State {
            auth: Auth::new(store.clone()),
            blobs: BlobStore::new(&config.blob_dir),
            store,
            config,
            metrics: Metrics::default(),
            openapi,
            shutdown,
            events: Arc::default(),
            limit: Arc::new(tokio::sync::Semaphore::new(config_limit)),
        };
        Self {
            state: Arc::new(state),
        }
    }

    pub fn auth(&self) -> &Auth {
        &self.state.auth
    }

    /// Create the `default` namespace and `wisp-system` (node leases) if missing, and on
    /// first start the admin token.
    pub async fn bootstrap(&self) -> Result<Option<String>, ApiError> {
        for name in ["default", "wisp-system"] {
            let ns = serde_json::json!({
                "apiVersion": wisp_api::API_VERSION, "kind": "Namespace", "metadata": { "name": name }
            });
            let target = Target {
                kind: kind("namespaces")?,
                namespace: None,
                name: None,
            };
            match resources::create(&self.state, &target, ns.to_string().as_bytes()).await {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.state.auth.bootstrap_admin().await
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

    /// A tower service with the server's layers (concurrency limit), for hyper or in-process use.
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

    /// A client for the components that share this server's process: each request is handled
    /// here as if it had come over HTTP — same token check, validation, compare-and-swap,
    /// concurrency limit and watch streams — without a socket, HTTP framing or the wake-ups
    /// of a loopback connection on either side. `url` is where the server listens, for those
    /// who hand the address on.
    pub fn in_process_client(&self, url: &str, token: &str) -> wisp_client::Client {
        let this = self.clone();
        let handler: wisp_client::LocalHandler = Arc::new(move |req| {
            let this = this.clone();
            Box::pin(async move {
                // Closed only if the semaphore is, which it never is.
                let _permit = this.state.limit.clone().acquire_owned().await.ok();
                // A panic in a handler must not unwind into the calling component (over HTTP
                // it would have ended one connection): it answers 500, like a server error.
                let resp = std::panic::AssertUnwindSafe(this.handle(req))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        tracing::error!("a request handler panicked");
                        error_response(&ApiError::Internal(
                            "the API server failed on this request".into(),
                        ))
                    });
                resp.map(|b| b.map_err(|e| wisp_client::BodyError(e.into())).boxed_unsync())
            })
        });
        wisp_client::Client::in_process(url, token, handler)
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
        // Unauthenticated endpoints.
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["healthz"]) => return Ok(text(StatusCode::OK, "ok")),
            (&Method::GET, ["readyz"]) => {
                return match self.state.store.revision().await {
                    Ok(_) => Ok(text(StatusCode::OK, "ok")),
                    Err(e) => Err(ApiError::Unavailable(format!("store not ready: {e}"))),
                };
            }
            (&Method::GET, ["metrics"]) => {
                let mut resp = text(StatusCode::OK, &self.state.metrics.encode());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                return Ok(resp);
            }
            _ => {}
        }
        let auth_header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let principal = self.state.auth.authenticate(auth_header.as_deref()).await?;
        let query = query_map(req.uri().query());
        let method = req.method().clone();
        let (parts, body) = req.into_parts();
        let state = &self.state;
        match segments.as_slice() {
            ["openapi", "v3"] => Ok(json_bytes(state.openapi.clone())),
            ["blobs", digest] => match method {
                Method::GET | Method::HEAD => {
                    let data = state.blobs.get(digest).await?;
                    let mut resp = Response::new(full(data));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/octet-stream"),
                    );
                    Ok(resp)
                }
                Method::PUT => {
                    let data = read_limited(&parts.headers, body, state.config.blob_limit).await?;
                    let created = state.blobs.put(digest, data).await?;
                    let code = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    Ok(json_response(code, &serde_json::json!({ "digest": digest })))
                }
                _ => Err(ApiError::MethodNotAllowed(format!(
                    "{method} is not supported on blobs"
                ))),
            },
            ["apis", "wisp.dev", "v1", "tokens"] if method == Method::POST => {
                principal.authorize(None)?;
                let data = read_limited(&parts.headers, body, state.config.body_limit).await?;
                let req: TokenRequest = serde_json::from_slice(&data)
                    .map_err(|e| ApiError::BadRequest(format!("token request: {e}")))?;
                if let Some(ns) = &req.namespace
                    && ns.is_empty()
                {
                    return Err(ApiError::BadRequest("namespace: must not be empty".into()));
                }
                let token = state
                    .auth
                    .issue(&Principal {
                        namespace: req.namespace.clone(),
                    })
                    .await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &TokenResponse {
                        token,
                        namespace: req.namespace,
                    },
                ))
            }
            ["apis", "wisp.dev", "v1", rest @ ..] => {
                let (target, subresource) = parse_target(rest)?;
                authorize(&principal, &target, &method)?;
                if subresource == Some("log") {
                    return match (&target.name, &method) {
                        (Some(name), &Method::GET) if target.kind.plural == "pods" => {
                            logs::pod_log(state, &target, name, &query, auth_header.as_deref()).await
                        }
                        _ => Err(ApiError::NotFound(format!(
                            "{method} {path}: logs are read with GET on a pod's log subresource"
                        ))),
                    };
                }
                let data = match method {
                    Method::POST | Method::PUT => {
                        read_limited(&parts.headers, body, state.config.body_limit).await?
                    }
                    _ => Bytes::new(),
                };
                self.dispatch(&method, &target, subresource, &query, &data).await
            }
            _ => Err(ApiError::NotFound(format!("no such path: {path}"))),
        }
    }

    async fn dispatch(
        &self,
        method: &Method,
        target: &Target,
        subresource: Option<&str>,
        query: &HashMap<String, String>,
        data: &[u8],
    ) -> Result<Response<ApiBody>, ApiError> {
        let state = &self.state;
        let q = |k: &str| query.get(k).map(String::as_str);
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
                    resources::list(state, target, &filter).await
                }
            }
            (None, None, &Method::POST) => {
                if target.kind.namespaced && target.namespace.is_none() {
                    return Err(ApiError::MethodNotAllowed(format!(
                        "create {} under /apis/wisp.dev/v1/namespaces/<namespace>/{}",
                        target.kind.plural, target.kind.plural
                    )));
                }
                resources::create(state, target, data).await
            }
            (Some(name), None, &Method::GET) => resources::get(state, target, name).await,
            (Some(name), None, &Method::PUT) => resources::update(state, target, name, data, false).await,
            (Some(name), Some("status"), &Method::PUT) => {
                resources::update(state, target, name, data, true).await
            }
            (Some(name), Some("status"), &Method::GET) => resources::get(state, target, name).await,
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

fn authorize(principal: &Principal, target: &Target, method: &Method) -> Result<(), ApiError> {
    if target.kind.namespaced {
        return principal.authorize(target.namespace.as_deref());
    }
    // A namespace token may read its own Namespace object (never change or delete it),
    // nothing else cluster-scoped.
    if target.kind.plural == "namespaces"
        && (method == Method::GET || method == Method::HEAD)
        && let (Some(own), Some(name)) = (&principal.namespace, &target.name)
        && own == name
    {
        return Ok(());
    }
    principal.authorize(None)
}

fn verb_of<B>(req: &Request<B>) -> &'static str {
    match *req.method() {
        Method::GET if req.uri().query().is_some_and(|q| q.contains("watch=true")) => "watch",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    }
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

/// Serve `server` on `listener` until `shutdown`, then drain in-flight requests for the
/// configured grace period.
pub async fn serve(
    server: ApiServer,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let options = wisp_runtime::http::ServeOptions {
        header_read_timeout: None,
        grace: server.state.config.shutdown_grace,
        event_loops: 0,
        busy_poll: std::time::Duration::ZERO,
    };
    wisp_runtime::http::serve(listener, server.service(), options, shutdown).await;
    Ok(())
}
