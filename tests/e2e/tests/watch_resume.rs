//! The client's resumable watch across a server crash: it reconnects from the last
//! resourceVersion it saw and misses nothing, without a re-list.

use std::time::Duration;

use serde_json::json;
use wisp_api::ConfigMap;
use wisp_client::{WatchParams, WatcherEvent};
use wisp_e2e::{Options, Wisp};

async fn next(w: &mut wisp_client::Watcher<ConfigMap>) -> WatcherEvent<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("event in time")
        .expect("event")
}

fn name(ev: &WatcherEvent<ConfigMap>) -> String {
    match ev {
        WatcherEvent::Applied(o) => format!("applied {}", o.metadata.name),
        WatcherEvent::Deleted(o) => format!("deleted {}", o.metadata.name),
        WatcherEvent::Restarted(items) => format!("restarted with {}", items.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_after_server_restart() {
    let port = wisp_store::testutil::free_port().expect("port");
    let mut w = Wisp::start(Options {
        listen: Some(format!("127.0.0.1:{port}")),
        ..Options::default()
    })
    .expect("start wisp");
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    let c = w.client();
    let cm = |n: &str| json!({"apiVersion":"wisp.dev/v1","kind":"ConfigMap","metadata":{"name":n}});
    c.create_dyn(kind, Some("default"), &cm("a"))
        .await
        .expect("create");
    let api = c.api::<ConfigMap>(Some("default"));
    let mut watcher = api.watcher(WatchParams {
        retry: Duration::from_millis(50),
        ..WatchParams::default()
    });
    assert_eq!(name(&next(&mut watcher).await), "restarted with 1");
    c.create_dyn(kind, Some("default"), &cm("b"))
        .await
        .expect("create");
    assert_eq!(name(&next(&mut watcher).await), "applied b");
    // Crash the server; changes happen while the watcher is disconnected.
    w.kill();
    w.restart().expect("restart on the same port");
    let c = w.client();
    c.create_dyn(kind, Some("default"), &cm("c"))
        .await
        .expect("create");
    c.delete_dyn(kind, Some("default"), "a").await.expect("delete");
    assert_eq!(
        name(&next(&mut watcher).await),
        "applied c",
        "resumed from its last resourceVersion"
    );
    assert_eq!(name(&next(&mut watcher).await), "deleted a");
}
