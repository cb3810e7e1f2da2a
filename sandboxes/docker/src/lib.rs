//! wisp-sandbox-docker runs OCI images as Docker containers through the Engine API
//! (bollard, over the daemon's unix socket, API version negotiated with the daemon). It
//! implements the [`Sandbox`] trait of `wisp-sandbox` and passes its conformance suite.
//!
//! `prepare` follows the spec's [`PullPolicy`] as Kubernetes' `imagePullPolicy` does:
//! `IfNotPresent` uses a present image or pulls it, `Always` pulls even a present one (a tag
//! that moved is followed; a failed pull fails), `Never` never pulls and fails with a
//! [`SandboxError::Fetch`] saying so when the image is absent — also when `create` finds the
//! image removed since `prepare`, where the other policies pull it again.
//!
//! Every container is created locked down: all Linux capabilities dropped (the spec may add
//! back only those in [`DockerConfig::allowed_capabilities`], by default
//! [`DEFAULT_ALLOWED_CAPABILITIES`]; any other is an [`SandboxError::InvalidSpec`]),
//! `no-new-privileges`, a pids limit, never privileged, no host mounts but the pod's own
//! volume directories, on one bridge network per namespace (containers of two namespaces
//! cannot reach each other), with its ports published on the node's address only. A spec
//! with `run_as_non_root` is refused at `create` (`InvalidSpec`) when it would run as uid 0:
//! its `user`, else the image's `User` (none, `root` or `0`); a user name other than `root`
//! cannot be verified and is refused too.
//!
//! A namespace's network is created with its first container and removed by `delete` with
//! its last one (of any owner, in any state); both under a per-user file lock that creating
//! a container holds shared, so neither breaks a concurrent create.
//!
//! Containers carry Wisp labels (pod uid, namespace, container, owner) so an agent adopts
//! them after a restart; [`DockerConfig::owner`] keeps agents that share one daemon apart.
//!
//! A daemon that is down is not an error of the node: every call returns
//! [`SandboxError::Unavailable`] naming the socket, and the next call connects again.

mod names;
mod network;
mod policy;
#[cfg(feature = "test-util")]
pub mod testing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, WaitContainerOptions,
};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use wisp_sandbox::{
    Endpoint, ExitStatus, LABEL_NAMESPACE, LogLine, LogOptions, LogStream, PullPolicy, Sandbox, SandboxError,
    SandboxId, SandboxSpec, SandboxStatus, Source, State,
};

pub use crate::names::{ImageRef, container_name, network_name};

/// CPU and memory from the engine's stats (see [`Sandbox::usage`]): memory less the inactive
/// page cache, as `docker stats` shows it (`inactive_file` on cgroup v2,
/// `total_inactive_file` on v1).
fn usage_of(stats: &bollard::models::ContainerStatsResponse) -> wisp_sandbox::Usage {
    let cpu_ns = stats
        .cpu_stats
        .as_ref()
        .and_then(|c| c.cpu_usage.as_ref())
        .and_then(|u| u.total_usage)
        .unwrap_or(0);
    let memory = stats.memory_stats.as_ref();
    let usage = memory.and_then(|m| m.usage).unwrap_or(0);
    let inactive = memory
        .and_then(|m| m.stats.as_ref())
        .and_then(|s| s.get("total_inactive_file").or_else(|| s.get("inactive_file")))
        .copied()
        .filter(|&i| i < usage)
        .unwrap_or(0);
    wisp_sandbox::Usage {
        cpu_ns,
        memory_bytes: usage - inactive,
    }
}
pub use crate::policy::DEFAULT_ALLOWED_CAPABILITIES;

