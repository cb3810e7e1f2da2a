//! `wisp up` and `wisp server`: open the store, start the API server, write the CLI config
//! on first start, serve until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use wisp_store::{EmbeddedOptions, EmbeddedStore, Store};

use crate::cli::{Global, NodeArgs, NodeOptions, ServerArgs, UpArgs};

fn data_dir(arg: Option<&PathBuf>) -> PathBuf {
    arg.cloned().unwrap_or_else(|| {
        std::env::home_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".wisp")
            .join("data")
    })
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let server = ServerArgs {
        up: args,
        store: "embedded".into(),
        etcd_cafile: None,
        etcd_certfile: None,
        etcd_keyfile: None,
    };
    Box::pin(self::server(server, true)).await
}

/// `--allow-capabilities`, normalised (`NET_RAW`), each one of the opt-in set.
fn opt_in_capabilities(opts: &NodeOptions) -> anyhow::Result<Vec<String>> {
    let caps: Vec<String> = opts
        .allow_capabilities
        .iter()
        .map(|c| wisp_api::normalize_capability(c))
        .filter(|c| !c.is_empty())
        .collect();
    for cap in &caps {
        if !wisp_api::OPT_IN_CAPABILITIES.contains(&cap.as_str()) {
            bail!(
                "--allow-capabilities {cap}: only {} can be allowed",
                wisp_api::OPT_IN_CAPABILITIES.join(", ")
            );
        }
    }
    Ok(caps)
}

/// What a node's flags configure: its agent, and the runtimes this binary builds for it (the
/// agent and the ingress know them only through the `wisp-sandbox` contract).
struct NodeSettings {
    agent: wisp_node::AgentConfig,
    wasm: wisp_sandbox_wasm::WasmConfig,
    /// The Docker runtime (`None`: this node runs Wasm only). A daemon that is down does not
    /// stop the node: it reports `DockerReady=False` until the daemon answers.
    docker: Option<wisp_sandbox_docker::DockerConfig>,
    /// Where guests' outbound calls (and the ingress's backends) may connect.
    egress: wisp_sandbox::EgressPolicy,
}

