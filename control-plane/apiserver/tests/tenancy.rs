//! What a namespace token and a node credential may do, through the server's own handler:
//! LimitRanges and ResourceQuotas at admission, blobs per namespace (capped, streamed,
//! collected when unused), token expiry, list pages, the conditional permissions of nodes
//! (their pods' Secrets, waking a Deployment from zero), and permits of their own for the
//! in-process components.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio_util::sync::CancellationToken;
use wisp_api::{
    Bounds, ConfigMap, Container, Deployment, EnvVar, EnvVarSource, KeySelector, LabelSelector, LimitRange,
    LimitRangeItem, Namespace, ObjectMeta, Pod, PodPhase, PodStatus, Quantity, Resource, ResourceQuota,
    Secret,
};
use wisp_apiserver::auth::Principal;
use wisp_apiserver::testutil::InProcessClient;
use wisp_apiserver::{ApiServer, Config};
use wisp_client::{Client, ClientError, ListParams, TokenRequest};

/// Nothing listens here: every request goes through the in-process transport.
const NOWHERE: &str = "http://127.0.0.1:1";

struct Server {
    api: ApiServer,
    admin: Client,
    _dir: tempfile::TempDir,
}

async fn server_with(tune: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = wisp_store::EmbeddedStore::open(dir.path(), Default::default()).expect("store");
    let mut config = Config::new(dir.path().join("blobs"));
    tune(&mut config);
    let api = ApiServer::new(Arc::new(store), config, CancellationToken::new());
    let token = api.bootstrap().await.expect("bootstrap").expect("admin token");
    let admin = api.in_process_client(NOWHERE, &token);
    Server {
        api,
        admin,
        _dir: dir,
    }
}

impl Server {
    /// A namespace and a client confined to it.
    async fn tenant(&self, ns: &str) -> Client {
        self.admin
            .api::<Namespace>(None)
            .create(&Namespace::new(ObjectMeta::named(ns)))
            .await
            .expect("namespace");
        let token = self.admin.create_token(ns).await.expect("token");
        self.api.in_process_client(NOWHERE, &token)
    }

    fn node(&self, name: &str) -> Client {
        let token = self
            .api
            .auth()
            .issue_ephemeral(Principal::Node { node: name.into() })
            .expect("node token");
        self.api.in_process_client(NOWHERE, &token)
    }
}

fn code<T>(r: Result<T, ClientError>) -> u16 {
    r.map_or_else(|e| e.code().unwrap_or(0), |_| 200)
}

fn message<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Ok(v) => format!("accepted: {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn q(s: &str) -> Quantity {
    Quantity::parse(s).expect("quantity")
}

fn pod(ns: &str, name: &str, image: &str) -> Pod {
    let mut p = Pod::new(ObjectMeta::namespaced(ns, name));
    p.spec.containers = vec![Container {
        name: "c".into(),
        image: Some(image.into()),
        ..Container::default()
    }];
    p
}

#[tokio::test]
async fn limit_ranges_fill_defaults_and_bound_every_pod_and_template() {
    let s = server_with(|_| {}).await;
    let t = s.tenant("team-a").await;
    let mut lr = LimitRange::new(ObjectMeta::namespaced("team-a", "limits"));
    lr.spec.limits = vec![LimitRangeItem {
        type_: "Container".into(),
        default: [("memory".to_owned(), q("64Mi"))].into(),
        default_request: [("cpu".to_owned(), q("100m"))].into(),
        max: [("memory".to_owned(), q("256Mi"))].into(),
        ..LimitRangeItem::default()
    }];
    lr.spec.timeout_ms = Some(Bounds {
        default: Some(5_000),
        max: Some(10_000),
    });
    lr.spec.termination_grace_period_seconds = Some(Bounds {
        default: Some(5),
        max: Some(30),
    });
    assert_eq!(
        code(t.api::<LimitRange>(Some("team-a")).create(&lr).await),
        403,
        "tenants set no limits"
    );
    s.admin
        .api::<LimitRange>(Some("team-a"))
        .create(&lr)
        .await
        .expect("admin");

    let pods = t.api::<Pod>(Some("team-a"));
    let created = pods
        .create(&pod("team-a", "plain", "x:1"))
        .await
        .expect("created");
    let c = &created.spec.containers[0];
    assert_eq!(
        c.resources.limits.get("memory"),
        Some(&q("64Mi")),
        "default limit"
    );
    assert_eq!(
        c.resources.requests.get("cpu"),
        Some(&q("100m")),
        "default request"
    );
    assert_eq!(c.timeout_ms, Some(5_000));
    assert_eq!(created.spec.termination_grace_period_seconds, Some(5));

    let mut big = pod("team-a", "big", "x:1");
    big.spec.containers[0]
        .resources
        .limits
        .insert("memory".into(), q("1Gi"));
    let msg = message(pods.create(&big).await);
    assert!(
        msg.contains("\"limits\"") && msg.contains("memory") && msg.contains("1Gi"),
        "{msg}"
    );
    assert_eq!(code(pods.create(&big).await), 403);
    let mut slow = pod("team-a", "slow", "x:1");
    slow.spec.containers[0].timeout_ms = Some(20_000);
    assert_eq!(
        code(pods.create(&slow).await),
        403,
        "{}",
        message(pods.create(&slow).await)
    );
    let mut lingering = pod("team-a", "lingering", "x:1");
    lingering.spec.termination_grace_period_seconds = Some(300);
    assert_eq!(code(pods.create(&lingering).await), 403);
    // A template is bounded when it is written, not when its pods are.
    let mut d = Deployment::new(ObjectMeta::namespaced("team-a", "d"));
    d.spec.selector = LabelSelector::from_labels([("app".to_owned(), "d".to_owned())].into());
    d.spec.template.metadata.labels.insert("app".into(), "d".into());
    d.spec.template.spec = big.spec.clone();
    let msg = message(t.api::<Deployment>(Some("team-a")).create(&d).await);
    assert!(msg.contains("spec.template.spec.containers[0]"), "{msg}");
}

