//! Transport security against the real `wisp` binary: the API is HTTPS by default with a
//! cluster CA made on first start and written into the CLI config; a client without that CA
//! fails the handshake; plain HTTP needs `--insecure-http`; a node's traffic to the API
//! carries no token or Secret value in clear text; calls to a node (forwarding, logs,
//! statistics) are TLS to the CA that node published; the data directory is private.
#![allow(clippy::print_stderr)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use wisp_api::{Container, EnvVar, EnvVarSource, KeySelector, ObjectMeta, Pod, Resource, Secret};
use wisp_e2e::{NodeAgent, Options, Wisp, guest};

/// Every file and directory under `dir` that its group or others can read, write or enter.
fn not_private(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.mode() & 0o077 != 0 {
            found.push(format!("{} {:o}", p.display(), meta.mode() & 0o777));
        }
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&p)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_https_with_the_cluster_ca_and_plain_http_needs_a_flag() -> anyhow::Result<()> {
    let w = Wisp::start(Options {
        command: Some("up".into()),
        ..Options::default()
    })?;
    assert!(
        w.url.starts_with("https://"),
        "the API is HTTPS by default: {}",
        w.url
    );
    let ca =
        w.ca.clone()
            .context("wisp up writes the cluster CA into the CLI config")?;
    assert_eq!(
        std::fs::read_to_string(w.ca_file())?,
        ca,
        "the config's CA is the data directory's"
    );
    // The CLI works with the CA from its config.
    let (ok, out, err) = w.cli(&["get", "namespaces"])?;
    assert!(
        ok && out.contains("default"),
        "wisp get namespaces over HTTPS: {out}{err}"
    );
    assert_eq!(w.client().whoami().await?.kind, "admin");

    // A client without the CA (the public web's roots, as curl's) fails the handshake.
    let stranger = wisp_client::Client::new(&w.url, &w.token);
    let e = stranger
        .whoami()
        .await
        .expect_err("a client without the cluster CA");
    let chain = format!("{:?}", anyhow::Error::from(e));
    assert!(
        chain.contains("UnknownIssuer") || chain.contains("certificate"),
        "the handshake fails on the certificate: {chain}"
    );
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let plain = wisp_e2e::http_client();
    let req = http::Request::get(format!("http://{}/apis/wisp.dev/v1/namespaces", w.api_addr()))
        .header(http::header::AUTHORIZATION, format!("Bearer {}", w.token))
        .body(http_body_util::Empty::<Bytes>::new())?;
    let answered = tokio::time::timeout(Duration::from_secs(10), plain.request(req)).await;
    assert!(
        !matches!(answered, Ok(Ok(_))),
        "plain HTTP is not answered on the HTTPS port"
    );
    // The same with the cluster CA: answered.
    let req = http::Request::get(format!("{}/apis/wisp.dev/v1/namespaces", w.url))
        .header(http::header::AUTHORIZATION, format!("Bearer {}", w.token))
        .body(http_body_util::Empty::<Bytes>::new())?;
    assert_eq!(w.api_http().request(req).await?.status(), 200);

    // Nothing in the data directory or the config is open to other users of the machine.
    let open = not_private(&w.dir.join("data"));
    assert!(open.is_empty(), "files others can reach: {open:#?}");
    let config_mode = std::fs::metadata(w.config_path())?.mode() & 0o777;
    assert_eq!(config_mode, 0o600, "the CLI config holds the admin token");

    // --insecure-http: plain HTTP, and no CA in the config.
    let insecure = Wisp::start(Options {
        command: Some("up".into()),
        args: vec!["--insecure-http".into()],
        ..Options::default()
    })?;
    assert!(insecure.url.starts_with("http://"), "{}", insecure.url);
    assert!(insecure.ca.is_none());
    let (ok, out, err) = insecure.cli(&["get", "namespaces"])?;
    assert!(ok, "the CLI over plain HTTP: {out}{err}");
    Ok(())
}

