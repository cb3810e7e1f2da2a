//! Flags and subcommands. Every flag can also be set through a `WISP_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "wisp",
    version,
    about = "Wisp: a serverless orchestrator for WebAssembly and containers"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// API server URL (default: from the config file).
    #[arg(long, global = true, env = "WISP_SERVER")]
    pub server: Option<String>,
    /// Bearer token (default: from the config file).
    #[arg(long, global = true, env = "WISP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Config file with server and token [default: ~/.wisp/config].
    #[arg(long, global = true, env = "WISP_CONFIG")]
    pub config: Option<PathBuf>,
    /// The CA (PEM file) the server's certificate must chain to [default: the config
    /// file's, which `wisp up` writes; else the public web's roots]. A node joining a
    /// cluster passes the CA the server made, `DATA_DIR/pki/ca.crt`.
    #[arg(long, global = true, env = "WISP_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// How log lines (stderr) are written: `text` for people, `json` (one object a line:
    /// timestamp, level, target, fields, spans) for a log pipeline. Which lines: `WISP_LOG`.
    #[arg(long, global = true, env = "WISP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a whole cluster in this process on the embedded store.
    Up(UpArgs),
    /// Run the control plane on a chosen store (embedded or etcd).
    Server(ServerArgs),
    /// Run a node agent: register this machine and run the pods bound to it (with a node
    /// credential: `wisp token create --node NAME`).
    Node(NodeArgs),
    /// Print (or follow) a pod's container logs.
    Logs(LogsArgs),
    /// Create or update objects from files (multi-document YAML or JSON).
    Apply(ApplyArgs),
    /// List objects, or show one.
    Get(GetArgs),
    /// Show one object in detail.
    Describe(DescribeArgs),
    /// Show what pods, nodes or Functions use now: CPU (millicores) and memory.
    Top {
        #[command(subcommand)]
        command: TopCommand,
    },
    /// Delete objects by name or by the files that created them.
    Delete(DeleteArgs),
    /// Follow, list or revert a Deployment's rollout.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Make a function project from a template (`--list` shows them).
    New(NewArgs),
    /// Build the project's component (its wisp.toml's build command) and check it.
    Build(BuildArgs),
    /// Build if stale, upload the component, create or update the Function (or run the
    /// job), and print its URL.
    Deploy(DeployArgs),
    /// Call a Function through the ingress and print its answer.
    Invoke(InvokeArgs),
    /// Publish a component to an OCI registry (the Wasm OCI artifact layout), for
    /// `wasm: oci://…`.
    Push(PushArgs),
    /// Deploy the project, then rebuild and redeploy on every change to its sources while
    /// streaming its logs; Ctrl-C puts the cluster back as it was.
    Dev(DevArgs),
    /// Print a shell completion script: `wisp completion bash > /etc/bash_completion.d/wisp`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Named servers and tokens in the config file, like kubeconfig's contexts.
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// The contexts, the current one marked with `*`.
    List,
    /// Make NAME the current context.
    Use { name: String },
    /// Create or change context NAME (`--server`, `--token`, `--namespace`); the first one
    /// becomes current.
    Set(ContextSetArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ContextSetArgs {
    pub name: String,
    /// The context's server [default: the current context's].
    #[arg(long = "context-server")]
    pub server: Option<String>,
    /// The context's token [default: the current context's].
    #[arg(long = "context-token", hide_env_values = true)]
    pub token: Option<String>,
    /// The namespace its commands use by default.
    #[arg(long = "context-namespace")]
    pub namespace: Option<String>,
    /// The CA (PEM file) its server's certificate must chain to.
    #[arg(long = "context-ca-file")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// The project directory.
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    #[arg(short, long, env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PushArgs {
    /// `oci://registry/repository:tag`.
    pub reference: String,
    /// A `.wasm` file, or a project directory (built if stale) [default: the project here].
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    /// Registry user (the password comes from WISP_REGISTRY_PASSWORD).
    #[arg(long, env = "WISP_REGISTRY_USERNAME")]
    pub username: Option<String>,
    #[arg(long, env = "WISP_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct NewArgs {
    /// The project's (and the function's) name: a DNS label such as `hello`.
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// `http-rust`, `http-python` or `job-rust`.
    #[arg(short, long, default_value = "http-rust")]
    pub template: String,
    /// Directory to create [default: NAME].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// List the templates.
    #[arg(long)]
    pub list: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    /// The project directory (or its wisp.toml).
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct DeployArgs {
    /// The project directory (or its wisp.toml).
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    /// Namespace [default: wisp.toml's, else `default`].
    #[arg(short, long, env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
    /// Wait until the Function is Ready (its pods up, or at zero), or the job has finished.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Print the object it would apply (building if stale), and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Send this percent of requests to the new revision and keep the rest on the one serving
    /// now (`wisp rollout promote` moves the rest, `rollback` returns it).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub traffic: Option<u32>,
    /// Give the new revision a URL of its own: `<tag>.<function host>`.
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct InvokeArgs {
    /// The Function.
    pub name: String,
    #[arg(short, long, env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
    /// Path under the function's URL.
    #[arg(long)]
    pub path: Option<String>,
    /// Request body: text, or `@FILE` (the method becomes POST).
    #[arg(short, long)]
    pub data: Option<String>,
    /// HTTP method [default: GET, or POST with --data].
    #[arg(short = 'X', long)]
    pub method: Option<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Print the response headers too.
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Address of the API server (HTTPS).
    #[arg(long, env = "WISP_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Serve the API over plain HTTP: every token and Secret crosses the network in clear
    /// text. Only for a machine of your own.
    #[arg(long, env = "WISP_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Serve the API with this certificate (PEM chain) instead of one from the cluster CA.
    #[arg(long, env = "WISP_TLS_CERT_FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert-file.
    #[arg(long, env = "WISP_TLS_PRIVATE_KEY_FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// The keys that encrypt Secrets at rest (AES-256-GCM; one `name: <base64 32 bytes>` per
    /// line, the first encrypts, every one decrypts) [default: DATA_DIR/encryption.keys,
    /// made with a fresh key on first start]. To rotate: add a new key first and restart.
    #[arg(long, env = "WISP_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// More names (DNS or IP) for the certificate the cluster CA issues the API server,
    /// besides localhost, 127.0.0.1, ::1, this machine's hostname and the --listen address.
    #[arg(long, env = "WISP_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Data directory [default: ~/.wisp/data].
    #[arg(long, env = "WISP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Quiet time before a watch gets a BOOKMARK, in milliseconds.
    #[arg(long, env = "WISP_BOOKMARK_MS", default_value_t = 10_000)]
    pub bookmark_ms: u64,
    /// Run the controllers (Deployment, ReplicaSet, Endpoints, garbage collection) in this
    /// process; `false` serves the API alone.
    #[arg(long, env = "WISP_CONTROLLERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub controllers: bool,
    /// Revisions of change history the embedded store keeps for resuming watches.
    #[arg(long, env = "WISP_STORE_HISTORY", default_value_t = 100_000)]
    pub store_history: i64,
    /// Run the scheduler in this process.
    #[arg(long, env = "WISP_SCHEDULER", default_value_t = true, action = clap::ArgAction::Set)]
    pub scheduler: bool,
    /// Seconds a node may go without renewing its lease before it is marked NotReady and
    /// its pods are replaced elsewhere.
    #[arg(long, env = "WISP_NODE_GRACE_SECONDS", default_value_t = 10)]
    pub node_grace_seconds: u64,
    /// Seconds an Event is kept after it was last seen.
    #[arg(long, env = "WISP_EVENT_TTL_SECONDS", default_value_t = 3600)]
    pub event_ttl_seconds: u64,
    /// Autoscaler: seconds of in-flight samples averaged for scaling decisions.
    #[arg(long, env = "WISP_AUTOSCALER_STABLE_SECONDS", default_value_t = 60)]
    pub autoscaler_stable_seconds: u64,
    /// Autoscaler: the short window that triggers panic mode (scale up only).
    #[arg(long, env = "WISP_AUTOSCALER_PANIC_SECONDS", default_value_t = 6)]
    pub autoscaler_panic_seconds: u64,
    /// Namespace `ns` owns the Route hosts under `<ns>.<cluster domain>`; a Function answers
    /// on `<name>.<ns>.<cluster domain>` by default.
    #[arg(long, env = "WISP_CLUSTER_DOMAIN", default_value = "localhost")]
    pub cluster_domain: String,
    /// Largest Wasm component (blob) an upload may be, in MiB.
    #[arg(long, env = "WISP_BLOB_LIMIT_MB", default_value_t = 256)]
    pub blob_limit_mb: u64,
    /// Seconds after its last use an unused blob is removed.
    #[arg(long, env = "WISP_BLOB_GRACE_SECONDS", default_value_t = 3600)]
    pub blob_grace_seconds: u64,
    /// Requests per second a namespace token may make (sustained); past its burst, 429.
    #[arg(long, env = "WISP_TENANT_QPS", default_value_t = 50)]
    pub tenant_qps: u32,
    /// Requests a namespace token may make at once before its rate applies.
    #[arg(long, env = "WISP_TENANT_BURST", default_value_t = 100)]
    pub tenant_burst: u32,
    /// The node agent that `wisp up` runs in this process (`wisp server` runs none).
    #[command(flatten)]
    pub node: NodeOptions,
    #[command(flatten)]
    pub traces: TraceArgs,
}

/// Where a server or node exports its traces.
#[derive(Args, Debug, Clone, Default)]
pub struct TraceArgs {
    /// Export traces (a request through the ingress, activator, sandbox and the guest's
    /// outgoing calls; a cold start through the controllers, scheduler and node) to this
    /// OTLP/HTTP receiver, as protobuf: `http://collector:4318` (`/v1/traces` is added to a
    /// URL with no path). Without it no trace spans are made; `traceparent` headers pass
    /// through untouched.
    #[arg(long, env = "WISP_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of traces started here that are exported, 0 to 1; a request that comes with
    /// a sampled `traceparent` is always exported.
    #[arg(long, env = "WISP_OTLP_SAMPLE_RATIO", default_value_t = 1.0)]
    pub otlp_sample_ratio: f64,
}

/// A node agent's own settings (`wisp node`, and the agent inside `wisp up`).
#[derive(Args, Debug, Clone)]
pub struct NodeOptions {
    /// Node name [default: the host name].
    #[arg(long, env = "WISP_NODE_NAME")]
    pub node_name: Option<String>,
    /// Address reported for the node and its pods.
    #[arg(long, env = "WISP_NODE_ADDRESS", default_value = "127.0.0.1")]
    pub node_address: String,
    /// Where the agent serves container logs to the API server.
    #[arg(long, env = "WISP_AGENT_LISTEN", default_value = "127.0.0.1:0")]
    pub agent_listen: SocketAddr,
    /// Where the node's HTTP ingress listens (Routes to Functions and Services).
    #[arg(long, env = "WISP_INGRESS_LISTEN", default_value = "127.0.0.1:8080")]
    pub ingress_listen: SocketAddr,
    /// Where the node's HTTPS ingress listens: Routes with `spec.tls`, the certificate picked
    /// by SNI [default for `wisp up`: 127.0.0.1:8443; `wisp node`: none].
    #[arg(long, env = "WISP_INGRESS_TLS_LISTEN")]
    pub ingress_tls_listen: Option<SocketAddr>,
    /// Microseconds an ingress event loop keeps polling for the next request, instead of
    /// sleeping, after its connections last had traffic: lower latency for a CPU-time cost of
    /// up to this much after each burst (0: off).
    #[arg(long, env = "WISP_INGRESS_BUSY_POLL_US", default_value_t = 200)]
    pub ingress_busy_poll_us: u64,
    /// Reset a Wasm instance's memory by the pages it dirtied (Linux PAGEMAP_SCAN, 6.7+)
    /// instead of clearing all of it: fewer µs per request. `false` clears all of it.
    #[arg(
        long,
        env = "WISP_WASM_PAGEMAP_RESET",
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::Set
    )]
    pub wasm_pagemap_reset: bool,
    /// CPUs offered to pods [default: the machine's].
    #[arg(long, env = "WISP_NODE_CPU")]
    pub node_cpu: Option<String>,
    /// Memory offered to pods, e.g. `8Gi` [default: the machine's].
    #[arg(long, env = "WISP_NODE_MEMORY")]
    pub node_memory: Option<String>,
    /// Most pods on this node.
    #[arg(long, env = "WISP_NODE_PODS", default_value_t = 110)]
    pub node_pods: i64,
    /// Node labels, `key=value,...` (for pods' nodeSelector).
    #[arg(long, env = "WISP_NODE_LABELS")]
    pub node_labels: Option<String>,
    /// Seconds the node's lease lasts; renewed every quarter of it.
    #[arg(long, env = "WISP_LEASE_SECONDS", default_value_t = 10)]
    pub lease_seconds: u64,
    /// First restart delay of a crashed container in milliseconds (doubles up to 5 min).
    #[arg(long, env = "WISP_RESTART_BACKOFF_MS", default_value_t = 1000)]
    pub restart_backoff_ms: u64,
    /// Run OCI images through the Docker Engine (`false`: Wasm only). A daemon that is down
    /// leaves the node up with `DockerReady=False`.
    #[arg(long, env = "WISP_DOCKER", default_value_t = true, action = clap::ArgAction::Set)]
    pub docker: bool,
    /// The Docker daemon's unix socket [default: $DOCKER_HOST's, else /var/run/docker.sock].
    #[arg(long, env = "WISP_DOCKER_SOCKET")]
    pub docker_socket: Option<PathBuf>,
    /// Capabilities containers may add beyond the safe default set (of NET_RAW, MKNOD,
    /// SETUID, SETGID, DAC_OVERRIDE), comma-separated: admitted by the API server (`up`,
    /// `server`) and allowed by the node's Docker runtime (`up`, `node`).
    #[arg(long, env = "WISP_ALLOW_CAPABILITIES", value_delimiter = ',')]
    pub allow_capabilities: Vec<String>,
    /// Address ranges (CIDR, comma-separated) Wasm guests may call although they are
    /// loopback, link-local or private; the node's own listeners stay refused.
    #[arg(long, env = "WISP_ALLOW_EGRESS", value_delimiter = ',')]
    pub allow_egress: Vec<String>,
    /// HTTP requests one namespace may have running at once in this node's Wasm runtime (its
    /// share of the instance pool); past it, 503.
    #[arg(long, env = "WISP_WASM_NAMESPACE_SLOTS", default_value_t = 250)]
    pub wasm_namespace_slots: u32,
    /// Connections the ingress keeps open at once; more wait to be accepted.
    #[arg(long, env = "WISP_INGRESS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub ingress_max_connections: usize,
}

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Data directory (component cache, pod volumes) [default: ~/.wisp/node].
    #[arg(long, env = "WISP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Join by the cluster CA's fingerprint instead of --ca-file: `sha256:<hex>`, as `wisp
    /// up` and `wisp server` print it. The node reads the CA from the server's TLS handshake
    /// and trusts it only if its fingerprint is this one.
    #[arg(long, env = "WISP_CA_CERT_HASH")]
    pub ca_cert_hash: Option<String>,
    #[command(flatten)]
    pub node: NodeOptions,
    #[command(flatten)]
    pub traces: TraceArgs,
}