#[tokio::test]
async fn the_cluster_bounds_timeouts_and_grace_whatever_a_namespace_says() {
    let s = server_with(|c| {
        c.max_timeout_ms = 60_000;
        c.max_grace_seconds = 60;
    })
    .await;
    let t = s.tenant("team-a").await;
    let mut p = pod("team-a", "p", "x:1");
    p.spec.containers[0].timeout_ms = Some(60_001);
    let msg = message(t.api::<Pod>(Some("team-a")).create(&p).await);
    assert!(msg.contains("timeoutMs") && msg.contains("60000"), "{msg}");
    p.spec.containers[0].timeout_ms = Some(60_000);
    p.spec.termination_grace_period_seconds = Some(61);
    assert_eq!(code(t.api::<Pod>(Some("team-a")).create(&p).await), 403);
    p.spec.termination_grace_period_seconds = Some(60);
    t.api::<Pod>(Some("team-a"))
        .create(&p)
        .await
        .expect("within the ceilings");
}

#[tokio::test]
async fn quotas_count_pods_and_their_requests_until_they_end() {
    let s = server_with(|_| {}).await;
    let t = s.tenant("team-a").await;
    let mut quota = ResourceQuota::new(ObjectMeta::namespaced("team-a", "q"));
    quota.spec.hard = [("pods".to_owned(), q("2")), ("requests.cpu".to_owned(), q("1"))].into();
    s.admin
        .api::<ResourceQuota>(Some("team-a"))
        .create(&quota)
        .await
        .expect("quota");
    let pods = t.api::<Pod>(Some("team-a"));
    // Every container must say its cpu request under this quota.
    let pod = |ns: &str, name: &str, image: &str| {
        let mut p = pod(ns, name, image);
        p.spec.containers[0]
            .resources
            .requests
            .insert("cpu".into(), q("100m"));
        p
    };
    let mut heavy = pod("team-a", "heavy", "x:1");
    heavy.spec.containers[0]
        .resources
        .requests
        .insert("cpu".into(), q("1500m"));
    let msg = message(pods.create(&heavy).await);
    assert!(
        msg.contains("exceeded quota \"q\"") && msg.contains("requests.cpu=1500m"),
        "{msg}"
    );
    let first = pods.create(&pod("team-a", "a", "x:1")).await.expect("first");
    pods.create(&pod("team-a", "b", "x:1")).await.expect("second");
    let msg = message(pods.create(&pod("team-a", "c", "x:1")).await);
    assert!(
        msg.contains("used pods=2") && msg.contains("limited pods=2"),
        "{msg}"
    );
    // Controllers' writes count too: the admin's create in the namespace is refused alike.
    assert_eq!(
        code(
            s.admin
                .api::<Pod>(Some("team-a"))
                .create(&pod("team-a", "c", "x:1"))
                .await
        ),
        403
    );
    // A pod that has ended uses nothing.
    let mut done = first.clone();
    done.status = Some(PodStatus {
        phase: PodPhase::Succeeded,
        ..PodStatus::default()
    });
    s.admin
        .api::<Pod>(Some("team-a"))
        .replace_status(&done)
        .await
        .expect("status");
    pods.create(&pod("team-a", "c", "x:1")).await.expect("room again");
}

