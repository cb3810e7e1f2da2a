//! The request path: route lookup, the activator when a Service has no ready endpoint,
//! least-outstanding choice, then the call — in process for a local wasm sandbox, over pooled
//! HTTP otherwise — and the server around it (tower layers: concurrency limit; hyper:
//! header-read timeout; per-request timeout and body limit here).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::Ingress;
use crate::table::{Backend, ServiceState, Target};

pub use wisp_sandbox::BoxError;
/// The body of requests and responses through the ingress: the sandbox contract's, so a
/// request handed to an in-process runtime is not boxed again.
pub type Body = wisp_sandbox::HttpBody;

/// `true` on a response whose request waited for its Service to wake from zero.
pub const COLD_START_HEADER: &str = "x-wisp-cold-start";
/// How long that request waited, in milliseconds.
pub const COLD_START_WAIT_HEADER: &str = "x-wisp-cold-start-ms";
/// Set on a request one ingress forwards to another: the receiver calls only its own pods.
const FORWARDED: &str = "x-wisp-forwarded";
const STATS_PATH: &str = "/.wisp/stats";
const METRICS_PATH: &str = "/.wisp/metrics";

pub(crate) fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let body = Full::new(Bytes::from(msg.into() + "\n")).map_err(|never| match never {});
    let mut r = Response::new(body.boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A request outstanding at a backend, until dropped (or handed to the response body).
struct Outstanding(Arc<Backend>);

impl Outstanding {
    fn enter(b: &Arc<Backend>) -> Self {
        b.outstanding.fetch_add(1, Ordering::Relaxed);
        Self(b.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight at a Service, until dropped (the Service's in-flight count and busy
/// integral, for the autoscaler).
struct InFlight {
    svc: Arc<ServiceState>,
}

impl InFlight {
    fn enter(svc: &Arc<ServiceState>) -> Self {
        svc.in_flight.fetch_add(1, Ordering::Relaxed);
        svc.busy_change(1);
        Self { svc: svc.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.svc.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.svc.busy_change(-1);
    }
}

/// A response body that keeps the request in flight at its Service and its backend until
/// the body is done (a streaming response is in flight until its last byte), and its trace
/// span open.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
    _outstanding: Outstanding,
    _span: tracing::Span,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A failed call: its error response, and whether the request may go to another backend.
pub(crate) struct Failed {
    retry: bool,
    response: Response<Body>,
}

fn empty() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The head of a request without a body, to send it again.
fn replayable(req: &Request<Body>) -> Option<Request<()>> {
    use hyper::body::Body as _;
    if !req.body().is_end_stream() {
        return None;
    }
    let mut r = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .version(req.version())
        .body(())
        .ok()?;
    *r.headers_mut() = req.headers().clone();
    Some(r)
}

/// The host a request names (lower case, without its port; an IPv6 literal keeps its
/// brackets): `""` with none, `None` when what it names is not a host — user information
/// (`a@b`) included, which would let the part read here differ from the part a sender checked.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok()?,
        None => req.uri().authority().map_or("", http::uri::Authority::as_str),
    };
    if raw.is_empty() {
        return Some(String::new());
    }
    match raw.parse::<http::uri::Authority>() {
        Ok(a) if !a.as_str().contains('@') => Some(a.host().to_ascii_lowercase()),
        _ => None,
    }
}

impl Ingress {
    /// Serves one request (no socket needed).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        if req.uri().path().starts_with("/.wisp/")
            && let Err(denied) = self.authorize_internal(&req).await
        {
            return denied;
        }
        if req.uri().path() == STATS_PATH {
            let body = serde_json::to_vec(&self.stats()).unwrap_or_default();
            let mut r = text(StatusCode::OK, "");
            *r.body_mut() = Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return r;
        }
        if req.uri().path() == METRICS_PATH {
            let mut r = text(StatusCode::OK, "");
            let body = inner.metrics.encode(&inner.services.all());
            *r.body_mut() = Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            return r;
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > inner.config.body_limit) {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {} bytes", inner.config.body_limit),
            );
        }
        let Some(host) = host_of(&req) else {
            return text(StatusCode::BAD_REQUEST, "the Host header is not a host name");
        };
        let path = req.uri().path().to_owned();
        let local_only = req.headers().contains_key(FORWARDED);
        let table = inner.table.load();
        let gateway = req.extensions().get::<Gateway>().is_some();
        // A Service name never falls through to a catch-all Route on the public listener.
        let service_name = host.ends_with(".svc");
        let found = if service_name && !gateway {
            None
        } else {
            table.lookup(&host, &path, gateway)
        };
        let Some(route) = found else {
            return text(StatusCode::NOT_FOUND, format!("no route for {host}{path}"));
        };
        let Some(svc) = route.pick_service().cloned() else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("route {}/{} has no backends", route.namespace, route.name),
            );
        };
        let timeout = route.timeout.unwrap_or(inner.config.request_timeout);
        drop(table);
        // The request's trace (when traces are exported): a child of the caller's
        // `traceparent`, if it sent one.
        let span = tracing::info_span!(
            target: wisp_telemetry::TARGET,
            "ingress",
            otel.kind = "server",
            http.request.method = %req.method(),
            server.address = wisp_telemetry::bounded(&host),
            url.path = wisp_telemetry::bounded(&path),
            wisp.namespace = %svc.namespace,
            wisp.service = %svc.name,
            http.response.status_code = Empty,
            otel.status_code = Empty,
        );
        wisp_telemetry::follow(&span, req.headers());
        svc.requests.fetch_add(1, Ordering::Relaxed);
        svc.last_request_ms.store(now_ms(), Ordering::Relaxed);
        let started = Instant::now();
        let in_flight = InFlight::enter(&svc);
        let limit = inner.config.body_limit;
        let req = req.map(|b| Limited::new(b, limit).boxed_unsync());
        let body_span = span.clone();
        let work = async {
            let mut req = req;
            let mut waited = None;
            let mut attempt = 0;
            // Backends that failed this request: the retries go elsewhere.
            let mut tried: Vec<String> = Vec::new();
            let (backend, outstanding, mut resp) = loop {
                let backend = match svc.pick(local_only, |b| {
                    self.usable(b, gateway) && !tried.contains(&b.pod_uid)
                }) {
                    Some(b) => b,
                    None => match crate::activator::wait(self, &svc, local_only, gateway)
                        .instrument(tracing::info_span!(
                            target: wisp_telemetry::TARGET,
                            "activator",
                            wisp.namespace = %svc.namespace,
                            wisp.service = %svc.name,
                            wisp.activated = Empty,
                        ))
                        .await
                    {
                        Ok(b) => {
                            waited = Some(started.elapsed());
                            b
                        }
                        Err(resp) => return resp,
                    },
                };
                // A bodiless request can be sent again if its backend stopped meanwhile.
                let again = replayable(&req);
                let outstanding = Outstanding::enter(&backend);
                match self.call(&backend, req).await {
                    Ok(r) => break (backend, outstanding, r),
                    Err(Failed { retry: true, .. }) if attempt < 3 && again.is_some() => {
                        attempt += 1;
                        tried.push(backend.pod_uid.clone());
                        req = again.map(|r| r.map(|()| empty())).unwrap_or_default();
                    }
                    Err(f) => return f.response,
                }
            };
            if let Some(w) = waited {
                inner
                    .metrics
                    .cold_start_wait
                    .get_or_create(&crate::metrics::ServiceLabels::of(&svc))
                    .observe(w.as_secs_f64());
                let h = resp.headers_mut();
                h.insert(COLD_START_HEADER, HeaderValue::from_static("true"));
                if let Ok(v) = HeaderValue::from_str(&w.as_millis().to_string()) {
                    h.insert(COLD_START_WAIT_HEADER, v);
                }
            }
            drop(backend);
            // The counts (and the span) now travel with the body.
            let span = body_span;
            resp.map(|inner| {
                Tracked {
                    inner,
                    _in_flight: in_flight,
                    _outstanding: outstanding,
                    _span: span,
                }
                .boxed_unsync()
            })
        };
        let resp = match tokio::time::timeout(timeout, work.instrument(span.clone())).await {
            Ok(r) => r,
            Err(_) => text(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "service {}/{} did not answer within {timeout:?}",
                    svc.namespace, svc.name
                ),
            ),
        };
        let labels = crate::metrics::ServiceLabels::of(&svc);
        let took = started.elapsed();
        svc.answered(took, resp.status().as_u16());
        if !span.is_disabled() {
            span.record("http.response.status_code", resp.status().as_u16());
            if resp.status().is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        let exemplar =
            wisp_telemetry::trace_id(&span).map(|trace_id| crate::metrics::TraceLabels { trace_id });
        inner
            .metrics
            .latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64(), exemplar, None);
        inner
            .metrics
            .requests
            .get_or_create(&crate::metrics::CodeLabels {
                namespace: labels.namespace,
                service: labels.service,
                code: resp.status().as_u16(),
            })
            .inc();
        resp
    }

    /// `/.wisp/*` (per-Service traffic of every namespace) answers only the cluster admin,
    /// node credentials and the autoscaler's statistics credential: the bearer token is
    /// checked with the API server (`whoami`), and the answer kept for a while. Tokens not
    /// seen before are looked up at a bounded rate (a flood of made-up tokens gets 429 rather
    /// than a queue of API calls).
    async fn authorize_internal<B>(&self, req: &Request<B>) -> Result<(), Response<Body>> {
        const KEEP: std::time::Duration = std::time::Duration::from_secs(30);
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(text(
                StatusCode::UNAUTHORIZED,
                "/.wisp/ needs a bearer token of the cluster admin or a node",
            ));
        };
        let key = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(token.as_bytes()))
        };
        // Only tokens found good are kept (a flood of made-up ones cannot push them out), and
        // one found good before is honoured past its freshness while lookups are throttled.
        let known = self
            .inner
            .internal_tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .map(|(at, _)| at.elapsed() < KEEP);
        let ok = match known {
            Some(true) => true,
            stale => {
                if self.inner.token_lookups.check().is_err() {
                    if stale.is_some() {
                        return Ok(());
                    }
                    let mut r = text(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many unknown tokens presented to /.wisp/; retry shortly",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return Err(r);
                }
                let who = self.inner.client.with_token(token).whoami().await;
                let ok = match who {
                    Ok(w) => matches!(w.kind.as_str(), "admin" | "node" | "scraper"),
                    Err(e) if e.code() == Some(401) => false,
                    Err(e) => {
                        return Err(text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("cannot check the token with the API server: {e}"),
                        ));
                    }
                };
                let mut cache = self
                    .inner
                    .internal_tokens
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if ok {
                    if cache.len() >= 1024 {
                        cache.retain(|_, (at, _)| at.elapsed() < KEEP);
                    }
                    cache.insert(key, (Instant::now(), true));
                } else {
                    cache.remove(&key);
                }
                ok
            }
        };
        if ok {
            Ok(())
        } else {
            Err(text(
                StatusCode::FORBIDDEN,
                "/.wisp/ answers only the cluster admin and node credentials",
            ))
        }
    }

    /// Whether a backend takes requests now: a local sandbox that is stopping (its pod is
    /// being removed) does not, even before the Endpoints say so.
    /// Whether `b` can take a request now. A Service call through the gateway is never
    /// forwarded to another node's ingress (whose public listener does not answer Service
    /// names): it uses this node's pods and containers' addresses.
    pub(crate) fn usable(&self, b: &Backend, gateway: bool) -> bool {
        match (&b.target, &self.inner.in_process) {
            (Target::Local(id), Some(local)) => local.http.is_serving(id),
            (Target::Local(_), None) => false,
            (Target::Node(_), _) => !gateway,
            (Target::Addr(_), _) => true,
        }
    }

    /// One call to one backend, in its `sandbox` span: the request carries that span's
    /// `traceparent` to the guest or the container.
    async fn call(&self, backend: &Backend, req: Request<Body>) -> Result<Response<Body>, Failed> {
        let span = tracing::info_span!(
            target: wisp_telemetry::TARGET,
            "sandbox",
            otel.kind = if matches!(backend.target, Target::Local(_)) { "internal" } else { "client" },
            wisp.pod = %backend.pod,
            wisp.backend = match backend.target {
                Target::Local(_) => "in-process",
                Target::Addr(_) => "address",
                Target::Node(_) => "node",
            },
            http.response.status_code = Empty,
            otel.status_code = Empty,
        );
        let mut req = req;
        wisp_telemetry::inject(&span, req.headers_mut());
        let result = self.call_in(backend, req).instrument(span.clone()).await;
        if !span.is_disabled() {
            let code = match &result {
                Ok(r) => r.status(),
                Err(f) => f.response.status(),
            };
            span.record("http.response.status_code", code.as_u16());
            if code.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    async fn call_in(&self, backend: &Backend, req: Request<Body>) -> Result<Response<Body>, Failed> {
        let fail = |response| Failed {
            retry: false,
            response,
        };
        match &backend.target {
            Target::Local(id) => {
                let Some(local) = &self.inner.in_process else {
                    return Err(fail(text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no in-process runtime on this node",
                    )));
                };
                // The body goes over as it is (the contract's body type is this one).
                match local.http.handle(id, req).await {
                    Ok(resp) => Ok(resp),
                    Err(e) => Err(Failed {
                        // The sandbox stopped between the pick and the call: nothing ran.
                        retry: e.is_not_serving(),
                        response: text(e.status(), format!("pod {}: {e}", backend.pod)),
                    }),
                }
            }
            Target::Addr(addr) => forward(&self.inner.http, req, &format!("http://{addr}"), false)
                .await
                .map_err(|(response, retry)| Failed { retry, response }),
            // The other node had no ready pod of this Service after all: try another backend.
            Target::Node(peer) => match forward(&peer.http, req, &peer.url, true).await {
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => Err(Failed {
                    retry: true,
                    response: r,
                }),
                Ok(r) => Ok(r),
                Err((response, retry)) => Err(Failed { retry, response }),
            },
        }
    }
}