/// Label with the agent (node) that owns a container: `list` returns only its own.
pub const LABEL_OWNER: &str = "wisp.dev/owner";
/// Label with the sandbox id (`<pod uid>/<container>`).
pub const LABEL_SANDBOX: &str = "wisp.dev/sandbox";
/// Label on the per-namespace networks Wisp creates.
pub const LABEL_NETWORK: &str = "wisp.dev/network";
/// Label with the container port the sandbox serves HTTP on (the spec's first port).
pub const LABEL_HTTP_PORT: &str = "wisp.dev/http-port";

/// Default pids limit of a container that does not set one.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// How long connecting (with version negotiation) or a ping may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `wait` pauses between tries while the daemon is unreachable.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(1);

/// How the Docker runtime reaches the daemon and lays containers out.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// The daemon's unix socket (`DOCKER_HOST=unix://…` or `/var/run/docker.sock`).
    pub socket: PathBuf,
    /// Written into every container's [`LABEL_OWNER`]; usually the node name.
    pub owner: String,
    /// Address container ports are published on (the node's address; loopback by default).
    pub publish_ip: IpAddr,
    /// Networks are named `<prefix><namespace>`.
    pub network_prefix: String,
    /// How long the daemon may take to start answering one call before it counts as
    /// unreachable (a stop is timed by its grace period instead).
    pub request_timeout: Duration,
    /// Capabilities a container may add back (`SandboxSpec::capabilities`, with or without
    /// `CAP_`); `create` refuses any other. [`DEFAULT_ALLOWED_CAPABILITIES`] unless the
    /// node's admin opts in to more (`NET_RAW`, `MKNOD`, `SETUID`, `SETGID`, `DAC_OVERRIDE`).
    pub allowed_capabilities: Vec<String>,
}

impl DockerConfig {
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            socket: default_socket(),
            owner: owner.into(),
            publish_ip: IpAddr::from([127, 0, 0, 1]),
            network_prefix: "wisp-".into(),
            request_timeout: Duration::from_secs(60),
            allowed_capabilities: DEFAULT_ALLOWED_CAPABILITIES
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
        }
    }
}

/// `DOCKER_HOST` when it names a unix socket, else `/var/run/docker.sock`.
pub fn default_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// The Docker runtime. Cheap to clone.
#[derive(Clone)]
pub struct DockerSandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DockerSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSandbox")
            .field("socket", &self.inner.config.socket)
            .field("owner", &self.inner.config.owner)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: DockerConfig,
    /// The connection after version negotiation; dropped when the daemon stops answering.
    client: tokio::sync::Mutex<Option<Docker>>,
    /// Networks known to exist.
    networks: tokio::sync::Mutex<HashSet<String>>,
    /// Pull progress per image reference, while a pull runs.
    pulls: Mutex<HashMap<String, String>>,
}

impl DockerSandbox {
    /// A runtime for the daemon at `config.socket`. Does not connect: a daemon that is down
    /// now may be up at the first call.
    pub fn new(config: DockerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                client: tokio::sync::Mutex::new(None),
                networks: tokio::sync::Mutex::new(HashSet::new()),
                pulls: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn config(&self) -> &DockerConfig {
        &self.inner.config
    }

    fn unavailable(&self, e: impl Into<wisp_sandbox::BoxError>) -> SandboxError {
        SandboxError::unavailable(
            format!(
                "the Docker daemon at {} is not reachable",
                self.inner.config.socket.display()
            ),
            e,
        )
    }

    /// The connected client, connecting and negotiating the API version first if needed —
    /// without holding the lock, so a daemon that does not answer queues nobody behind it.
    async fn docker(&self) -> Result<Docker, SandboxError> {
        if let Some(d) = self.inner.client.lock().await.as_ref() {
            return Ok(d.clone());
        }
        let path = self.inner.config.socket.to_string_lossy().into_owned();
        let timeout = self.inner.config.request_timeout.as_secs().max(1);
        let docker = Docker::connect_with_unix(&path, timeout, bollard::API_DEFAULT_VERSION)
            .map_err(|e| self.unavailable(e))?;
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| self.unavailable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| self.unavailable(e))?;
        tracing::debug!(socket = %path, version = ?docker.client_version(), "connected to the Docker daemon");
        *self.inner.client.lock().await = Some(docker.clone());
        Ok(docker)
    }

