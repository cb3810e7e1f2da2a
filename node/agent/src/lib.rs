//! wisp-node owns what runs on one node (the kubelet's job): it registers the Node with its
//! capacity and runtimes, renews the node's Lease, watches the pods bound to it and drives
//! each through an explicit lifecycle ([`lifecycle`]: Pending → Preparing → Running →
//! Succeeded/Failed, restarts with exponential backoff and `CrashLoopBackOff`), probes
//! readiness, writes pod status, serves container logs to the API server, fetches components
//! from the API's blob store, and adopts the sandboxes it already runs after a restart.
//!
//! It talks to the control plane only through the API (`wisp-client`) and to runtimes only
//! through the `Sandbox` trait (plus the wasm runtime's in-process HTTP hook for probes). It
//! must not schedule pods, mark nodes lost or replace pods (scheduler and controllers).

pub mod lifecycle;
pub mod logs;
pub mod node;
mod pods;
mod probe;
pub mod spec;
mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use wisp_api::Quantity;
use wisp_client::Client;
use wisp_sandbox::{ArtifactSource, SandboxError};
use wisp_sandbox_docker::{DockerConfig, DockerSandbox};
use wisp_sandbox_wasm::{WasmConfig, WasmSandbox};

pub use crate::lifecycle::Backoff;
pub use crate::worker::Runtimes;

/// Label the agent adds to listed sandboxes: the runtime that holds them.
pub(crate) const LABEL_RUNTIME: &str = "wisp.dev/runtime";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot start the wasm runtime: {0}")]
    Runtime(#[from] SandboxError),
    #[error("cannot listen on {addr} for the log endpoint: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
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
    /// Pooling allocator and pool size of the wasm runtime.
    pub wasm_pooling: bool,
    pub wasm_max_instances: u32,
    /// Reset a Wasm pool slot by the pages the instance dirtied (`WasmConfig::pagemap_scan`)
    /// instead of clearing all it keeps resident; on by default.
    pub wasm_pagemap_reset: bool,
    /// This node's ingress, published on the Node for other nodes and the autoscaler.
    pub ingress_url: Option<String>,
    /// The Docker runtime (`None`: this node runs Wasm only). A daemon that is down does
    /// not stop the node: it reports `DockerReady=False` until the daemon answers.
    pub docker: Option<DockerConfig>,
    /// Where Wasm guests' calls to `<service>.<namespace>.svc` go (this node's ingress).
    pub service_gateway: Option<SocketAddr>,
    /// Where the agent publishes which of its pods are ready, for this node's ingress (which
    /// then routes to a pod the moment it is ready, before its status reaches the API).
    pub local_readiness: wisp_sandbox::LocalReadiness,
    /// Where Wasm guests' outbound calls may connect.
    pub egress: wisp_sandbox::EgressPolicy,
    /// HTTP requests one namespace may run at once in this node's Wasm runtime.
    pub wasm_namespace_slots: u32,
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
            wasm_pooling: true,
            wasm_max_instances: 1000,
            wasm_pagemap_reset: true,
            ingress_url: None,
            docker: None,
            service_gateway: None,
            local_readiness: wisp_sandbox::LocalReadiness::default(),
            egress: wisp_sandbox::EgressPolicy::default(),
            wasm_namespace_slots: 250,
        }
    }
}

/// Components by digest from the API's blob store.
pub struct ApiArtifacts(pub Client);

impl ArtifactSource for ApiArtifacts {
    fn fetch<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, wisp_sandbox::Result<Bytes>> {
        async move {
            self.0.get_blob(digest).await.map_err(|e| SandboxError::Fetch {
                what: digest.to_owned(),
                reason: e.to_string(),
            })
        }
        .boxed()
    }
}

/// A node agent: its runtimes are built by [`Agent::new`]; [`Agent::run`] registers and
/// serves until shutdown.
pub struct Agent {
    client: Client,
    config: AgentConfig,
    runtimes: Runtimes,
}

impl Agent {
    /// Builds the wasm runtime (compiled components cached under `data_dir/wasm`, fetched
    /// through `client`).
    pub fn new(client: Client, config: AgentConfig) -> Result<Self, AgentError> {
        let mut wasm = WasmConfig::new(config.data_dir.join("wasm"));
        wasm.pooling = config.wasm_pooling;
        wasm.max_instances = config.wasm_max_instances;
        wasm.pagemap_scan = config.wasm_pagemap_reset;
        wasm.service_gateway = config.service_gateway;
        wasm.egress = config.egress.clone();
        wasm.namespace_slots = config.wasm_namespace_slots.min(config.wasm_max_instances).max(1);
        let artifacts: Arc<dyn ArtifactSource> = Arc::new(ApiArtifacts(client.clone()));
        let runtime = WasmSandbox::new(wasm, Some(artifacts))?;
        let docker = config.docker.clone().map(DockerSandbox::new);
        Ok(Self::with_runtimes(
            client,
            config,
            Runtimes {
                wasm: Some(runtime),
                docker,
                others: Vec::new(),
            },
        ))
    }

    /// An agent over runtimes built elsewhere (tests: an agent restarted over the same
    /// runtimes must adopt what they run).
    pub fn with_runtimes(client: Client, config: AgentConfig, runtimes: Runtimes) -> Self {
        Self {
            client,
            config,
            runtimes,
        }
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
        let info = node::NodeInfo {
            name: c.node_name.clone(),
            address: c.address.clone(),
            capacity: c.capacity.clone(),
            runtimes: self.runtimes.names(),
            labels: c.labels.clone(),
            agent_url: Some(format!("http://{}:{}", c.address, local.port())),
            ingress_url: c.ingress_url.clone(),
            lease_duration: c.lease_duration,
            docker: self.runtimes.docker.clone(),
            docker_ready: Arc::default(),
        };
        node::refresh_docker(&info).await;
        let register = async {
            node::renew(&self.client, &info).await?;
            node::register(&self.client, &info).await
        };
        register.await.map_err(|source| AgentError::Register {
            node: c.node_name.clone(),
            source,
        })?;
        tracing::info!(node = %c.node_name, runtimes = ?info.runtimes, logs = %local, "node registered");
        let ctx = Arc::new(worker::Ctx {
            client: self.client.clone(),
            node: c.node_name.clone(),
            address: c.address.clone(),
            runtimes: self.runtimes.clone(),
            backoff: c.backoff,
            pods_dir: c.data_dir.join("pods"),
            readiness: c.local_readiness.clone(),
        });
        let log_server = Arc::new(logs::LogServer {
            shutdown: shutdown.clone(),
            api_url: self.client.server().to_owned(),
            node: c.node_name.clone(),
            runtimes: self.runtimes.clone(),
        });
        let interval = (c.lease_duration / 4).max(Duration::from_millis(100));
        tokio::join!(
            node::docker_monitor(
                info.clone(),
                interval.min(Duration::from_secs(2)),
                shutdown.clone()
            ),
            node::heartbeat(self.client.clone(), info, interval, shutdown.clone()),
            pods::run(ctx, shutdown.clone()),
            logs::serve(log_server, listener, shutdown.clone()),
        );
        Ok(())
    }
}
