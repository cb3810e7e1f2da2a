use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wisp_api::{ConfigMap, ObjectMeta, Resource, Status};
use wisp_client::{ClientError, WatcherEvent};

use super::{CHANNEL_CAPACITY, Shared};
use crate::ObjectRef;

fn cm(name: &str, v: &str) -> ConfigMap {
    let mut c = ConfigMap::new(ObjectMeta::namespaced("default", name));
    c.data.insert("v".into(), v.into());
    c
}

type Tx = mpsc::UnboundedSender<Result<WatcherEvent<ConfigMap>, ClientError>>;

/// A shared cache fed from a channel, its feed running on a task.
fn fed() -> (
    Shared<ConfigMap>,
    Tx,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    let stop = CancellationToken::new();
    let (shared, feed) = Shared::from_events(events, stop.clone());
    (shared, tx, stop, tokio::spawn(feed))
}

fn names(ev: &WatcherEvent<ConfigMap>) -> Vec<String> {
    match ev {
        WatcherEvent::Restarted(objs) => {
            let mut n: Vec<String> = objs.iter().map(|o| format!("={}", o.metadata.name)).collect();
            n.sort();
            n
        }
        WatcherEvent::Applied(o) => vec![format!("+{}:{}", o.metadata.name, o.data["v"])],
        WatcherEvent::Deleted(o) => vec![format!("-{}", o.metadata.name)],
    }
}

async fn next(
    s: &mut futures::stream::BoxStream<'static, Result<WatcherEvent<ConfigMap>, ClientError>>,
) -> Vec<String> {
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("no error");
    names(&ev)
}

#[tokio::test]
async fn every_subscriber_sees_the_list_then_each_later_event_once() {
    let (shared, tx, stop, task) = fed();
    // Subscribed before the first list: the list arrives as the feed's own Restarted.
    let mut early = shared.subscribe();
    tx.send(Ok(WatcherEvent::Restarted(vec![cm("a", "1"), cm("b", "1")])))
        .expect("send");
    assert_eq!(next(&mut early).await, vec!["=a", "=b"]);
    assert!(shared.store().wait_ready().await);
    // Subscribed after: the cache's contents as a snapshot, then only what came later.
    tx.send(Ok(WatcherEvent::Applied(cm("a", "2")))).expect("send");
    assert_eq!(next(&mut early).await, vec!["+a:2"]);
    let mut late = shared.subscribe();
    assert_eq!(next(&mut late).await, vec!["=a", "=b"]);
    tx.send(Ok(WatcherEvent::Deleted(cm("b", "1")))).expect("send");
    assert_eq!(next(&mut early).await, vec!["-b"]);
    assert_eq!(next(&mut late).await, vec!["-b"]);
    let a = ObjectRef::new("a").within("default");
    assert_eq!(
        shared.store().get(&a).map(|c| c.data["v"].clone()),
        Some("2".into())
    );
    assert_eq!(shared.store().len(), 1);
    // The watch stops: every subscriber's stream ends.
    stop.cancel();
    task.await.expect("feed ends");
    assert!(early.next().await.is_none() && late.next().await.is_none());
    assert!(
        shared.subscribe().next().await.is_none(),
        "nothing to join once stopped"
    );
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_caught_up_with_a_snapshot() {
    let (shared, tx, stop, task) = fed();
    tx.send(Ok(WatcherEvent::Restarted(vec![cm("a", "0")])))
        .expect("send");
    let mut slow = shared.subscribe();
    let mut fast = shared.subscribe();
    assert_eq!(next(&mut slow).await, vec!["=a"]);
    // The first list arrives at `fast` as the broadcast Restarted (it joined before it).
    assert_eq!(next(&mut fast).await, vec!["=a"]);
    let total = CHANNEL_CAPACITY + 10;
    for i in 1..=total {
        tx.send(Ok(WatcherEvent::Applied(cm("a", &i.to_string()))))
            .expect("send");
        if i % 64 == 0 {
            // Keep `fast` current and let the feed run.
            while shared
                .store()
                .get(&ObjectRef::new("a").within("default"))
                .map(|c| c.data["v"].clone())
                != Some(i.to_string())
            {
                tokio::task::yield_now().await;
            }
        }
    }
    while shared
        .store()
        .get(&ObjectRef::new("a").within("default"))
        .map(|c| c.data["v"].clone())
        != Some(total.to_string())
    {
        tokio::task::yield_now().await;
    }
    // `slow` never read: it gets the whole cache as it is now, not 1,034 stale events.
    assert_eq!(next(&mut slow).await, vec!["=a"]);
    tx.send(Ok(WatcherEvent::Applied(cm("a", "last")))).expect("send");
    assert_eq!(next(&mut slow).await, vec!["+a:last"]);
    stop.cancel();
    task.await.expect("feed ends");
    drop(fast);
}

#[tokio::test]
async fn a_watch_error_reaches_every_subscriber() {
    let (shared, tx, stop, task) = fed();
    let mut sub = shared.subscribe();
    let status = Status::failure(403, "Forbidden", "pods is forbidden");
    tx.send(Err(ClientError::Api(Box::new(status)))).expect("send");
    let err = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect_err("the error");
    assert_eq!(err.code(), Some(403));
    stop.cancel();
    task.await.expect("feed ends while pausing after the error");
}
