//! wisp-sandbox owns the contract between the node agent and a container runtime: the
//! object-safe [`Sandbox`] trait (prepare, create, start, stop with grace, kill, wait,
//! status, logs, delete, list for adoption), its spec/status/error types, and a generic
//! conformance suite ([`conformance`]) that every runtime (wasm, docker) must pass.
//!
//! It must not know about the API server, pods as API objects, or any one runtime.

pub mod conformance;
pub mod egress;

pub use egress::{EgressDenied, EgressPolicy};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// Label keys every sandbox carries, so an agent can adopt what it runs after a restart.
pub const LABEL_POD_UID: &str = "wisp.dev/pod-uid";
pub const LABEL_NAMESPACE: &str = "wisp.dev/namespace";
pub const LABEL_POD: &str = "wisp.dev/pod";
pub const LABEL_CONTAINER: &str = "wisp.dev/container";

/// A sandbox is one container of one pod: `<pod uid>/<container name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxId(pub String);

impl SandboxId {
    pub fn new(pod_uid: &str, container: &str) -> Self {
        Self(format!("{pod_uid}/{container}"))
    }
}

impl std::fmt::Display for SandboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What this node's agent knows of its pods' readiness, by pod uid, shared in process with
/// the node's ingress: a pod the agent has just found ready takes requests at once, without
/// waiting for its status write to reach the ingress through the API (one store write and
/// watch less on a cold start), and one it has found not ready (stopping, failing its probe,
/// exited) stops taking them at once too. The agent's word overrides the API's view of its
/// own pods; a pod it says nothing of is judged by the API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalReadiness(std::sync::Arc<tokio::sync::watch::Sender<std::sync::Arc<ReadinessMap>>>);

/// Pod uid → ready.
pub type ReadinessMap = std::collections::HashMap<String, bool>;

impl Default for LocalReadiness {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::watch::Sender::new(
            std::sync::Arc::default(),
        )))
    }
}

impl LocalReadiness {
    /// Records whether pod `uid` is ready; subscribers are woken only on a change, and the
    /// answer says whether there was one.
    pub fn set(&self, uid: &str, ready: bool) -> bool {
        self.update(uid, Some(ready))
    }

    /// Says nothing more of pod `uid` (it is gone).
    pub fn forget(&self, uid: &str) {
        self.update(uid, None);
    }

    fn update(&self, uid: &str, ready: Option<bool>) -> bool {
        self.0.send_if_modified(|map| {
            if map.get(uid).copied() == ready {
                return false;
            }
            let mut next = (**map).clone();
            match ready {
                Some(r) => next.insert(uid.to_owned(), r),
                None => next.remove(uid),
            };
            *map = std::sync::Arc::new(next);
            true
        })
    }

    /// The agent's word on pod `uid`, if it has one.
    pub fn state(&self, uid: &str) -> Option<bool> {
        self.0.borrow().get(uid).copied()
    }

    pub fn is_ready(&self, uid: &str) -> bool {
        self.state(uid) == Some(true)
    }

    /// The current map.
    pub fn snapshot(&self) -> std::sync::Arc<ReadinessMap> {
        self.0.borrow().clone()
    }

    /// Wakes on every change (see [`tokio::sync::watch::Receiver::changed`]).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<std::sync::Arc<ReadinessMap>> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod local_readiness_tests {
    use super::LocalReadiness;

    #[tokio::test]
    async fn set_wakes_subscribers_only_on_change() {
        let board = LocalReadiness::default();
        let mut rx = board.subscribe();
        board.set("a", true);
        assert!(rx.has_changed().expect("sender alive"));
        rx.borrow_and_update();
        board.set("a", true);
        assert!(!rx.has_changed().expect("sender alive"), "no change, no wake-up");
        assert!(board.is_ready("a") && !board.is_ready("b"));
        assert_eq!((board.state("a"), board.state("b")), (Some(true), None));
        board.set("a", false);
        assert!(rx.has_changed().expect("sender alive"));
        rx.borrow_and_update();
        assert_eq!(board.state("a"), Some(false), "known not ready");
        board.forget("b");
        assert!(
            !rx.has_changed().expect("sender alive"),
            "forgetting the unknown changes nothing"
        );
        board.forget("a");
        assert!(rx.has_changed().expect("sender alive"));
        assert!(board.snapshot().is_empty());
    }
}

/// What code the sandbox runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Wasm component by content digest (`sha256:<hex>`), fetched through an
    /// [`ArtifactSource`].
    WasmDigest(String),
    /// A Wasm component file on the node (local development).
    WasmFile(PathBuf),
    /// An OCI image reference (Docker).
    Image(String),
}

/// When a runtime pulls an image (as Kubernetes' `imagePullPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// On every start, even when the image is present (a moved tag is followed).
    Always,
    /// Only when the image is not present.
    #[default]
    IfNotPresent,
    /// Never: an image that is not present fails the container.
    Never,
}

/// What a sandbox runs as: an HTTP handler or a process with an exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `wasi:http/proxy` components / containers serving HTTP on a port.
    Http,
    /// `wasi:cli/run` components / ordinary container processes.
    Process,
}

/// A host directory made visible to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// Resource limits from the pod spec (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory cap in bytes (wasm: summed over the instance's memories).
    pub memory_bytes: Option<u64>,
    /// CPU in millicores (docker: a CFS quota).
    pub cpu_millis: Option<u64>,
    /// Process limit (docker).
    pub pids: Option<i64>,
    /// Per-request deadline for HTTP sandboxes (wasm: an epoch deadline).
    pub request_timeout: Option<Duration>,
}

