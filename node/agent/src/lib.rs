//! wisp-node owns what runs on one node (the kubelet's job): it registers the Node with its
//! capacity and runtimes, renews the node's Lease, watches the pods bound to it and drives
//! each through an explicit lifecycle ([`lifecycle`]: Pending → Preparing → Running →
//! Succeeded/Failed, restarts with exponential backoff and `CrashLoopBackOff`), probes
//! readiness, writes pod status, serves container logs to the API server, fetches components
//! from the API's blob store, and adopts the sandboxes it already runs after a restart.
//!
//! It talks to the control plane only through the API (`wisp-client`) and to runtimes only
//! through the `wisp-sandbox` contract ([`Runtimes`]: `Sandbox` trait objects by runtime name,
//! their in-process HTTP capability for probes, their health for the node's conditions); the
//! binary constructs the runtimes. It publishes which of its pods are ready to the node's
//! ingress in process ([`LocalReadiness`]). It must not schedule pods, mark nodes lost or
//! replace pods (scheduler and controllers), nor name a concrete runtime.

pub mod lifecycle;
pub mod logs;
pub mod node;
pub mod oci;
mod pods;
mod probe;
pub mod readiness;
pub mod spec;
pub mod usage;
mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use wisp_api::Quantity;
use wisp_client::Client;
use wisp_sandbox::{ArtifactSource, SandboxError};

pub use crate::lifecycle::Backoff;
pub use crate::readiness::{LocalReadiness, ReadinessMap};
pub use crate::worker::Runtimes;

/// Label the agent adds to listed sandboxes: the runtime that holds them.
pub(crate) const LABEL_RUNTIME: &str = "wisp.dev/runtime";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr} for the log endpoint: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot make the node's serving certificate for {address}: {source}")]
    Tls {
        address: String,
        source: wisp_tls::TlsError,
    },
    #[error("cannot register node {node}: {source}")]
    Register {
        node: String,
        source: wisp_client::ClientError,
    },
}

/// How a node agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    /// Address reported for the node and its pods.
    pub address: String,
    /// Where the log endpoint listens (`127.0.0.1:0` picks a port).
    pub listen: SocketAddr,
    /// Component cache and pod volumes live here.
    pub data_dir: PathBuf,
    /// Total resources offered (default: the machine's CPUs and memory, 110 pods).
    pub capacity: BTreeMap<String, Quantity>,
    pub labels: BTreeMap<String, String>,
    /// The lease is renewed every `lease_duration / 4` (default 10 s → 2.5 s).
    pub lease_duration: Duration,
    pub backoff: Backoff,
    /// This node's ingress, published on the Node for other nodes and the autoscaler.
    pub ingress_url: Option<String>,
    /// Where the agent publishes which of its pods are ready, for this node's ingress (which
    /// then routes to a pod the moment it is ready, before its status reaches the API).
    pub local_readiness: LocalReadiness,
    /// Where the node may connect for its pods: the registries of `wasm: oci://…` components
    /// must pass it (default: no loopback, link-local or private address).
    pub egress: wisp_sandbox::EgressPolicy,
}

impl AgentConfig {
    /// The components this node pulls from registries (under `data_dir/oci`); give the same
    /// to the Wasm runtime through [`oci::NodeArtifacts`].
    pub fn oci_cache(&self) -> oci::OciCache {
        oci::OciCache::new(self.data_dir.join("oci"), self.egress.clone())
    }
}

impl AgentConfig {
    pub fn new(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_name: node_name.into(),
            address: "127.0.0.1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            capacity: node::machine_capacity(110),
            labels: BTreeMap::new(),
            lease_duration: Duration::from_secs(10),
            backoff: Backoff::default(),
            ingress_url: None,
            local_readiness: LocalReadiness::default(),
            egress: wisp_sandbox::EgressPolicy::default(),
        }
    }
}

/// Components by digest from the API's blob store.
pub struct ApiArtifacts(pub Client);

impl ArtifactSource for ApiArtifacts {
    fn fetch<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, wisp_sandbox::Result<Bytes>> {
        async move {
            self.0
                .get_blob(digest)
                .await
                .map_err(|e| SandboxError::fetch(digest, e))
        }
        .boxed()
    }
}

/// A node agent over the runtimes the binary built; [`Agent::run`] registers and serves until
/// shutdown.
pub struct Agent {
    client: Client,
    config: AgentConfig,
    runtimes: Runtimes,
    informers: Option<wisp_runtime::Informers>,
    others: Option<logs::NodeService>,
}

