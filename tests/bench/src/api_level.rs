//! API level: the real API server on a loopback port, driven through `wisp_client` the way
//! every Wisp component talks to the control plane (HTTP/1.1, JSON, bearer token).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use wisp_api::{ConfigMap, EventType};
use wisp_client::{Api, Client, ListParams};
use wisp_store::Store;

use crate::drive::{Deliveries, Worker, drive, watch_delivery};
use crate::report::Row;
use crate::scenario::{Sizes, config_map, ops_row, watch_rows};

const LEVEL: &str = "api";
const NAMESPACE: &str = "default";

/// A running API server over one store.
struct Server {
    url: String,
    token: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(store: Arc<dyn Store>, dir: &Path) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let server = wisp_apiserver::ApiServer::new(
            store,
            wisp_apiserver::Config::new(dir.join("blobs")),
            shutdown.clone(),
        );
        let token = server
            .bootstrap()
            .await
            .context("bootstrapping the API server")?
            .context("the store was not fresh: no admin token")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(wisp_apiserver::serve(server, listener, shutdown.clone()));
        Ok(Self {
            url,
            token,
            shutdown,
            task,
        })
    }

    /// A client with its own connection pool, as a separate process would have.
    fn api(&self) -> Api<ConfigMap> {
        Client::new(&self.url, &self.token).api::<ConfigMap>(Some(NAMESPACE))
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("the API server did not stop within 10 s")???;
        Ok(())
    }
}

struct Create {
    api: Api<ConfigMap>,
    prefix: String,
}

impl Worker for Create {
    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            // Opens the connection; a 404 answer is expected.
            self.api.get_opt("warmup").await?;
            Ok(())
        }
        .boxed()
    }

    fn op(&mut self, seq: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            let cm = config_map(&format!("{}{seq}", self.prefix), seq);
            self.api.create(&cm).await?;
            Ok(())
        }
        .boxed()
    }
}

struct Update {
    api: Api<ConfigMap>,
    /// The object as last returned by the server (its resourceVersion is the CAS token).
    current: ConfigMap,
}

impl Worker for Update {
    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            self.current = self.api.create(&self.current).await?;
            Ok(())
        }
        .boxed()
    }

    fn op(&mut self, seq: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            self.current.data.insert("seq".to_owned(), (seq + 1).to_string());
            self.current = self.api.replace(&self.current).await?;
            Ok(())
        }
        .boxed()
    }
}

/// Start the API server on `store`, run creates, updates and watch delivery through it.
pub async fn run(
    backend: &'static str,
    store: Arc<dyn Store>,
    dir: &Path,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Row>> {
    let server = Server::start(store, dir).await?;
    let rows = scenarios(backend, &server, sizes).await;
    let stopped = server.stop().await;
    let rows = rows?;
    stopped?;
    Ok(rows)
}

async fn scenarios(backend: &'static str, server: &Server, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &clients in &sizes.clients {
        let workers = (0..clients)
            .map(|c| Create {
                api: server.api(),
                prefix: format!("create-{clients}-{c}-"),
            })
            .collect();
        let o = drive(workers, sizes.ops, sizes.cap).await?;
        crate::progress(&format!(
            "{backend}/{LEVEL}: create x{clients}: {:.0} ops/s",
            o.rate()
        ));
        rows.push(ops_row(backend, LEVEL, "create", clients, sizes.ops, o));
    }
    for &clients in &sizes.clients {
        let workers = (0..clients)
            .map(|c| Update {
                api: server.api(),
                current: config_map(&format!("update-{clients}-{c}"), 0),
            })
            .collect();
        let o = drive(workers, sizes.ops, sizes.cap).await?;
        crate::progress(&format!(
            "{backend}/{LEVEL}: update x{clients}: {:.0} ops/s",
            o.rate()
        ));
        rows.push(ops_row(backend, LEVEL, "update (CAS)", clients, sizes.ops, o));
    }

    const PREFIX: &str = "watch-";
    let writer = server.api();
    // Watch from the revision of a marker write rather than from a list: listing every
    // ConfigMap written so far would measure the list (and, on etcd, a namespace over
    // 4 MiB fails: the etcd client's default gRPC message limit).
    let rv = writer
        .create(&config_map(&format!("{PREFIX}start"), 0))
        .await?
        .metadata
        .resource_version
        .context("create answered without a resourceVersion")?;
    let mut watchers: Vec<Deliveries> = Vec::with_capacity(sizes.watchers);
    for _ in 0..sizes.watchers {
        let stream = server
            .api()
            .watch(&ListParams::default(), Some(&rv))
            .await
            .context("opening an API watch")?;
        watchers.push(
            stream
                .map(|ev| {
                    let ev = ev?;
                    if ev.type_ != EventType::Added {
                        return Ok(None);
                    }
                    Ok(ev
                        .object
                        .metadata
                        .name
                        .strip_prefix(PREFIX)
                        .and_then(|i| i.parse().ok()))
                })
                .boxed(),
        );
    }
    let o = watch_delivery(
        watchers,
        sizes.watch_writes,
        sizes.watch_span,
        Box::new(move |i| {
            let api = writer.clone();
            async move {
                api.create(&config_map(&format!("{PREFIX}{i}"), i)).await?;
                Ok(())
            }
            .boxed()
        }),
    )
    .await?;
    crate::progress(&format!(
        "{backend}/{LEVEL}: watch delivery p99 {:?}",
        o.from_send.percentile(99.0).unwrap_or_default()
    ));
    rows.extend(watch_rows(backend, LEVEL, sizes, o));
    Ok(rows)
}
