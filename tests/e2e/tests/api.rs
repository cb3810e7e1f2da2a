//! The API over real HTTP against the real `wisp` binary: semantics and every kind of bad
//! input, on the embedded store and (feature `etcd`) on a real etcd.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::Method;
use serde_json::{Value, json};
use wisp_api::{ConfigMap, EventType, ObjectMeta, Resource};
use wisp_client::{Client, ClientError, ListParams};
use wisp_e2e::{Options, Wisp};

fn cm(name: &str, value: &str) -> Value {
    json!({"apiVersion": "wisp.dev/v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": "demo"}}, "data": {"k": value}})
}

fn api_err(r: Result<impl std::fmt::Debug, ClientError>) -> Box<wisp_api::Status> {
    match r {
        Err(ClientError::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The next watch event that is not a BOOKMARK.
async fn next_change(
    s: &mut futures::stream::BoxStream<
        'static,
        Result<wisp_api::WatchEvent<wisp_api::DynamicObject>, ClientError>,
    >,
) -> wisp_api::WatchEvent<wisp_api::DynamicObject> {
    loop {
        let ev = s.next().await.expect("event").expect("ok");
        if ev.type_ != EventType::Bookmark {
            return ev;
        }
    }
}

const CM: &str = "/apis/wisp.dev/v1/namespaces/default/configmaps";

async fn raw(c: &Client, method: Method, path: &str, body: &'static str) -> Box<wisp_api::Status> {
    api_err(
        c.raw(method, path, Some(Bytes::from_static(body.as_bytes())))
            .await,
    )
}

/// Every case runs against one server; the macro expands a test per case and backend.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let w = super::Wisp::start(super::Options { args: vec!["--store-history".into(), "50".into(), "--bookmark-ms".into(), "300".into(), "--controllers".into(), "false".into()], ..Default::default() }).expect("start wisp");
                    super::$case(&w, None).await;
                }
            )*
        }
        #[cfg(feature = "etcd")]
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    // etcd over TLS with client certificates, as in production.
                    let etcd = wisp_e2e::EtcdServer::start_tls().expect("start etcd");
                    let store = format!("etcd://{}", etcd.endpoint.trim_start_matches("https://"));
                    let pki = etcd.tls_dir.clone().expect("TLS files");
                    let mut args: Vec<String> = vec!["--bookmark-ms".into(), "300".into(), "--controllers".into(), "false".into()];
                    for (flag, file) in [("--etcd-cafile", "ca.crt"), ("--etcd-certfile", "client.crt"), ("--etcd-keyfile", "client.key")] {
                        args.push(flag.into());
                        args.push(pki.join(file).display().to_string());
                    }
                    let w = super::Wisp::start(super::Options { store: Some(store), args, ..Default::default() }).expect("start wisp");
                    super::$case(&w, Some(&etcd)).await;
                }
            )*
        }
    };
}