impl Agent {
    /// An agent over `runtimes` (an agent restarted over the same runtimes adopts what they
    /// run).
    pub fn new(client: Client, config: AgentConfig, runtimes: Runtimes) -> Self {
        Self {
            client,
            config,
            runtimes,
            informers: None,
            others: None,
        }
    }

    /// What the node's port answers besides container logs: requests other nodes' ingresses
    /// forward to this node's pods, and the ingress's `/.wisp/` statistics (this node's
    /// ingress, in `wisp node` and `wisp up`). Without it those get 404.
    pub fn serving_also(mut self, service: logs::NodeService) -> Self {
        self.others = Some(service);
        self
    }

    /// Reads this node's pods from the process's shared watch caches (the same watch as the
    /// scheduler's and the controllers' in `wisp up`) instead of a watch of its own; it still
    /// writes with its own (node) credential and acts only on pods bound to it.
    pub fn on_informers(mut self, informers: &wisp_runtime::Informers) -> Self {
        self.informers = Some(informers.clone());
        self
    }

    pub fn runtimes(&self) -> &Runtimes {
        &self.runtimes
    }

    /// Registers the node, then heartbeats, runs its pods and serves their logs until
    /// `shutdown`. Sandboxes are left running when it returns (a next agent adopts them).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let listen = self.config.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| AgentError::Listen { addr: listen, source })?;
        self.run_on(listener, shutdown).await
    }

    /// [`Agent::run`], serving logs on a listener bound already (so its address can be known
    /// first: the node's egress policy refuses it).
    pub async fn run_on(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), AgentError> {
        let c = &self.config;
        let local = listener.local_addr().map_err(|source| AgentError::Listen {
            addr: c.listen,
            source,
        })?;
        // The node's port speaks TLS only, with a certificate from a CA this node makes now
        // and publishes on its Node before it serves.
        let tls = wisp_tls::node(&c.address).map_err(|source| AgentError::Tls {
            address: c.address.clone(),
            source,
        })?;
        let host = match c.address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => c.address.clone(),
        };
        let info = node::NodeInfo {
            name: c.node_name.clone(),
            address: c.address.clone(),
            capacity: c.capacity.clone(),
            runtimes: self.runtimes.names(),
            labels: c.labels.clone(),
            agent_url: Some(format!("https://{host}:{}", local.port())),
            agent_ca: Some(tls.ca_pem.clone()),
            ingress_url: c.ingress_url.clone(),
            lease_duration: c.lease_duration,
            checked: self.runtimes.checked(),
            health: std::sync::Arc::default(),
        };
        node::refresh_health(&info).await;
        let register = async {
            node::renew(&self.client, &info).await?;
            node::register(&self.client, &info).await
        };
        register.await.map_err(|source| AgentError::Register {
            node: c.node_name.clone(),
            source,
        })?;
        tracing::info!(node = %c.node_name, runtimes = ?info.runtimes, logs = %local, "node registered");
        let (events, recorder) = wisp_runtime::Recorder::new(
            self.client.clone(),
            "node-agent",
            &c.node_name,
            wisp_runtime::RecorderConfig::default(),
        );
        let ctx = std::sync::Arc::new(worker::Ctx {
            client: self.client.clone(),
            events,
            node: c.node_name.clone(),
            address: c.address.clone(),
            runtimes: self.runtimes.clone(),
            backoff: c.backoff,
            pods_dir: c.data_dir.join("pods"),
            readiness: c.local_readiness.clone(),
            informers: self.informers.clone(),
            oci: c.oci_cache(),
        });
        let log_server = std::sync::Arc::new(logs::LogServer::new(
            shutdown.clone(),
            self.client.clone(),
            c.node_name.clone(),
            self.runtimes.clone(),
        ));
        let interval = (c.lease_duration / 4).max(Duration::from_millis(100));
        tokio::join!(
            node::health_monitor(
                info.clone(),
                interval.min(Duration::from_secs(2)),
                shutdown.clone()
            ),
            node::heartbeat(self.client.clone(), info, interval, shutdown.clone()),
            pods::run(ctx, shutdown.clone()),
            logs::serve(log_server, self.others, listener, tls.server, shutdown.clone()),
            Box::pin(recorder.run(shutdown.clone())),
        );
        Ok(())
    }
}