    /// Maps a daemon error; a transport failure also drops the connection.
    async fn fail(&self, id: &SandboxId, e: DockerError) -> SandboxError {
        match e {
            DockerError::DockerResponseServerError { status_code: 404, .. } => {
                SandboxError::NotFound(id.clone())
            }
            DockerError::DockerResponseServerError {
                status_code: 409,
                message,
            } => SandboxError::WrongState {
                id: id.clone(),
                reason: message,
            },
            e @ DockerError::DockerResponseServerError { .. } => {
                SandboxError::runtime("the Docker daemon refused a request", e)
            }
            e if is_transport(&e) => {
                *self.inner.client.lock().await = None;
                self.unavailable(e)
            }
            e => SandboxError::runtime("a Docker request failed", e),
        }
    }

    /// Whether the daemon answers; its version when it does.
    pub async fn ping(&self) -> Result<String, SandboxError> {
        let docker = self.docker().await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, docker.version()).await {
            Ok(Ok(v)) => Ok(v.version.unwrap_or_default()),
            Ok(Err(e)) => Err(self.fail(&SandboxId(String::new()), e).await),
            Err(_) => {
                *self.inner.client.lock().await = None;
                Err(self.unavailable(format!("no answer within {CONNECT_TIMEOUT:?}")))
            }
        }
    }

    async fn inspect(&self, id: &SandboxId) -> Result<ContainerInspectResponse, SandboxError> {
        let docker = self.docker().await?;
        match docker.inspect_container(&container_name(id), None).await {
            Ok(c) if owned(&c, &self.inner.config.owner) => Ok(c),
            Ok(_) => Err(SandboxError::NotFound(id.clone())),
            Err(e) => Err(self.fail(id, e).await),
        }
    }

    fn status_of(&self, id: SandboxId, c: &ContainerInspectResponse) -> SandboxStatus {
        let labels: BTreeMap<String, String> = c
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let state = state_of(c);
        let running = matches!(state, State::Running { .. });
        // The spec's first port (the label); for a container without it, the lowest one.
        let port = labels
            .get(LABEL_HTTP_PORT)
            .and_then(|p| p.parse::<u16>().ok())
            .or_else(|| lowest_exposed_port(c));
        let endpoint = running
            .then(|| {
                port.and_then(|p| published_port(c, p))
                    .map(|p| Endpoint::Http(SocketAddr::new(self.inner.config.publish_ip, p)))
            })
            .flatten();
        let listen = running
            .then(|| Some(SocketAddr::new(container_ip(c)?, port?)))
            .flatten();
        SandboxStatus {
            id,
            state,
            endpoint,
            listen,
            labels,
        }
    }

    fn exit_of(c: &ContainerInspectResponse) -> Option<ExitStatus> {
        match state_of(c) {
            State::Exited {
                exit_code, reason, ..
            } => Some(ExitStatus { exit_code, reason }),
            _ => None,
        }
    }

    async fn pull(&self, docker: &Docker, image: &str) -> Result<(), SandboxError> {
        let r =
            ImageRef::parse(image).map_err(|e| SandboxError::InvalidSpec(format!("image {image:?}: {e}")))?;
        let options = CreateImageOptions {
            from_image: Some(r.repository.clone()),
            tag: Some(r.tag_or_digest.clone()),
            ..CreateImageOptions::default()
        };
        tracing::info!(image, "pulling image");
        let mut layers: BTreeMap<String, String> = BTreeMap::new();
        let mut stream = docker.create_image(Some(options), None, None);
        let result = loop {
            match stream.next().await {
                None => break Ok(()),
                Some(Ok(info)) => {
                    if let (Some(id), Some(status)) = (info.id, info.status) {
                        layers.insert(id, status);
                    }
                    let done = layers
                        .values()
                        .filter(|s| s.starts_with("Pull complete") || s.starts_with("Already exists"))
                        .count();
                    let line = format!("pulling image {image}: {done}/{} layers done", layers.len());
                    self.set_progress(image, Some(line));
                }
                Some(Err(e)) => break Err(e),
            }
        };
        self.set_progress(image, None);
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_transport(&e) => Err(self.fail(&SandboxId(image.into()), e).await),
            Err(e) => Err(SandboxError::fetch(format!("image {image}"), e)),
        }
    }

    fn set_progress(&self, image: &str, line: Option<String>) {
        let mut pulls = self
            .inner
            .pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match line {
            Some(l) => pulls.insert(image.to_owned(), l),
            None => pulls.remove(image),
        };
    }

    async fn prepare_image(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let Source::Image(image) = &spec.source else {
            return Err(SandboxError::InvalidSpec(format!(
                "the docker runtime runs OCI images, not {:?}",
                spec.source
            )));
        };
        let docker = self.docker().await?;
        // `Always` pulls even a present image (a tag that moved is followed); the others use
        // a present one, and `Never` fails without it.
        if spec.pull_policy != PullPolicy::Always {
            match docker.inspect_image(image).await {
                Ok(_) => return Ok(()),
                Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(e) => return Err(self.fail(&spec.id, e).await),
            }
            if spec.pull_policy == PullPolicy::Never {
                return Err(policy::never_pulled(image));
            }
        }
        self.pull(&docker, image).await?;
        match docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) => Err(SandboxError::fetch(
                format!("image {image} (pulled, but the daemon does not show it)"),
                e,
            )),
        }
    }

    /// Pulls an image that is gone since `prepare`, unless the spec says never to.
    async fn repull(&self, docker: &Docker, spec: &SandboxSpec, image: &str) -> Result<(), SandboxError> {
        if spec.pull_policy == PullPolicy::Never {
            return Err(policy::never_pulled(image));
        }
        self.pull(docker, image).await
    }

    /// The image's configured `User` (empty when it sets none), pulling it again (as the
    /// spec allows) when it is gone since `prepare`.
    async fn image_user(
        &self,
        docker: &Docker,
        spec: &SandboxSpec,
        image: &str,
    ) -> Result<String, SandboxError> {
        let found = match docker.inspect_image(image).await {
            Ok(found) => found,
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {
                self.repull(docker, spec, image).await?;
                match docker.inspect_image(image).await {
                    Ok(found) => found,
                    Err(e) => return Err(self.fail(&spec.id, e).await),
                }
            }
            Err(e) => return Err(self.fail(&spec.id, e).await),
        };
        Ok(found.config.and_then(|c| c.user).unwrap_or_default())
    }

    async fn create_container(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let Source::Image(image) = &spec.source else {
            return Err(SandboxError::InvalidSpec(
                "the docker runtime runs OCI images only".into(),
            ));
        };
        let capabilities = policy::check_capabilities(spec, &self.inner.config.allowed_capabilities)?;
        let docker = self.docker().await?;
        let image_user = if policy::needs_image_user(spec) {
            self.image_user(&docker, spec, image).await?
        } else {
            String::new()
        };
        policy::check_non_root(spec, image, &image_user)?;
        let namespace = spec.labels.get(LABEL_NAMESPACE).map_or("default", String::as_str);
        let options = CreateContainerOptions {
            name: Some(container_name(&spec.id)),
            ..CreateContainerOptions::default()
        };
        // At most one repair: an image removed since `prepare` is pulled again (as the pull
        // policy allows), a network a daemon that checks it at create says is gone is
        // created again.
        let mut repaired = false;
        loop {
            // The network exists and stays while the container is created on it (Docker
            // 20.10 creates a container on a missing network; only its start fails).
            let (network, in_use) = self.network_in_use(&docker, namespace).await?;
            let body = container_body(&self.inner.config, spec, &capabilities, image, &network)?;
            let created = docker.create_container(Some(options.clone()), body).await;
            drop(in_use);
            match created {
                Ok(_) => return Ok(()),
                Err(DockerError::DockerResponseServerError { status_code: 409, .. }) => {
                    return Err(SandboxError::AlreadyExists(spec.id.clone()));
                }
                Err(DockerError::DockerResponseServerError {
                    status_code: 404,
                    message,
                }) if !repaired => {
                    repaired = true;
                    if message.contains("network") && !message.contains("No such image") {
                        tracing::info!(network = %network, "the namespace's network is gone; creating it again");
                        self.inner.networks.lock().await.remove(&network);
                    } else {
                        self.repull(&docker, spec, image).await?;
                    }
                }
                Err(e @ DockerError::DockerResponseServerError { status_code: 404, .. }) => {
                    return Err(SandboxError::fetch(format!("image {image}"), e));
                }
                Err(e) => return Err(self.fail(&spec.id, e).await),
            }
        }
    }

    /// Waits for the container to exit. While the daemon is unreachable it keeps trying: an
    /// outage is not an exit (with live-restore the container runs on; without it, the
    /// daemon reports the exit once it is back).
    async fn wait_exit(&self, id: &SandboxId) -> Result<ExitStatus, SandboxError> {
        loop {
            match self.wait_once(id).await {
                Err(e @ SandboxError::Unavailable { .. }) => {
                    tracing::debug!(%id, error = %e, "waiting for the Docker daemon to come back");
                    tokio::time::sleep(UNREACHABLE_RETRY).await;
                }
                done => return done,
            }
        }
    }

    /// Sends `signal`; a container that is not running has nothing to signal.
    async fn signal(&self, id: &SandboxId, signal: &str) -> Result<(), SandboxError> {
        let docker = self.docker().await?;
        let options = KillContainerOptions {
            signal: signal.into(),
        };
        match docker.kill_container(&container_name(id), Some(options)).await {
            Ok(()) | Err(DockerError::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(self.fail(id, e).await),
        }
    }

    async fn wait_once(&self, id: &SandboxId) -> Result<ExitStatus, SandboxError> {
        loop {
            let c = self.inspect(id).await?;
            if let Some(exit) = Self::exit_of(&c) {
                return Ok(exit);
            }
            // A created container is "not running" already: wait for its next exit instead.
            let condition = if matches!(state_of(&c), State::Created) {
                "next-exit"
            } else {
                "not-running"
            };
            let docker = self.docker().await?;
            let options = WaitContainerOptions {
                condition: condition.into(),
            };
            let mut wait = docker.wait_container(&container_name(id), Some(options));
            match wait.next().await {
                Some(Ok(_) | Err(DockerError::DockerContainerWaitError { .. })) | None => {}
                Some(Err(e)) => {
                    let e = self.fail(id, e).await;
                    if !matches!(e, SandboxError::WrongState { .. }) {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn logs_of(
        &self,
        id: &SandboxId,
        options: LogOptions,
    ) -> Result<BoxStream<'static, LogLine>, SandboxError> {
        self.inspect(id).await?;
        let docker = self.docker().await?;
        let query = LogsOptions {
            follow: options.follow,
            stdout: true,
            stderr: true,
            timestamps: true,
            tail: options.tail.map_or_else(|| "all".to_owned(), |n| n.to_string()),
            ..LogsOptions::default()
        };
        let stream = docker
            .logs(&container_name(id), Some(query))
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()))
            .flat_map(|out| {
                let (stream, bytes) = match out {
                    bollard::container::LogOutput::StdErr { message } => (LogStream::Stderr, message),
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::Console { message } => (LogStream::Stdout, message),
                    bollard::container::LogOutput::StdIn { .. } => (LogStream::Stdout, bytes::Bytes::new()),
                };
                let lines: Vec<LogLine> = String::from_utf8_lossy(&bytes)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| names::log_line(stream, l))
                    .collect();
                futures::stream::iter(lines)
            });
        Ok(stream.boxed())
    }

    async fn list_owned(&self) -> Result<Vec<SandboxStatus>, SandboxError> {
        let docker = self.docker().await?;
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_OWNER}={}", self.inner.config.owner)],
            )])),
            ..ListContainersOptions::default()
        };
        let found = match docker.list_containers(Some(options)).await {
            Ok(f) => f,
            Err(e) => return Err(self.fail(&SandboxId(String::new()), e).await),
        };
        let mut out = Vec::with_capacity(found.len());
        for summary in found {
            let Some(id) = summary
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SANDBOX))
                .map(|s| SandboxId(s.clone()))
            else {
                continue;
            };
            match self.inspect(&id).await {
                Ok(c) => out.push(self.status_of(id, &c)),
                Err(SandboxError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// The container the spec describes, locked down.
fn container_body(
    config: &DockerConfig,
    spec: &SandboxSpec,
    capabilities: &[String],
    image: &str,
    network: &str,
) -> Result<ContainerCreateBody, SandboxError> {
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    labels.insert(LABEL_OWNER.into(), config.owner.clone());
    labels.insert(LABEL_SANDBOX.into(), spec.id.0.clone());
    if let Some(port) = spec.ports.first() {
        labels.insert(LABEL_HTTP_PORT.into(), port.to_string());
    }
    let ports: Vec<String> = spec.ports.iter().map(|p| format!("{p}/tcp")).collect();
    let bindings = ports
        .iter()
        .map(|p| {
            (
                p.clone(),
                Some(vec![PortBinding {
                    host_ip: Some(config.publish_ip.to_string()),
                    host_port: Some(String::new()),
                }]),
            )
        })
        .collect();
    let mut binds = Vec::with_capacity(spec.mounts.len());
    for m in &spec.mounts {
        let host = m.host_path.to_str().ok_or_else(|| {
            SandboxError::InvalidSpec(format!("volume path {} is not UTF-8", m.host_path.display()))
        })?;
        if host.contains(':') || m.guest_path.contains(':') {
            return Err(SandboxError::InvalidSpec(format!(
                "mount {host} → {}: paths may not contain ':'",
                m.guest_path
            )));
        }
        binds.push(format!(
            "{host}:{}:{}",
            m.guest_path,
            if m.read_only { "ro" } else { "rw" }
        ));
    }
    let memory = spec
        .limits
        .memory_bytes
        .map(|b| i64::try_from(b).unwrap_or(i64::MAX));
    let host_config = HostConfig {
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: (!capabilities.is_empty()).then(|| capabilities.to_vec()),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(spec.read_only_root),
        memory,
        // No swap beyond the memory limit: the limit is the limit.
        memory_swap: memory,
        nano_cpus: spec
            .limits
            .cpu_millis
            .map(|m| i64::try_from(m.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
        // Docker reads 0 or less as "unlimited": never that.
        pids_limit: Some(spec.limits.pids.filter(|p| *p > 0).unwrap_or(DEFAULT_PIDS_LIMIT)),
        network_mode: Some(network.to_owned()),
        port_bindings: Some(bindings),
        binds: (!binds.is_empty()).then_some(binds),
        // A tiny init as PID 1: signals reach the program and zombies are reaped.
        init: Some(true),
        ..HostConfig::default()
    };
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: (!ports.is_empty()).then_some(ports),
        user: spec.user.map(|u| u.to_string()),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    })
}

fn owned(c: &ContainerInspectResponse, owner: &str) -> bool {
    c.config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(LABEL_OWNER))
        .is_some_and(|o| o == owner)
}

fn is_transport(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::IOError { .. }
            | DockerError::HyperResponseError { .. }
            | DockerError::HyperLegacyError { .. }
            | DockerError::RequestTimeoutError
            | DockerError::SocketNotFoundError(_)
    )
}

