//! Tenancy under attack, against the real `wisp up`: two tenants with their own namespace
//! tokens, team-a running a Function (the victim), team-b trying every way out of its
//! namespace that a hostile tenant tried on 2026-12-06 (issue "Tenancy that holds"). Each
//! attempt is refused with the right status code or contained, a loopback HTTP server holding
//! a secret never sees the secret come back, and the victim's Function answers 200 throughout.

#![allow(clippy::print_stderr)] // the tests report the figures they measure

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};
use tokio_util::sync::CancellationToken;
use wisp_api::{
    ConfigMap, Container, EndpointAddress, EndpointSubset, Endpoints, Function, Namespace, Node, ObjectMeta,
    Pod, PodStatus, Quantity, Resource, ResourceQuota, Route, RouteBackend, Service, ServicePort,
};
use wisp_client::{Client, ClientError, ListParams};
use wisp_e2e::{Http, Options, Wisp, until};

/// A loopback HTTP server answering every request with a secret; it counts connections.
struct Secret {
    addr: std::net::SocketAddr,
    text: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

async fn secret_server() -> anyhow::Result<Secret> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let text = format!("TOP-SECRET-{}", addr.port());
    let hits = Arc::new(AtomicUsize::new(0));
    let (body, counter) = (text.clone(), hits.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(Secret {
        addr,
        text,
        hits,
        task,
    })
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(e) => e.code().unwrap_or(0),
    }
}