/// Copies `from` to `to`, recording every byte in `seen`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::io::AsyncReadExt::read(&mut from, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen.lock().expect("lock").extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A forwarding proxy to `upstream`, written here: its address, and what crossed it both ways.
async fn recording_proxy(upstream: String) -> anyhow::Result<(String, Arc<Mutex<Vec<u8>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let seen = recorded.clone();
            tokio::spawn(async move {
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pipe(cr, sw, seen.clone()), pipe(sr, cw, seen));
            });
        }
    });
    Ok((addr, seen))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A node joins through a plain TCP proxy written here: its credential, the admin's token
/// and a Secret value its pod reads never cross that proxy in clear text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_and_no_secret_cross_the_node_network_in_clear_text() -> anyhow::Result<()> {
    let w = Wisp::start(Options::default())?;
    let admin = w.client();
    let (proxy, seen) = recording_proxy(w.api_addr()).await?;
    let node = NodeAgent::start_via(&w, "remote", &format!("https://{proxy}"))?;
    wisp_testkit::try_eventually("the node behind the proxy to be Ready", async || {
        let n = admin.api::<wisp_api::Node>(None).get("remote").await.ok();
        Ok(n.filter(|n| n.is_ready()).map(|_| ()))
    })
    .await?;

    let value = format!("transport-probe-{}", std::process::id());
    let mut secret = Secret::new(ObjectMeta::namespaced("default", "creds"));
    secret.string_data.insert("password".into(), value.clone());
    admin.api::<Secret>(Some("default")).create(&secret).await?;
    let digest = admin
        .put_blob(Bytes::from(std::fs::read(guest("fault")?)?))
        .await?;
    let mut pod = Pod::new(ObjectMeta::namespaced("default", "reader"));
    pod.spec.node_name = Some("remote".into());
    pod.spec.containers = vec![Container {
        name: "main".into(),
        wasm: Some(digest),
        env: vec![EnvVar {
            name: "PASSWORD".into(),
            value: None,
            value_from: Some(EnvVarSource {
                config_map_key_ref: None,
                secret_key_ref: Some(KeySelector {
                    name: "creds".into(),
                    key: "password".into(),
                    optional: None,
                }),
            }),
        }],
        ..Container::default()
    }];
    admin.api::<Pod>(Some("default")).create(&pod).await?;
    // Ready: the node read the Secret (and the component) through the proxy.
    wisp_testkit::wait_pod(&admin, "reader", 60, |p| p.is_ready()).await?;

    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.len() > 10_000,
        "the node's traffic went through the proxy: {} bytes",
        seen.len()
    );
    assert_eq!(seen.first(), Some(&0x16), "it starts with a TLS handshake record");
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, value.as_bytes());
    for (what, needle) in [
        ("the node's credential", node.token().as_bytes()),
        ("the admin token", w.token.as_bytes()),
        ("the Secret's value", value.as_bytes()),
        ("the Secret's value in base64", encoded.as_bytes()),
        ("an HTTP header", b"authorization: Bearer".as_slice()),
        ("an HTTP request line", b"HTTP/1.1".as_slice()),
    ] {
        assert!(!contains(&seen, needle), "{what} crossed the proxy in clear text");
    }
    Ok(())
}