#[tokio::test]
async fn blobs_are_per_namespace_capped_and_collected_when_unused() {
    let s = server_with(|c| {
        c.blob_limit = 64 * 1024;
        c.blob_grace = Duration::ZERO;
    })
    .await;
    let a = s.tenant("team-a").await;
    let b = s.tenant("team-b").await;
    let used = Bytes::from_static(b"a component team-a uses");
    let unused = Bytes::from_static(b"a component nobody uses");
    let d_used = a.put_blob(used.clone()).await.expect("upload");
    let d_unused = a.put_blob(unused.clone()).await.expect("upload");
    assert_eq!(a.get_blob(&d_used).await.expect("own"), used);
    assert_eq!(code(b.get_blob(&d_used).await), 403, "another namespace's blob");
    assert_eq!(
        code(b.get_blob(&format!("sha256:{}", "0".repeat(64))).await),
        403,
        "refused alike whether it exists or not"
    );
    // Uploading it itself (proving it has the bytes) makes it team-b's too.
    b.put_blob(used.clone()).await.expect("upload of the same bytes");
    assert_eq!(b.get_blob(&d_used).await.expect("now its own"), used);
    // Over the size cap: 413, nothing kept.
    let huge = Bytes::from(vec![7u8; 65 * 1024]);
    assert_eq!(code(a.put_blob(huge.clone()).await), 413);
    // Over the namespace's blob quota: 403.
    let mut quota = ResourceQuota::new(ObjectMeta::namespaced("team-b", "blobs"));
    quota.spec.hard = [("blobs.bytes".to_owned(), q("100"))].into();
    s.admin
        .api::<ResourceQuota>(Some("team-b"))
        .create(&quota)
        .await
        .expect("quota");
    let msg = message(b.put_blob(Bytes::from(vec![1u8; 200])).await);
    assert!(msg.contains("blobs.bytes"), "{msg}");
    // A node reads only the components of its pods.
    let mut p = Pod::new(ObjectMeta::namespaced("team-a", "p"));
    p.spec.containers = vec![Container {
        name: "c".into(),
        wasm: Some(d_used.clone()),
        ..Container::default()
    }];
    p.spec.node_name = Some("n1".into());
    s.admin.api::<Pod>(Some("team-a")).create(&p).await.expect("pod");
    assert_eq!(s.node("n1").get_blob(&d_used).await.expect("its pod's"), used);
    assert_eq!(code(s.node("n1").get_blob(&d_unused).await), 403);
    assert_eq!(code(s.node("n2").get_blob(&d_used).await), 403);
    assert_eq!(
        code(s.node("n1").put_blob(unused.clone()).await),
        403,
        "nodes upload nothing"
    );
    // Collection: what a pod uses stays, the rest goes.
    s.admin
        .api::<Pod>(Some("team-b"))
        .list(&ListParams::default())
        .await
        .expect("list");
    let removed = s.api.collect_blobs().await.expect("collected");
    assert_eq!(removed, 1, "the unused blob is removed");
    assert_eq!(code(s.admin.get_blob(&d_unused).await), 404);
    assert_eq!(s.admin.get_blob(&d_used).await.expect("kept"), used);
}

#[tokio::test]
async fn tokens_expire_are_listed_and_revoked() {
    let s = server_with(|_| {}).await;
    s.tenant("team-a").await;
    let issued = s
        .admin
        .issue_token(&TokenRequest {
            namespace: Some("team-a".into()),
            ttl_seconds: Some(1),
            ..TokenRequest::default()
        })
        .await
        .expect("issued");
    assert!(issued.info.expires_at.is_some());
    let t = s.api.in_process_client(NOWHERE, &issued.token);
    t.api::<ConfigMap>(Some("team-a"))
        .list(&ListParams::default())
        .await
        .expect("works for now");
    let listed = s.admin.list_tokens().await.expect("list");
    assert!(
        listed
            .iter()
            .any(|i| i.id == issued.info.id && i.kind == "namespace"),
        "{listed:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let msg = message(
        t.api::<ConfigMap>(Some("team-a"))
            .list(&ListParams::default())
            .await,
    );
    assert!(msg.contains("expired"), "{msg}");
    // A node credential, revoked.
    let node = s
        .admin
        .issue_token(&TokenRequest {
            node: Some("n1".into()),
            ..TokenRequest::default()
        })
        .await
        .expect("node token");
    let n = s.api.in_process_client(NOWHERE, &node.token);
    assert_eq!(n.whoami().await.expect("whoami").node.as_deref(), Some("n1"));
    assert_eq!(code(n.list_tokens().await), 403, "a node lists no tokens");
    s.admin.revoke_token(&node.info.id).await.expect("revoked");
    assert_eq!(code(n.whoami().await), 401);
    assert_eq!(code(s.admin.revoke_token("0123").await), 400, "too short an id");
}

