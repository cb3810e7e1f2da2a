//! Controller wiring with in-memory event sources and paused time.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio::time::Instant;
use wisp_api::{ConfigMap, ObjectMeta, OwnerReference};

use super::*;

type Tx = mpsc::UnboundedSender<Result<WatcherEvent<ConfigMap>, ClientError>>;

fn channel() -> (
    Tx,
    impl Stream<Item = Result<WatcherEvent<ConfigMap>, ClientError>> + Send,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let s = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    (tx, s)
}

fn cm(name: &str, v: &str) -> ConfigMap {
    let mut c = ConfigMap::new(ObjectMeta::namespaced("default", name));
    c.data.insert("v".into(), v.into());
    c
}

fn child_of(name: &str, owner: &str) -> ConfigMap {
    let mut c = cm(name, "child");
    c.metadata.owner_references.push(OwnerReference {
        kind: "ConfigMap".into(),
        name: owner.into(),
        ..OwnerReference::default()
    });
    c
}

#[derive(Default)]
struct Ctx {
    /// (name, data.v, offset from start in ms)
    seen: Mutex<Vec<(String, String, u128)>>,
    fail: bool,
}

impl Ctx {
    fn seen(&self) -> Vec<(String, String, u128)> {
        self.seen.lock().expect("lock").clone()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("boom")]
struct Boom;

fn start(
    controller: Controller<ConfigMap>,
    ctx: Arc<Ctx>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let t0 = Instant::now();
    let shutdown = CancellationToken::new();
    let reconcile = move |obj: Arc<ConfigMap>, ctx: Arc<Ctx>| async move {
        let v = obj.data.get("v").cloned().unwrap_or_default();
        let at = t0.elapsed().as_millis();
        ctx.seen
            .lock()
            .expect("lock")
            .push((obj.metadata.name.clone(), v, at));
        tokio::time::sleep(Duration::from_millis(50)).await;
        if ctx.fail {
            Err(Boom)
        } else {
            Ok(Action::await_change())
        }
    };
    let policy = |_: Arc<ConfigMap>, _: &Boom, _: Arc<Ctx>| Action::await_change();
    let handle = tokio::spawn(controller.run(reconcile, policy, ctx, shutdown.clone()));
    (shutdown, handle)
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn reconciles_latest_state_and_skips_deleted_objects() {
    let (tx, events) = channel();
    let (ctx, child_events) = channel();
    let controller = Controller::from_events(events)
        .owns_events(child_events)
        .resync(None);
    let store = controller.store();
    let state = Arc::new(Ctx::default());
    let (shutdown, handle) = start(controller, state.clone());

    // A child event before the first list waits for the cache, then reconciles its owner.
    ctx.send(Ok(WatcherEvent::Applied(child_of("c1", "a"))))
        .expect("send");
    tx.send(Ok(WatcherEvent::Restarted(vec![cm("a", "1"), cm("b", "1")])))
        .expect("send");
    settle().await;
    assert!(store.ready());
    let mut names: Vec<String> = state.seen().into_iter().map(|s| s.0).collect();
    names.sort();
    assert_eq!(
        names,
        ["a", "a", "b"],
        "child trigger ran once, then the list's trigger once"
    );

    // Several changes while the reconcile runs: it runs once more, with the latest object.
    tx.send(Ok(WatcherEvent::Applied(cm("a", "2")))).expect("send");
    tokio::time::sleep(Duration::from_millis(10)).await;
    tx.send(Ok(WatcherEvent::Applied(cm("a", "3")))).expect("send");
    tx.send(Ok(WatcherEvent::Applied(cm("a", "4")))).expect("send");
    settle().await;
    let after: Vec<String> = state.seen()[3..].iter().map(|s| s.1.clone()).collect();
    assert_eq!(after, ["2", "4"]);

    // A deleted owner is never reconciled, even when a child event names it.
    tx.send(Ok(WatcherEvent::Deleted(cm("b", "1")))).expect("send");
    ctx.send(Ok(WatcherEvent::Deleted(child_of("c2", "b"))))
        .expect("send");
    settle().await;
    assert_eq!(state.seen().len(), 5);

    shutdown.cancel();
    handle.await.expect("controller");
}

#[tokio::test(start_paused = true)]
async fn resyncs_periodically() {
    let (tx, events) = channel();
    let controller = Controller::from_events(events).resync(Some(Duration::from_secs(60)));
    let state = Arc::new(Ctx::default());
    let (shutdown, handle) = start(controller, state.clone());
    tx.send(Ok(WatcherEvent::Restarted(vec![cm("a", "1")])))
        .expect("send");
    tokio::time::sleep(Duration::from_secs(150)).await;
    let at: Vec<u128> = state.seen().iter().map(|s| s.2 / 1000).collect();
    assert_eq!(at, [0, 60, 120]);
    shutdown.cancel();
    handle.await.expect("controller");
}

#[tokio::test(start_paused = true)]
async fn errors_are_retried_with_backoff() {
    let (tx, events) = channel();
    let controller = Controller::from_events(events).resync(None);
    let state = Arc::new(Ctx {
        fail: true,
        ..Ctx::default()
    });
    let (shutdown, handle) = start(controller, state.clone());
    tx.send(Ok(WatcherEvent::Restarted(vec![cm("a", "1")])))
        .expect("send");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Each run takes 50ms, then waits 100ms, 200ms, 400ms of backoff.
    let at: Vec<u128> = state.seen().iter().map(|s| s.2 / 10).collect();
    assert_eq!(at, [0, 15, 40, 85]);
    shutdown.cancel();
    handle.await.expect("controller");
}