fn parse_time(t: Option<&String>) -> Option<SystemTime> {
    let t: jiff::Timestamp = t?.parse().ok()?;
    // Docker reports "0001-01-01T00:00:00Z" for "never".
    (t.as_second() > 0).then(|| names::system_time(t))
}

fn state_of(c: &ContainerInspectResponse) -> State {
    let Some(st) = c.state.as_ref() else {
        return State::Created;
    };
    match st.status {
        Some(
            ContainerStateStatusEnum::RUNNING
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::RESTARTING,
        ) => State::Running {
            started_at: parse_time(st.started_at.as_ref()).unwrap_or(SystemTime::UNIX_EPOCH),
        },
        Some(ContainerStateStatusEnum::CREATED) | None | Some(ContainerStateStatusEnum::EMPTY) => {
            State::Created
        }
        Some(_) => {
            let oom = st.oom_killed == Some(true);
            State::Exited {
                exit_code: st.exit_code.and_then(|c| i32::try_from(c).ok()).unwrap_or(-1),
                reason: if oom {
                    Some("OOMKilled".into())
                } else {
                    st.error.clone().filter(|e| !e.is_empty())
                },
                finished_at: parse_time(st.finished_at.as_ref()).unwrap_or_else(SystemTime::now),
            }
        }
    }
}

