//! The node's port (`Node.status.agentUrl`), HTTPS only with the node's own certificate
//! (`Node.status.agentCa`). It serves container logs, which the API server proxies
//! `GET …/pods/<name>/log` to:
//! `GET /.wisp/containerLogs/<namespace>/<pod>/<container>?follow=true&tailLines=N`, and
//! this node's resource usage to the API server's metrics API (`GET /.wisp/usage`,
//! [`crate::usage`]), and hands every other request to [`crate::Agent::serving_also`] (the node's ingress:
//! requests forwarded by other nodes, its statistics).
//!
//! A log request carries the API server's ticket for that one pod, never a caller's token:
//! the agent checks the ticket with the API server (which checked who asks) before it
//! streams anything. The pod must be bound to this node.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use wisp_api::Pod;
use wisp_client::Client;
use wisp_sandbox::LogOptions;

use crate::worker::Runtimes;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
/// What else the node's port serves (see [`crate::Agent::serving_also`]).
pub type NodeService = wisp_http::HttpService<Body>;

pub struct LogServer {
    /// Ends every log stream (followers included) when cancelled.
    pub shutdown: CancellationToken,
    /// The node's own client: its transport (TLS with the cluster CA, or in process) checks
    /// a log ticket with the API server.
    pub api: Client,
    pub node: String,
    pub runtimes: Runtimes,
    /// Tickets checked with the API server at once (8): whoever reaches the node's port
    /// cannot have it call the API any faster than the API answers; a real request waits its
    /// turn (up to 5 s) instead of being refused.
    pub ticket_checks: tokio::sync::Semaphore,
    /// What this node uses (`/.wisp/usage`).
    pub usage: crate::usage::Sampler,
}

impl LogServer {
    pub fn new(shutdown: CancellationToken, api: Client, node: String, runtimes: Runtimes) -> Self {
        Self {
            shutdown,
            api,
            node,
            runtimes,
            ticket_checks: tokio::sync::Semaphore::new(8),
            usage: crate::usage::Sampler::default(),
        }
    }
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into() + "\n"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

impl LogServer {
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        match self.route(req).await {
            Ok(r) | Err(r) => r,
        }
    }

