//! The metrics API (like Kubernetes' metrics-server, served by this server itself):
//! `GET /apis/metrics.wisp.dev/v1/nodes`, `…/pods` (all namespaces) and
//! `…/namespaces/<ns>/pods`. Each asks every node's agent for `GET /.wisp/usage` at once,
//! over TLS to the CA that node published, with a statistics ticket this server mints (never
//! the caller's token), and keeps of each node's answer only what the store says is there: a
//! pod of that name and uid bound to that node, each pod once. A node that does not answer
//! within 5 s is listed as unreachable (by name and why to the admin only), its pods left
//! out. One gathering at a time serves every request of the next 2 s: however many ask, the
//! nodes are asked at most once per 2 s, and only Ready ones.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use wisp_api::usage::{NodeReport, NodeUsageList, PodUsageList, Unreachable};
use wisp_api::{Node, Pod};

use crate::State;
use crate::body::{ApiBody, json_response};
use crate::error::ApiError;

/// How long a node may take to answer (a first report waits a second for its CPU window).
const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a node's answer may weigh.
const REPORT_MAX: usize = 1 << 20;
/// What is kept of a node's answer: pods, and containers of each.
const PODS_MAX: usize = 10_000;
const CONTAINERS_MAX: usize = 64;
/// A ticket outlives the gathering that minted it by little.
const TICKET_TTL: Duration = Duration::from_secs(10);
/// A gathering serves the requests of this long.
const FRESH_FOR: Duration = Duration::from_secs(2);

/// What every node said, once.
struct Gathered {
    reports: Vec<(Node, NodeReport)>,
    unreachable: Vec<Unreachable>,
}

/// The last gathering; its lock is held while the nodes are asked, so there is one at a time.
#[derive(Default)]
pub struct Cache {
    last: tokio::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<Gathered>)>>,
}

async fn stored<T: serde::de::DeserializeOwned>(state: &State, prefix: &str) -> Result<Vec<T>, ApiError> {
    let listing = state
        .store
        .list(prefix)
        .await
        .map_err(|e| ApiError::from_store(e, prefix))?;
    Ok(listing
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

async fn report(node: &Node, ticket: &str) -> Result<NodeReport, String> {
    let (addr, ca) = wisp_client::node_port(node)?;
    let connector = wisp_client::node_connector(ca).map_err(|e| format!("status.agentCa: {e}"))?;
    let client = HyperClient::builder(TokioExecutor::new()).build(connector);
    let req = Request::get(format!("https://{addr}/.wisp/usage"))
        .header(header::AUTHORIZATION, format!("Bearer {ticket}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let read = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("cannot reach its agent at {addr}: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("its agent answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), REPORT_MAX)
            .collect()
            .await
            .map_err(|e| format!("reading its answer: {e}"))?
            .to_bytes();
        let mut report =
            serde_json::from_slice::<NodeReport>(&body).map_err(|e| format!("its answer: {e}"))?;
        report.pods.truncate(PODS_MAX);
        for p in &mut report.pods {
            p.containers.truncate(CONTAINERS_MAX);
        }
        Ok(report)
    };
    tokio::time::timeout(NODE_TIMEOUT, read)
        .await
        .map_err(|_| format!("no answer within {NODE_TIMEOUT:?}"))?
}

/// The nodes' reports, gathered at most once per [`FRESH_FOR`].
async fn gathered(state: &State) -> Result<std::sync::Arc<Gathered>, ApiError> {
    let mut last = state.usage.last.lock().await;
    if let Some((at, g)) = &*last
        && at.elapsed() < FRESH_FOR
    {
        return Ok(g.clone());
    }
    let (reports, unreachable) = reports(state).await?;
    let g = std::sync::Arc::new(Gathered { reports, unreachable });
    *last = Some((std::time::Instant::now(), g.clone()));
    Ok(g)
}

/// Every Ready node's report, or why not.
async fn reports(state: &State) -> Result<(Vec<(Node, NodeReport)>, Vec<Unreachable>), ApiError> {
    let nodes: Vec<Node> = stored::<Node>(state, "/registry/nodes/")
        .await?
        .into_iter()
        .filter(Node::is_ready)
        .collect();
    let ticket = state
        .auth
        .issue_ticket(crate::auth::Principal::Scraper, Some(TICKET_TTL))?;
    let asked = nodes.into_iter().map(|n| {
        let ticket = ticket.clone();
        async move {
            let r = report(&n, &ticket).await;
            (n, r)
        }
    });
    let mut ok = Vec::new();
    let mut unreachable = Vec::new();
    for (node, r) in futures::future::join_all(asked).await {
        match r {
            Ok(report) => ok.push((node, report)),
            Err(reason) => unreachable.push(Unreachable {
                node: node.metadata.name.clone(),
                reason,
            }),
        }
    }
    Ok((ok, unreachable))
}

/// Which nodes did not answer: by name and why for the admin; for anyone else only that
/// some did (node names and addresses are the cluster's).
fn unreachable_for(g: &Gathered, admin: bool) -> Vec<Unreachable> {
    if admin {
        return g.unreachable.clone();
    }
    g.unreachable
        .iter()
        .map(|_| Unreachable {
            node: String::new(),
            reason: "a node did not answer".into(),
        })
        .collect()
}

/// The pods' usage, of `namespace` or all of them.
pub async fn pods(
    state: &State,
    namespace: Option<&str>,
    admin: bool,
) -> Result<Response<ApiBody>, ApiError> {
    let prefix = match namespace {
        Some(ns) => format!("/registry/pods/{ns}/"),
        None => "/registry/pods/".to_owned(),
    };
    let g = gathered(state).await?;
    let unreachable = unreachable_for(&g, admin);
    // What a node may report: its own pods, as the store has them.
    let known: HashSet<(String, String, String, String)> = stored::<Pod>(state, &prefix)
        .await?
        .into_iter()
        .filter_map(|p| {
            Some((
                p.metadata.namespace?,
                p.metadata.name,
                p.metadata.uid?,
                p.spec.node_name?,
            ))
        })
        .collect();
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for (node, report) in &g.reports {
        let name = &node.metadata.name;
        for p in &report.pods {
            let key = (p.namespace.clone(), p.name.clone(), p.uid.clone(), name.clone());
            if known.contains(&key) && seen.insert(p.uid.clone()) {
                let mut p = p.clone();
                p.node.clone_from(name);
                items.push(p);
            }
        }
    }
    items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(json_response(
        StatusCode::OK,
        &PodUsageList { items, unreachable },
    ))
}

/// The nodes' own usage.
pub async fn nodes(state: &State, admin: bool) -> Result<Response<ApiBody>, ApiError> {
    let g = gathered(state).await?;
    let unreachable = unreachable_for(&g, admin);
    let mut items: Vec<_> = g
        .reports
        .iter()
        .map(|(node, r)| {
            let mut n = r.node.clone();
            n.name.clone_from(&node.metadata.name);
            n
        })
        .collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(json_response(
        StatusCode::OK,
        &NodeUsageList { items, unreachable },
    ))
}