fn message<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Ok(v) => format!("unexpectedly accepted: {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// A namespace and a token confined to it.
async fn tenant(w: &Wisp, admin: &Client, ns: &str) -> anyhow::Result<Client> {
    admin
        .api::<Namespace>(None)
        .create(&Namespace::new(ObjectMeta::named(ns)))
        .await?;
    Ok(w.client_as(&admin.create_token(ns).await?))
}

async fn ingress_of(admin: &Client) -> anyhow::Result<String> {
    let mut url = None;
    until("the node's ingress", 30, async || {
        url = admin
            .api::<Node>(None)
            .get_opt("local")
            .await?
            .and_then(|n| n.status)
            .and_then(|s| s.ingress_url);
        Ok(url.is_some())
    })
    .await?;
    url.context("ingressUrl")
}

/// `wisp up` with `args`: the server, an admin client, the node's ingress and an HTTP client.
async fn cluster(args: &[&str]) -> anyhow::Result<(Wisp, Client, String, Http)> {
    let w = Wisp::start(Options {
        command: Some("up".into()),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Options::default()
    })?;
    let admin = w.client();
    let ingress = ingress_of(&admin).await?;
    Ok((w, admin, ingress, wisp_e2e::http_client()))
}

/// A request through the ingress: (status, body).
async fn get(
    http: &Http,
    ingress: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut req = http::Request::get(format!("{ingress}{path}")).header(http::header::HOST, host);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = http.request(req.body(Empty::<Bytes>::new())?).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn wasm_container(digest: &str, outbound: &[String]) -> Container {
    Container {
        name: "fn".into(),
        wasm: Some(digest.into()),
        allowed_outbound_hosts: outbound.to_vec(),
        ..Container::default()
    }
}

/// A Function of one Wasm container that stays up (minScale 1).
fn function(ns: &str, name: &str, container: Container) -> Function {
    let mut f = Function::new(ObjectMeta::namespaced(ns, name));
    f.spec.template.spec.containers = vec![container];
    f.spec.scaling.min_scale = 1;
    f
}

async fn answering(http: &Http, ingress: &str, host: &str) -> anyhow::Result<()> {
    until(&format!("{host} answering"), 60, async || {
        Ok(get(http, ingress, host, "/", None)
            .await
            .is_ok_and(|(c, _)| c == 200))
    })
    .await
    .map(|_| ())
}

/// Requests the victim's Function every 20 ms until stopped: (requests, failures).
fn prober(
    http: Http,
    ingress: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let (mut n, mut failures) = (0, Vec::new());
        while !stop.is_cancelled() {
            n += 1;
            match get(&http, &ingress, "hello.team-a.localhost", "/", None).await {
                Ok((200, _)) => {}
                Ok((c, body)) => failures.push(format!("{c}: {body}")),
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (n, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_is_refused_or_contained_and_the_victim_keeps_answering() -> anyhow::Result<()> {
    let (w, admin, ingress, http) = cluster(&[]).await?;
    let secret = secret_server().await?;
    let ta = tenant(&w, &admin, "team-a").await?;
    let tb = tenant(&w, &admin, "team-b").await?;
    let anonymous = w.client_as("");

    // The victim: team-a's own build of hello (a digest of its own).
    let hello = std::fs::read(wisp_e2e::guest("hello")?)?;
    let digest_a = ta
        .put_blob(Bytes::from(wisp_e2e::variant(&hello, "team-a")))
        .await?;
    ta.api::<Function>(Some("team-a"))
        .create(&function("team-a", "hello", wasm_container(&digest_a, &[])))
        .await?;
    answering(&http, &ingress, "hello.team-a.localhost").await?;
    let stop = CancellationToken::new();
    let probe = prober(http.clone(), ingress.clone(), stop.clone());

    // The attacker's own components.
    let fault = std::fs::read(wisp_e2e::guest("fault")?)?;
    let digest_b = tb.put_blob(Bytes::from(fault.clone())).await?;
    let b_hello = tb.put_blob(Bytes::from(hello.clone())).await?;

    // --- Open proxy through Endpoints: the attacker cannot write them at all.
    let api_addr = w.api_addr();
    let mut svc = Service::new(ObjectMeta::namespaced("team-b", "proxy"));
    svc.spec.ports = vec![ServicePort {
        port: 80,
        ..ServicePort::default()
    }];
    tb.api::<Service>(Some("team-b")).create(&svc).await?;
    for (ip, port) in [
        (secret.addr.ip().to_string(), secret.addr.port()),
        (
            "127.0.0.1".to_owned(),
            api_addr.rsplit(':').next().unwrap_or("7700").parse()?,
        ),
    ] {
        let mut ep = Endpoints::new(ObjectMeta::namespaced("team-b", "proxy"));
        ep.subsets = vec![EndpointSubset {
            addresses: vec![EndpointAddress {
                ip,
                port: Some(port),
                ..EndpointAddress::default()
            }],
            ..EndpointSubset::default()
        }];
        let r = tb.api::<Endpoints>(Some("team-b")).create(&ep).await;
        let msg = message(tb.api::<Endpoints>(Some("team-b")).create(&ep).await);
        assert_eq!(code(r), 403, "Endpoints written by a tenant: {msg}");
        for part in ["create", "endpoints", "team-b"] {
            assert!(msg.contains(part), "the refusal names {part}: {msg}");
        }
    }
    let mut route = Route::new(ObjectMeta::namespaced("team-b", "proxy"));
    route.spec.host = Some("proxy.team-b.localhost".into());
    route.spec.timeout_seconds = Some(2);
    route.spec.backends = vec![RouteBackend {
        service: "proxy".into(),
        port: None,
        weight: 100,
    }];
    tb.api::<Route>(Some("team-b")).create(&route).await?;

    // --- Open proxy through a forged pod status.
    let mut pod = Pod::new(ObjectMeta::namespaced("team-b", "forger"));
    pod.metadata.labels.insert("app".into(), "forger".into());
    pod.spec.containers = vec![wasm_container(&b_hello, &[])];
    let pod = tb.api::<Pod>(Some("team-b")).create(&pod).await?;
    let mut forged = pod.clone();
    forged.status = Some(PodStatus {
        phase: wisp_api::PodPhase::Running,
        pod_ip: Some(secret.addr.ip().to_string()),
        host_port: Some(secret.addr.port()),
        conditions: vec![wisp_api::Condition::new("Ready", true, "Forged", "")],
        ..PodStatus::default()
    });
    let r = tb.api::<Pod>(Some("team-b")).replace_status(&forged).await;
    assert_eq!(code(r), 403, "a tenant writes its own pod's status");
    // Or any other pod's.
    let victims = ta
        .api::<Pod>(Some("team-a"))
        .list(&ListParams::default())
        .await?
        .items;
    let mut victim_pod = victims.first().context("the victim's pod")?.clone();
    victim_pod.metadata.namespace = Some("team-a".into());
    let r = tb.api::<Pod>(Some("team-a")).replace_status(&victim_pod).await;
    assert_eq!(code(r), 403, "another namespace's pod status");
    svc.metadata.name = "forger".into();
    svc.spec.selector.insert("app".into(), "forger".into());
    tb.api::<Service>(Some("team-b")).create(&svc).await?;
    route.metadata.name = "forger".into();
    route.spec.host = Some("forger.team-b.localhost".into());
    route.spec.backends[0].service = "forger".into();
    tb.api::<Route>(Some("team-b")).create(&route).await?;
    // What the ingress gives back for both: never the secret.
    for host in ["proxy.team-b.localhost", "forger.team-b.localhost"] {
        let (c, body) = get(&http, &ingress, host, "/", None).await?;
        assert!(!body.contains(&secret.text), "{host} leaked the secret ({c})");
        eprintln!("{host}: {c} {}", body.trim());
    }

    // --- Host hijack: another namespace's host, even with a longer path prefix.
    let mut hijack = Route::new(ObjectMeta::namespaced("team-b", "hijack"));
    hijack.spec.host = Some("hello.team-a.localhost".into());
    hijack.spec.path_prefix = "/api".into();
    hijack.spec.backends = route.spec.backends.clone();
    let r = tb.api::<Route>(Some("team-b")).create(&hijack).await;
    let msg = message(tb.api::<Route>(Some("team-b")).create(&hijack).await);
    assert_eq!(code(r), 403, "{msg}");
    assert!(
        msg.contains("team-b.localhost"),
        "says which hosts it may claim: {msg}"
    );
    for host in ["*.team-a.localhost", "*.localhost", "localhost"] {
        hijack.spec.host = Some(host.into());
        assert_eq!(
            code(tb.api::<Route>(Some("team-b")).create(&hijack).await),
            403,
            "{host}"
        );
    }
    // Through a Function's route too.
    let mut f = function("team-b", "hijack", wasm_container(&b_hello, &[]));
    f.spec.route = Some(wisp_api::FunctionRoute {
        host: Some("hello.team-a.localhost".into()),
        path_prefix: "/api".into(),
    });
    assert_eq!(code(tb.api::<Function>(Some("team-b")).create(&f).await), 403);
    // A Route without a host would catch every unrouted host.
    hijack.spec.host = None;
    let r = tb.api::<Route>(Some("team-b")).create(&hijack).await;
    assert_eq!(code(r), 422, "host-less Route");
    assert_eq!(
        get(&http, &ingress, "hello.team-a.localhost", "/api/x", None)
            .await?
            .0,
        200,
        "the victim still owns its host under every prefix"
    );

    // --- Node files as components.
    // (An oci:// reference is a component the node pulls, under its egress policy:
    // tests/e2e/tests/oci.rs.)
    for path in ["/etc/passwd", "/dev/zero", "./hello.wasm", "file:///etc/passwd"] {
        let mut p = Pod::new(ObjectMeta::namespaced("team-b", "files"));
        p.spec.containers = vec![wasm_container(path, &[])];
        let r = tb.api::<Pod>(Some("team-b")).create(&p).await;
        let msg = message(tb.api::<Pod>(Some("team-b")).create(&p).await);
        assert_eq!(code(r), 422, "wasm: {path}: {msg}");
        assert!(msg.contains("spec.containers[0].wasm"), "names the field: {msg}");
        let f = function("team-b", "files", wasm_container(path, &[]));
        assert_eq!(
            code(tb.api::<Function>(Some("team-b")).create(&f).await),
            422,
            "{path}"
        );
    }
    // Another namespace's component by its digest.
    let mut p = Pod::new(ObjectMeta::namespaced("team-b", "borrowed"));
    p.spec.containers = vec![wasm_container(&digest_a, &[])];
    assert_eq!(code(tb.api::<Pod>(Some("team-b")).create(&p).await), 422);
    // ... and reading it.
    for method in [Method::GET, Method::HEAD] {
        let r = tb.raw(method.clone(), &format!("/blobs/{digest_a}"), None).await;
        assert_eq!(code(r), 403, "{method} another namespace's blob");
    }
    assert_eq!(
        code(
            anonymous
                .raw(Method::GET, &format!("/blobs/{digest_a}"), None)
                .await
        ),
        401
    );
    assert_eq!(code(ta.get_blob(&digest_a).await), 200, "the owner reads its own");

    // --- Scheduler bypass: a node of its choosing and a request no node can hold.
    let mut greedy = Pod::new(ObjectMeta::namespaced("team-b", "greedy"));
    greedy.spec.containers = vec![wasm_container(&b_hello, &[])];
    greedy.spec.containers[0]
        .resources
        .requests
        .insert("cpu".into(), Quantity::parse("1000")?);
    greedy.spec.node_name = Some("local".into());
    let msg = message(tb.api::<Pod>(Some("team-b")).create(&greedy).await);
    assert!(msg.contains("nodeName"), "{msg}");
    assert_eq!(code(tb.api::<Pod>(Some("team-b")).create(&greedy).await), 403);
    greedy.spec.node_name = None;
    tb.api::<Pod>(Some("team-b")).create(&greedy).await?;
    until("the greedy pod marked unschedulable", 20, async || {
        let p = tb.api::<Pod>(Some("team-b")).get("greedy").await?;
        Ok(p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
        }))
    })
    .await?;
    let p = tb.api::<Pod>(Some("team-b")).get("greedy").await?;
    assert!(
        p.spec.node_name.is_none() && p.phase() == wisp_api::PodPhase::Pending,
        "{p:?}"
    );
    // Its template cannot carry a node either.
    let mut f = function("team-b", "pinned", wasm_container(&b_hello, &[]));
    f.spec.template.spec.node_name = Some("local".into());
    assert_eq!(code(tb.api::<Function>(Some("team-b")).create(&f).await), 403);

    // --- Statistics of every namespace: not for anonymous clients or tenants.
    for path in ["/.wisp/stats", "/.wisp/metrics"] {
        assert_eq!(
            get(&http, &ingress, "x", path, None).await?.0,
            401,
            "{path} anonymously"
        );
        let tb_token = tb.token().to_owned();
        assert_eq!(
            get(&http, &ingress, "x", path, Some(&tb_token)).await?.0,
            403,
            "{path} as a tenant"
        );
        let (c, body) = get(&http, &ingress, "x", path, Some(&w.token)).await?;
        assert_eq!(c, 200, "{path} as the admin");
        assert!(body.contains("hello"), "{path}: {body}");
    }
    assert_eq!(code(anonymous.raw(Method::GET, "/metrics", None).await), 401);

    // --- Guest egress: loopback (the secret, the API server) and the metadata address,
    // listed by the guest itself.
    let outbound = vec![
        secret.addr.to_string(),
        format!("localhost:{}", secret.addr.port()),
        api_addr.clone(),
        "169.254.169.254".to_owned(),
        // Its own Service (the Function's first revision).
        "egress-00001.team-b.svc".to_owned(),
    ];
    let mut egress = function("team-b", "egress", wasm_container(&digest_b, &outbound));
    egress.spec.template.spec.containers[0].timeout_ms = Some(10_000);
    tb.api::<Function>(Some("team-b")).create(&egress).await?;
    answering(&http, &ingress, "egress.team-b.localhost").await?;
    // What the guest got fetching `url`.
    let fetch = async |url: &str| {
        get(
            &http,
            &ingress,
            "egress.team-b.localhost",
            &format!("/fetch?url={url}"),
            None,
        )
        .await
    };
    for url in [
        format!("http://{}/", secret.addr),
        format!("http://localhost:{}/", secret.addr.port()),
        format!("http://{api_addr}/apis/wisp.dev/v1/namespaces"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let (c, body) = fetch(&url).await?;
        assert_eq!(c, 502, "{url}: {body}");
        assert!(!body.contains(&secret.text), "{url}: {body}");
        // Refused by the node's policy, not merely unanswered (there is no metadata server
        // here to answer 169.254.169.254 anyway).
        assert!(body.contains("DestinationIpProhibited"), "{url}: {body}");
    }
    // The victim's Service by its name, or behind user information in the URI of the
    // attacker's own Service (whose Host header would then name the victim's).
    for (url, why) in [
        ("http://hello-00001.team-a.svc/", "HttpRequestDenied"),
        (
            "http://hello-00001.team-a.svc:x@egress-00001.team-b.svc/",
            "HttpRequestUriInvalid",
        ),
    ] {
        let (c, body) = fetch(url).await?;
        assert_eq!(c, 502, "{url}: {body}");
        assert!(body.contains(why), "{url}: {body}");
    }
    // Its own Service it does reach (the same guest answers there).
    let own = "http://egress-00001.team-b.svc/";
    let (c, body) = fetch(own).await?;
    assert_eq!((c, body.as_str()), (200, "upstream 200: fault ok"), "{own}");

    // --- Quotas: past the limit, a 403 naming the quota and what is used.
    let mut quota = ResourceQuota::new(ObjectMeta::namespaced("team-b", "small"));
    quota
        .spec
        .hard
        .insert("count/configmaps".into(), Quantity::parse("2")?);
    quota
        .spec
        .hard
        .insert("functions.maxScale".into(), Quantity::parse("20")?);
    assert_eq!(
        code(tb.api::<ResourceQuota>(Some("team-b")).create(&quota).await),
        403,
        "a tenant sets no quota"
    );
    admin.api::<ResourceQuota>(Some("team-b")).create(&quota).await?;
    for i in 0..2 {
        tb.api::<ConfigMap>(Some("team-b"))
            .create(&ConfigMap::new(ObjectMeta::namespaced(
                "team-b",
                format!("cm-{i}"),
            )))
            .await?;
    }
    let third = tb
        .api::<ConfigMap>(Some("team-b"))
        .create(&ConfigMap::new(ObjectMeta::namespaced("team-b", "cm-2")))
        .await;
    let msg = message(
        tb.api::<ConfigMap>(Some("team-b"))
            .create(&ConfigMap::new(ObjectMeta::namespaced("team-b", "cm-2")))
            .await,
    );
    assert_eq!(code(third), 403, "{msg}");
    for part in [
        "\"small\"",
        "count/configmaps",
        "used count/configmaps=2",
        "limited count/configmaps=2",
    ] {
        assert!(msg.contains(part), "{part} in {msg}");
    }
    let mut big = function("team-b", "big", wasm_container(&b_hello, &[]));
    big.spec.scaling.max_scale = 15;
    let msg = message(tb.api::<Function>(Some("team-b")).create(&big).await);
    assert!(msg.contains("functions.maxScale"), "egress (10) + 15 > 20: {msg}");

    // The victim answered throughout.
    stop.cancel();
    let (n, failures) = probe.await?;
    eprintln!("victim probed {n} times during the attacks");
    assert!(n > 20, "the prober ran");
    assert!(
        failures.is_empty(),
        "the victim failed {} of {n}: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        secret.hits.load(Ordering::SeqCst),
        0,
        "nothing ever connected to the secret server"
    );
    secret.task.abort();
    Ok(())
}

/// A Namespace's deletion: its objects are gone within 10 s (its Function stops answering),
/// and its tokens stop working — also on a namespace re-created with the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_takes_its_objects_and_tokens_with_it() -> anyhow::Result<()> {
    let (w, admin, ingress, http) = cluster(&[]).await?;
    let tc = tenant(&w, &admin, "team-c").await?;
    let hello = std::fs::read(wisp_e2e::guest("hello")?)?;
    let digest = tc.put_blob(Bytes::from(hello)).await?;
    tc.api::<Function>(Some("team-c"))
        .create(&function("team-c", "hello", wasm_container(&digest, &[])))
        .await?;
    tc.api::<ConfigMap>(Some("team-c"))
        .create(&ConfigMap::new(ObjectMeta::namespaced("team-c", "settings")))
        .await?;
    answering(&http, &ingress, "hello.team-c.localhost").await?;
    assert_eq!(
        code(tc.api::<Namespace>(None).delete("team-c").await),
        403,
        "a tenant does not delete its namespace"
    );
    assert_eq!(
        code(admin.api::<Namespace>(None).delete("default").await),
        403,
        "nor anyone the default one"
    );

    let started = Instant::now();
    let terminating = admin.api::<Namespace>(None).delete("team-c").await?;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    // At once: nothing new in it, and its tokens stop working.
    assert_eq!(
        code(
            admin
                .api::<ConfigMap>(Some("team-c"))
                .create(&ConfigMap::new(ObjectMeta::namespaced("team-c", "late")))
                .await
        ),
        403,
        "created in a Terminating namespace"
    );
    assert_eq!(
        code(
            tc.api::<ConfigMap>(Some("team-c"))
                .list(&ListParams::default())
                .await
        ),
        401
    );
    until("the namespace and everything in it gone", 10, async || {
        let pods = admin
            .api::<Pod>(Some("team-c"))
            .list(&ListParams::default())
            .await?;
        let cms = admin
            .api::<ConfigMap>(Some("team-c"))
            .list(&ListParams::default())
            .await?;
        Ok(admin.api::<Namespace>(None).get_opt("team-c").await?.is_none()
            && pods.items.is_empty()
            && cms.items.is_empty())
    })
    .await?;
    eprintln!("namespace and its objects gone after {:?}", started.elapsed());
    until("its Function no longer answering", 10, async || {
        Ok(get(&http, &ingress, "hello.team-c.localhost", "/", None).await?.0 == 404)
    })
    .await?;
    // Re-created with the same name: the old token still does not work.
    admin
        .api::<Namespace>(None)
        .create(&Namespace::new(ObjectMeta::named("team-c")))
        .await?;
    assert_eq!(
        code(
            tc.api::<ConfigMap>(Some("team-c"))
                .list(&ListParams::default())
                .await
        ),
        401
    );
    assert_eq!(code(tc.get_blob(&digest).await), 401);
    assert!(
        admin
            .list_tokens()
            .await?
            .iter()
            .all(|t| t.namespace.as_deref() != Some("team-c")),
        "the namespace's tokens were removed with it"
    );
    // A new token works, and revoking it ends it.
    let fresh = admin
        .issue_token(&wisp_client::TokenRequest {
            namespace: Some("team-c".into()),
            ..wisp_client::TokenRequest::default()
        })
        .await?;
    let tc2 = w.client_as(&fresh.token);
    tc2.api::<ConfigMap>(Some("team-c"))
        .list(&ListParams::default())
        .await?;
    admin.revoke_token(&fresh.info.id).await?;
    assert_eq!(
        code(
            tc2.api::<ConfigMap>(Some("team-c"))
                .list(&ListParams::default())
                .await
        ),
        401
    );
    Ok(())
}

/// Clients that send their headers or bodies a byte at a time hold no permit the control
/// plane needs: the API still answers, and a Function still wakes from zero, while they hang
/// on; the server cuts them off after its read timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_stall_the_control_plane() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (w, admin, ingress, http) = cluster(&["--tenant-qps", "1000", "--tenant-burst", "1000"]).await?;
    let te = tenant(&w, &admin, "team-e").await?;
    let token = te.token().to_owned();
    let addr = w.api_addr();
    // Over TLS (handshake done): 300 connections that never finish their headers, 30 that
    // never finish a body and 30 that send only an HTTP/2 preface; and 30 TCP connections
    // that never start their handshake.
    trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}
    let mut slow: Vec<Box<dyn Conn>> = Vec::new();
    for i in 0..60 {
        if i % 2 == 0 {
            let mut s = w.api_tls_stream().await?;
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
            s.flush().await?;
            slow.push(Box::new(s));
        } else {
            slow.push(Box::new(tokio::net::TcpStream::connect(&addr).await?));
        }
    }
    for _ in 0..300 {
        let mut s = w.api_tls_stream().await?;
        s.write_all(b"GET /apis/wisp.dev/v1/namespaces HTTP/1.1\r\nHost: x\r\n")
            .await?;
        s.flush().await?;
        slow.push(Box::new(s));
    }
    for i in 0..30 {
        let mut s = w.api_tls_stream().await?;
        let head = format!(
            "POST /apis/wisp.dev/v1/namespaces/team-e/configmaps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"s{i}\""
        );
        s.write_all(head.as_bytes()).await?;
        s.flush().await?;
        slow.push(Box::new(s));
    }
    // The control plane goes on: an API round trip, and a Function woken from zero.
    let t = Instant::now();
    admin
        .api::<ConfigMap>(Some("default"))
        .create(&ConfigMap::new(ObjectMeta::namespaced("default", "while-slow")))
        .await?;
    let api_ms = t.elapsed();
    let hello = std::fs::read(wisp_e2e::guest("hello")?)?;
    let digest = te.put_blob(Bytes::from(hello)).await?;
    let mut f = function("team-e", "hello", wasm_container(&digest, &[]));
    f.spec.scaling.min_scale = 0;
    te.api::<Function>(Some("team-e")).create(&f).await?;
    let t = Instant::now();
    answering(&http, &ingress, "hello.team-e.localhost").await?;
    eprintln!(
        "with 390 slow clients: an API write in {api_ms:?}, a Function up from zero in {:?}",
        t.elapsed()
    );
    assert!(
        api_ms < Duration::from_secs(5),
        "the API answered while slow clients hung on"
    );
    // Past the header and body timeouts (10 s), the server has hung up on them.
    // (the API speaks HTTP/1.1 only: a preface is a malformed request, closed at once).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut closed = 0;
    for s in &mut slow {
        // Whatever the server said last (a 408, a 400), it has hung up: EOF or a reset.
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(
                Duration::from_millis(100),
                tokio::io::AsyncReadExt::read(s, &mut buf),
            )
            .await
            {
                Ok(Ok(0) | Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => {}
                Err(_) => break,
            }
        }
    }
    assert_eq!(closed, slow.len(), "every slow client was cut off");
    Ok(())
}

/// One tenant floods its slow Function with 1,000 concurrent requests: it gets its share of
/// the node's Wasm instances and no more, and another tenant's p99 stays within 2× of what it
/// was unloaded. On the API, a flood of one token is answered 429 with Retry-After while
/// another tenant's requests go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_flood_leaves_another_its_latency() -> anyhow::Result<()> {
    let (w, admin, ingress, http) = cluster(&[]).await?;
    let ta = tenant(&w, &admin, "team-a").await?;
    let tb = tenant(&w, &admin, "team-b").await?;
    let hello = std::fs::read(wisp_e2e::guest("hello")?)?;
    let digest_a = ta.put_blob(Bytes::from(hello)).await?;
    ta.api::<Function>(Some("team-a"))
        .create(&function("team-a", "hello", wasm_container(&digest_a, &[])))
        .await?;
    let fault = std::fs::read(wisp_e2e::guest("fault")?)?;
    let digest_b = tb.put_blob(Bytes::from(fault)).await?;
    let mut slow = function("team-b", "slow", wasm_container(&digest_b, &[]));
    // One pod holds the whole flood (no scale-up to hide behind).
    slow.spec.scaling.max_scale = 1;
    tb.api::<Function>(Some("team-b")).create(&slow).await?;
    answering(&http, &ingress, "hello.team-a.localhost").await?;
    answering(&http, &ingress, "slow.team-b.localhost").await?;

    let p99 = |mut v: Vec<Duration>| {
        v.sort();
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    };
    let measure = async || -> anyhow::Result<Duration> {
        let mut v = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            let (c, _) = get(&http, &ingress, "hello.team-a.localhost", "/", None).await?;
            anyhow::ensure!(c == 200, "the victim answered {c}");
            v.push(t.elapsed());
        }
        Ok(p99(v))
    };
    // Warm up (connections, the instance pool), then measure.
    measure().await?;
    let unloaded = measure().await?;

    // 1,000 concurrent slow requests (each waits 8 s in the guest), on connections of their own.
    let addr = ingress.trim_start_matches("http://").to_owned();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let addr = addr.clone();
        flood.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
            s.write_all(
                b"GET /mark?ms=8000 HTTP/1.1\r\nHost: slow.team-b.localhost\r\nConnection: close\r\n\r\n",
            )
            .await
            .ok()?;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
            let head = String::from_utf8_lossy(&out);
            head.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok())
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Up to three windows within the flood's 8 s, the best kept: a moment of load from outside
    // the test (the machine's other processes) is not the flood's doing, while a victim the
    // flood starves is slow in all three.
    let bound = unloaded * 2 + Duration::from_millis(1);
    let mut loaded = measure().await?;
    for _ in 0..2 {
        if loaded <= bound {
            break;
        }
        loaded = loaded.min(measure().await?);
    }
    let mut codes = std::collections::BTreeMap::new();
    while let Some(r) = flood.join_next().await {
        *codes.entry(r.ok().flatten().unwrap_or(0)).or_insert(0u32) += 1;
    }
    eprintln!(
        "victim p99 unloaded {unloaded:?}, under a 1,000-request flood {loaded:?}; the flood got {codes:?}"
    );
    assert!(
        // The default share of a node's Wasm instances: 250 of its 1,000.
        codes.get(&200).copied().unwrap_or(0) <= 250,
        "the flooder ran at most its share: {codes:?}"
    );
    assert!(
        codes.get(&503).copied().unwrap_or(0) >= 700,
        "the rest were refused at once: {codes:?}"
    );
    // Within 2× of unloaded (plus a millisecond of timer granularity on a sub-ms figure).
    assert!(
        loaded <= bound,
        "victim p99 {loaded:?} under the flood, {unloaded:?} without"
    );

    // The API: one token's flood is refused with 429 and Retry-After; others go on.
    let mut refused = 0;
    let mut retry_after = None;
    for _ in 0..300 {
        let r = tb
            .raw(
                Method::GET,
                "/apis/wisp.dev/v1/namespaces/team-b/configmaps",
                None,
            )
            .await;
        if let Err(e) = r
            && e.code() == Some(429)
        {
            refused += 1;
            retry_after.get_or_insert(e.to_string());
        }
    }
    assert!(refused > 0, "a token over its budget is refused");
    eprintln!("API flood: {refused} of 300 refused with 429 ({retry_after:?})");
    ta.api::<ConfigMap>(Some("team-a"))
        .list(&ListParams::default())
        .await?;
    let resp = raw_status(&w, tb.token(), "/apis/wisp.dev/v1/namespaces/team-b/configmaps").await?;
    if resp.0 == 429 {
        assert!(resp.1.is_some(), "a 429 carries Retry-After");
    }
    Ok(())
}

