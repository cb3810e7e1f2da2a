//! `wisp-bench https`: warm throughput through a node's HTTPS listener beside its HTTP one, in
//! the same run on the same `wisp up`: the hello component behind one Route, its certificate
//! issued by the cluster CA (`tls.issuer: cluster`), `--connections` keep-alive connections
//! each sending GETs back to back for `--seconds`, HTTP and HTTPS alternating round by round.
//! The client is the same for both (hyper's HTTP/1.1; rustls with ring for HTTPS), in this
//! process on the same machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wisp_api::{Deployment, ObjectMeta, Resource, Route, RouteBackend, RouteTls, Service, ServicePort};
use wisp_client::Client;

use crate::fanout::Up;

/// The options of a bench that alternates two setups on one binary (`https`, `forward`).
#[derive(clap::Args, Debug)]
pub struct AlternatingArgs {
    /// The `wisp` binary to measure (a release build).
    #[arg(long, env = "WISP_BIN")]
    pub(crate) wisp: PathBuf,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 16)]
    pub(crate) connections: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// Rounds (each of the two setups measured once per round).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
}

pub(crate) const HOST: &str = "bench.default.localhost";

/// One connection's request loop until `until`; counts answers in `done`.
async fn drive<S>(io: S, until: Instant, done: Arc<AtomicU64>) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    let conn = tokio::spawn(conn);
    while Instant::now() < until {
        let req = http::Request::get("/")
            .header(http::header::HOST, HOST)
            .body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        if resp.status() != 200 {
            bail!("answered {}", resp.status());
        }
        resp.into_body().collect().await?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    drop(send);
    conn.abort();
    Ok(())
}

/// Requests per second over `connections` connections to `addr` for `secs` (TLS with `tls`).
pub(crate) async fn measure(
    addr: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
    connections: usize,
    secs: u64,
) -> anyhow::Result<f64> {
    let mut streams = Vec::new();
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        streams.push(match tls {
            Some(c) => {
                let name = wisp_tls::rustls::pki_types::ServerName::try_from(HOST)?;
                Either::Tls(Box::new(c.connect(name, tcp).await?))
            }
            None => Either::Plain(tcp),
        });
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for s in streams {
        let done = done.clone();
        tasks.spawn(async move {
            match s {
                Either::Plain(s) => drive(s, until, done).await,
                Either::Tls(s) => drive(*s, until, done).await,
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = done.load(Ordering::Relaxed) as f64;
    Ok(n / started.elapsed().as_secs_f64())
}

enum Either {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// Waits until `a` and `b` both answer (60 s at most), then measures each `rounds` times
/// with `connections` for `secs`, alternating which goes first round by round: their
/// requests per second, round by round. `a` and `b` take (connections, seconds).
pub(crate) async fn alternate(
    what: &str,
    rounds: usize,
    connections: usize,
    secs: u64,
    a: impl AsyncFn(usize, u64) -> anyhow::Result<f64>,
    b: impl AsyncFn(usize, u64) -> anyhow::Result<f64>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let ready = Instant::now();
    loop {
        let (x, y) = (a(1, 1).await, b(1, 1).await);
        if x.is_ok() && y.is_ok() {
            break;
        }
        if ready.elapsed() > Duration::from_secs(60) {
            bail!("not answering within 60 s: {x:?}, {y:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        crate::progress(&format!("{what}, round {}", round + 1));
        let b_first = round % 2 == 1;
        for second in [b_first, !b_first] {
            if second {
                ys.push(b(connections, secs).await?);
            } else {
                xs.push(a(connections, secs).await?);
            }
        }
    }
    Ok((xs, ys))
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The pods labelled `app: hello` behind a Service and a Route for [`HOST`] (with `tls`).
pub(crate) async fn expose_hello(client: &Client, tls: Option<RouteTls>) -> anyhow::Result<()> {
    let mut svc = Service::new(ObjectMeta::namespaced("default", "hello"));
    svc.spec.selector = [("app".to_owned(), "hello".to_owned())].into();
    svc.spec.ports = vec![ServicePort {
        port: 80,
        ..ServicePort::default()
    }];
    client.api::<Service>(Some("default")).create(&svc).await?;
    let mut route = Route::new(ObjectMeta::namespaced("default", "bench"));
    route.spec.host = Some(HOST.into());
    route.spec.backends = vec![RouteBackend {
        service: "hello".into(),
        ..RouteBackend::default()
    }];
    route.spec.tls = tls;
    client.api::<Route>(Some("default")).create(&route).await?;
    Ok(())
}

pub async fn run(args: &AlternatingArgs) -> anyhow::Result<String> {
    let tls_port = wisp_store::testutil::free_port()?;
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let up = Up::start_with(&args.wisp, &tls_addr)?;
    let client = Client::with_ca(&up.url, &up.token, up.ca.as_deref())?;
    // Route certificates come from the routes CA (not the API's).
    let ca = std::fs::read_to_string(up.data_dir().join("pki/routes/ca.crt"))
        .context("the routes CA (the bench needs TLS on)")?;
    // The hello component: a Deployment of one, its Service, and an HTTPS Route.
    let digest = client
        .put_blob(Bytes::from(std::fs::read(
            wisp_testkit::guests::path("hello").map_err(anyhow::Error::msg)?,
        )?))
        .await?;
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "wisp.dev/v1", "kind": "Deployment",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "hello"}},
                 "template": {"metadata": {"labels": {"app": "hello"}},
                              "spec": {"containers": [{"name": "hello", "wasm": digest}]}}}
    }))?;
    client.api::<Deployment>(Some("default")).create(&d).await?;
    expose_hello(
        &client,
        Some(RouteTls {
            secret_name: "bench-cert".into(),
            issuer: Some(wisp_api::ISSUER_CLUSTER.into()),
        }),
    )
    .await?;
    let node = client
        .api::<wisp_api::Node>(None)
        .get("bench")
        .await
        .context("the node")?;
    let ingress = node
        .status
        .and_then(|s| s.ingress_url)
        .context("the node's ingress")?;
    let http_addr = ingress.trim_start_matches("http://").to_owned();
    let mut tls_config = wisp_tls::client_config(Some(&ca))?;
    tls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config));
    let (plain, secure) = alternate(
        "https vs http",
        args.rounds,
        args.connections,
        args.seconds,
        async |c, s| measure(&http_addr, None, c, s).await,
        async |c, s| measure(&tls_addr, Some(&connector), c, s).await,
    )
    .await?;
    let (p, s) = (median(plain.clone()), median(secure.clone()));
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    Ok(format!(
        "warm throughput through one `wisp up` node, hello component, {} keep-alive connections, \
         {} s per measurement, {} rounds alternating (median):\n\n\
         | listener | req/s (median) | rounds | HTTPS ÷ HTTP |\n| --- | ---: | --- | ---: |\n\
         | HTTP (`--ingress-listen`) | {p:.0} | {} | |\n\
         | HTTPS (`--ingress-tls-listen`, TLS 1.3, ECDSA P-256, cluster-issued) | {s:.0} | {} | {:.0} % |\n",
        args.connections,
        args.seconds,
        args.rounds,
        fmt(&plain),
        fmt(&secure),
        s / p * 100.0
    ))
}
