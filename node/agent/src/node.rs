//! The node's registration and heartbeat: the Node object (capacity, runtimes, addresses,
//! `Ready`) and its Lease in `wisp-system`, renewed every `renew_interval`. When the node
//! lifecycle controller has marked the node `NotReady` (the lease ran out while this agent
//! was away or stalled), the next heartbeat sets `Ready=True` again. A runtime that depends on
//! a service outside the process (docker: the daemon) has its own `<Runtime>Ready` condition
//! (`DockerReady`), kept current by [`health_monitor`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wisp_api::{Condition, Lease, Node, NodeAddress, NodeStatus, ObjectMeta, Quantity, Resource};
use wisp_client::{Client, ClientError};
use wisp_sandbox::Sandbox;

/// Where node Leases live (the node lifecycle controller reads them there).
pub const LEASE_NAMESPACE: &str = "wisp-system";

/// What the node tells the scheduler about itself.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    pub capacity: BTreeMap<String, Quantity>,
    pub runtimes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub agent_url: Option<String>,
    /// The CA (PEM) the agent's certificate chains to (see `wisp_tls::node`).
    pub agent_ca: Option<String>,
    pub ingress_url: Option<String>,
    pub lease_duration: Duration,
    /// The runtimes whose health [`health_monitor`] checks, each for its `<Runtime>Ready`
    /// condition.
    pub checked: Vec<Arc<dyn Sandbox>>,
    /// The last condition the monitor found for each of them, by condition type (heartbeats
    /// read it, never wait on a runtime's service).
    pub health: Arc<Mutex<BTreeMap<String, Condition>>>,
}

/// The node condition for runtime `name`'s service: `docker` → `DockerReady`.
pub fn health_condition_type(name: &str) -> String {
    let mut chars = name.chars();
    let first = chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>())
        .unwrap_or_default();
    format!("{first}{}Ready", chars.as_str())
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn ready_condition(conditions: &mut Vec<Condition>) {
    wisp_api::meta::set_condition(
        conditions,
        Condition {
            type_: wisp_api::NODE_READY.into(),
            status: "True".into(),
            reason: Some("AgentReady".into()),
            message: Some("the node agent is posting its status".into()),
            ..Condition::default()
        },
        &now(),
    );
}

/// Asks each checked runtime whether its service answers (bounded by the runtime's own
/// timeouts) and records its `<Runtime>Ready` condition.
pub async fn refresh_health(info: &NodeInfo) {
    for runtime in &info.checked {
        let Some(check) = runtime.health() else {
            continue;
        };
        let name = runtime.runtime();
        let (status, reason, message) = match check.await {
            Ok(version) => ("True", "DaemonReady", format!("{name} {version} answers")),
            Err(e) => ("False", "DaemonUnreachable", e.to_string()),
        };
        let condition = Condition {
            type_: health_condition_type(name),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            ..Condition::default()
        };
        info.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(condition.type_.clone(), condition);
    }
}

/// The last recorded health conditions.
fn health_conditions(info: &NodeInfo) -> Vec<Condition> {
    info.health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .cloned()
        .collect()
}