/// The node's configuration from its flags.
fn node_settings(opts: &NodeOptions, data_dir: PathBuf) -> anyhow::Result<NodeSettings> {
    let name = opts.node_name.clone().unwrap_or_else(wisp_node::node::hostname);
    let mut wasm = wisp_sandbox_wasm::WasmConfig::new(data_dir.join("wasm"));
    wasm.pagemap_scan = opts.wasm_pagemap_reset;
    wasm.namespace_slots = opts.wasm_namespace_slots.min(wasm.max_instances).max(1);
    let mut c = wisp_node::AgentConfig::new(name, data_dir);
    c.address = opts.node_address.clone();
    c.listen = opts.agent_listen;
    c.lease_duration = Duration::from_secs(opts.lease_seconds.max(1));
    c.backoff.base = Duration::from_millis(opts.restart_backoff_ms.max(1));
    for (key, value) in [("cpu", &opts.node_cpu), ("memory", &opts.node_memory)] {
        if let Some(v) = value {
            let q = wisp_api::Quantity::parse(v).with_context(|| format!("--node-{key} {v:?}"))?;
            c.capacity.insert(key.to_owned(), q);
        }
    }
    c.capacity.insert(
        "pods".into(),
        wisp_api::Quantity::from_units(opts.node_pods, wisp_api::QuantityFormat::DecimalSI),
    );
    c.address
        .parse::<std::net::IpAddr>()
        .with_context(|| format!("--node-address {:?} is not an IP address", c.address))?;
    let mut docker = None;
    if opts.docker {
        let mut d = wisp_sandbox_docker::DockerConfig::new(c.node_name.clone());
        if let Some(socket) = &opts.docker_socket {
            d.socket = socket.clone();
        }
        // Container ports are published on loopback, where only this node (its ingress and
        // agent) reaches them; other nodes come through this node's ingress.
        d.publish_ip = std::net::IpAddr::from([127, 0, 0, 1]);
        d.allowed_capabilities.extend(opt_in_capabilities(opts)?);
        docker = Some(d);
    }
    let mut egress = wisp_sandbox::EgressPolicy::default();
    for cidr in &opts.allow_egress {
        let range = wisp_sandbox::egress::parse_cidr(cidr).with_context(|| "--allow-egress")?;
        egress.allow.push(range);
    }
    if let Some(labels) = &opts.node_labels {
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--node-labels: {pair:?} is not key=value"))?;
            c.labels.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    Ok(NodeSettings {
        agent: c,
        wasm,
        docker,
        egress,
    })
}

/// `wisp node`: a node agent against a remote API server, until SIGINT/SIGTERM. It acts
/// with a node credential only (never the admin's): its name comes from the credential.
pub async fn node(global: &Global, mut args: NodeArgs) -> anyhow::Result<()> {
    let client = match &args.ca_cert_hash {
        Some(hash) => {
            if let Some(f) = &global.ca_file {
                bail!(
                    "--ca-cert-hash and --ca-file {} both name the cluster CA: give one",
                    f.display()
                );
            }
            // The server's URL as the client would use it, then its CA by fingerprint.
            let server = crate::resources::client(global)?.server().to_owned();
            let ca = wisp_client::discover_ca(&server, hash)
                .await
                .with_context(|| format!("--ca-cert-hash {hash}"))?;
            crate::resources::client_trusting(global, Some(ca))?
        }
        None => crate::resources::client(global)?,
    };
    let who = client.whoami().await.with_context(|| {
        format!(
            "cannot check this node's credential with the API at {}",
            client.server()
        )
    })?;
    let Some(name) = who.node.filter(|_| who.kind == "node") else {
        bail!(
            "wisp node acts with a node credential, not a {} token: mint one with \
             `wisp token create --node NAME` and pass it with --token (or WISP_TOKEN)",
            who.kind
        );
    };
    match &args.node.node_name {
        Some(n) if *n != name => {
            bail!("--node-name {n:?} does not match this credential, which is node {name:?}'s")
        }
        _ => args.node.node_name = Some(name),
    }
    let dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::home_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".wisp")
            .join("node")
    });
    wisp_tls::private_dir(&dir)?;
    let shutdown = CancellationToken::new();
    let api_addr = wisp_client::url_addr(client.server());
    // The agent and the ingress share one watch per kind; the pods watched are this node's.
    let informers = wisp_runtime::Informers::new(client.clone(), shutdown.clone())
        .with_params::<wisp_api::Pod>(wisp_client::WatchParams {
            list: wisp_client::ListParams {
                label_selector: None,
                field_selector: Some(format!(
                    "spec.nodeName={}",
                    args.node.node_name.as_deref().unwrap_or_default()
                )),
            },
            ..wisp_client::WatchParams::default()
        });
    let run = Box::pin(run_node(
        client,
        &informers,
        &args.node,
        dir,
        api_addr,
        shutdown.clone(),
    ));
    tokio::pin!(run);
    let result = tokio::select! {
        r = &mut run => r,
        () = signalled() => {
            tracing::info!("shutting down");
            shutdown.cancel();
            run.await
        }
    };
    shutdown.cancel();
    informers.join().await;
    result
}

