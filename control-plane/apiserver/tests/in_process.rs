//! The in-process client (`ApiServer::in_process_client`, what `wisp up`'s own components use)
//! reaches the same handler as HTTP: authentication, namespace confinement, validation,
//! compare-and-swap and watch all apply — and it needs no socket (its URL points nowhere).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use wisp_api::{ConfigMap, EventType, ObjectMeta};
use wisp_apiserver::testutil::InProcessClient;
use wisp_apiserver::{ApiServer, Config};
use wisp_client::{Client, ListParams};

/// Nothing listens here: a request that went over a socket would fail to connect.
const NOWHERE: &str = "http://127.0.0.1:1";

async fn server() -> (ApiServer, String, tempfile::TempDir) {
    server_with(|_| {}).await
}

async fn server_with(tune: impl FnOnce(&mut Config)) -> (ApiServer, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = wisp_store::EmbeddedStore::open(dir.path(), Default::default()).expect("store");
    let mut config = Config::new(dir.path().join("blobs"));
    tune(&mut config);
    let api = ApiServer::new(Arc::new(store), config, CancellationToken::new());
    let token = api.bootstrap().await.expect("bootstrap").expect("admin token");
    (api, token, dir)
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        api_version: wisp_api::API_VERSION.into(),
        kind: "ConfigMap".into(),
        metadata: ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        data: [("k".to_owned(), value.to_owned())].into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn crud_cas_and_watch_without_a_socket() {
    let (api, token, _dir) = server().await;
    let client = api.in_process_client(NOWHERE, &token);
    assert_eq!(
        client.server(),
        NOWHERE,
        "the address is kept for those who hand it on"
    );
    let cms = client.api::<ConfigMap>(Some("default"));

    let created = cms.create(&config_map("a", "1")).await.expect("create");
    let rv = created
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion set");
    assert!(created.metadata.uid.is_some(), "server-set metadata");
    let mut watch = cms
        .watch(&ListParams::default(), Some(&rv))
        .await
        .expect("watch from the create");

    let mut next = created.clone();
    next.data.insert("k".into(), "2".into());
    let updated = cms
        .replace(&next)
        .await
        .expect("update with the current resourceVersion");
    // Compare-and-swap: the first resourceVersion is stale now.
    let stale = cms.replace(&next).await.expect_err("stale resourceVersion");
    assert_eq!(stale.code(), Some(409), "{stale}");

    let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a watch event within 10 s")
        .expect("stream open")
        .expect("event decodes");
    assert_eq!(ev.type_, EventType::Modified);
    assert_eq!(ev.object.data.get("k").map(String::as_str), Some("2"));
    assert_eq!(
        ev.object.metadata.resource_version,
        updated.metadata.resource_version
    );

    let got = cms.get("a").await.expect("get");
    assert_eq!(got, updated);
    assert_eq!(
        cms.list(&ListParams::default()).await.expect("list").items.len(),
        1
    );
}

#[tokio::test]
async fn validation_and_authentication_still_apply() {
    let (api, token, _dir) = server().await;
    let client = api.in_process_client(NOWHERE, &token);

    // Validation names the field.
    let bad = client
        .api::<ConfigMap>(Some("default"))
        .create(&config_map("Not_A_Name", "1"))
        .await
        .expect_err("invalid name");
    assert_eq!(bad.code(), Some(422), "{bad}");
    assert!(bad.to_string().contains("metadata.name"), "{bad}");

    // No valid token, no access.
    let stranger = api.in_process_client(NOWHERE, "not-a-token");
    let denied = stranger
        .api::<ConfigMap>(Some("default"))
        .list(&ListParams::default())
        .await
        .expect_err("unknown token");
    assert_eq!(denied.code(), Some(401), "{denied}");

    // A namespace token stays in its namespace.
    let ns_token = client.create_token("default").await.expect("namespace token");
    let confined = api.in_process_client(NOWHERE, &ns_token);
    confined
        .api::<ConfigMap>(Some("default"))
        .list(&ListParams::default())
        .await
        .expect("its own namespace");
    let outside = confined
        .api::<ConfigMap>(Some("wisp-system"))
        .list(&ListParams::default())
        .await
        .expect_err("another namespace");
    assert_eq!(outside.code(), Some(403), "{outside}");

    // The HTTP client of the same address fails to connect: nothing above used a socket.
    let over_http = Client::new(NOWHERE, &token)
        .api::<ConfigMap>(Some("default"))
        .list(&ListParams::default())
        .await
        .expect_err("nothing listens");
    assert_eq!(over_http.code(), None, "{over_http}");
}

/// The concurrency limit's permit is held while a request is handled, not while its body is
/// read: with a limit of one, an open watch (in process or over HTTP) leaves room for the
/// next request.
#[tokio::test]
async fn an_open_watch_holds_no_permit() {
    let (api, token, _dir) = server_with(|c| c.concurrency_limit = 1).await;
    let client = api.in_process_client(NOWHERE, &token);
    let cms = client.api::<ConfigMap>(Some("default"));
    let mut watch = cms.watch(&ListParams::default(), None).await.expect("watch");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let served = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(wisp_apiserver::serve(
        api.clone(),
        listener,
        stop.clone(),
    )));
    let over_http = Client::new(&url, &token);
    let mut http_watch = over_http
        .api::<ConfigMap>(Some("default"))
        .watch(&ListParams::default(), None)
        .await
        .expect("watch over HTTP");
    // Both watches are open; a write through either way still gets its permit.
    let created = tokio::time::timeout(Duration::from_secs(10), cms.create(&config_map("b", "1")))
        .await
        .expect("not starved by the open watches")
        .expect("create");
    tokio::time::timeout(
        Duration::from_secs(10),
        over_http.api::<ConfigMap>(Some("default")).get("b"),
    )
    .await
    .expect("not starved by the open watches")
    .expect("get over HTTP");
    for w in [&mut watch, &mut http_watch] {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("an event within 10 s")
            .expect("stream open")
            .expect("event decodes");
        assert_eq!(ev.type_, EventType::Added);
        assert_eq!(ev.object.metadata.uid, created.metadata.uid);
    }
    stop.cancel();
    drop((watch, http_watch));
    served.await.expect("server task").expect("served");
}