/// Every call to a node goes over TLS to the node's port, trusting the CA that node
/// published: a request that enters one node's ingress reaches a pod on another node
/// (forwarded), the pod's logs come back through the API server (proxied), and neither the
/// node's port nor the autoscaler's statistics answer plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_nodes_and_to_a_node_are_tls_to_the_ca_it_published() -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let w = Wisp::start(Options {
        command: Some("up".into()),
        ..Options::default()
    })?;
    let admin = w.client();
    let _remote = NodeAgent::start(&w, "remote")?;
    let entry = wisp_e2e::node_ingress(&admin, "local").await?;
    wisp_e2e::node_ingress(&admin, "remote").await?;
    let node = admin.api::<wisp_api::Node>(None).get("remote").await?;
    let st = node.status.context("status")?;
    let agent_url = st.agent_url.context("agentUrl")?;
    let agent_ca = st.agent_ca.context("agentCa")?;
    anyhow::ensure!(agent_url.starts_with("https://"), "{agent_url}");

    // A pod on the remote node only, behind a Service and a Route.
    let digest = admin
        .put_blob(Bytes::from(std::fs::read(guest("fault")?)?))
        .await?;
    let mut pod = Pod::new(ObjectMeta::namespaced("default", "far"));
    pod.metadata.labels.insert("app".into(), "far".into());
    pod.spec.node_name = Some("remote".into());
    pod.spec.containers = vec![Container {
        name: "main".into(),
        wasm: Some(digest),
        ..Container::default()
    }];
    admin.api::<Pod>(Some("default")).create(&pod).await?;
    let mut svc = wisp_api::Service::new(ObjectMeta::namespaced("default", "far"));
    svc.spec.selector.insert("app".into(), "far".into());
    svc.spec.ports = vec![wisp_api::ServicePort {
        port: 80,
        ..wisp_api::ServicePort::default()
    }];
    admin
        .api::<wisp_api::Service>(Some("default"))
        .create(&svc)
        .await?;
    let mut route = wisp_api::Route::new(ObjectMeta::namespaced("default", "far"));
    route.spec.host = Some("far.default.localhost".into());
    route.spec.backends = vec![wisp_api::RouteBackend {
        service: "far".into(),
        ..wisp_api::RouteBackend::default()
    }];
    admin
        .api::<wisp_api::Route>(Some("default"))
        .create(&route)
        .await?;
    wisp_testkit::wait_pod(&admin, "far", 60, |p| p.is_ready()).await?;

    // In at the `wisp up` node's ingress, answered by the remote node's pod.
    let http = wisp_e2e::http_client();
    let get = async |path: &str| -> anyhow::Result<(u16, String)> {
        let req = http::Request::get(format!("{entry}{path}"))
            .header(http::header::HOST, "far.default.localhost")
            .body(http_body_util::Empty::new())?;
        let resp = http.request(req).await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    };
    let (code, body) = wisp_testkit::try_eventually("a request forwarded to the remote node", async || {
        Ok(get("/mark").await.ok().filter(|(c, _)| *c == 200))
    })
    .await?;
    assert_eq!(code, 200, "{body}");
    let pods_here = admin
        .api::<Pod>(Some("default"))
        .list(&wisp_client::ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.spec.node_name.as_deref() == Some("local"))
        .count();
    assert_eq!(pods_here, 0, "no pod ran on the node the request entered");

    // Its output, read through the API server from the remote node's port.
    let (ok, out, err) = w.cli(&["logs", "far"])?;
    anyhow::ensure!(ok, "wisp logs: {err}");
    assert!(out.contains("marked 1"), "the remote pod's log: {out:?}");

    // The node's port: TLS only, with a certificate of the CA the node published.
    let plain_port = wisp_client::Client::new(&agent_url.replace("https://", "http://"), &w.token)
        .raw(http::Method::GET, "/.wisp/stats", None)
        .await;
    assert!(
        plain_port.as_ref().is_err_and(|e| e.code().is_none()),
        "plain HTTP on the node's port gets no HTTP answer: {plain_port:?}"
    );
    let stats = wisp_client::Client::with_ca(&agent_url, &w.token, Some(&agent_ca))?
        .raw(http::Method::GET, "/.wisp/stats", None)
        .await?;
    assert_eq!(stats.status(), 200, "the statistics, over TLS with the node's CA");
    let stranger = wisp_tls::Ca::create_named(wisp_tls::NODE_CA)?;
    let other = wisp_client::Client::with_ca(&agent_url, &w.token, Some(stranger.cert_pem()))?
        .raw(http::Method::GET, "/.wisp/stats", None)
        .await;
    assert!(
        other.as_ref().is_err_and(|e| e.code().is_none()),
        "a client trusting another CA gets no HTTP answer: {other:?}"
    );
    Ok(())
}