/// A line on stdout for whoever started the server; a reader that went away (`wisp up |
/// head -1`) stops nothing.
fn announce(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// One node: its runtimes (built here, the only place that names them), the agent and the
/// ingress (which calls the wasm runtime's pods in process), until `shutdown`. `api_addr`: where the API server listens, when it is an address (the node's
/// egress policy never lets a guest or a backend reach it).
async fn run_node(
    client: wisp_client::Client,
    informers: &wisp_runtime::Informers,
    opts: &NodeOptions,
    dir: PathBuf,
    api_addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.ingress_listen)
        .await
        .with_context(|| format!("cannot listen on {} for the ingress", opts.ingress_listen))?;
    let port = listener.local_addr()?.port();
    let NodeSettings {
        agent: mut config,
        wasm: mut wasm_config,
        docker,
        mut egress,
    } = node_settings(opts, dir)?;
    config.ingress_url = Some(format!("http://{}:{port}", config.address));
    // Wasm guests reach Services by name through a gateway on loopback only.
    let gateway = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1 for the Service gateway")?;
    wasm_config.service_gateway = Some(gateway.local_addr()?);
    let agent_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the agent", config.listen))?;
    let tls_listener = match opts.ingress_tls_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the HTTPS ingress"))?,
        ),
        None => None,
    };
    // The node's own listeners: never a guest's destination nor an ingress backend.
    egress.listeners.extend(
        [
            Some(listener.local_addr()?),
            Some(gateway.local_addr()?),
            Some(agent_listener.local_addr()?),
            tls_listener.as_ref().and_then(|l| l.local_addr().ok()),
            api_addr,
        ]
        .into_iter()
        .flatten(),
    );
    let name = config.node_name.clone();
    let mut ingress_config = wisp_ingress::IngressConfig::new(name.clone());
    ingress_config.local_readiness = Some(config.local_readiness.clone());
    ingress_config.busy_poll = std::time::Duration::from_micros(opts.ingress_busy_poll_us);
    ingress_config.max_connections = opts.ingress_max_connections;
    ingress_config.egress = egress.clone();
    wasm_config.egress = egress.clone();
    config.egress = egress;
    // Components by digest: those this node pulled from registries, else the API's blobs.
    let artifacts: Arc<dyn wisp_sandbox::ArtifactSource> = Arc::new(wisp_node::oci::NodeArtifacts {
        client: client.clone(),
        oci: config.oci_cache(),
    });
    let wasm =
        wisp_sandbox_wasm::WasmSandbox::new(wasm_config, Some(artifacts)).context("the wasm runtime")?;
    let mut runtimes = wisp_node::Runtimes::default();
    runtimes.insert(Arc::new(wasm.clone()));
    if let Some(docker) = docker {
        runtimes.insert(Arc::new(wisp_sandbox_docker::DockerSandbox::new(docker)));
    }
    let in_process = wisp_ingress::InProcess::new(wisp_api::RUNTIME_WASM, Arc::new(wasm));
    let ingress =
        wisp_ingress::Ingress::on_informers(client.clone(), ingress_config, Some(in_process), informers);
    // The node's port serves other nodes' forwarded requests and the autoscaler through this
    // ingress, beside container logs.
    let agent = wisp_node::Agent::new(client, config, runtimes)
        .on_informers(informers)
        .serving_also(wisp_ingress::node_port_service(ingress.clone()));
    {
        let https = match &tls_listener {
            Some(l) => format!(", https on {}", l.local_addr()?),
            None => String::new(),
        };
        announce(&format!(
            "wisp node {name}: ingress on http://{}{https}",
            listener.local_addr()?
        ));
    }
    let (ran, (), (), (), tls) = tokio::join!(
        Box::pin(agent.run_on(agent_listener, shutdown.clone())),
        ingress.sync(shutdown.clone()),
        wisp_ingress::serve(ingress.clone(), listener, shutdown.clone()),
        wisp_ingress::serve_gateway(ingress.clone(), gateway, shutdown.clone()),
        async {
            match tls_listener {
                Some(l) => wisp_ingress::serve_tls(ingress.clone(), l, shutdown.clone()).await,
                None => Ok(()),
            }
        },
    );
    tls.context("the HTTPS ingress")?;
    ran.with_context(|| format!("node {name}"))
}

