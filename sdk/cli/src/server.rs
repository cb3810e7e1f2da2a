//! `wisp up` and `wisp server`: open the store, start the API server, write the CLI config
//! on first start, serve until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use wisp_store::{EmbeddedOptions, EmbeddedStore, Store};

use crate::cli::{ServerArgs, UpArgs};

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
    Box::pin(self::server(server)).await
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

pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
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
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        signals.cancel();
    };
    // In-process components still go through the API (validation, CAS, watch), with a
    // token that lives only in this process.
    let controllers = if args.up.controllers {
        let token = api
            .auth()
            .issue_ephemeral(wisp_apiserver::auth::Principal { namespace: None })
            .context("token for the controllers")?;
        Some(wisp_controllers::run(
            wisp_client::Client::new(&url, &token),
            shutdown.clone(),
        ))
    } else {
        None
    };
    let (served, (), ()) = tokio::join!(
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
        }
    );
    served.context("API server")?;
    Ok(())
}