#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// A pod, or a Function or job: then all of its pods, each line prefixed by its pod.
    pub pod: String,
    /// Container (required when the pod has several).
    #[arg(short, long)]
    pub container: Option<String>,
    #[arg(short, long, env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
    /// Keep streaming new lines.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    #[command(flatten)]
    pub up: UpArgs,
    /// `embedded` or `etcd://host:port[,host:port...]`.
    #[arg(long, env = "WISP_STORE", default_value = "embedded")]
    pub store: String,
    /// etcd over TLS: the CA (PEM) etcd's certificate chains to. The endpoints are then
    /// reached with https://.
    #[arg(long, env = "WISP_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// The client certificate (PEM) for etcd's `--client-cert-auth` (with --etcd-keyfile).
    #[arg(
        long,
        env = "WISP_ETCD_CERTFILE",
        requires = "etcd_keyfile",
        requires = "etcd_cafile"
    )]
    pub etcd_certfile: Option<PathBuf>,
    /// The private key (PEM) of --etcd-certfile.
    #[arg(long, env = "WISP_ETCD_KEYFILE", requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    /// File, directory (its .yaml/.yml/.json files) or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Namespace for objects that do not name one.
    #[arg(short, long, env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Yaml,
    Json,
    Wide,
    Name,
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// Kind: plural, singular, short name or Kind (pods, pod, po, Pod).
    pub kind: String,
    pub name: Option<String>,
    #[arg(short, long, env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
    /// All namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Label selector, e.g. `app=web,tier in (a,b)`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[arg(short, long, value_enum)]
    pub output: Option<OutputFormat>,
    /// Keep watching for changes.
    #[arg(short, long)]
    pub watch: bool,
    /// Read lists this many objects at a time.
    #[arg(long, default_value_t = 500)]
    pub chunk_size: usize,
    /// With `get events`: only the events of this object (`pod/web`, `function/hello`).
    #[arg(long = "for", value_name = "KIND/NAME")]
    pub for_object: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum TopCommand {
    /// CPU and memory of each pod (and, with --containers, each container).
    Pods(TopArgs),
    /// CPU and memory of each node, from its OS.
    Nodes(TopArgs),
    /// CPU and memory of each Function's pods together, with their count.
    Functions(TopArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopSort {
    Cpu,
    Memory,
    Name,
}

#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    #[arg(short, long, env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
    /// All namespaces (pods, functions).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Order by: most CPU or memory first, or by name.
    #[arg(long, value_enum, default_value_t = TopSort::Cpu)]
    pub sort_by: TopSort,
    /// One line per container (pods).
    #[arg(long)]
    pub containers: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DescribeArgs {
    pub kind: String,
    pub name: String,
    #[arg(short, long, env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    pub kind: Option<String>,
    pub name: Option<String>,
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    #[arg(short, long, env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Wait until the rollout finishes (or the timeout passes), printing progress.
    Status(RolloutArgs),
    /// Show the revisions kept (one ReplicaSet each).
    History(RolloutArgs),
    /// Go back to the previous revision, or to `--to-revision`.
    Undo(UndoArgs),
    /// A Function: send all of its requests to its latest revision.
    Promote(RolloutArgs),
    /// A Function: send all of its requests back to the revision before the latest.
    Rollback(RolloutArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RolloutArgs {
    /// `deployment/NAME`, `deployment NAME` or just `NAME`.
    pub target: Vec<String>,
    #[arg(short, long, env = "WISP_NAMESPACE")]
    pub namespace: Option<String>,
    /// Give up after this many seconds (status only).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Args, Debug, Clone)]
pub struct UndoArgs {
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[arg(long)]
    pub to_revision: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Mint a token (needs an admin token): confined to one namespace, or a node's
    /// credential for `wisp node`.
    Create(TokenCreateArgs),
    /// List the tokens (ids, kinds, scopes, expiry; never the tokens themselves).
    List,
    /// Revoke a token by the id `wisp token list` shows.
    Revoke { id: String },
}

#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false, args = ["namespace", "node"])]
pub struct TokenCreateArgs {
    /// A token that reaches only this namespace (bound to it: gone when it is deleted).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// A node credential for `wisp node --node-name NAME`: its own Node and Lease, the status
    /// of the pods bound to it, and what its agent and ingress read.
    #[arg(long)]
    pub node: Option<String>,
    /// Expire after this long (`30s`, `12h`, `90m`); default never.
    #[arg(long)]
    pub ttl: Option<String>,
}