cases!(
    crud_and_server_set_fields,
    status_subresource_and_generation,
    stale_update_conflicts,
    malformed_and_invalid_bodies,
    auth_and_namespaces,
    oversize_body_is_413,
    watch_streams_events_and_bookmarks,
    watch_from_compacted_revision_is_410,
    blobs_are_content_addressed,
    openapi_describes_every_kind,
    label_and_field_selectors,
    filtered_watch_sees_objects_enter_and_leave,
    secrets_are_encrypted_at_rest_and_string_data_is_write_only,
);

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        match std::fs::read_dir(&p) {
            Ok(entries) => stack.extend(entries.flatten().map(|e| e.path())),
            Err(_) if p.is_file() => out.push(p),
            Err(_) => {}
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A Secret's value is stored encrypted: it is in no file of the data directory and nowhere
/// in etcd's keyspace, and the API returns it decrypted; `stringData` is folded into `data`
/// and never returned.
async fn secrets_are_encrypted_at_rest_and_string_data_is_write_only(
    w: &Wisp,
    etcd: Option<&wisp_e2e::EtcdServer>,
) {
    use base64::Engine;
    let c = w.client();
    let value = format!("at-rest-probe-{}-{}", std::process::id(), etcd.is_some());
    let encoded = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
    let mut secret = wisp_api::Secret::new(ObjectMeta::namespaced("default", "probe"));
    secret.string_data.insert("token".into(), value.clone());
    let api = c.api::<wisp_api::Secret>(Some("default"));
    let created = api.create(&secret).await.expect("create the Secret");
    assert!(created.string_data.is_empty(), "stringData is write-only");
    assert_eq!(created.data.get("token"), Some(&encoded), "folded into data");
    let read = api.get("probe").await.expect("get");
    assert!(read.string_data.is_empty());
    assert_eq!(read.data.get("token"), Some(&encoded), "returned decrypted");
    let listed = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items[0].data.get("token"), Some(&encoded));
    let needles = [value.as_bytes(), encoded.as_bytes()];
    let files = files_under(&w.dir.join("data"));
    assert!(files.iter().any(|f| f.ends_with("encryption.keys")), "{files:?}");
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        for n in needles {
            assert!(
                !contains(&bytes, n),
                "the Secret's value is in {} in clear text",
                file.display()
            );
        }
    }
    #[cfg(feature = "etcd")]
    if let Some(etcd) = etcd {
        use wisp_store::Store;
        let store = wisp_store::etcd::EtcdStore::connect_with(
            std::slice::from_ref(&etcd.endpoint),
            etcd.tls.as_ref(),
        )
        .await
        .expect("connect to etcd");
        let all = store.list("/").await.expect("etcd's whole keyspace");
        assert!(
            all.items
                .iter()
                .any(|kv| kv.key.contains("/secrets/default/probe")),
            "the Secret is in etcd"
        );
        for kv in &all.items {
            for n in needles {
                assert!(
                    !contains(&kv.value, n),
                    "the Secret's value is in etcd at {} in clear text",
                    kv.key
                );
            }
        }
    }
    #[cfg(not(feature = "etcd"))]
    let _ = etcd;
}

async fn crud_and_server_set_fields(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    let created = c
        .create_dyn(kind, Some("default"), &cm("a", "1"))
        .await
        .expect("create");
    let m = &created.metadata;
    assert!(m.uid.as_deref().is_some_and(|u| u.len() == 36), "uid set: {m:?}");
    assert!(m.creation_timestamp.is_some());
    assert_eq!(m.generation, Some(1));
    assert_eq!(m.namespace.as_deref(), Some("default"));
    let rv1: i64 = m
        .resource_version
        .as_deref()
        .expect("rv")
        .parse()
        .expect("numeric rv");
    let got = c.get_dyn(kind, Some("default"), "a").await.expect("get");
    assert_eq!(got, created);
    let again = api_err(c.create_dyn(kind, Some("default"), &cm("a", "2")).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    let replaced = c
        .replace_dyn(kind, Some("default"), "a", &cm("a", "2"))
        .await
        .expect("replace");
    let rv2: i64 = replaced
        .metadata
        .resource_version
        .as_deref()
        .expect("rv")
        .parse()
        .expect("numeric");
    assert!(rv2 > rv1, "resourceVersion grows");
    assert_eq!(replaced.metadata.uid, created.metadata.uid, "uid is kept");
    assert_eq!(
        replaced.metadata.creation_timestamp,
        created.metadata.creation_timestamp
    );
    let list = c
        .list_dyn(kind, Some("default"), &ListParams::default())
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.kind, "ConfigMapList");
    c.delete_dyn(kind, Some("default"), "a").await.expect("delete");
    let gone = api_err(c.get_dyn(kind, Some("default"), "a").await);
    assert_eq!(gone.code, 404);
    let missing_ns = api_err(c.create_dyn(kind, Some("nope"), &cm("a", "1")).await);
    assert_eq!(missing_ns.code, 404, "{}", missing_ns.message);
    assert!(missing_ns.message.contains("nope"));
    // The typed API works over the same endpoints.
    let typed = c.api::<ConfigMap>(Some("default"));
    let mut obj = ConfigMap::new(ObjectMeta {
        name: "typed".into(),
        ..Default::default()
    });
    obj.data.insert("x".into(), "y".into());
    let made = typed.create(&obj).await.expect("typed create");
    assert_eq!(made.data.get("x").map(String::as_str), Some("y"));
}

