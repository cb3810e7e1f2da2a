//! `GET /apis/wisp.dev/v1/namespaces/<ns>/pods/<name>/log?container=&follow=&tailLines=`:
//! proxied to the agent of the pod's node (its `status.agentUrl`) over TLS, trusting only the
//! CA that node published (`status.agentCa`). The caller's own token is never sent there (the
//! node wrote that URL): the agent gets a ticket this server mints for that one pod, good for
//! a minute, and checks it against this API before it streams anything.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

use crate::State;
use crate::body::ApiBody;
use crate::error::ApiError;
use crate::resources::{Target, from_kv};

fn str_at<'a>(body: &'a serde_json::Map<String, serde_json::Value>, path: &[&str]) -> Option<&'a str> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(body.get(*first)?, |v, k| v.get(k))?.as_str()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How long a log ticket may be presented (the stream it opens may last longer).
const TICKET_TTL: Duration = Duration::from_secs(60);

pub async fn pod_log(
    state: &State,
    caller: &crate::auth::Principal,
    target: &Target,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response<ApiBody>, ApiError> {
    let ns = target.namespace.clone().unwrap_or_default();
    let what = format!("pod {ns}/{name}");
    let kv = state
        .store
        .get(&target.key(name))
        .await
        .map_err(|e| ApiError::from_store(e, &what))?
        .ok_or_else(|| ApiError::NotFound(format!("{what} not found")))?;
    let pod = from_kv(&kv)?;
    let containers: Vec<String> = pod
        .body
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(|c| c.as_array())
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let container = match query.get("container") {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::BadRequest(format!(
                "container: {what} has no container {c:?} (it has: {})",
                containers.join(", ")
            )));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::BadRequest(format!(
                "container: {what} has several containers; name one of: {}",
                containers.join(", ")
            )));
        }
    };
    let node = str_at(&pod.body, &["spec", "nodeName"])
        .ok_or_else(|| ApiError::BadRequest(format!("{what} is not scheduled to a node yet: no logs")))?
        .to_owned();
    let nodes = Target {
        kind: wisp_api::kind_by_plural("nodes").ok_or_else(|| ApiError::Internal("no nodes kind".into()))?,
        namespace: None,
        name: Some(node.clone()),
    };
    let node_obj = state
        .store
        .get(&nodes.key(&node))
        .await
        .map_err(|e| ApiError::from_store(e, &format!("node {node}")))?
        .ok_or_else(|| ApiError::Unavailable(format!("node {node} of {what} is not registered")))?;
    let node_obj: wisp_api::Node =
        serde_json::from_value(serde_json::Value::Object(from_kv(&node_obj)?.body))
            .map_err(|e| ApiError::Internal(format!("node {node} as stored: {e}")))?;
    // Only the host and port of its agentUrl, at one of the node's own addresses, with the
    // CA it published (a lying node cannot have this server fetch an address of its choosing
    // or trust another node's certificate).
    let (agent, ca) = wisp_client::node_port(&node_obj)
        .map_err(|why| ApiError::Unavailable(format!("node {node}: {why}")))?;
    let connector = wisp_client::node_connector(ca)
        .map_err(|e| ApiError::Unavailable(format!("node {node}'s status.agentCa: {e}")))?;
    let mut url = format!(
        "https://{agent}/.wisp/containerLogs/{}/{}/{}",
        encode(&ns),
        encode(name),
        encode(&container)
    );
    let mut params = Vec::new();
    if let Some(f) = query.get("follow") {
        params.push(format!("follow={}", encode(f)));
    }
    if let Some(t) = query.get("tailLines") {
        t.parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("tailLines: {t:?} is not a number")))?;
        params.push(format!("tailLines={t}"));
    }
    if !params.is_empty() {
        url = format!("{url}?{}", params.join("&"));
    }
    let ticket = state.auth.issue_ticket(
        crate::auth::Principal::PodLogs {
            namespace: ns.clone(),
            pod: name.to_owned(),
            on_behalf_of: caller.scope(),
        },
        Some(TICKET_TTL),
    )?;
    let req = Request::get(&url).header(header::AUTHORIZATION, format!("Bearer {ticket}"));
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::Internal(format!("log request to {url}: {e}")))?;
    let client = HyperClient::builder(TokioExecutor::new()).build(connector);
    // A node that is down answers nothing: give up on the response head after 10 s.
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| {
            ApiError::Unavailable(format!(
                "the agent of node {node} at {agent} did not answer in 10 s"
            ))
        })?
        .map_err(|e| {
            ApiError::Unavailable(format!("cannot reach the agent of node {node} at {agent}: {e}"))
        })?;
    let (parts, body) = resp.into_parts();
    let body = body.map_err(std::io::Error::other).boxed_unsync();
    Ok(Response::from_parts(parts, body))
}