/// Status and Retry-After of one GET.
async fn raw_status(w: &Wisp, token: &str, path: &str) -> anyhow::Result<(u16, Option<String>)> {
    let http = w.api_http();
    let req = http::Request::get(format!("{}{path}", w.url))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())?;
    let resp = http.request(req).await?;
    Ok((
        resp.status().as_u16(),
        resp.headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    ))
}

/// A node credential names its own port (`agentUrl`) and the CA it trusts for it: what the
/// control plane sends there (over TLS, to a certificate of that CA) is worth nothing beyond
/// reading ingress statistics, and a log request never carries a user's token to a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_node_collects_no_token_worth_anything() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = Wisp::start(Options {
        command: Some("up".into()),
        ..Options::default()
    })?;
    let admin = w.client();
    let (ok, out, err) = w.cli(&["token", "create", "--node", "evil"])?;
    anyhow::ensure!(ok, "{err}");
    let evil = w.client_as(out.trim());
    // A listener that keeps every Authorization header sent to it, with the node's own CA.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let trap_url = format!("https://{}", trap.local_addr()?);
    let evil_tls = wisp_tls::node("127.0.0.1")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(evil_tls.server.clone());
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let kept = seen.clone();
    let catcher = tokio::spawn(async move {
        while let Ok((conn, _)) = trap.accept().await {
            let kept = kept.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = acceptor.accept(conn).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in head.lines() {
                    if let Some(v) = line
                        .strip_prefix("authorization: Bearer ")
                        .or_else(|| line.strip_prefix("Authorization: Bearer "))
                    {
                        kept.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(v.trim().to_owned());
                    }
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]")
                    .await;
            });
        }
    });
    let mut node = Node::new(ObjectMeta::named("evil"));
    node = evil.api::<Node>(None).create(&node).await?;
    node.status = Some(wisp_api::NodeStatus {
        addresses: vec![wisp_api::NodeAddress {
            type_: "InternalIP".into(),
            address: "127.0.0.1".into(),
        }],
        agent_url: Some(trap_url),
        // First a CA that did not sign what the trap shows: nothing may be sent to it.
        agent_ca: Some(wisp_tls::node("127.0.0.1")?.ca_pem),
        ..wisp_api::NodeStatus::default()
    });
    let node = evil.api::<Node>(None).replace_status(&node).await?;
    // The autoscaler reads every node's port each second, once there is a Function.
    let mut f = Function::new(ObjectMeta::namespaced("default", "probe"));
    f.spec.template.spec.containers = vec![wasm_container(&format!("sha256:{}", "0".repeat(64)), &[])];
    admin.api::<Function>(Some("default")).create(&f).await?;
    // A log request for a pod bound to the liar.
    let mut p = Pod::new(ObjectMeta::namespaced("default", "on-evil"));
    p.spec.containers = vec![Container {
        name: "c".into(),
        image: Some("x:1".into()),
        ..Container::default()
    }];
    p.spec.node_name = Some("evil".into());
    admin.api::<Pod>(Some("default")).create(&p).await?;
    let log = async || {
        admin
            .raw(
                Method::GET,
                "/apis/wisp.dev/v1/namespaces/default/pods/on-evil/log",
                None,
            )
            .await
    };
    let refused = log().await;
    assert_eq!(
        refused.as_ref().err().and_then(|e| e.code()),
        Some(503),
        "a node whose port shows another CA's certificate: {refused:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty(),
        "a request crossed to a port whose certificate is not of the CA the node published"
    );

    // Then the CA that signed it: what crosses now is worth nothing.
    let mut node = node;
    if let Some(st) = node.status.as_mut() {
        st.agent_ca = Some(evil_tls.ca_pem.clone());
    }
    evil.api::<Node>(None).replace_status(&node).await?;
    until("the autoscaler at the lying node's port", 15, async || {
        Ok(!seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty())
    })
    .await?;
    log().await?;
    let tokens = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(
        !tokens.contains(&w.token),
        "the admin's own token reached the node"
    );
    let mut kinds = std::collections::BTreeSet::new();
    for t in &tokens {
        let c = w.client_as(t);
        if let Ok(who) = c.whoami().await {
            kinds.insert(who.kind.clone());
            assert!(matches!(who.kind.as_str(), "scraper" | "podLogs"), "{who:?}");
        }
        assert_eq!(
            code(c.api::<Pod>(Some("team-a")).list(&ListParams::default()).await),
            403
        );
        assert_eq!(
            code(c.api::<Namespace>(None).list(&ListParams::default()).await),
            403
        );
        assert_eq!(code(c.list_tokens().await), 403);
        assert_eq!(
            code(c.api::<wisp_api::Secret>(Some("default")).get("x").await),
            403
        );
    }
    eprintln!(
        "the lying node collected {} tokens of kinds {kinds:?}",
        tokens.len()
    );
    assert!(
        kinds.contains("scraper") && kinds.contains("podLogs"),
        "the statistics credential and a log ticket are what it saw: {kinds:?}"
    );
    catcher.abort();
    Ok(())
}