async fn status_subresource_and_generation(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let kind = wisp_api::kind_by_plural("deployments").expect("kind");
    let dep = |image: &str| {
        json!({"apiVersion": "wisp.dev/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}},
               "status": {"replicas": 99}})
    };
    let created = c
        .create_dyn(kind, Some("default"), &dep("a:1"))
        .await
        .expect("create");
    assert!(
        created.status().is_none(),
        "status is not writable through create"
    );
    let mut with_status = serde_json::to_value(&created).expect("json");
    with_status["status"] = json!({"replicas": 1, "readyReplicas": 1, "observedGeneration": 1});
    let st = c
        .replace_status_dyn(kind, Some("default"), "web", &with_status)
        .await
        .expect("status");
    assert_eq!(st.status().and_then(|s| s.get("readyReplicas")), Some(&json!(1)));
    assert_eq!(
        st.metadata.generation,
        Some(1),
        "a status write does not bump generation"
    );
    // A spec change bumps generation and keeps the status.
    let updated = c
        .replace_dyn(kind, Some("default"), "web", &dep("a:2"))
        .await
        .expect("update");
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(
        updated.status().and_then(|s| s.get("readyReplicas")),
        Some(&json!(1)),
        "PUT keeps status"
    );
    // A label-only change does not bump generation.
    let mut labelled = dep("a:2");
    labelled["metadata"]["labels"] = json!({"team": "x"});
    let l = c
        .replace_dyn(kind, Some("default"), "web", &labelled)
        .await
        .expect("label update");
    assert_eq!(l.metadata.generation, Some(2));
}

async fn stale_update_conflicts(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    let created = c
        .create_dyn(kind, Some("default"), &cm("s", "1"))
        .await
        .expect("create");
    let rv = created.metadata.resource_version.clone().expect("rv");
    let mut first = cm("s", "2");
    first["metadata"]["resourceVersion"] = json!(rv);
    c.replace_dyn(kind, Some("default"), "s", &first)
        .await
        .expect("first writer wins");
    let mut second = cm("s", "3");
    second["metadata"]["resourceVersion"] = json!(rv);
    let err = api_err(c.replace_dyn(kind, Some("default"), "s", &second).await);
    assert_eq!(
        (err.code, err.reason.as_str()),
        (409, "Conflict"),
        "{}",
        err.message
    );
    assert!(err.message.contains("modified"), "{}", err.message);
    let now = c.get_dyn(kind, Some("default"), "s").await.expect("get");
    assert_eq!(
        now.body.get("data"),
        Some(&json!({"k": "2"})),
        "the stale write changed nothing"
    );
}