/// Sends `req` to `base` on `http`'s pool; on failure the error response and whether another
/// backend may be tried.
async fn forward<C>(
    http: &hyper_util::client::legacy::Client<C, Body>,
    req: Request<Body>,
    base: &str,
    mark: bool,
) -> Result<Response<Body>, (Response<Body>, bool)>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: http::Uri = format!("{}{pq}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| {
            (
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("bad backend address {base}: {e}"),
                ),
                false,
            )
        })?;
    // The pooled client speaks HTTP/1.1 to backends, whatever the client spoke to us; an
    // HTTP/2 request carries its host in the URI, which is replaced here.
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    parts.version = http::Version::HTTP_11;
    parts.uri = uri;
    if mark {
        parts.headers.insert(FORWARDED, HeaderValue::from_static("1"));
    }
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let resp = http
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| {
            // No answer came: nothing reached the backend (refused), or it closed or reset
            // the connection first (a container being stopped; Docker's proxy accepts,
            // then closes). Another backend may be tried when nothing was sent or the
            // method may be repeated.
            let retry = e.is_connect() || idempotent;
            (
                text(StatusCode::BAD_GATEWAY, format!("backend {base}: {e}")),
                retry,
            )
        })?;
    Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
}

/// What the node's port (its agent's TLS listener) hands to this ingress: requests other
/// nodes forwarded, served by this node's own backends only (never forwarded again), and
/// `/.wisp/` statistics for the autoscaler (behind the same token check as on any listener).
pub fn node_port_service(ingress: Ingress) -> wisp_http::HttpService<Body> {
    let limit = ingress.inner.config.concurrency_limit;
    ServiceBuilder::new()
        .boxed_clone()
        .concurrency_limit(limit)
        .service(tower::service_fn(
            move |mut req: Request<hyper::body::Incoming>| {
                let ingress = ingress.clone();
                req.headers_mut().insert(FORWARDED, HeaderValue::from_static("1"));
                async move { Ok::<_, Infallible>(ingress.handle(req).await) }
            },
        ))
}