/// A node joins by the cluster CA's fingerprint (`--ca-cert-hash`, as `wisp up` prints it)
/// instead of a CA file. With a wrong fingerprint it stops, naming it (and nothing the server
/// showed). An impostor that shows the real CA in its chain with a certificate of its own
/// gets no request: the node verifies against the CA it found before it sends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_by_the_cas_fingerprint_and_refuses_another() -> anyhow::Result<()> {
    let w = Wisp::start(Options::default())?;
    let admin = w.client();
    let cluster_ca = w.ca.clone().context("the cluster CA")?;
    let hash = wisp_tls::fingerprint(&cluster_ca)?;
    let _node = NodeAgent::start_by_ca_hash(&w, "pinned", &hash)?;
    wisp_testkit::try_eventually("the node joined by fingerprint to be Ready", async || {
        let n = admin.api::<wisp_api::Node>(None).get("pinned").await.ok();
        Ok(n.filter(|n| n.is_ready()).map(|_| ()))
    })
    .await?;

    let (ok, out, err) = w.cli(&["token", "create", "--node", "joiner"])?;
    anyhow::ensure!(ok, "{err}");
    let token = out.trim().to_owned();
    let join = async |server: &str, hash: &str| -> anyhow::Result<(bool, String)> {
        let tmp = tempfile::tempdir()?;
        let run = tokio::process::Command::new(wisp_e2e::wisp_bin()?)
            .args(["node", "--server", server, "--token", &token])
            .args(["--ca-cert-hash", hash, "--docker", "false"])
            .args(["--agent-listen", "127.0.0.1:0", "--ingress-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(tmp.path().join("node"))
            .env("WISP_CONFIG", tmp.path().join("no-config"))
            .env_remove("WISP_CA_FILE")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .context("wisp node did not stop")??;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };

    let wrong = format!("sha256:{}", "0".repeat(64));
    let (ok, stderr) = join(&w.url, &wrong).await?;
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(&wrong) && stderr.contains("shows no certificate with fingerprint"),
        "the error names the fingerprint: {stderr}"
    );
    assert!(
        !stderr.contains(&hash),
        "and not what the server showed (it may be an impostor): {stderr}"
    );

    // An impostor: its own certificate for 127.0.0.1, the real CA after it in the chain.
    let forger = wisp_tls::Ca::create()?;
    let mut forged = forger.issue(&["127.0.0.1".to_owned()], true)?;
    forged.cert_pem = format!(
        "{}{cluster_ca}",
        forged
            .cert_pem
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap_or_default()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let impostor = format!("https://{}", listener.local_addr()?);
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let kept = asked.clone();
    let service = tower::util::BoxCloneService::new(tower::service_fn(
        move |req: http::Request<hyper::body::Incoming>| {
            kept.lock().expect("lock").push(format!("{:?}", req.headers()));
            async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"{}"),
                )))
            }
        },
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(wisp_http::serve_tls(
        listener,
        service,
        wisp_http::ServeOptions {
            header_read_timeout: Some(Duration::from_secs(5)),
            grace: Duration::ZERO,
            event_loops: 0,
            busy_poll: Duration::ZERO,
            max_connections: 16,
            http1_only: true,
            max_connections_per_ip: 0,
        },
        wisp_tls::server_config(&forged, &[b"http/1.1"])?,
        stop.clone(),
    ));
    let (ok, stderr) = join(&impostor, &hash).await?;
    assert!(!ok, "a node joined an impostor: {stderr}");
    assert!(
        !stderr.contains("shows no certificate"),
        "the impostor's chain holds the real CA, found by its fingerprint: {stderr}"
    );
    assert!(
        asked.lock().expect("lock").is_empty(),
        "a request reached the impostor: {:?}",
        asked.lock().expect("lock")
    );
    stop.cancel();
    Ok(())
}