/// The host port `container_port` is published on.
fn published_port(c: &ContainerInspectResponse, container_port: u16) -> Option<u16> {
    let ports = c.network_settings.as_ref()?.ports.as_ref()?;
    ports
        .get(&format!("{container_port}/tcp"))?
        .as_ref()?
        .iter()
        .find_map(|b| b.host_port.as_deref()?.parse().ok())
}

fn lowest_exposed_port(c: &ContainerInspectResponse) -> Option<u16> {
    let ports = c.network_settings.as_ref()?.ports.as_ref()?;
    ports
        .keys()
        .filter_map(|k| k.strip_suffix("/tcp")?.parse().ok())
        .min()
}

/// The container's address on its namespace's network.
fn container_ip(c: &ContainerInspectResponse) -> Option<IpAddr> {
    let networks = c.network_settings.as_ref()?.networks.as_ref()?;
    networks
        .values()
        .find_map(|n| n.ip_address.as_deref().filter(|ip| !ip.is_empty())?.parse().ok())
}

impl Sandbox for DockerSandbox {
    fn runtime(&self) -> &'static str {
        "docker"
    }

    fn prepare<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, wisp_sandbox::Result<()>> {
        self.prepare_image(spec).boxed()
    }

    fn create<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, wisp_sandbox::Result<()>> {
        self.create_container(spec).boxed()
    }

    fn start<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, wisp_sandbox::Result<()>> {
        async move {
            self.inspect(id).await?;
            let docker = self.docker().await?;
            match docker.start_container(&container_name(id), None).await {
                Ok(()) => Ok(()),
                Err(e) => Err(self.fail(id, e).await),
            }
        }
        .boxed()
    }

    fn stop<'a>(
        &'a self,
        id: &'a SandboxId,
        grace: Duration,
    ) -> BoxFuture<'a, wisp_sandbox::Result<ExitStatus>> {
        async move {
            let c = self.inspect(id).await?;
            if let Some(exit) = Self::exit_of(&c) {
                return Ok(exit);
            }
            if matches!(state_of(&c), State::Created) {
                // Never started: nothing to stop, and nothing would ever exit.
                return Ok(ExitStatus {
                    exit_code: 0,
                    reason: Some("NotStarted".into()),
                });
            }
            // The image's stop signal (SIGTERM by default), then SIGKILL after the grace
            // period — timed here rather than by Docker's stop, one request that would
            // outlast the client's timeout. Bounded: a daemon that goes away meanwhile makes
            // this `Unavailable`, never a hang.
            let stop_signal = c
                .config
                .as_ref()
                .and_then(|c| c.stop_signal.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "SIGTERM".into());
            self.signal(id, &stop_signal).await?;
            if let Ok(exit) = tokio::time::timeout(grace, self.wait_once(id)).await {
                return exit;
            }
            self.signal(id, "SIGKILL").await?;
            let limit = self.inner.config.request_timeout;
            tokio::time::timeout(limit, self.wait_once(id))
                .await
                .unwrap_or_else(|_| Err(self.unavailable(format!("no exit within {limit:?} of SIGKILL"))))
        }
        .boxed()
    }

    fn kill<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, wisp_sandbox::Result<()>> {
        async move {
            self.inspect(id).await?;
            self.signal(id, "SIGKILL").await
        }
        .boxed()
    }

    fn wait<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, wisp_sandbox::Result<ExitStatus>> {
        self.wait_exit(id).boxed()
    }

    fn status<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, wisp_sandbox::Result<SandboxStatus>> {
        async move {
            let c = self.inspect(id).await?;
            Ok(self.status_of(id.clone(), &c))
        }
        .boxed()
    }

    fn logs<'a>(
        &'a self,
        id: &'a SandboxId,
        options: LogOptions,
    ) -> BoxFuture<'a, wisp_sandbox::Result<BoxStream<'static, LogLine>>> {
        self.logs_of(id, options).boxed()
    }

    fn delete<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, wisp_sandbox::Result<()>> {
        async move {
            let c = self.inspect(id).await?;
            let docker = self.docker().await?;
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            };
            if let Err(e) = docker.remove_container(&container_name(id), Some(options)).await {
                return Err(self.fail(id, e).await);
            }
            // The namespace's network goes with its last container.
            let network = c.host_config.as_ref().and_then(|h| h.network_mode.as_deref());
            if let Some(network) = network.filter(|n| !n.is_empty()) {
                self.release_network(&docker, network).await;
            }
            Ok(())
        }
        .boxed()
    }

    /// The engine's stats of the container, read once: cumulative CPU time, and memory as
    /// `docker stats` shows it (usage less the inactive page cache).
    fn usage<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, wisp_sandbox::Result<wisp_sandbox::Usage>> {
        async move {
            // Ours, or NotFound (the engine's stats would answer for any container).
            self.inspect(id).await?;
            let docker = self.docker().await?;
            let options = bollard::query_parameters::StatsOptions {
                stream: false,
                one_shot: true,
            };
            let mut stats = docker.stats(&container_name(id), Some(options));
            let read = tokio::time::timeout(CONNECT_TIMEOUT, stats.next()).await;
            let stats = match read {
                Ok(Some(Ok(s))) => s,
                Ok(Some(Err(e))) => return Err(self.fail(id, e).await),
                Ok(None) => return Err(SandboxError::NotFound(id.clone())),
                Err(_) => return Err(self.unavailable(format!("no stats within {CONNECT_TIMEOUT:?}"))),
            };
            Ok(usage_of(&stats))
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, wisp_sandbox::Result<Vec<SandboxStatus>>> {
        self.list_owned().boxed()
    }

    fn progress(&self, spec: &SandboxSpec) -> Option<String> {
        let Source::Image(image) = &spec.source else {
            return None;
        };
        self.inner
            .pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(image)
            .cloned()
    }

    /// The daemon answers (its version), for the node's `DockerReady` condition.
    fn health(&self) -> Option<BoxFuture<'_, wisp_sandbox::Result<String>>> {
        Some(self.ping().boxed())
    }

    /// Containers serve HTTP on their own network, reached over a socket: never in process.
    fn in_process_http(&self) -> Option<&dyn wisp_sandbox::InProcessHttp> {
        None
    }
}