/// SIGINT or SIGTERM.
async fn signalled() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn open_store(args: &ServerArgs, dir: &std::path::Path) -> anyhow::Result<Arc<dyn Store>> {
    let spec = args.store.as_str();
    let history = args.up.store_history;
    if spec == "embedded" {
        let options = EmbeddedOptions {
            history: history.max(1),
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open(&dir.join("store"), options)
            .with_context(|| format!("cannot open the embedded store in {}", dir.display()))?;
        return Ok(Arc::new(store));
    }
    if let Some(endpoints) = spec.strip_prefix("etcd://") {
        let scheme = if args.etcd_cafile.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoints: Vec<String> = endpoints
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        if endpoints.is_empty() {
            bail!("--store etcd://: name at least one endpoint, e.g. etcd://127.0.0.1:2379");
        }
        return etcd_store(&endpoints, args).await;
    }
    bail!("--store {spec:?}: expected `embedded` or `etcd://host:port[,host:port...]`")
}

/// `store` with Secrets encrypted at rest by the key file's keys; every Secret the first key
/// did not seal (older keys', plain text from before) is sealed again now.
async fn encrypted(
    store: Arc<dyn Store>,
    key_file: Option<PathBuf>,
    dir: &std::path::Path,
) -> anyhow::Result<Arc<dyn Store>> {
    let path = key_file.unwrap_or_else(|| dir.join("encryption.keys"));
    let keys = wisp_store::encrypted::Keyring::load_or_create(&path)?;
    let primary = keys.primary().to_owned();
    let store = wisp_store::encrypted::EncryptedStore::new(store, keys, vec!["/registry/secrets/".into()]);
    let rewritten = store.rewrite().await.with_context(|| {
        format!(
            "cannot encrypt the Secrets again with key {primary:?} of {}",
            path.display()
        )
    })?;
    if rewritten > 0 {
        // The history still holds the values as they were (plain, or under an older key
        // that may be removed next): keep none of it.
        let now = store.revision().await?;
        store.compact(now).await?;
        tracing::info!(rewritten, key = %primary, "Secrets encrypted again with the first key; history compacted");
    }
    Ok(Arc::new(store))
}

#[cfg(feature = "etcd")]
async fn etcd_store(endpoints: &[String], args: &ServerArgs) -> anyhow::Result<Arc<dyn Store>> {
    let read = |f: &PathBuf, flag: &str| {
        std::fs::read_to_string(f).with_context(|| format!("{flag} {}: cannot read it", f.display()))
    };
    let tls = match &args.etcd_cafile {
        Some(ca) => Some(wisp_store::etcd::EtcdTls {
            ca_pem: read(ca, "--etcd-cafile")?,
            cert_pem: args
                .etcd_certfile
                .as_ref()
                .map(|f| read(f, "--etcd-certfile"))
                .transpose()?,
            key_pem: args
                .etcd_keyfile
                .as_ref()
                .map(|f| read(f, "--etcd-keyfile"))
                .transpose()?,
        }),
        None => None,
    };
    let store = wisp_store::etcd::EtcdStore::connect_with(endpoints, tls.as_ref())
        .await
        .with_context(|| format!("cannot connect to etcd at {endpoints:?}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "etcd"))]
async fn etcd_store(_endpoints: &[String], _args: &ServerArgs) -> anyhow::Result<Arc<dyn Store>> {
    bail!(
        "this wisp binary was built without etcd support; rebuild with `cargo build --release \
         --features etcd` (needs protoc: apt-get install protobuf-compiler)"
    )
}

/// How the API server is reached: its TLS configuration (none with `--insecure-http`) and
/// the CA clients trust (none with an operator's own certificate: they bring their own).
struct ApiTls {
    config: Option<Arc<wisp_tls::rustls::ServerConfig>>,
    ca_pem: Option<String>,
    /// The CA that issues Routes' certificates (`tls.issuer: cluster`): not the one clients
    /// trust for the API server.
    routes_ca: Option<Arc<wisp_tls::Ca>>,
}

fn api_tls(up: &UpArgs, dir: &std::path::Path) -> anyhow::Result<ApiTls> {
    if up.insecure_http {
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "WARNING: --insecure-http: the API is served over plain HTTP; tokens and Secret \
                 values cross the network in clear text"
            );
        }
        return Ok(ApiTls {
            config: None,
            ca_pem: None,
            routes_ca: None,
        });
    }
    let alpn: &[&[u8]] = &[b"http/1.1"];
    if let (Some(cert), Some(key)) = (&up.tls_cert_file, &up.tls_private_key_file) {
        let read = |f: &PathBuf, flag: &str| {
            std::fs::read_to_string(f).with_context(|| format!("{flag} {}: cannot read it", f.display()))
        };
        let serving = wisp_tls::CertifiedKey {
            cert_pem: read(cert, "--tls-cert-file")?,
            key_pem: read(key, "--tls-private-key-file")?,
        };
        let config = wisp_tls::server_config(&serving, alpn).with_context(|| {
            format!(
                "--tls-cert-file {} / --tls-private-key-file {}",
                cert.display(),
                key.display()
            )
        })?;
        return Ok(ApiTls {
            config: Some(config),
            ca_pem: None,
            routes_ca: None,
        });
    }
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    names.push(wisp_node::node::hostname());
    if !up.listen.ip().is_unspecified() {
        names.push(up.listen.ip().to_string());
    }
    names.extend(
        up.tls_san
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty()),
    );
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let pki = dir.join("pki");
    let cluster =
        wisp_tls::cluster(&pki, &names).with_context(|| format!("the cluster CA in {}", pki.display()))?;
    Ok(ApiTls {
        config: Some(wisp_tls::server_config(&cluster.serving, alpn)?),
        ca_pem: Some(cluster.ca_pem),
        routes_ca: Some(Arc::new(wisp_tls::Ca::in_dir(
            &pki.join("routes"),
            wisp_tls::ROUTES_CA,
        )?)),
    })
}

pub async fn server(args: ServerArgs, with_node: bool) -> anyhow::Result<()> {
    let dir = data_dir(args.up.data_dir.as_ref());
    // The store, the blobs, the CA's key: none of it for other users of the machine.
    wisp_tls::private_dir(&dir)?;
    let tls = api_tls(&args.up, &dir)?;
    let store = open_store(&args, &dir).await?;
    let store = encrypted(store, args.up.encryption_key_file.clone(), &dir).await?;
    let shutdown = CancellationToken::new();
    let mut config = wisp_apiserver::Config::new(dir.join("blobs"));
    config.bookmark_interval = Duration::from_millis(args.up.bookmark_ms.max(1));
    config.cluster_domain = args.up.cluster_domain.clone();
    config.allowed_capabilities = opt_in_capabilities(&args.up.node)?;
    config.blob_limit = args.up.blob_limit_mb.max(1) << 20;
    config.blob_grace = Duration::from_secs(args.up.blob_grace_seconds);
    config.blob_gc_interval = Duration::from_secs((args.up.blob_grace_seconds / 6).clamp(1, 600));
    config.fairness.tenant_qps = args.up.tenant_qps;
    config.fairness.tenant_burst = args.up.tenant_burst;
    let api = wisp_apiserver::ApiServer::new(store, config, shutdown.clone());
    let listener = tokio::net::TcpListener::bind(args.up.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.up.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("{}://{addr}", if tls.config.is_some() { "https" } else { "http" });
    let admin = api.bootstrap().await.context("bootstrap")?;
    let config_path = wisp_client::Config::default_path();
    let token = match admin {
        Some(token) => {
            tracing::info!(config = %config_path.display(), "first start: admin token written");
            Some(token)
        }
        None => match wisp_client::Config::load(&config_path) {
            // Same cluster, maybe on another address: keep the token, point the CLI here.
            Ok(existing)
                if api
                    .auth()
                    .authenticate(Some(&format!("Bearer {}", existing.token)))
                    .await
                    .is_ok() =>
            {
                (existing.server != url || existing.ca != tls.ca_pem).then_some(existing.token)
            }
            // The config is missing or holds no valid token for this store: whoever runs the
            // server on this data owns it, so mint a new admin token rather than lock them out.
            _ => {
                tracing::warn!(config = %config_path.display(), "no valid admin token in the CLI config; issuing a new one");
                Some(api.auth().issue_admin().await.context("issue an admin token")?)
            }
        },
    };
    if let Some(token) = token {
        wisp_client::Config {
            server: url.clone(),
            token,
            ca: tls.ca_pem.clone(),
        }
        .save(&config_path)
        .context("cannot write the CLI config")?;
    }
    {
        announce(&format!(
            "wisp API listening on {url} (data: {}, store: {})",
            dir.display(),
            args.store
        ));
        if let Some(hash) = tls
            .ca_pem
            .as_deref()
            .and_then(|ca| wisp_tls::fingerprint(ca).ok())
        {
            // Listening on every address: other machines use one of this machine's.
            let server = if addr.ip().is_unspecified() {
                format!("https://HOST:{}", addr.port())
            } else {
                url.clone()
            };
            announce(&format!(
                "join a node: wisp node --server {server} --token <wisp token create --node NAME> \
                 --ca-cert-hash {hash}"
            ));
        }
    }
    let signals = shutdown.clone();
    let wait = async move {
        signalled().await;
        tracing::info!("shutting down");
        signals.cancel();
    };
    // In-process components still go through the API (authentication, validation, CAS,
    // watch), with a token that lives only in this process, but call it without a socket.
    let internal = |principal: wisp_apiserver::auth::Principal| -> anyhow::Result<wisp_client::Client> {
        let token = api
            .auth()
            .issue_ephemeral(principal)
            .context("token for the in-process components")?;
        let api = api.clone();
        Ok(wisp_client::Client::in_process(&url, &token, move |req| {
            api.handle_in_process(req)
        }))
    };
    // One watch per kind for the whole process: the controllers, the scheduler and the node
    // read the same caches (writes still go with each component's own credential).
    let informers = wisp_runtime::Informers::new(
        internal(wisp_apiserver::auth::Principal::Admin)?,
        shutdown.clone(),
    );
    let controllers = if args.up.controllers {
        let config = wisp_controllers::Config {
            node_grace: Duration::from_secs(args.up.node_grace_seconds.max(1)),
            event_ttl: Duration::from_secs(args.up.event_ttl_seconds.max(1)),
            autoscaler: wisp_controllers::autoscaler::AutoscalerConfig {
                stable_window: Duration::from_secs(args.up.autoscaler_stable_seconds.max(1)),
                panic_window: Duration::from_secs(args.up.autoscaler_panic_seconds.max(1)),
                // What the nodes' ingresses are shown: good for their statistics only.
                stats_token: Some(
                    api.auth()
                        .issue_ticket(wisp_apiserver::auth::Principal::Scraper, None)
                        .context("the ingress statistics credential")?,
                ),
                ..Default::default()
            },
            cluster_domain: args.up.cluster_domain.clone(),
            route_issuer: tls.routes_ca.clone().map(|ca| {
                wisp_controllers::route_tls::Issuer(Arc::new(move |host: &str| {
                    ca.issue(&[host.to_owned()], true)
                        .map(|c| (c.cert_pem, c.key_pem))
                        .map_err(|e| format!("{e:#}"))
                }))
            }),
        };
        Some(wisp_controllers::run(informers.clone(), config, shutdown.clone()))
    } else {
        None
    };
    let scheduler = if args.up.scheduler {
        Some(wisp_scheduler::run(
            informers.clone(),
            wisp_scheduler::SchedulerConfig::default(),
            shutdown.clone(),
        ))
    } else {
        None
    };
    // The in-process node acts as a node, like any other: its own Node and Lease, its pods'
    // status, what its agent and ingress read — never as the admin.
    let node_name = args
        .up
        .node
        .node_name
        .clone()
        .unwrap_or_else(wisp_node::node::hostname);
    let node = if with_node {
        Some(internal(wisp_apiserver::auth::Principal::Node {
            node: node_name.clone(),
        })?)
    } else {
        None
    };
    let mut node_opts = args.up.node.clone();
    node_opts.node_name = Some(node_name);
    node_opts
        .ingress_tls_listen
        .get_or_insert(std::net::SocketAddr::from(([127, 0, 0, 1], 8443)));
    let (served, (), (), scheduled, ran) = tokio::join!(
        async {
            match tls.config.clone() {
                Some(config) => wisp_apiserver::serve_tls(api, listener, config, shutdown.clone()).await,
                None => wisp_apiserver::serve(api, listener, shutdown.clone()).await,
            }
        },
        async {
            tokio::select! {
                () = wait => {}
                () = shutdown.cancelled() => {}
            }
        },
        async {
            if let Some(c) = controllers {
                Box::pin(c).await;
            }
        },
        async {
            match scheduler {
                Some(s) => Box::pin(s).await.map_err(anyhow::Error::from),
                None => Ok(()),
            }
        },
        async {
            let Some(client) = node else { return Ok(()) };
            let r = Box::pin(run_node(
                client,
                &informers,
                &node_opts,
                dir.join("node"),
                Some(addr),
                shutdown.clone(),
            ))
            .await;
            if r.is_err() {
                // The node is a part of `wisp up`: without it the cluster cannot run pods.
                shutdown.cancel();
            }
            r
        }
    );
    shutdown.cancel();
    informers.join().await;
    scheduled.context("scheduler")?;
    ran.context("node agent")?;
    served.context("API server")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Opts {
        #[command(flatten)]
        node: NodeOptions,
    }

    fn config(args: &[&str]) -> NodeSettings {
        let opts = Opts::try_parse_from(std::iter::once("wisp").chain(args.iter().copied()))
            .expect("arguments parse");
        node_settings(&opts.node, PathBuf::from("/nonexistent")).expect("node settings")
    }

    #[test]
    fn opt_in_capabilities_reach_the_nodes_docker_runtime_and_nothing_else_does() {
        let docker = |args: &[&str]| config(args).docker.expect("docker on").allowed_capabilities;
        let default = docker(&["--node-name", "n"]);
        assert!(!default.iter().any(|c| c == "NET_RAW"), "{default:?}");
        let allowed = docker(&["--node-name", "n", "--allow-capabilities", "cap_net_raw,MKNOD"]);
        assert!(allowed.iter().any(|c| c == "NET_RAW") && allowed.iter().any(|c| c == "MKNOD"));
        let opts = Opts::try_parse_from(["wisp", "--allow-capabilities", "SYS_ADMIN"]).expect("parse");
        let Err(err) = node_settings(&opts.node, PathBuf::from("/nonexistent")) else {
            panic!("SYS_ADMIN is refused");
        };
        assert!(err.to_string().contains("SYS_ADMIN"), "{err}");
    }

    #[test]
    fn the_pagemap_reset_is_on_unless_turned_off() {
        assert!(config(&["--node-name", "n"]).wasm.pagemap_scan);
        assert!(
            config(&["--node-name", "n", "--wasm-pagemap-reset"])
                .wasm
                .pagemap_scan
        );
        assert!(
            config(&["--node-name", "n", "--wasm-pagemap-reset=true"])
                .wasm
                .pagemap_scan
        );
        assert!(
            !config(&["--node-name", "n", "--wasm-pagemap-reset=false"])
                .wasm
                .pagemap_scan
        );
        assert!(
            !config(&["--node-name", "n", "--wasm-pagemap-reset", "false"])
                .wasm
                .pagemap_scan
        );
        assert!(
            !config(&["--node-name", "n", "--wasm-pagemap-reset=0"])
                .wasm
                .pagemap_scan
        );
        assert!(
            config(&["--node-name", "n", "--wasm-pagemap-reset=on"])
                .wasm
                .pagemap_scan
        );
    }
}