/// Rotation: a new key put first in the key file encrypts every Secret again at the next
/// start; the old key can then go, and every Secret still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_encryption_key_keeps_every_secret_readable() -> anyhow::Result<()> {
    let mut w = Wisp::start(Options::default())?;
    let api = |w: &Wisp| w.client().api::<Secret>(Some("default"));
    for i in 0..3 {
        let mut s = Secret::new(ObjectMeta::namespaced("default", format!("s{i}")));
        s.string_data.insert("v".into(), format!("value-{i}"));
        api(&w).create(&s).await?;
    }
    let read_all = async |w: &Wisp| -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for i in 0..3 {
            let s = api(w).get(&format!("s{i}")).await?;
            out.push(s.data.get("v").cloned().unwrap_or_default());
        }
        Ok(out)
    };
    let before = read_all(&w).await?;
    let keys = w.dir.join("data").join("encryption.keys");
    let old = std::fs::read_to_string(&keys)?;
    let new = wisp_store::encrypted::Keyring::new_line()?;
    w.kill();
    std::fs::write(&keys, format!("{new}\n{old}"))?;
    w.restart()?;
    assert_eq!(read_all(&w).await?, before, "readable with the new key first");
    // The old key removed: everything was encrypted again with the new one at the start.
    w.kill();
    std::fs::write(&keys, format!("{new}\n"))?;
    w.restart()?;
    assert_eq!(read_all(&w).await?, before, "readable with the new key alone");
    Ok(())
}

/// What one HTTPS request through the ingress saw.
struct Seen {
    /// The certificate the server presented (DER).
    cert: Vec<u8>,
    alpn: Option<Vec<u8>>,
    status: u16,
    body: String,
}

