//! wisp-sandbox owns the contract between the node (agent and ingress) and a container
//! runtime: the object-safe [`Sandbox`] trait (prepare, create, start, stop with grace, kill,
//! wait, status, logs, delete, list for adoption, usage (CPU time and memory), the kind of a program, the health of what
//! the runtime depends on), the in-process HTTP capability ([`InProcessHttp`]) a runtime may
//! offer, their spec/status/error types, a generic conformance suite ([`conformance`]) that
//! every runtime (wasm, docker) must pass, and — behind the `fake` feature — an in-memory
//! runtime that passes it too ([`fake`]), for tests of the agent and the ingress.
//!
//! It must not know about the API server, pods as API objects, or any one runtime.

pub mod conformance;
pub mod egress;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod http;
pub mod usage;

pub use egress::{EgressDenied, EgressPolicy};
pub use http::{BoxError, HandleError, HttpBody, InProcessHttp};
pub use usage::Usage;

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
    #[error("cannot fetch {what}: {}", Chain(&**source))]
    Fetch {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("cannot compile or load {what}: {}", Chain(&**source))]
    Compile {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("sandbox {id} is in the wrong state: {reason}")]
    WrongState { id: SandboxId, reason: String },
    #[error("runtime unavailable: {what}: {}", Chain(&**source))]
    Unavailable {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("runtime error: {what}: {}", Chain(&**source))]
    Runtime {
        what: String,
        #[source]
        source: BoxError,
    },
}

impl SandboxError {
    /// `what` could not be fetched (or pulled) because of `source`.
    pub fn fetch(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Fetch {
            what: what.into(),
            source: source.into(),
        }
    }

    /// `what` could not be compiled or loaded because of `source`.
    pub fn compile(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Compile {
            what: what.into(),
            source: source.into(),
        }
    }

    /// The runtime cannot serve now (`what`: e.g. its daemon is not reachable).
    pub fn unavailable(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: source.into(),
        }
    }

    /// The runtime failed at `what`.
    pub fn runtime(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Runtime {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Shows an error with its causes (`outer: cause: root`), for messages that must say why. A
/// cause that the text so far already ends with (an error that shows its own source) is not
/// repeated.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        let mut next = self.0.source();
        while let Some(e) = next {
            let cause = e.to_string();
            if !text.ends_with(&cause) {
                text.push_str(": ");
                text.push_str(&cause);
            }
            next = e.source();
        }
        f.write_str(&text)
    }
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
    /// What the sandbox uses now: cumulative CPU time and current memory (`NotFound` for an
    /// unknown id).
    fn usage<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<Usage>>;
    /// What a slow `prepare` of `spec` is doing now (e.g. an image pull's progress), for
    /// the pod's status.
    fn progress(&self, _spec: &SandboxSpec) -> Option<String> {
        None
    }
    /// What the prepared code of `spec` runs as, when the runtime tells it from the code
    /// itself (wasm: the component's exports); by default the spec's own `kind`.
    fn kind<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<Kind>> {
        Box::pin(std::future::ready(Ok(spec.kind)))
    }
    /// Whether what the runtime depends on outside the process (docker: the daemon) answers,
    /// for the node's `<Runtime>Ready` condition: `None` when there is nothing to check,
    /// else the answer (`Ok`: a description such as the daemon's version).
    fn health(&self) -> Option<BoxFuture<'_, Result<String>>> {
        None
    }
    /// This runtime's in-process HTTP capability, when it serves sandboxes' HTTP without a
    /// socket (wasm); `None` when its HTTP sandboxes are reached over the network (docker).
    fn in_process_http(&self) -> Option<&dyn InProcessHttp> {
        None
    }
}

impl std::fmt::Debug for dyn Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sandbox({})", self.runtime())
    }
}

#[cfg(test)]
mod tests {
    use super::{Chain, SandboxError};

    #[test]
    fn errors_keep_their_cause_and_say_it() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = SandboxError::fetch("blob sha256:ab", io);
        let source = std::error::Error::source(&e).expect("the cause is kept");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        assert_eq!(e.to_string(), "cannot fetch blob sha256:ab: no such file");
        let outer = SandboxError::runtime("starting", e);
        assert_eq!(
            Chain(&outer).to_string(),
            "runtime error: starting: cannot fetch blob sha256:ab: no such file"
        );
    }
}