/// Everything a runtime needs to run one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    pub id: SandboxId,
    pub source: Source,
    pub kind: Kind,
    /// The program: argv is `command` followed by `args`. Docker: `command` replaces the
    /// image's ENTRYPOINT and `args` its CMD (either empty keeps the image's).
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Exactly the environment the guest sees (resolved by the agent); nothing ambient.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// Ports a container listens on (docker).
    pub ports: Vec<u16>,
    pub limits: Limits,
    /// Hosts (`host` or `host:port`) the guest may call; everything else is denied.
    pub allowed_outbound_hosts: Vec<String>,
    pub read_only_root: bool,
    /// Linux capabilities given back to a container (docker drops all others).
    pub capabilities: Vec<String>,
    /// Numeric user id to run as (docker), instead of the image's.
    pub user: Option<i64>,
    /// Refuse to start a container that would run as root (uid 0) (docker).
    pub run_as_non_root: bool,
    /// When the image is pulled (docker).
    pub pull_policy: PullPolicy,
    /// Labels recorded with the sandbox (see the `LABEL_*` keys) and returned by `list`.
    pub labels: BTreeMap<String, String>,
}

impl SandboxSpec {
    /// A spec that grants nothing: no args, env, mounts, ports, limits, outbound hosts or
    /// labels.
    pub fn new(id: SandboxId, source: Source, kind: Kind) -> Self {
        Self {
            id,
            source,
            kind,
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            mounts: Vec::new(),
            ports: Vec::new(),
            limits: Limits::default(),
            allowed_outbound_hosts: Vec::new(),
            read_only_root: false,
            capabilities: Vec::new(),
            user: None,
            run_as_non_root: false,
            pull_policy: PullPolicy::IfNotPresent,
            labels: BTreeMap::new(),
        }
    }
}

/// Where a started sandbox can be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Called in-process through the runtime's own handler (wasm).
    InProcess,
    /// Reached over HTTP at this address.
    Http(std::net::SocketAddr),
}

/// The lifecycle state of a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Created,
    Running {
        started_at: SystemTime,
    },
    Exited {
        exit_code: i32,
        reason: Option<String>,
        finished_at: SystemTime,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxStatus {
    pub id: SandboxId,
    pub state: State,
    pub endpoint: Option<Endpoint>,
    /// Where the sandbox itself listens on its own network, when it has one (docker: the
    /// container's address and first port), for readiness checks that must not go through
    /// a proxy that accepts connections before the program listens.
    pub listen: Option<std::net::SocketAddr>,
    pub labels: BTreeMap<String, String>,
}

/// How a sandbox ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    pub exit_code: i32,
    /// e.g. `OOMKilled`, `Trapped`, `Killed`, `DeadlineExceeded`.
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub line: String,
    pub at: SystemTime,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new lines until the sandbox exits.
    pub follow: bool,
    /// Only the last N lines already captured.
    pub tail: Option<usize>,
}

/// Every sandbox failure.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox {0} not found")]
    NotFound(SandboxId),
    #[error("sandbox {0} already exists")]
    AlreadyExists(SandboxId),
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("cannot fetch {what}: {reason}")]
    Fetch { what: String, reason: String },
    #[error("cannot compile or load {what}: {reason}")]
    Compile { what: String, reason: String },
    #[error("sandbox {id} is in the wrong state: {reason}")]
    WrongState { id: SandboxId, reason: String },
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    #[error("runtime error: {0}")]
    Runtime(String),
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// Where a runtime gets artifacts by digest (the agent fetches from the API's blob store).
pub trait ArtifactSource: Send + Sync {
    fn fetch<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<Bytes>>;
}

/// One container runtime on a node. Object-safe: the agent keeps `Arc<dyn Sandbox>` per
/// runtime name.
pub trait Sandbox: Send + Sync {
    /// `"wasm"` or `"docker"`.
    fn runtime(&self) -> &'static str;
    /// Fetch and compile (wasm) or pull (docker) what `spec` needs; idempotent and cached.
    fn prepare<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<()>>;
    /// Create the sandbox (not started). Fails with `AlreadyExists` for a known id.
    fn create<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<()>>;
    fn start<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<()>>;
    /// Ask the sandbox to stop; kill it if it has not exited after `grace`.
    fn stop<'a>(&'a self, id: &'a SandboxId, grace: Duration) -> BoxFuture<'a, Result<ExitStatus>>;
    fn kill<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<()>>;
    /// Wait until the sandbox exits.
    fn wait<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<ExitStatus>>;
    fn status<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<SandboxStatus>>;
    fn logs<'a>(
        &'a self,
        id: &'a SandboxId,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<BoxStream<'static, LogLine>>>;
    /// Remove a stopped (or never started) sandbox and what it holds.
    fn delete<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<()>>;
    /// Every sandbox this runtime knows, for adoption after an agent restart.
    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxStatus>>>;
    /// What a slow `prepare` of `spec` is doing now (e.g. an image pull's progress), for
    /// the pod's status.
    fn progress(&self, _spec: &SandboxSpec) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::LocalReadiness;

    #[test]
    fn readiness_set_says_whether_it_changed_and_wakes_only_then() {
        let r = LocalReadiness::default();
        let mut rx = r.subscribe();
        assert!(r.set("a", false), "unknown → not ready is a change");
        assert!(rx.has_changed().expect("open"));
        rx.mark_unchanged();
        assert!(!r.set("a", false), "the same word again is not");
        assert!(!rx.has_changed().expect("open"), "and wakes nobody");
        assert!(r.set("a", true));
        assert!(r.is_ready("a"));
        assert!(rx.has_changed().expect("open"));
        r.forget("a");
        assert_eq!(r.state("a"), None);
    }
}