/// Serves `ingress` on `listener` until `shutdown`, then lets in-flight requests finish for
/// the configured grace period.
pub async fn serve(ingress: Ingress, listener: TcpListener, shutdown: CancellationToken) {
    serve_on(ingress, listener, shutdown, false, None).await;
}

/// [`serve`] over TLS with `config` (see [`crate::tls::serve_tls`]).
pub(crate) async fn serve_with_tls(
    ingress: Ingress,
    listener: TcpListener,
    config: std::sync::Arc<wisp_http::rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    serve_on(ingress, listener, shutdown, false, Some(config)).await;
}

/// Marks a request that came in through the node's Service gateway (see [`serve_gateway`]).
#[derive(Clone, Copy, Debug)]
pub struct Gateway;

/// Serves the node's Service gateway: where Wasm guests' calls to
/// `<service>.<namespace>.svc` arrive (the runtime sends them here). Only requests on this
/// listener may use those names; bind it to loopback, where neither outside clients nor
/// containers (in their own network namespaces) reach it.
pub async fn serve_gateway(ingress: Ingress, listener: TcpListener, shutdown: CancellationToken) {
    serve_on(ingress, listener, shutdown, true, None).await;
}

async fn serve_on(
    ingress: Ingress,
    listener: TcpListener,
    shutdown: CancellationToken,
    gateway: bool,
    tls: Option<std::sync::Arc<wisp_http::rustls::ServerConfig>>,
) {
    let config = &ingress.inner.config;
    let this = ingress.clone();
    let service = ServiceBuilder::new()
        .boxed_clone()
        .concurrency_limit(config.concurrency_limit)
        .service(tower::service_fn(
            move |mut req: Request<hyper::body::Incoming>| {
                let this = this.clone();
                if gateway {
                    req.extensions_mut().insert(Gateway);
                }
                async move { Ok::<_, Infallible>(this.handle(req).await) }
            },
        ));
    let options = wisp_http::ServeOptions {
        header_read_timeout: Some(config.header_read_timeout),
        grace: config.shutdown_grace,
        // The gateway (guests' calls to Services) is served on the caller's runtime.
        event_loops: if gateway { 0 } else { config.event_loops },
        busy_poll: config.busy_poll,
        max_connections: config.max_connections,
        http1_only: false,
        // Many clients may come through one proxy or balancer in front of the ingress.
        max_connections_per_ip: 0,
    };
    match tls {
        Some(config) => wisp_http::serve_tls(listener, service, options, config, shutdown).await,
        None => wisp_http::serve(listener, service, options, shutdown).await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::{BodyExt, Empty};

    use super::*;
    use crate::table::{RouteEntry, Table};

    /// Forwarding to another node trusts the CA that node published, and only it: a port
    /// showing a certificate of another CA gets no request; the one with the right one gets
    /// it marked as forwarded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_node_is_called_over_tls_trusting_its_own_ca_only() {
        let node = wisp_tls::node("127.0.0.1").expect("the node's TLS");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        let service = tower::util::BoxCloneService::new(tower::service_fn(
            move |req: Request<hyper::body::Incoming>| {
                count.fetch_add(1, Ordering::SeqCst);
                let marked = req.headers().contains_key(FORWARDED);
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(marked.to_string())))) }
            },
        ));
        let options = wisp_http::ServeOptions {
            header_read_timeout: None,
            grace: std::time::Duration::ZERO,
            event_loops: 0,
            busy_poll: std::time::Duration::ZERO,
            max_connections: 16,
            http1_only: true,
            max_connections_per_ip: 0,
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(wisp_http::serve_tls(
            listener,
            service,
            options,
            node.server.clone(),
            shutdown.clone(),
        ));
        let req = || {
            Request::get("/x")
                .header(header::HOST, "web.example")
                .body(
                    Empty::<Bytes>::new()
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .expect("request")
        };
        let stranger = wisp_tls::Ca::create_named(wisp_tls::NODE_CA).expect("another CA");
        let wrong = crate::table::Peer::new(&url, stranger.cert_pem()).expect("peer");
        let (refused, _) = forward(&wrong.http, req(), &wrong.url, true)
            .await
            .expect_err("a certificate of another CA");
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(seen.load(Ordering::SeqCst), 0, "no request crossed");
        let right = crate::table::Peer::new(&url, &node.ca_pem).expect("peer");
        let resp = forward(&right.http, req(), &right.url, true)
            .await
            .map_err(|(r, _)| r.status())
            .expect("forwarded");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"true", "marked as forwarded");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        shutdown.cancel();
    }

    /// A server that answers every request on a connection with 200 `ok`.
    async fn ok_server() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if c.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// Accepts connections and closes them at once (Docker's proxy in front of a container
    /// that is stopping).
    async fn closing_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((c, _)) = listener.accept().await {
                drop(c);
            }
        });
        addr
    }

    /// An ingress (no API server behind it) routing `web.example` to Service default/web,
    /// whose backends are these (pod, address) pairs, tried in order.
    fn web_ingress(backends: &[(&str, std::net::SocketAddr)]) -> Ingress {
        let ingress = Ingress::new(
            wisp_client::Client::new("http://127.0.0.1:9", "t"),
            crate::IngressConfig::new("n"),
            None,
        );
        let svc = Arc::new(crate::table::ServiceState::new("default", "web"));
        svc.set_backends(
            backends
                .iter()
                .map(|(pod, addr)| {
                    Arc::new(crate::table::Backend {
                        pod_uid: (*pod).into(),
                        pod: (*pod).into(),
                        node: None,
                        target: Target::Addr(*addr),
                        outstanding: std::sync::atomic::AtomicUsize::new(0),
                    })
                })
                .collect(),
        );
        let route = RouteEntry {
            namespace: "default".into(),
            name: "web".into(),
            host: Some("web.example".into()),
            prefix: "/".into(),
            backends: vec![(svc, 1)],
            timeout: None,
            gateway_only: false,
            created: String::new(),
        };
        ingress.inner.table.store(Arc::new(Table::new(vec![route])));
        ingress
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_to_a_backend_that_went_away_go_to_another() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let ingress = web_ingress(&[
            ("refused", refused),
            ("closing", closing_server().await),
            ("alive", ok_server().await),
        ]);
        for _ in 0..30 {
            let req = Request::get("/")
                .header(header::HOST, "web.example")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let resp = ingress.handle(req).await;
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            assert_eq!(&body[..], b"ok");
        }
    }

    /// A container's request carries the trace context of the ingress's `sandbox` span: the
    /// caller's trace, a span of the ingress's own. With no traces made, the caller's header
    /// passes on as it came.
    #[tokio::test]
    async fn a_containers_request_carries_the_sandbox_spans_traceparent() {
        const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let echo = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                        let tp = req.headers().get("traceparent").cloned();
                        async move {
                            let tp = tp
                                .map(|v| Bytes::copy_from_slice(v.as_bytes()))
                                .unwrap_or_default();
                            Ok::<_, Infallible>(Response::new(Full::new(tp)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(io), echo)
                        .await;
                });
            }
        });
        let ingress = web_ingress(&[("web-1", addr)]);
        let seen = async || {
            let req = Request::get("/")
                .header(header::HOST, "web.example")
                .header("traceparent", CALLER)
                .body(Empty::<Bytes>::new())
                .expect("request");
            let body = ingress
                .handle(req)
                .await
                .into_body()
                .collect()
                .await
                .expect("body");
            String::from_utf8(body.to_bytes().to_vec()).expect("utf-8")
        };
        let traced = {
            // One thread (a current-thread runtime): every task sees this subscriber.
            let _traces = tracing::subscriber::set_default(wisp_telemetry::unexported());
            seen().await
        };
        let parts: Vec<&str> = traced.split('-').collect();
        assert_eq!(parts.len(), 4, "{traced:?}");
        assert_eq!(parts[1], "0af7651916cd43dd8448eb211c80319c", "the caller's trace");
        assert_ne!(parts[2], "b7ad6b7169203331", "the ingress's own span");
        assert_eq!(
            seen().await,
            CALLER,
            "without traces the header passes on untouched"
        );
    }

    #[tokio::test]
    async fn service_names_never_reach_a_catch_all_route_on_the_public_listener() {
        // No API server is needed: nothing here reaches the activator.
        let ingress = Ingress::new(
            wisp_client::Client::new("http://127.0.0.1:9", "t"),
            crate::IngressConfig::new("n"),
            None,
        );
        let entry = |name: &str, host: &str| RouteEntry {
            namespace: "other".into(),
            name: name.into(),
            host: Some(host.into()),
            prefix: "/".into(),
            backends: Vec::new(),
            timeout: None,
            gateway_only: false,
            created: String::new(),
        };
        // A wildcard over Service names (refused at admission; held here whatever the store says).
        let catch_all = entry("everything", "*.svc");
        ingress
            .inner
            .table
            .store(Arc::new(Table::new(vec![catch_all, entry("web", "example.com")])));
        let request = |host: &str| {
            Request::get("/")
                .header(header::HOST, host)
                .body(Empty::<Bytes>::new())
                .expect("request")
        };
        let resp = ingress.handle(request("db.team-a.svc")).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("no route"));
        // Another host does reach its Route (which has no backends here: 503).
        let resp = ingress.handle(request("example.com")).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let resp = ingress.handle(request("EXAMPLE.com:8080")).await;
        assert_eq!(
            resp.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "any case, any port"
        );
    }

    /// A Host with user information, or one that is no host at all, reaches no Route, on the
    /// gateway or the public listener: a guest that got `db.team-b.svc:x@db.team-a.svc` past
    /// a check of `db.team-a.svc` would otherwise reach team-b's Service.
    #[tokio::test]
    async fn a_host_header_that_is_not_a_host_is_refused() {
        let ingress = Ingress::new(
            wisp_client::Client::new("http://127.0.0.1:9", "t"),
            crate::IngressConfig::new("n"),
            None,
        );
        let entry = |ns: &str, host: &str, gateway_only: bool| RouteEntry {
            namespace: ns.into(),
            name: "db".into(),
            host: Some(host.into()),
            prefix: "/".into(),
            backends: Vec::new(),
            timeout: None,
            gateway_only,
            created: String::new(),
        };
        ingress.inner.table.store(Arc::new(Table::new(vec![
            entry("team-b", "db.team-b.svc", true),
            entry("team-a", "db.team-a.svc", true),
            entry("web", "*", false),
        ])));
        for host in [
            "db.team-b.svc:x@db.team-a.svc",
            "x@db.team-b.svc",
            "db.team-b.svc/x",
            "db team-b",
        ] {
            for gateway in [true, false] {
                let mut req = Request::get("/")
                    .header(header::HOST, host)
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                if gateway {
                    req.extensions_mut().insert(Gateway);
                }
                let resp = ingress.handle(req).await;
                assert_eq!(
                    resp.status(),
                    StatusCode::BAD_REQUEST,
                    "{host} (gateway {gateway})"
                );
            }
        }
        // The Service's own name reaches it (no backends here: 503).
        let mut req = Request::get("/")
            .header(header::HOST, "db.team-b.svc")
            .body(Empty::<Bytes>::new())
            .expect("request");
        req.extensions_mut().insert(Gateway);
        assert_eq!(
            ingress.handle(req).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
