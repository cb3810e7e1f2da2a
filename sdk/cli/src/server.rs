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
    };
    Box::pin(self::server(server, true)).await
}

/// The agent's configuration from its flags.
fn agent_config(opts: &NodeOptions, data_dir: PathBuf) -> anyhow::Result<wisp_node::AgentConfig> {
    let name = opts.node_name.clone().unwrap_or_else(wisp_node::node::hostname);
    let mut c = wisp_node::AgentConfig::new(name, data_dir);
    c.address = opts.node_address.clone();
    c.listen = opts.agent_listen;
    c.wasm_pagemap_reset = opts.wasm_pagemap_reset;
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
    if opts.docker {
        let mut docker = wisp_sandbox_docker::DockerConfig::new(c.node_name.clone());
        if let Some(socket) = &opts.docker_socket {
            docker.socket = socket.clone();
        }
        // Container ports are published where the node's pods are reached.
        docker.publish_ip = c
            .address
            .parse()
            .with_context(|| format!("--node-address {:?} is not an IP address", c.address))?;
        c.docker = Some(docker);
    }
    if let Some(labels) = &opts.node_labels {
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--node-labels: {pair:?} is not key=value"))?;
            c.labels.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    Ok(c)
}

/// `wisp node`: a node agent against a remote API server, until SIGINT/SIGTERM.
pub async fn node(global: &Global, args: NodeArgs) -> anyhow::Result<()> {
    let client = crate::resources::client(global)?;
    let dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::home_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".wisp")
            .join("node")
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let shutdown = CancellationToken::new();
    let run = Box::pin(run_node(client, &args.node, dir, shutdown.clone()));
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => return r,
        () = signalled() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    run.await
}

/// One node: the agent and the ingress (which calls the agent's wasm pods in process), until
/// `shutdown`.
async fn run_node(
    client: wisp_client::Client,
    opts: &NodeOptions,
    dir: PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.ingress_listen)
        .await
        .with_context(|| format!("cannot listen on {} for the ingress", opts.ingress_listen))?;
    let port = listener.local_addr()?.port();
    let mut config = agent_config(opts, dir)?;
    config.ingress_url = Some(format!("http://{}:{port}", config.address));
    // Wasm guests reach Services by name through a gateway on loopback only.
    let gateway = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1 for the Service gateway")?;
    config.service_gateway = Some(gateway.local_addr()?);
    let name = config.node_name.clone();
    let mut ingress_config = wisp_ingress::IngressConfig::new(name.clone());
    ingress_config.local_readiness = Some(config.local_readiness.clone());
    ingress_config.busy_poll = std::time::Duration::from_micros(opts.ingress_busy_poll_us);
    let agent = wisp_node::Agent::new(client.clone(), config).context("node agent")?;
    let ingress = wisp_ingress::Ingress::new(client, ingress_config, agent.runtimes().wasm.clone());
    #[allow(clippy::print_stdout)]
    {
        println!("wisp node {name}: ingress on http://{}", listener.local_addr()?);
    }
    let (ran, (), (), ()) = tokio::join!(
        Box::pin(agent.run(shutdown.clone())),
        ingress.sync(shutdown.clone()),
        wisp_ingress::serve(ingress.clone(), listener, shutdown.clone()),
        wisp_ingress::serve_gateway(ingress.clone(), gateway, shutdown.clone()),
    );
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

async fn open_store(spec: &str, dir: &std::path::Path, history: i64) -> anyhow::Result<Arc<dyn Store>> {
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
        let endpoints: Vec<String> = endpoints
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| format!("http://{e}"))
            .collect();
        if endpoints.is_empty() {
            bail!("--store etcd://: name at least one endpoint, e.g. etcd://127.0.0.1:2379");
        }
        return etcd_store(&endpoints).await;
    }
    bail!("--store {spec:?}: expected `embedded` or `etcd://host:port[,host:port...]`")
}