    /// Who the request's bearer token is, as the API server says (at most 8 checks at once,
    /// each waiting its turn up to 5 s), with a client of that token.
    async fn who<B>(&self, req: &Request<B>) -> Result<(wisp_client::WhoAmI, Client), Response<Body>> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| text(StatusCode::UNAUTHORIZED, "a bearer token is required"))?;
        let Ok(Ok(_checking)) =
            tokio::time::timeout(Duration::from_secs(5), self.ticket_checks.acquire()).await
        else {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests being checked; retry shortly",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            return Err(r);
        };
        let api = self.api.with_token(token);
        let who = api.whoami().await.map_err(|e| {
            let code = e
                .code()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            text(code, format!("cannot check the token with the API server: {e}"))
        })?;
        Ok((who, api))
    }

    /// `GET /.wisp/usage`: for the API server's metrics API (its statistics credential) and
    /// the admin, nobody else.
    async fn usage<B>(&self, req: Request<B>) -> Response<Body> {
        if req.method() != http::Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET");
        }
        let who = match self.who(&req).await {
            Ok((who, _)) => who,
            Err(r) => return r,
        };
        if !matches!(who.kind.as_str(), "scraper" | "admin") {
            return text(
                StatusCode::FORBIDDEN,
                "a node's usage is read through the API server (wisp top)",
            );
        }
        let report = self.usage.report(&self.node, &self.runtimes).await;
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let mut r = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }

    async fn route<B>(&self, req: Request<B>) -> Result<Response<Body>, Response<Body>> {
        if req.method() != http::Method::GET {
            return Err(text(StatusCode::METHOD_NOT_ALLOWED, "only GET"));
        }
        let path = req.uri().path().to_owned();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let [".wisp", "containerLogs", ns, pod_name, container] = parts.as_slice() else {
            return Err(text(
                StatusCode::NOT_FOUND,
                format!("no such path: {path} (expected /.wisp/containerLogs/<namespace>/<pod>/<container>)"),
            ));
        };
        // Only the API server's ticket for this very pod (never a user's, a node's or the
        // admin's own token, which the API server does not forward): it checked who asks.
        let (who, api) = self.who(&req).await?;
        if who.kind != "podLogs"
            || who.namespace.as_deref() != Some(*ns)
            || who.pod.as_deref() != Some(*pod_name)
        {
            return Err(text(
                StatusCode::FORBIDDEN,
                format!("logs of pod {ns}/{pod_name} are read through the API server (wisp logs)"),
            ));
        }
        // The caller the API server authorized, as its ticket says: recorded with the stream.
        let caller = who.on_behalf_of.unwrap_or_default();
        let pod: Pod = api.api::<Pod>(Some(ns)).get(pod_name).await.map_err(|e| {
            let code = e
                .code()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            text(code, format!("pod {ns}/{pod_name}: {e}"))
        })?;
        if pod.spec.node_name.as_deref() != Some(self.node.as_str()) {
            return Err(text(
                StatusCode::NOT_FOUND,
                format!("pod {ns}/{pod_name} does not run on node {}", self.node),
            ));
        }
        let Some(c) = pod.spec.containers.iter().find(|c| c.name == *container) else {
            return Err(text(
                StatusCode::NOT_FOUND,
                format!("pod {ns}/{pod_name} has no container {container:?}"),
            ));
        };
        let q = query(req.uri().query());
        let follow = q.get("follow").is_some_and(|v| v == "true" || v == "1");
        let tail = match q.get("tailLines") {
            Some(t) => Some(t.parse::<usize>().map_err(|_| {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("tailLines: {t:?} is not a number"),
                )
            })?),
            None => None,
        };
        let runtime = self.runtimes.get(c.runtime()).ok_or_else(|| {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("node {} has no {} runtime", self.node, c.runtime()),
            )
        })?;
        let id = crate::spec::sandbox_id(&pod, container);
        let lines = runtime
            .logs(&id, LogOptions { follow, tail })
            .await
            .map_err(|e| {
                text(
                    StatusCode::NOT_FOUND,
                    format!("no logs for container {container:?} of pod {ns}/{pod_name}: {e}"),
                )
            })?;
        tracing::info!(pod = %format!("{ns}/{pod_name}"), container, follow, %caller, "streaming container logs");
        let lines = lines.take_until(self.shutdown.clone().cancelled_owned());
        let body = StreamBody::new(lines.map(|l| {
            let mut s = l.line;
            s.push('\n');
            Ok::<_, BoxError>(Frame::data(Bytes::from(s)))
        }));
        let mut resp = Response::new(body.boxed_unsync());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok(resp)
    }
}

/// Serves the node's port on `listener` over TLS with `tls` until `shutdown` (log followers
/// are cut off then): container logs from `server`, everything else from `others`.
pub async fn serve(
    server: Arc<LogServer>,
    others: Option<NodeService>,
    listener: TcpListener,
    tls: Arc<wisp_http::rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let service =
        tower::util::BoxCloneService::new(tower::service_fn(move |req: Request<hyper::body::Incoming>| {
            let server = server.clone();
            let others = others.clone();
            async move {
                if req.uri().path().starts_with("/.wisp/containerLogs/") {
                    return Ok::<_, Infallible>(server.handle(req).await);
                }
                if req.uri().path() == "/.wisp/usage" {
                    return Ok(server.usage(req).await);
                }
                match others {
                    // Ready first: the service may be limited (the ingress's concurrency).
                    Some(others) => others.oneshot(req).await,
                    None => Ok(text(
                        StatusCode::NOT_FOUND,
                        format!("no such path: {} on a node's agent", req.uri().path()),
                    )),
                }
            }
        }));
    let options = wisp_http::ServeOptions {
        header_read_timeout: Some(Duration::from_secs(10)),
        grace: Duration::from_secs(1),
        event_loops: 0,
        busy_poll: Duration::ZERO,
        // Other nodes' ingresses keep pooled connections here.
        max_connections: 4096,
        http1_only: true,
        max_connections_per_ip: 0,
    };
    wisp_http::serve_tls(listener, service, options, tls, shutdown).await;
}