#[tokio::test]
async fn lists_come_in_pages() {
    let s = server_with(|_| {}).await;
    let t = s.tenant("team-a").await;
    let cms = t.api::<ConfigMap>(Some("team-a"));
    for i in 0..7 {
        cms.create(&ConfigMap::new(ObjectMeta::namespaced(
            "team-a",
            format!("cm-{i}"),
        )))
        .await
        .expect("create");
    }
    let p = ListParams::default();
    let first = cms.list_page(&p, 3, None).await.expect("page 1");
    assert_eq!(first.items.len(), 3);
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    let next = first.metadata.continue_.clone().expect("continue");
    let second = cms.list_page(&p, 3, Some(&next)).await.expect("page 2");
    let third = cms
        .list_page(&p, 3, second.metadata.continue_.as_deref())
        .await
        .expect("page 3");
    assert_eq!((second.items.len(), third.items.len()), (3, 1));
    assert!(third.metadata.continue_.is_none(), "the last page");
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    let mut names: Vec<String> = [first.items, second.items, third.items]
        .concat()
        .into_iter()
        .map(|c| c.metadata.name)
        .collect();
    names.dedup();
    assert_eq!(names.len(), 7, "every item once, in order: {names:?}");
    assert_eq!(cms.list_all(&p, 2).await.expect("all").items.len(), 7);
    assert_eq!(code(cms.list_page(&p, 3, Some("not-a-token")).await), 400);
}

#[tokio::test]
async fn a_node_reads_its_pods_secrets_and_only_wakes_deployments() {
    let s = server_with(|_| {}).await;
    s.tenant("team-a").await;
    let mut secret = Secret::new(ObjectMeta::namespaced("team-a", "creds"));
    secret.string_data = [("k".to_owned(), "v".to_owned())].into();
    s.admin
        .api::<Secret>(Some("team-a"))
        .create(&secret)
        .await
        .expect("secret");
    let mut other = Secret::new(ObjectMeta::namespaced("team-a", "other"));
    other.string_data = [("k".to_owned(), "v".to_owned())].into();
    s.admin
        .api::<Secret>(Some("team-a"))
        .create(&other)
        .await
        .expect("secret");
    let mut p = pod("team-a", "p", "x:1");
    p.spec.node_name = Some("n1".into());
    p.spec.containers[0].env = vec![EnvVar {
        name: "K".into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(KeySelector {
                name: "creds".into(),
                key: "k".into(),
                optional: None,
            }),
            config_map_key_ref: None,
        }),
    }];
    s.admin.api::<Pod>(Some("team-a")).create(&p).await.expect("pod");
    let n1 = s.node("n1");
    n1.api::<Secret>(Some("team-a"))
        .get("creds")
        .await
        .expect("its pod's Secret");
    assert_eq!(code(n1.api::<Secret>(Some("team-a")).get("other").await), 403);
    assert_eq!(
        code(s.node("n2").api::<Secret>(Some("team-a")).get("creds").await),
        403
    );
    assert_eq!(
        code(
            n1.api::<Secret>(Some("team-a"))
                .list(&ListParams::default())
                .await
        ),
        403
    );

    // An HTTPS Route's certificate: every node reads the Secret of type tls a Route names,
    // and nothing else through a Route (a Route naming an Opaque Secret opens nothing).
    let mut cert = Secret::new(ObjectMeta::namespaced("team-a", "cert"));
    cert.type_ = wisp_api::SECRET_TYPE_TLS.into();
    cert.string_data = [
        ("tls.crt".to_owned(), "c".to_owned()),
        ("tls.key".to_owned(), "k".to_owned()),
    ]
    .into();
    s.admin
        .api::<Secret>(Some("team-a"))
        .create(&cert)
        .await
        .expect("tls secret");
    let mut unnamed = cert.clone();
    unnamed.metadata = ObjectMeta::namespaced("team-a", "unnamed-cert");
    s.admin
        .api::<Secret>(Some("team-a"))
        .create(&unnamed)
        .await
        .expect("tls secret");
    for (route, secret) in [("by-cert", "cert"), ("by-other", "other")] {
        let mut r = wisp_api::Route::new(ObjectMeta::namespaced("team-a", route));
        r.spec.host = Some(format!("{route}.team-a.localhost"));
        r.spec.backends = vec![wisp_api::RouteBackend {
            service: "s".into(),
            ..wisp_api::RouteBackend::default()
        }];
        r.spec.tls = Some(wisp_api::RouteTls {
            secret_name: secret.into(),
            issuer: None,
        });
        s.admin
            .api::<wisp_api::Route>(Some("team-a"))
            .create(&r)
            .await
            .expect("route");
    }
    for node in [&n1, &s.node("n2")] {
        node.api::<Secret>(Some("team-a"))
            .get("cert")
            .await
            .expect("a Route's certificate");
        assert_eq!(
            code(node.api::<Secret>(Some("team-a")).get("unnamed-cert").await),
            403
        );
    }
    let refused = s.node("n2").api::<Secret>(Some("team-a")).get("other").await;
    assert_eq!(
        code(refused),
        403,
        "an Opaque Secret named by a Route's tls stays closed"
    );

    let mut d = Deployment::new(ObjectMeta::namespaced("team-a", "fn"));
    d.spec.replicas = 0;
    d.spec.selector = LabelSelector::from_labels([("app".to_owned(), "fn".to_owned())].into());
    d.spec.template.metadata.labels.insert("app".into(), "fn".into());
    d.spec.template.spec = pod("team-a", "x", "x:1").spec;
    let d = s
        .admin
        .api::<Deployment>(Some("team-a"))
        .create(&d)
        .await
        .expect("deployment");
    let mut sneaky = d.clone();
    sneaky.spec.replicas = 1;
    sneaky.spec.template.spec.containers[0].image = Some("evil:1".into());
    assert_eq!(
        code(n1.api::<Deployment>(Some("team-a")).replace(&sneaky).await),
        403,
        "more than a wake-up"
    );
    let mut many = d.clone();
    many.spec.replicas = 5;
    assert_eq!(
        code(n1.api::<Deployment>(Some("team-a")).replace(&many).await),
        403,
        "more than one"
    );
    let mut labelled = d.clone();
    labelled.spec.replicas = 1;
    labelled.metadata.annotations.insert("other".into(), "x".into());
    assert_eq!(
        code(n1.api::<Deployment>(Some("team-a")).replace(&labelled).await),
        403,
        "an annotation other than the cold start's trace context"
    );
    let mut relabelled = d.clone();
    relabelled.spec.replicas = 1;
    relabelled.metadata.labels.insert("app".into(), "evil".into());
    relabelled.metadata.annotations.insert(
        wisp_api::TRACEPARENT_ANNOTATION.into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    );
    assert_eq!(
        code(n1.api::<Deployment>(Some("team-a")).replace(&relabelled).await),
        403,
        "a label changed beside a well-formed trace context"
    );
    let mut forged = d.clone();
    forged.spec.replicas = 1;
    forged.metadata.annotations.insert(
        wisp_api::TRACEPARENT_ANNOTATION.into(),
        "00-xyz\r\nset-cookie: a-b-01".into(),
    );
    assert_eq!(
        code(n1.api::<Deployment>(Some("team-a")).replace(&forged).await),
        403,
        "a trace context that is not a W3C traceparent"
    );
    // The wake-up, with the request's trace context for the controllers to continue.
    let mut wake = d.clone();
    wake.spec.replicas = 1;
    wake.metadata.annotations.insert(
        wisp_api::TRACEPARENT_ANNOTATION.into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    );
    n1.api::<Deployment>(Some("team-a"))
        .replace(&wake)
        .await
        .expect("woken from zero");
    let stored = s
        .admin
        .api::<Deployment>(Some("team-a"))
        .get("fn")
        .await
        .expect("get");
    assert_eq!(
        stored.metadata.annotations.get(wisp_api::TRACEPARENT_ANNOTATION),
        wake.metadata.annotations.get(wisp_api::TRACEPARENT_ANNOTATION),
        "the trace context is kept for the controllers"
    );
    let mut again = wake.clone();
    again.metadata.resource_version = None;
    again.spec.replicas = 1;
    let up = s
        .admin
        .api::<Deployment>(Some("team-a"))
        .get("fn")
        .await
        .expect("get");
    let mut down = up.clone();
    down.spec.replicas = 0;
    assert_eq!(
        code(n1.api::<Deployment>(Some("team-a")).replace(&down).await),
        403,
        "a node never scales down"
    );
}