#[cfg(feature = "etcd")]
async fn etcd_store(endpoints: &[String]) -> anyhow::Result<Arc<dyn Store>> {
    let store = wisp_store::etcd::EtcdStore::connect(endpoints)
        .await
        .with_context(|| format!("cannot connect to etcd at {endpoints:?}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "etcd"))]
async fn etcd_store(_endpoints: &[String]) -> anyhow::Result<Arc<dyn Store>> {
    bail!(
        "this wisp binary was built without etcd support; rebuild with `cargo build --release \
         --features etcd` (needs protoc: apt-get install protobuf-compiler)"
    )
}

pub async fn server(args: ServerArgs, with_node: bool) -> anyhow::Result<()> {
    let dir = data_dir(args.up.data_dir.as_ref());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let store = open_store(&args.store, &dir, args.up.store_history).await?;
    let shutdown = CancellationToken::new();
    let mut config = wisp_apiserver::Config::new(dir.join("blobs"));
    config.bookmark_interval = Duration::from_millis(args.up.bookmark_ms.max(1));
    let api = wisp_apiserver::ApiServer::new(store, config, shutdown.clone());
    let listener = tokio::net::TcpListener::bind(args.up.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.up.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
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
                (existing.server != url).then_some(existing.token)
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
        }
        .save(&config_path)
        .context("cannot write the CLI config")?;
    }
    #[allow(clippy::print_stdout)]
    {
        println!(
            "wisp API listening on {url} (data: {}, store: {})",
            dir.display(),
            args.store
        );
    }
    let signals = shutdown.clone();
    let wait = async move {
        signalled().await;
        tracing::info!("shutting down");
        signals.cancel();
    };
    // In-process components still go through the API (authentication, validation, CAS,
    // watch), with a token that lives only in this process, but call it without a socket.
    let internal = || -> anyhow::Result<wisp_client::Client> {
        let token = api
            .auth()
            .issue_ephemeral(wisp_apiserver::auth::Principal { namespace: None })
            .context("token for the in-process components")?;
        Ok(api.in_process_client(&url, &token))
    };
    let controllers = if args.up.controllers {
        let config = wisp_controllers::Config {
            node_grace: Duration::from_secs(args.up.node_grace_seconds.max(1)),
            autoscaler: wisp_controllers::autoscaler::AutoscalerConfig {
                stable_window: Duration::from_secs(args.up.autoscaler_stable_seconds.max(1)),
                panic_window: Duration::from_secs(args.up.autoscaler_panic_seconds.max(1)),
                ..Default::default()
            },
        };
        Some(wisp_controllers::run(internal()?, config, shutdown.clone()))
    } else {
        None
    };
    let scheduler = if args.up.scheduler {
        Some(wisp_scheduler::run(
            internal()?,
            wisp_scheduler::SchedulerConfig::default(),
            shutdown.clone(),
        ))
    } else {
        None
    };
    let node = if with_node { Some(internal()?) } else { None };
    let (served, (), (), scheduled, ran) = tokio::join!(
        wisp_apiserver::serve(api, listener, shutdown.clone()),
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
                &args.up.node,
                dir.join("node"),
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

    fn config(args: &[&str]) -> wisp_node::AgentConfig {
        let opts = Opts::try_parse_from(std::iter::once("wisp").chain(args.iter().copied()))
            .expect("arguments parse");
        agent_config(&opts.node, PathBuf::from("/nonexistent")).expect("agent config")
    }

    #[test]
    fn the_pagemap_reset_is_on_unless_turned_off() {
        assert!(config(&["--node-name", "n"]).wasm_pagemap_reset);
        assert!(config(&["--node-name", "n", "--wasm-pagemap-reset"]).wasm_pagemap_reset);
        assert!(config(&["--node-name", "n", "--wasm-pagemap-reset=true"]).wasm_pagemap_reset);
        assert!(!config(&["--node-name", "n", "--wasm-pagemap-reset=false"]).wasm_pagemap_reset);
        assert!(!config(&["--node-name", "n", "--wasm-pagemap-reset", "false"]).wasm_pagemap_reset);
        assert!(!config(&["--node-name", "n", "--wasm-pagemap-reset=0"]).wasm_pagemap_reset);
        assert!(config(&["--node-name", "n", "--wasm-pagemap-reset=on"]).wasm_pagemap_reset);
    }
}
