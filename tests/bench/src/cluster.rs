//! A whole Wisp in this process for the serverless benchmarks: API server (embedded store),
//! controllers, scheduler, one node agent (Wasm, and Docker when asked) and its ingress
//! serving HTTP on a loopback port.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio_util::sync::CancellationToken;
use wisp_apiserver::testutil::TestServer;
use wisp_client::Client;

pub type Http =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

pub struct Cluster {
    pub client: Client,
    pub ingress: wisp_ingress::Ingress,
    pub ingress_url: String,
    pub wasm: wisp_sandbox_wasm::WasmSandbox,
    pub http: Http,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    server: Option<TestServer>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts everything; `docker` adds the Docker runtime to the node.
    pub async fn start(
        node: &str,
        docker: Option<wisp_sandbox_docker::DockerConfig>,
    ) -> anyhow::Result<Self> {
        let server = TestServer::start().await?;
        // The benchmark's own requests (creating Functions, watching steps) come over HTTP,
        // like a user's; the components call the API in process, as in `wisp up`
        // (`WISP_BENCH_TRANSPORT=http`: over loopback HTTP too, as before 2026-12-04).
        let client = Client::new(&server.url, &server.token);
        let over_http = std::env::var("WISP_BENCH_TRANSPORT").is_ok_and(|t| t == "http");
        let internal = if over_http {
            client.clone()
        } else {
            server.in_process_client()
        };
        // The node acts with a node credential, as in `wisp up` and `wisp node`.
        let as_node = wisp_apiserver::auth::Principal::Node {
            node: node.to_owned(),
        };
        let node_client = if over_http {
            Client::new(&server.url, &server.token_for(&as_node).await?)
        } else {
            server.in_process_client_as(as_node)?
        };
        let shutdown = CancellationToken::new();
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let ingress_url = format!("http://{}", listener.local_addr()?);
        let mut config = wisp_node::AgentConfig::new(node, dir.path());
        config.ingress_url = Some(ingress_url.clone());
        config.capacity.insert(
            "pods".into(),
            wisp_api::Quantity::from_units(100_000, wisp_api::QuantityFormat::DecimalSI),
        );
        let mut ingress_config = wisp_ingress::IngressConfig::new(node);
        ingress_config.local_readiness = Some(config.local_readiness.clone());
        // The runtimes are built here, as the binary builds them.
        let artifacts: std::sync::Arc<dyn wisp_sandbox::ArtifactSource> =
            std::sync::Arc::new(wisp_node::ApiArtifacts(node_client.clone()));
        let wasm = wisp_sandbox_wasm::WasmSandbox::new(
            wisp_sandbox_wasm::WasmConfig::new(dir.path().join("wasm")),
            Some(artifacts),
        )
        .context("wasm runtime")?;
        let mut runtimes = wisp_node::Runtimes::default();
        runtimes.insert(std::sync::Arc::new(wasm.clone()));
        if let Some(docker) = docker {
            runtimes.insert(std::sync::Arc::new(wisp_sandbox_docker::DockerSandbox::new(
                docker,
            )));
        }
        let agent = wisp_node::Agent::new(node_client.clone(), config, runtimes);
        let in_process =
            wisp_ingress::InProcess::new(wisp_api::RUNTIME_WASM, std::sync::Arc::new(wasm.clone()));
        let ingress = wisp_ingress::Ingress::new(node_client, ingress_config, Some(in_process));
        let mut tasks = tokio::task::JoinSet::new();
        let s = shutdown.clone();
        tasks.spawn(async move {
            let _ = Box::pin(agent.run(s)).await;
        });
        let (i, s) = (ingress.clone(), shutdown.clone());
        tasks.spawn(async move { i.sync(s).await });
        let (i, s) = (ingress.clone(), shutdown.clone());
        tasks.spawn(wisp_ingress::serve(i, listener, s));
        let (c, s) = (internal.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _ = wisp_scheduler::run(c, wisp_scheduler::SchedulerConfig::default(), s).await;
        });
        let (c, s) = (internal, shutdown.clone());
        tasks.spawn(wisp_controllers::run(c, wisp_controllers::Config::default(), s));
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Ok(Self {
            client,
            ingress,
            ingress_url,
            wasm,
            http,
            shutdown,
            tasks,
            server: Some(server),
            _dir: dir,
        })
    }

    /// GET `/` with `host`: (status, cold start, time to the first byte).
    pub async fn get(&self, host: &str) -> anyhow::Result<(u16, bool, Duration)> {
        let t = Instant::now();
        let req = http::Request::get(format!("{}/", self.ingress_url))
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())?;
        let resp = self.http.request(req).await?;
        let first_byte = t.elapsed();
        let code = resp.status().as_u16();
        let cold = resp.headers().contains_key(wisp_ingress::COLD_START_HEADER);
        resp.into_body().collect().await?;
        Ok((code, cold, first_byte))
    }

    /// Waits until the ingress knows `name`'s route (its Service shows in the stats).
    pub async fn wait_routed(&self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let needle = format!("\"name\":\"{name}\"");
        loop {
            let req = http::Request::get(format!("{}/.wisp/stats", self.ingress_url))
                .header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", self.client.token()),
                )
                .body(Empty::<Bytes>::new())?;
            let body = self
                .http
                .request(req)
                .await?
                .into_body()
                .collect()
                .await?
                .to_bytes();
            if String::from_utf8_lossy(&body).contains(&needle) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name}: no route in the ingress after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        drop(self.server.take());
    }
}