async fn malformed_and_invalid_bodies(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let bad_json = raw(&c, Method::POST, CM, "{\"apiVersion\": \"wisp.dev/v1\", ").await;
    assert_eq!(bad_json.code, 400);
    assert!(bad_json.message.contains("JSON"), "{}", bad_json.message);
    let not_object = raw(&c, Method::POST, CM, "[1,2]").await;
    assert_eq!(not_object.code, 400);
    let unknown_kind = raw(&c, Method::GET, "/apis/wisp.dev/v1/namespaces/default/frobs", "").await;
    assert_eq!(unknown_kind.code, 404);
    assert!(unknown_kind.message.contains("frobs"), "{}", unknown_kind.message);
    // Unknown field: 422 naming the full path.
    let unknown_field = raw(
        &c,
        Method::POST,
        "/apis/wisp.dev/v1/namespaces/default/pods",
        r#"{"apiVersion":"wisp.dev/v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"x","imagee":"y"}]}}"#,
    )
    .await;
    assert_eq!(unknown_field.code, 422, "{}", unknown_field.message);
    let causes = unknown_field.details.as_ref().expect("details").causes.clone();
    assert!(
        causes.iter().any(|c| c.field == "spec.containers[0].imagee"),
        "{causes:?}"
    );
    // Invalid name and several errors at once, each with its path.
    let invalid = raw(
        &c,
        Method::POST,
        "/apis/wisp.dev/v1/namespaces/default/pods",
        r#"{"apiVersion":"wisp.dev/v1","kind":"Pod","metadata":{"name":"Bad_Name","labels":{"ok":"bad value!"}},"spec":{"containers":[{"name":"c","image":"x","wasm":"sha256:00"},{"name":"d"}]}}"#,
    )
    .await;
    assert_eq!(invalid.code, 422);
    let fields: Vec<String> = invalid
        .details
        .as_ref()
        .expect("details")
        .causes
        .iter()
        .map(|c| c.field.clone())
        .collect();
    assert!(fields.contains(&"metadata.name".to_owned()), "{fields:?}");
    assert!(
        fields.iter().any(|f| f.starts_with("metadata.labels")),
        "{fields:?}"
    );
    assert!(fields.contains(&"spec.containers[0]".to_owned()), "{fields:?}");
    assert!(fields.contains(&"spec.containers[1]".to_owned()), "{fields:?}");
    // A value of the wrong shape (a bad quantity) names its path too.
    let quantity = raw(
        &c,
        Method::POST,
        "/apis/wisp.dev/v1/namespaces/default/pods",
        r#"{"apiVersion":"wisp.dev/v1","kind":"Pod","metadata":{"name":"q"},"spec":{"containers":[{"name":"d","image":"x","resources":{"limits":{"cpu":"5x"}}}]}}"#,
    )
    .await;
    assert_eq!(quantity.code, 422);
    let fields: Vec<String> = quantity
        .details
        .as_ref()
        .expect("details")
        .causes
        .iter()
        .map(|c| c.field.clone())
        .collect();
    assert_eq!(fields, ["spec.containers[0].resources.limits.cpu"]);
    // Kind in the body must match the URL.
    let wrong_kind = raw(
        &c,
        Method::POST,
        CM,
        r#"{"apiVersion":"wisp.dev/v1","kind":"Secret","metadata":{"name":"x"}}"#,
    )
    .await;
    assert_eq!(wrong_kind.code, 422, "{}", wrong_kind.message);
    // Namespace in body contradicting the URL.
    let wrong_ns = raw(
        &c,
        Method::POST,
        CM,
        r#"{"apiVersion":"wisp.dev/v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"other"}}"#,
    )
    .await;
    assert_eq!(wrong_ns.code, 400);
    // Name in the body must match the URL on update.
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    c.create_dyn(kind, Some("default"), &cm("n", "1"))
        .await
        .expect("create");
    let rename = api_err(c.replace_dyn(kind, Some("default"), "n", &cm("m", "1")).await);
    assert_eq!(rename.code, 400);
    // Bad selector and bad resourceVersion.
    let sel = raw(&c, Method::GET, &format!("{CM}?labelSelector=a%20in%20(b"), "").await;
    assert_eq!(sel.code, 400, "{}", sel.message);
    let rv = raw(
        &c,
        Method::GET,
        &format!("{CM}?watch=true&resourceVersion=abc"),
        "",
    )
    .await;
    assert_eq!(rv.code, 400);
    // Garbage bytes in every position never panic the server.
    for body in [
        "",
        "null",
        "\u{0}\u{1}",
        "{\"metadata\":5}",
        "{\"apiVersion\":1}",
        "{\"kind\":\"ConfigMap\",\"data\":[]}",
    ] {
        let s = raw(&c, Method::POST, CM, body).await;
        assert!(matches!(s.code, 400 | 422), "{body:?} gave {}", s.code);
    }
    let health = c
        .raw(Method::GET, "/healthz", None)
        .await
        .expect("server still healthy");
    assert!(health.status().is_success());
}