/// Slow external clients hold the external permits; the in-process components have their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_components_keep_their_permits_when_external_clients_hold_all_theirs() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = wisp_store::EmbeddedStore::open(dir.path(), Default::default()).expect("store");
    let mut config = Config::new(dir.path().join("blobs"));
    config.concurrency_limit = 2;
    let shutdown = CancellationToken::new();
    let api = ApiServer::new(Arc::new(store), config, shutdown.clone());
    let token = api.bootstrap().await.expect("bootstrap").expect("admin token");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let serving = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(wisp_apiserver::serve(
        api.clone(),
        listener,
        shutdown.clone(),
    )));
    // Two clients that never finish their bodies hold both external permits.
    let mut slow = Vec::new();
    for i in 0..2 {
        let mut s = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .expect("connect");
        let head = format!(
            "POST /apis/wisp.dev/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 500\r\n\r\n{{\"metadata\":{{\"name\":\"slow-{i}\""
        );
        s.write_all(head.as_bytes()).await.expect("write");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let external = Client::new(&url, &token);
    let waiting = tokio::time::timeout(
        Duration::from_millis(500),
        external.raw(Method::GET, "/apis/wisp.dev/v1/namespaces", None),
    )
    .await;
    assert!(waiting.is_err(), "a third external request waits for a permit");
    let internal = api.in_process_client(&url, &token);
    tokio::time::timeout(
        Duration::from_secs(2),
        internal
            .api::<ConfigMap>(Some("default"))
            .list(&ListParams::default()),
    )
    .await
    .expect("the in-process client is not held up")
    .expect("listed");
    drop(slow);
    shutdown.cancel();
    let _ = serving.await;
}