/// A GET of `https://<sni>/` at `addr`, verifying the server's certificate for `sni` against
/// `roots` (PEM), offering ALPN `alpn`.
async fn https_get(addr: &str, sni: &str, roots: &str, alpn: &[u8]) -> anyhow::Result<Seen> {
    let mut config = wisp_tls::client_config(Some(roots))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = wisp_tls::rustls::pki_types::ServerName::try_from(sni.to_owned())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("the TLS handshake for {sni}"))?;
    let (_, conn) = tls.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .context("no certificate")?;
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let io = hyper_util::rt::TokioIo::new(tls);
    let req = http::Request::get(format!("https://{sni}/"))
        .header(http::header::HOST, sni)
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().remove(http::header::HOST);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    };
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    Ok(Seen {
        cert,
        alpn,
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn tls_secret(name: &str, pair: &wisp_tls::CertifiedKey) -> Secret {
    let mut s = Secret::new(ObjectMeta::namespaced("default", name));
    s.type_ = wisp_api::SECRET_TYPE_TLS.into();
    s.string_data.insert("tls.crt".into(), pair.cert_pem.clone());
    s.string_data.insert("tls.key".into(), pair.key_pem.clone());
    s
}

fn first_der(pem: &str) -> Vec<u8> {
    wisp_tls::certs(pem, "certificate").expect("PEM")[0]
        .as_ref()
        .to_vec()
}

/// Two HTTPS hosts with two certificates — one the namespace's own, one issued by the
/// cluster CA — each picked by SNI and verified for its name; HTTP/2 by ALPN; an unknown name
/// fails the handshake; a changed Secret is served within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_routes_pick_their_certificate_by_sni_and_follow_the_secret() -> anyhow::Result<()> {
    let tls_port = wisp_store::testutil::free_port()?;
    let w = Wisp::start(Options {
        command: Some("up".into()),
        args: vec!["--ingress-tls-listen".into(), format!("127.0.0.1:{tls_port}")],
        ..Options::default()
    })?;
    let addr = format!("127.0.0.1:{tls_port}");
    let admin = w.client();
    let manifest = wisp_e2e::examples_dir().join("hello/hello.yaml");
    let (ok, out, err) = w.cli(&["apply", "-f", &manifest.display().to_string()])?;
    anyhow::ensure!(ok, "apply failed: {out}{err}");

    // Host a: the namespace's own certificate, from a CA of its own.
    let own_ca = wisp_tls::Ca::create()?;
    let a_host = "a.default.localhost";
    let a_cert = own_ca.issue(&[a_host.to_owned()], true)?;
    admin
        .api::<Secret>(Some("default"))
        .create(&tls_secret("a-cert", &a_cert))
        .await?;
    let route = |name: &str, host: &str, tls: wisp_api::RouteTls| {
        let mut r = wisp_api::Route::new(ObjectMeta::namespaced("default", name));
        r.spec.host = Some(host.into());
        r.spec.backends = vec![wisp_api::RouteBackend {
            service: "hello".into(),
            ..wisp_api::RouteBackend::default()
        }];
        r.spec.tls = Some(tls);
        r
    };
    let routes = admin.api::<wisp_api::Route>(Some("default"));
    routes
        .create(&route(
            "a",
            a_host,
            wisp_api::RouteTls {
                secret_name: "a-cert".into(),
                issuer: None,
            },
        ))
        .await?;
    // Host b: a certificate the cluster CA issues.
    let b_host = "b.default.localhost";
    routes
        .create(&route(
            "b",
            b_host,
            wisp_api::RouteTls {
                secret_name: "b-cert".into(),
                issuer: Some(wisp_api::ISSUER_CLUSTER.into()),
            },
        ))
        .await?;
    // Route certificates come from the routes CA, never the CA clients trust for the API.
    let cluster_ca = std::fs::read_to_string(w.dir.join("data/pki/routes/ca.crt"))?;
    assert_ne!(Some(&cluster_ca), w.ca.as_ref());
    let roots = format!("{}{cluster_ca}", own_ca.cert_pem());

    let a = wisp_testkit::try_eventually("host a served over HTTPS", async || {
        Ok(https_get(&addr, a_host, own_ca.cert_pem(), b"http/1.1")
            .await
            .ok()
            .filter(|s| s.status == 200))
    })
    .await?;
    assert_eq!(a.body, "Hello from Wisp");
    assert_eq!(
        a.cert,
        first_der(&a_cert.cert_pem),
        "host a gets its own certificate"
    );
    // Host b verifies against the cluster CA only (the client trusts nothing else).
    let b = wisp_testkit::try_eventually("host b served with the cluster's certificate", async || {
        Ok(https_get(&addr, b_host, &cluster_ca, b"h2")
            .await
            .ok()
            .filter(|s| s.status == 200))
    })
    .await?;
    assert_eq!(b.alpn.as_deref(), Some(&b"h2"[..]), "HTTP/2 by ALPN");
    assert_eq!(b.body, "Hello from Wisp");
    assert_ne!(b.cert, a.cert);
    let issued = admin.api::<Secret>(Some("default")).get("b-cert").await?;
    assert_eq!(issued.type_, wisp_api::SECRET_TYPE_TLS);
    // Host a's certificate does not verify as host b's, nor does the cluster's as host a's.
    assert!(https_get(&addr, a_host, &cluster_ca, b"http/1.1").await.is_err());
    let api_ca = w.ca.clone().context("the API's CA")?;
    assert!(
        https_get(&addr, b_host, &api_ca, b"http/1.1").await.is_err(),
        "a Route's certificate never chains to the CA clients trust for the API"
    );
    assert!(
        https_get(&addr, b_host, own_ca.cert_pem(), b"http/1.1")
            .await
            .is_err()
    );
    // A name no Route serves over HTTPS: the handshake fails.
    let unknown = https_get(&addr, "c.default.localhost", &roots, b"http/1.1").await;
    assert!(unknown.is_err(), "an unknown SNI gets no certificate");

    // A new certificate in host a's Secret is served within 5 s.
    let renewed = own_ca.issue(&[a_host.to_owned()], true)?;
    let changed = std::time::Instant::now();
    wisp_testkit::update(&admin.api::<Secret>(Some("default")), "a-cert", |s| {
        s.data.clear();
        s.string_data = tls_secret("a-cert", &renewed).string_data;
    })
    .await?;
    let want = first_der(&renewed.cert_pem);
    loop {
        let seen = https_get(&addr, a_host, own_ca.cert_pem(), b"http/1.1").await?;
        if seen.cert == want {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "the renewed certificate was not served within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "renewed certificate served {:?} after the Secret changed",
        changed.elapsed()
    );
    Ok(())
}