async fn auth_and_namespaces(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let admin = w.client();
    let ns = json!({"apiVersion": "wisp.dev/v1", "kind": "Namespace", "metadata": {"name": "team-a"}});
    admin
        .create_dyn(wisp_api::kind_by_plural("namespaces").expect("kind"), None, &ns)
        .await
        .expect("namespace");
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    let anonymous = w.client_as("");
    let missing = api_err(
        anonymous
            .list_dyn(kind, Some("default"), &ListParams::default())
            .await,
    );
    assert_eq!(missing.code, 401);
    let wrong = w.client_as("wisp_0000");
    assert_eq!(
        api_err(
            wrong
                .list_dyn(kind, Some("default"), &ListParams::default())
                .await
        )
        .code,
        401
    );
    // Health and readiness need no token; metrics do.
    for path in ["/healthz", "/readyz"] {
        assert!(
            anonymous.raw(Method::GET, path, None).await.is_ok(),
            "{path} is open"
        );
    }
    assert_eq!(
        api_err(anonymous.raw(Method::GET, "/metrics", None).await).code,
        401
    );
    assert!(admin.raw(Method::GET, "/metrics", None).await.is_ok());
    let blob = anonymous.raw(Method::GET, "/openapi/v3", None).await;
    assert_eq!(api_err(blob).code, 401, "everything else needs a token");
    let token = admin.create_token("team-a").await.expect("token");
    let team = w.client_as(&token);
    team.create_dyn(kind, Some("team-a"), &cm("mine", "1"))
        .await
        .expect("own namespace");
    assert_eq!(
        team.list_dyn(kind, Some("team-a"), &ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    let other = api_err(team.list_dyn(kind, Some("default"), &ListParams::default()).await);
    assert_eq!(other.code, 403, "{}", other.message);
    assert!(other.message.contains("team-a"));
    assert_eq!(
        api_err(team.create_dyn(kind, Some("default"), &cm("x", "1")).await).code,
        403
    );
    assert_eq!(
        api_err(team.list_dyn(kind, None, &ListParams::default()).await).code,
        403,
        "no cross-namespace list"
    );
    let nodes = wisp_api::kind_by_plural("nodes").expect("kind");
    assert_eq!(
        api_err(team.list_dyn(nodes, None, &ListParams::default()).await).code,
        403,
        "no cluster-scoped kinds"
    );
    assert_eq!(
        api_err(team.create_token("default").await).code,
        403,
        "only admins mint tokens"
    );
    let watch = team
        .watch_dyn(kind, Some("default"), &ListParams::default(), None)
        .await;
    assert_eq!(api_err(watch.map(|_| ())).code, 403);
}

async fn oversize_body_is_413(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let big = "x".repeat(3 * 1024 * 1024 + 10);
    let body = serde_json::to_vec(&cm("big", &big)).expect("json");
    let err = api_err(c.raw(Method::POST, CM, Some(Bytes::from(body))).await);
    assert_eq!(err.code, 413, "{}", err.message);
    // A large object under both limits is fine.
    let ok = "x".repeat(900 * 1024);
    c.create_dyn(
        wisp_api::kind_by_plural("configmaps").expect("kind"),
        Some("default"),
        &cm("fine", &ok),
    )
    .await
    .expect("1 MiB object is accepted");
}

async fn watch_streams_events_and_bookmarks(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    c.create_dyn(kind, Some("default"), &cm("before", "1"))
        .await
        .expect("create");
    let list = c
        .list_dyn(kind, Some("default"), &ListParams::default())
        .await
        .expect("list");
    let rv = list.metadata.resource_version.clone().expect("list rv");
    // Without a resourceVersion: the current state as ADDED first.
    let mut initial = c
        .watch_dyn(kind, Some("default"), &ListParams::default(), None)
        .await
        .expect("watch");
    let first = initial.next().await.expect("event").expect("ok");
    assert_eq!(
        (first.type_, first.object.metadata.name.as_str()),
        (EventType::Added, "before")
    );
    let mut s = c
        .watch_dyn(kind, Some("default"), &ListParams::default(), Some(&rv))
        .await
        .expect("watch");
    let created = c
        .create_dyn(kind, Some("default"), &cm("w", "1"))
        .await
        .expect("create");
    c.replace_dyn(kind, Some("default"), "w", &cm("w", "2"))
        .await
        .expect("update");
    c.delete_dyn(kind, Some("default"), "w").await.expect("delete");
    let mut seen = Vec::new();
    let mut bookmark_rv = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bookmark_rv.is_none() && tokio::time::Instant::now() < deadline {
        let ev = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("event in time")
            .expect("open")
            .expect("ok");
        if ev.type_ == EventType::Bookmark {
            bookmark_rv = ev.object.metadata.resource_version.clone();
        } else {
            seen.push((ev.type_, ev.object.metadata.name.clone()));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Added, "w".to_owned()),
            (EventType::Modified, "w".to_owned()),
            (EventType::Deleted, "w".to_owned())
        ]
    );
    let b: i64 = bookmark_rv
        .expect("a BOOKMARK after a quiet period")
        .parse()
        .expect("numeric");
    assert!(
        b > created
            .metadata
            .resource_version
            .as_deref()
            .expect("rv")
            .parse::<i64>()
            .expect("n")
    );
    // Resuming from the bookmark sees only later changes.
    let mut resumed = c
        .watch_dyn(
            kind,
            Some("default"),
            &ListParams::default(),
            Some(&b.to_string()),
        )
        .await
        .expect("watch");
    c.create_dyn(kind, Some("default"), &cm("after", "1"))
        .await
        .expect("create");
    let ev = next_change(&mut resumed).await;
    assert_eq!(
        (ev.type_, ev.object.metadata.name.as_str()),
        (EventType::Added, "after")
    );
    // Label-filtered watch only sees matching objects.
    let params = ListParams {
        label_selector: Some("app=other".into()),
        field_selector: None,
    };
    let now = c
        .list_dyn(kind, Some("default"), &params)
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut filtered = c
        .watch_dyn(kind, Some("default"), &params, Some(&now))
        .await
        .expect("watch");
    c.create_dyn(kind, Some("default"), &cm("skip", "1"))
        .await
        .expect("create");
    let mut other = cm("match", "1");
    other["metadata"]["labels"] = json!({"app": "other"});
    c.create_dyn(kind, Some("default"), &other).await.expect("create");
    let ev = next_change(&mut filtered).await;
    assert_eq!(ev.object.metadata.name, "match");
}

async fn watch_from_compacted_revision_is_410(w: &Wisp, etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    let first = c
        .create_dyn(kind, Some("default"), &cm("c", "0"))
        .await
        .expect("create");
    let rv = first.metadata.resource_version.clone().expect("rv");
    match etcd {
        // The embedded store runs with --store-history 50 here: 1,100 writes compact past `rv`.
        None => {
            for i in 0..1100 {
                c.replace_dyn(kind, Some("default"), "c", &cm("c", &i.to_string()))
                    .await
                    .expect("update");
            }
        }
        // etcd keeps history until an operator compacts it: do that, as an operator would.
        Some(etcd) => Box::pin(compact_etcd(etcd, &c)).await,
    }
    let err = api_err(
        c.watch_dyn(kind, Some("default"), &ListParams::default(), Some(&rv))
            .await
            .map(|_| ()),
    );
    assert_eq!(
        (err.code, err.reason.as_str()),
        (410, "Expired"),
        "{}",
        err.message
    );
    // A watcher recovers by re-listing: the resumable watcher does that on its own.
    let api = c.api::<ConfigMap>(Some("default"));
    let mut watcher = api.watcher(wisp_client::WatchParams::default());
    match watcher.next().await.expect("relist") {
        wisp_client::WatcherEvent::Restarted(items) => assert!(items.iter().any(|o| o.metadata.name == "c")),
        other => panic!("expected a fresh list, got {other:?}"),
    }
}

#[cfg(feature = "etcd")]
async fn compact_etcd(etcd: &wisp_e2e::EtcdServer, c: &Client) {
    use wisp_store::Store;
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    for i in 0..5 {
        c.replace_dyn(kind, Some("default"), "c", &cm("c", &i.to_string()))
            .await
            .expect("update");
    }
    let store =
        wisp_store::etcd::EtcdStore::connect_with(std::slice::from_ref(&etcd.endpoint), etcd.tls.as_ref())
            .await
            .expect("connect");
    let now = store.revision().await.expect("revision");
    store.compact(now).await.expect("compact");
}

#[cfg(not(feature = "etcd"))]
async fn compact_etcd(_etcd: &wisp_e2e::EtcdServer, _c: &Client) {
    unreachable!("etcd cases only exist with the etcd feature")
}

async fn blobs_are_content_addressed(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let data = Bytes::from_static(b"\0asm\x01\0\0\0 fake component bytes");
    let digest = c.put_blob(data.clone()).await.expect("put");
    assert!(digest.starts_with("sha256:"));
    assert_eq!(c.get_blob(&digest).await.expect("get"), data);
    let wrong = format!("/blobs/sha256:{}", "0".repeat(64));
    let mismatch = api_err(c.raw(Method::PUT, &wrong, Some(data.clone())).await);
    assert_eq!(mismatch.code, 400);
    assert!(mismatch.message.contains("mismatch"), "{}", mismatch.message);
    assert_eq!(
        api_err(c.get_blob(&format!("sha256:{}", "1".repeat(64))).await).code,
        404
    );
    assert_eq!(api_err(c.get_blob("md5:abc").await).code, 400);
}

async fn openapi_describes_every_kind(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let resp = c.raw(Method::GET, "/openapi/v3", None).await.expect("openapi");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let doc: Value = serde_json::from_slice(&body).expect("json");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for kind in wisp_api::KINDS {
        assert!(
            doc["components"]["schemas"][kind.kind].is_object(),
            "schema for {}",
            kind.kind
        );
        let collection = if kind.namespaced {
            format!("/apis/wisp.dev/v1/namespaces/{{namespace}}/{}", kind.plural)
        } else {
            format!("/apis/wisp.dev/v1/{}", kind.plural)
        };
        assert!(
            doc["paths"][&collection]["post"].is_object(),
            "create path for {}",
            kind.kind
        );
        assert!(doc["paths"][format!("{collection}/{{name}}/status")]["put"].is_object());
    }
    // The Pod schema is generated from the types: it knows the container fields.
    let text = body.iter().map(|b| char::from(*b)).collect::<String>();
    assert!(text.contains("allowedOutboundHosts"));
}

async fn label_and_field_selectors(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    for (name, app) in [("a", "web"), ("b", "web"), ("c", "db")] {
        let mut o = cm(name, "1");
        o["metadata"]["labels"] = json!({"app": app});
        c.create_dyn(kind, Some("default"), &o).await.expect("create");
    }
    let names = |l: wisp_api::List<wisp_api::DynamicObject>| {
        l.items.into_iter().map(|o| o.metadata.name).collect::<Vec<_>>()
    };
    let p = |l: &str, f: Option<&str>| ListParams {
        label_selector: Some(l.into()),
        field_selector: f.map(Into::into),
    };
    assert_eq!(
        names(
            c.list_dyn(kind, Some("default"), &p("app=web", None))
                .await
                .expect("list")
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            c.list_dyn(kind, Some("default"), &p("app in (db,x)", None))
                .await
                .expect("list")
        ),
        ["c"]
    );
    assert_eq!(
        names(
            c.list_dyn(kind, Some("default"), &p("app!=web", None))
                .await
                .expect("list")
        ),
        ["c"]
    );
    assert_eq!(
        names(
            c.list_dyn(kind, Some("default"), &p("", Some("metadata.name=b")))
                .await
                .expect("list")
        ),
        ["b"]
    );
    // All namespaces (admin).
    assert_eq!(
        c.list_dyn(kind, None, &p("app", None))
            .await
            .expect("list")
            .items
            .len(),
        3
    );
}

async fn filtered_watch_sees_objects_enter_and_leave(w: &Wisp, _etcd: Option<&wisp_e2e::EtcdServer>) {
    let c = w.client();
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    let with_app = |app: &str, v: &str| {
        let mut o = cm("x", v);
        o["metadata"]["labels"] = json!({"app": app});
        o
    };
    c.create_dyn(kind, Some("default"), &with_app("web", "0"))
        .await
        .expect("create");
    let params = ListParams {
        label_selector: Some("app=web".into()),
        field_selector: None,
    };
    let rv = c
        .list_dyn(kind, Some("default"), &params)
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut s = c
        .watch_dyn(kind, Some("default"), &params, Some(&rv))
        .await
        .expect("watch");
    c.replace_dyn(kind, Some("default"), "x", &with_app("web", "1"))
        .await
        .expect("modify inside");
    c.replace_dyn(kind, Some("default"), "x", &with_app("old", "2"))
        .await
        .expect("leave");
    c.replace_dyn(kind, Some("default"), "x", &with_app("old", "3"))
        .await
        .expect("modify outside");
    c.replace_dyn(kind, Some("default"), "x", &with_app("web", "4"))
        .await
        .expect("enter");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        if ev.type_ != EventType::Bookmark {
            seen.push((
                ev.type_,
                ev.object.body["data"]["k"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
    }
    // Regression: a relabelled object used to vanish from a filtered watch without a DELETED.
    assert_eq!(
        seen,
        vec![
            (EventType::Modified, "1".into()),
            (EventType::Deleted, "2".into()),
            (EventType::Added, "4".into())
        ]
    );
}