#[tokio::test]
async fn a_pods_spec_is_fixed_once_created_and_quotas_need_every_container_to_say_its_requests() {
    let s = server_with(|_| {}).await;
    let t = s.tenant("team-a").await;
    let pods = t.api::<Pod>(Some("team-a"));
    let mut small = pod("team-a", "small", "x:1");
    small.spec.containers[0]
        .resources
        .requests
        .insert("cpu".into(), q("10m"));
    let created = pods.create(&small).await.expect("created");
    // Asking for more once it may be bound (the scheduler checked the first ask) is refused.
    let mut grown = created.clone();
    grown.spec.containers[0]
        .resources
        .requests
        .insert("cpu".into(), q("1000"));
    let msg = message(pods.replace(&grown).await);
    assert!(msg.contains("spec") && msg.contains("cannot change"), "{msg}");
    let mut swapped = created.clone();
    swapped.spec.containers[0].image = Some("other:1".into());
    assert_eq!(code(pods.replace(&swapped).await), 422, "nor what it runs");
    // Labels may change; the binding is set once, by the scheduler (the admin here).
    let mut relabelled = created.clone();
    relabelled.metadata.labels.insert("tier".into(), "web".into());
    let relabelled = pods.replace(&relabelled).await.expect("labels change");
    let mut bound = relabelled.clone();
    bound.spec.node_name = Some("n1".into());
    let bound = s
        .admin
        .api::<Pod>(Some("team-a"))
        .replace(&bound)
        .await
        .expect("bound");
    let mut moved = bound.clone();
    moved.spec.node_name = Some("n2".into());
    assert_eq!(
        code(s.admin.api::<Pod>(Some("team-a")).replace(&moved).await),
        422,
        "bound once"
    );

    let mut quota = ResourceQuota::new(ObjectMeta::namespaced("team-a", "cpu"));
    quota.spec.hard = [("requests.cpu".to_owned(), q("1"))].into();
    s.admin
        .api::<ResourceQuota>(Some("team-a"))
        .create(&quota)
        .await
        .expect("quota");
    let msg = message(pods.create(&pod("team-a", "bare", "x:1")).await);
    assert!(
        msg.contains("requests.cpu") && msg.contains("\"cpu\""),
        "a pod without requests slips no quota: {msg}"
    );
    let mut asks = pod("team-a", "asks", "x:1");
    asks.spec.containers[0]
        .resources
        .requests
        .insert("cpu".into(), q("100m"));
    pods.create(&asks).await.expect("with its request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_tokens_are_refused_over_the_network_and_tickets_do_next_to_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = wisp_store::EmbeddedStore::open(dir.path(), Default::default()).expect("store");
    let shutdown = CancellationToken::new();
    let api = ApiServer::new(
        Arc::new(store),
        Config::new(dir.path().join("blobs")),
        shutdown.clone(),
    );
    api.bootstrap().await.expect("bootstrap");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let serving = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(wisp_apiserver::serve(
        api.clone(),
        listener,
        shutdown.clone(),
    )));
    for principal in [Principal::Admin, Principal::Node { node: "n1".into() }] {
        let token = api.auth().issue_ephemeral(principal.clone()).expect("token");
        api.in_process_client(&url, &token)
            .whoami()
            .await
            .expect("good in process");
        let over_http = Client::new(&url, &token).whoami().await;
        assert_eq!(
            code(over_http),
            401,
            "{principal:?}'s in-process token over the network"
        );
    }
    let scraper = api.auth().issue_ticket(Principal::Scraper, None).expect("ticket");
    let sc = Client::new(&url, &scraper);
    assert_eq!(sc.whoami().await.expect("whoami").kind, "scraper");
    assert_eq!(
        code(sc.api::<Pod>(Some("default")).list(&ListParams::default()).await),
        403
    );
    assert_eq!(code(sc.api::<Namespace>(None).get("default").await), 403);
    assert_eq!(code(sc.list_tokens().await), 403);
    assert_eq!(
        code(sc.put_blob(Bytes::from_static(b"disk filler")).await),
        403,
        "the statistics credential uploads nothing"
    );
    assert!(
        api.auth().issue_ticket(Principal::Admin, None).is_err(),
        "no admin tickets"
    );
    let ticket = api
        .auth()
        .issue_ticket(
            Principal::PodLogs {
                namespace: "default".into(),
                pod: "p".into(),
                on_behalf_of: "the cluster admin".into(),
            },
            Some(Duration::from_millis(300)),
        )
        .expect("ticket");
    let tc = Client::new(&url, &ticket);
    let who = tc.whoami().await.expect("whoami");
    assert_eq!(who.pod.as_deref(), Some("p"));
    assert_eq!(
        who.on_behalf_of.as_deref(),
        Some("the cluster admin"),
        "the ticket names whom it reads for"
    );
    assert_eq!(code(tc.api::<Pod>(Some("default")).get("other").await), 403);
    assert_eq!(
        code(tc.put_blob(Bytes::from_static(b"disk filler")).await),
        403,
        "nor a log ticket"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(code(tc.whoami().await), 401, "a ticket expires");
    let admin_token = api.auth().issue_admin().await.expect("admin");
    let admin = Client::new(&url, &admin_token);
    let refused = admin
        .issue_token(&TokenRequest {
            namespace: Some("wisp-system".into()),
            ..TokenRequest::default()
        })
        .await;
    assert_eq!(code(refused), 403, "no tokens for the nodes' lease namespace");
    shutdown.cancel();
    let _ = serving.await;
}

/// The API server's metrics count every namespace's requests and watches: the admin reads
/// them, a tenant and a node do not.
#[tokio::test]
async fn only_the_admin_reads_the_cluster_metrics() {
    let s = server_with(|_| {}).await;
    let tenant = s.tenant("team-a").await;
    assert_eq!(code(tenant.raw(Method::GET, "/metrics", None).await), 403);
    assert_eq!(
        code(s.node("node-a").raw(Method::GET, "/metrics", None).await),
        403
    );
    let metrics = s.admin.raw(Method::GET, "/metrics", None).await.expect("admin");
    assert_eq!(metrics.status(), 200);
}

/// An Event about `kind` `about`, named as a node must name it (see `wisp_api::event_name`).
fn event(
    ns: &str,
    kind: &str,
    about: &str,
    reason: &str,
    component: &str,
    instance: &str,
) -> wisp_api::Event {
    let involved = wisp_api::ObjectReference {
        kind: kind.into(),
        name: about.into(),
        ..wisp_api::ObjectReference::default()
    };
    let severity = wisp_api::EventSeverity::Normal;
    let name = wisp_api::event_name(&involved, reason, severity, component, instance);
    let mut e = wisp_api::Event::new(ObjectMeta::namespaced(ns, name));
    e.involved_object = involved;
    e.reason = reason.into();
    e.type_ = severity;
    e.message = "restarting".into();
    e.count = 1;
    e.reporting_component = component.into();
    e.reporting_instance = instance.into();
    e
}

/// Events are what the cluster says about a tenant's objects: a tenant reads its own and
/// cannot write one (no forged `Scheduled` or `ColdStart`); a node writes them one by one, in
/// its own name, as one of its components, under the name derived from what the Event is
/// about and who reports it, about a pod bound to it (same uid) or a cold start of a Function
/// that exists — never about another node's pod, never taking or blocking another node's
/// Event, never listing or deleting them; a time in the future is brought back to now.
#[tokio::test]
async fn events_are_read_by_tenants_and_written_by_nodes_only_in_their_own_name() {
    let s = server_with(|_| {}).await;
    let a = s.tenant("team-a").await;
    let _b = s.tenant("team-b").await;
    let mut p = pod("team-a", "web", "nginx");
    p.spec.node_name = Some("n1".into());
    let web = s
        .admin
        .api::<Pod>(Some("team-a"))
        .create(&p)
        .await
        .expect("pod on n1");
    let mut q = pod("team-a", "other", "nginx");
    q.spec.node_name = Some("n2".into());
    s.admin
        .api::<Pod>(Some("team-a"))
        .create(&q)
        .await
        .expect("pod on n2");

    let n1 = s.node("n1");
    let events = n1.api::<wisp_api::Event>(Some("team-a"));
    let mut own = event("team-a", "Pod", "web", "BackOff", "node-agent", "n1");
    own.last_timestamp = Some("2099-01-01T00:00:00Z".into());
    let mine = events
        .create(&own)
        .await
        .expect("a node records an event of its own pod");
    assert_eq!(
        mine.involved_object.namespace.as_deref(),
        Some("team-a"),
        "the object's namespace is filled in"
    );
    let last = mine.last_timestamp.clone().expect("lastTimestamp");
    assert!(
        last.as_str() < "2099",
        "a time in the future is brought back to now: {last}"
    );
    let mut again = mine.clone();
    again.count = 2;
    assert_eq!(code(events.replace(&again).await), 200, "and counts on it");

    let mut wrong_uid = event("team-a", "Pod", "web", "Started", "node-agent", "n1");
    wrong_uid.involved_object.uid = Some("not-the-pods-uid".into());
    let mut misnamed = event("team-a", "Pod", "web", "Started", "node-agent", "n1");
    misnamed.metadata.name = "web.1".into();
    // Node n2's name for its own event about n1's pod, taken first by n1 to block it.
    let mut squatted = event("team-a", "Pod", "other", "OOMKilled", "node-agent", "n2");
    squatted.reporting_instance = "n1".into();
    for (e, why) in [
        (
            event("team-a", "Pod", "web", "BackOff", "node-agent", "n2"),
            "in another node's name",
        ),
        (
            event("team-a", "Pod", "other", "BackOff", "node-agent", "n1"),
            "about another node's pod",
        ),
        (
            event("team-a", "Pod", "ghost", "BackOff", "node-agent", "n1"),
            "about a pod that does not exist",
        ),
        (wrong_uid, "about an earlier pod of the same name"),
        (
            event("team-a", "Secret", "s", "BackOff", "node-agent", "n1"),
            "about a kind its ingress never wakes",
        ),
        (
            event("team-a", "Pod", "web", "Scheduled", "scheduler", "n1"),
            "as the scheduler",
        ),
        (
            event("team-a", "Function", "hello", "ColdStart", "ingress", "n1"),
            "about a Function that does not exist",
        ),
        (
            event("team-b", "Function", "hello", "BackOff", "ingress", "n1"),
            "about a Function, other than a cold start",
        ),
        (misnamed, "under a name of its choosing"),
        (squatted, "under the name of another node's event"),
    ] {
        let ns = e.metadata.namespace.clone();
        let r = n1.api::<wisp_api::Event>(ns.as_deref()).create(&e).await;
        assert_eq!(code(r), 403, "a node may not write an event {why}");
    }
    let mut f = wisp_api::Function::new(ObjectMeta::namespaced("team-a", "hello"));
    f.spec.template.spec.containers = vec![Container {
        name: "c".into(),
        image: Some("nginx".into()),
        ..Container::default()
    }];
    s.admin
        .api::<wisp_api::Function>(Some("team-a"))
        .create(&f)
        .await
        .expect("function");
    assert_eq!(
        code(
            events
                .create(&event(
                    "team-a",
                    "Function",
                    "hello",
                    "ColdStart",
                    "ingress",
                    "n1"
                ))
                .await
        ),
        200,
        "a cold start of a Function, in its own name"
    );
    // The pod is deleted at once; its containers are stopped after: Killing is told of it.
    s.admin
        .api::<Pod>(Some("team-a"))
        .delete("web")
        .await
        .expect("delete");
    let mut killing = event("team-a", "Pod", "web", "Killing", "node-agent", "n1");
    killing.involved_object.uid = web.metadata.uid.clone();
    killing.metadata.name = wisp_api::event_name(
        &killing.involved_object,
        "Killing",
        killing.type_,
        "node-agent",
        "n1",
    );
    assert_eq!(
        code(events.create(&killing).await),
        200,
        "Killing of its pod just deleted"
    );

    // Taking over another node's event, even while naming itself.
    let theirs = s
        .admin
        .api::<wisp_api::Event>(Some("team-a"))
        .create(&event("team-a", "Pod", "other", "BackOff", "node-agent", "n2"))
        .await
        .expect("admin writes any event");
    let mut hijack = theirs.clone();
    hijack.reporting_instance = "n1".into();
    assert_eq!(
        code(events.replace(&hijack).await),
        403,
        "another node's event stays theirs"
    );
    assert_eq!(
        code(events.list(&ListParams::default()).await),
        403,
        "nodes do not list events"
    );
    assert_eq!(
        code(events.delete(&mine.metadata.name).await),
        403,
        "nor delete them"
    );

    // The tenant reads its namespace's events and writes none.
    let tenant_events = a.api::<wisp_api::Event>(Some("team-a"));
    let listed = tenant_events
        .list(&ListParams::default())
        .await
        .expect("tenant lists events");
    assert_eq!(listed.items.len(), 4, "{:?}", listed.items);
    assert_eq!(
        code(
            a.api::<wisp_api::Event>(Some("team-b"))
                .list(&ListParams::default())
                .await
        ),
        403
    );
    let forged = event("team-a", "Pod", "web", "Scheduled", "scheduler", "");
    let refused = message(tenant_events.create(&forged).await);
    assert!(
        refused.contains("Events are recorded by the cluster's components"),
        "{refused}"
    );
    assert_eq!(code(tenant_events.delete(&mine.metadata.name).await), 403);
    // An event in one namespace about an object in another is refused for everyone.
    let mut cross = event("team-a", "Pod", "web", "BackOff", "node-agent", "");
    cross.involved_object.namespace = Some("team-b".into());
    assert_eq!(
        code(
            s.admin
                .api::<wisp_api::Event>(Some("team-a"))
                .create(&cross)
                .await
        ),
        422
    );
}