/// Keeps the runtimes' health conditions current, apart from the heartbeat, so a daemon that
/// hangs never delays the lease.
pub async fn health_monitor(info: NodeInfo, interval: Duration, shutdown: CancellationToken) {
    if info.checked.is_empty() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = refresh_health(&info) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

fn desired_status(info: &NodeInfo, current: Option<&NodeStatus>, health: &[Condition]) -> NodeStatus {
    let mut st = current.cloned().unwrap_or_default();
    st.capacity = info.capacity.clone();
    st.allocatable = info.capacity.clone();
    st.runtimes = info.runtimes.clone();
    st.addresses = vec![NodeAddress {
        type_: "InternalIP".into(),
        address: info.address.clone(),
    }];
    st.agent_url = info.agent_url.clone();
    st.agent_ca = info.agent_ca.clone();
    st.ingress_url = info.ingress_url.clone();
    st.agent_version = Some(env!("CARGO_PKG_VERSION").into());
    ready_condition(&mut st.conditions);
    for c in health {
        // Only a change of status rewrites the condition (its message carries no news).
        let same = st
            .conditions
            .iter()
            .any(|x| x.type_ == c.type_ && x.status == c.status);
        if !same {
            wisp_api::meta::set_condition(&mut st.conditions, c.clone(), &now());
        }
    }
    st
}

/// Creates or updates the Node and posts its status as Ready.
pub async fn register(client: &Client, info: &NodeInfo) -> Result<(), ClientError> {
    let api = client.api::<Node>(None);
    let node = match api.get_opt(&info.name).await? {
        Some(mut node) => {
            let mut labels = node.metadata.labels.clone();
            labels.extend(info.labels.clone());
            if labels != node.metadata.labels {
                node.metadata.labels = labels;
                node = api.replace(&node).await?;
            }
            node
        }
        None => {
            let mut meta = ObjectMeta {
                name: info.name.clone(),
                ..ObjectMeta::default()
            };
            meta.labels = info.labels.clone();
            meta.labels.insert("wisp.dev/hostname".into(), info.name.clone());
            match api.create(&Node::new(meta)).await {
                Ok(n) => n,
                Err(e) if e.code() == Some(409) => api.get(&info.name).await?,
                Err(e) => return Err(e),
            }
        }
    };
    post_status(client, info, node).await
}

async fn post_status(client: &Client, info: &NodeInfo, mut node: Node) -> Result<(), ClientError> {
    let health = health_conditions(info);
    let desired = desired_status(info, node.status.as_ref(), &health);
    if node.status.as_ref() == Some(&desired) {
        return Ok(());
    }
    node.status = Some(desired);
    node.metadata.resource_version = None;
    client.api::<Node>(None).replace_status(&node).await?;
    Ok(())
}

/// Renews the Lease (creating it when missing).
pub async fn renew(client: &Client, info: &NodeInfo) -> Result<(), ClientError> {
    let api = client.api::<Lease>(Some(LEASE_NAMESPACE));
    let stamp = now();
    let secs = i64::try_from(info.lease_duration.as_secs().max(1)).unwrap_or(10);
    match api.get_opt(&info.name).await? {
        Some(mut lease) => {
            lease.spec.renew_time = Some(stamp);
            lease.spec.holder_identity = Some(info.name.clone());
            lease.spec.lease_duration_seconds = Some(secs);
            lease.metadata.resource_version = None;
            api.replace(&lease).await?;
        }
        None => {
            let mut lease = Lease::new(ObjectMeta::namespaced(LEASE_NAMESPACE, info.name.clone()));
            lease.spec.holder_identity = Some(info.name.clone());
            lease.spec.lease_duration_seconds = Some(secs);
            lease.spec.acquire_time = Some(stamp.clone());
            lease.spec.renew_time = Some(stamp);
            match api.create(&lease).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Heartbeats until `shutdown`: the lease every `interval`, and the Node's status whenever
/// it is no longer what this agent reports (e.g. marked NotReady, or deleted and recreated).
pub async fn heartbeat(client: Client, info: NodeInfo, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = renew(&client, &info).await {
            tracing::warn!(node = %info.name, error = %e, "cannot renew the node lease");
            continue;
        }
        let node = match client.api::<Node>(None).get_opt(&info.name).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(node = %info.name, error = %e, "cannot read the node");
                continue;
            }
        };
        let result = match node {
            Some(node) if node.is_ready() && !health_changed(&info, &node) => Ok(()),
            Some(node) if node.is_ready() => {
                tracing::info!(node = %info.name, "a runtime's service changed state; reporting it");
                post_status(&client, &info, node).await
            }
            Some(node) => {
                tracing::info!(node = %info.name, "node was marked NotReady; reporting Ready again");
                post_status(&client, &info, node).await
            }
            None => register(&client, &info).await,
        };
        if let Err(e) = result {
            tracing::warn!(node = %info.name, error = %e, "cannot post the node status");
        }
    }
}

/// Whether a runtime's service state differs from the node's condition for it.
fn health_changed(info: &NodeInfo, node: &Node) -> bool {
    health_conditions(info).iter().any(|c| {
        let current = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|x| x.type_ == c.type_));
        current.is_none_or(|x| x.status != c.status)
    })
}

/// The machine's capacity: CPUs and memory as the OS reports them.
pub fn machine_capacity(pods: i64) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(4 << 30, |kb| kb * 1024);
    BTreeMap::from([
        (
            wisp_api::RESOURCE_CPU.to_owned(),
            Quantity::from_units(
                i64::try_from(cpus).unwrap_or(1),
                wisp_api::QuantityFormat::DecimalSI,
            ),
        ),
        (
            wisp_api::RESOURCE_MEMORY.to_owned(),
            Quantity::from_units(memory, wisp_api::QuantityFormat::BinarySI),
        ),
        (
            "pods".to_owned(),
            Quantity::from_units(pods, wisp_api::QuantityFormat::DecimalSI),
        ),
    ])
}

/// The host's name (`/proc/sys/kernel/hostname`), lower-cased, for the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_runtimes_condition_is_named_after_it() {
        assert_eq!(
            super::health_condition_type(wisp_api::RUNTIME_DOCKER),
            wisp_api::NODE_DOCKER_READY
        );
        assert_eq!(super::health_condition_type("wasm"), "WasmReady");
    }
}
