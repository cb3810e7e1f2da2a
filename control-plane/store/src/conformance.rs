//! The store conformance suite: every case takes any [`Store`] and a key prefix of its own,
//! so the same assertions run against the embedded backend and against a real etcd.
//!
//! Use [`store_conformance!`](crate::store_conformance) in an integration test to get one
//! `#[tokio::test]` per case.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::{EventKind, Store, StoreError, WatchStream};

/// Every case's name; the macro expands one test per name.
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@cases $make;
            create_get, create_existing_fails, update_compare_and_swap, delete_semantics,
            list_prefix, revisions_increase, watch_live_events, watch_replays_history,
            watch_filters_prefix, watch_compacted_fails, lease_expiry_deletes_keys,
            lease_keep_alive_and_revoke, create_with_unknown_lease_fails,
            concurrent_creates_get_distinct_revisions, concurrent_cas_counter, large_values_and_lists);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make.await;
                $crate::conformance::$case(store, concat!("/conf/", stringify!($case), "/")).await;
            }
        )*
    };
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(w: &mut WatchStream) -> crate::Event {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch event within 10 s")
        .expect("watch stream ended")
        .expect("watch event is not an error")
}

pub async fn create_get(s: Arc<dyn Store>, p: &str) {
    let key = format!("{p}a");
    let rev = s.create(&key, b("one"), None).await.expect("create");
    let kv = s.get(&key).await.expect("get").expect("key present");
    assert_eq!(kv.value, b("one"));
    assert_eq!(kv.create_revision, rev);
    assert_eq!(kv.mod_revision, rev);
    assert_eq!(kv.lease, None);
    assert!(s.get(&format!("{p}missing")).await.expect("get").is_none());
}

pub async fn create_existing_fails(s: Arc<dyn Store>, p: &str) {
    let key = format!("{p}a");
    s.create(&key, b("one"), None).await.expect("create");
    let err = s
        .create(&key, b("two"), None)
        .await
        .expect_err("second create must fail");
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(s.get(&key).await.expect("get").expect("present").value, b("one"));
}

pub async fn update_compare_and_swap(s: Arc<dyn Store>, p: &str) {
    let key = format!("{p}a");
    let r1 = s.create(&key, b("v1"), None).await.expect("create");
    let r2 = s
        .update(&key, b("v2"), Some(r1))
        .await
        .expect("CAS update with current revision");
    assert!(r2 > r1);
    let err = s
        .update(&key, b("stale"), Some(r1))
        .await
        .expect_err("stale CAS must fail");
    match err {
        StoreError::Conflict { expected, actual, .. } => {
            assert_eq!(expected, r1);
            assert_eq!(actual, r2);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let r3 = s.update(&key, b("v3"), None).await.expect("unconditional update");
    let kv = s.get(&key).await.expect("get").expect("present");
    assert_eq!((kv.value, kv.create_revision, kv.mod_revision), (b("v3"), r1, r3));
    let err = s
        .update(&format!("{p}missing"), b("x"), None)
        .await
        .expect_err("update of missing key");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

pub async fn delete_semantics(s: Arc<dyn Store>, p: &str) {
    let key = format!("{p}a");
    let r1 = s.create(&key, b("v1"), None).await.expect("create");
    let r2 = s.update(&key, b("v2"), None).await.expect("update");
    let err = s.delete(&key, Some(r1)).await.expect_err("stale CAS delete");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let prev = s.delete(&key, Some(r2)).await.expect("CAS delete");
    assert_eq!(prev.value, b("v2"));
    assert!(prev.mod_revision > r2, "delete reports its own revision");
    assert!(s.get(&key).await.expect("get").is_none());
    let err = s.delete(&key, None).await.expect_err("delete of missing key");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // A deleted key can be created again with a fresh create revision.
    let r4 = s.create(&key, b("again"), None).await.expect("re-create");
    assert_eq!(
        s.get(&key).await.expect("get").expect("present").create_revision,
        r4
    );
}

pub async fn list_prefix(s: Arc<dyn Store>, p: &str) {
    let dir = format!("{p}items/");
    for name in ["c", "a", "b"] {
        s.create(&format!("{dir}{name}"), b(name), None)
            .await
            .expect("create");
    }
    s.create(&format!("{p}items-other"), b("x"), None)
        .await
        .expect("create");
    s.create(&format!("{p}item"), b("x"), None).await.expect("create");
    let listing = s.list(&dir).await.expect("list");
    let keys: Vec<_> = listing
        .items
        .iter()
        .map(|kv| kv.key.trim_start_matches(&dir).to_owned())
        .collect();
    assert_eq!(keys, ["a", "b", "c"]);
    let newest = listing
        .items
        .iter()
        .map(|kv| kv.mod_revision)
        .max()
        .expect("items");
    assert!(
        listing.revision >= newest,
        "list revision {} < item revision {newest}",
        listing.revision
    );
    assert!(
        s.list(&format!("{p}nothing/"))
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

pub async fn revisions_increase(s: Arc<dyn Store>, p: &str) {
    let mut last = s.revision().await.expect("revision");
    for i in 0..20 {
        let key = format!("{p}{i}");
        let r = s.create(&key, b("x"), None).await.expect("create");
        assert!(r > last, "revision went from {last} to {r}");
        let r2 = s.update(&key, b("y"), Some(r)).await.expect("update");
        assert!(r2 > r);
        last = r2;
    }
    assert!(s.revision().await.expect("revision") >= last);
}

pub async fn watch_live_events(s: Arc<dyn Store>, p: &str) {
    let start = s.revision().await.expect("revision");
    let mut w = s.watch(p, start).await.expect("watch");
    let key = format!("{p}a");
    let r1 = s.create(&key, b("v1"), None).await.expect("create");
    let r2 = s.update(&key, b("v2"), Some(r1)).await.expect("update");
    let deleted = s.delete(&key, None).await.expect("delete");
    let e1 = next_event(&mut w).await;
    assert_eq!(
        (e1.kind, e1.revision, e1.kv.value.clone()),
        (EventKind::Added, r1, b("v1"))
    );
    let e2 = next_event(&mut w).await;
    assert_eq!(
        (e2.kind, e2.revision, e2.kv.value.clone()),
        (EventKind::Modified, r2, b("v2"))
    );
    assert_eq!(e2.kv.create_revision, r1);
    let prev = e2
        .prev
        .clone()
        .expect("a modification carries the previous value");
    assert_eq!((prev.value, prev.mod_revision), (b("v1"), r1));
    assert!(e1.prev.is_none());
    let e3 = next_event(&mut w).await;
    assert_eq!(e3.kind, EventKind::Deleted);
    assert_eq!(e3.revision, deleted.mod_revision);
    assert_eq!(e3.kv.value, b("v2"), "a delete event carries the last value");
    assert_eq!(e3.kv.key, key);
}

pub async fn watch_replays_history(s: Arc<dyn Store>, p: &str) {
    let key = format!("{p}a");
    let r1 = s.create(&key, b("v1"), None).await.expect("create");
    let r2 = s.update(&key, b("v2"), None).await.expect("update");
    let r3 = s.update(&key, b("v3"), None).await.expect("update");
    // Resume after r1: must see exactly r2 then r3, then live events.
    let mut w = s.watch(p, r1).await.expect("watch from the past");
    let replayed = next_event(&mut w).await;
    assert_eq!(replayed.revision, r2);
    assert_eq!(
        replayed.prev.map(|p| p.value),
        Some(b("v1")),
        "history keeps previous values"
    );
    assert_eq!(next_event(&mut w).await.revision, r3);
    let r4 = s.update(&key, b("v4"), None).await.expect("update");
    let e = next_event(&mut w).await;
    assert_eq!((e.revision, e.kv.value), (r4, b("v4")));
}

pub async fn watch_filters_prefix(s: Arc<dyn Store>, p: &str) {
    let start = s.revision().await.expect("revision");
    let mut w = s.watch(&format!("{p}mine/"), start).await.expect("watch");
    s.create(&format!("{p}other/x"), b("x"), None)
        .await
        .expect("create");
    s.create(&format!("{p}mine-not/x"), b("x"), None)
        .await
        .expect("create");
    let r = s
        .create(&format!("{p}mine/x"), b("x"), None)
        .await
        .expect("create");
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.revision, e.kv.key.as_str()),
        (r, format!("{p}mine/x").as_str())
    );
}

pub async fn watch_compacted_fails(s: Arc<dyn Store>, p: &str) {
    let key = format!("{p}a");
    let r1 = s.create(&key, b("v1"), None).await.expect("create");
    for i in 0..5 {
        s.update(&key, b(&format!("v{i}")), None).await.expect("update");
    }
    let now = s.update(&key, b("last"), None).await.expect("update");
    s.compact(now).await.expect("compact");
    let err = s
        .watch(p, r1)
        .await
        .err()
        .expect("watch from a compacted revision must fail");
    match err {
        StoreError::Compacted { requested, compacted } => {
            assert_eq!(requested, r1);
            assert!(compacted > r1);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // Watching from the compaction point still works.
    let mut w = s.watch(p, now).await.expect("watch from the current revision");
    let r = s.update(&key, b("after"), None).await.expect("update");
    assert_eq!(next_event(&mut w).await.revision, r);
}

pub async fn lease_expiry_deletes_keys(s: Arc<dyn Store>, p: &str) {
    let start = s.revision().await.expect("revision");
    let mut w = s.watch(p, start).await.expect("watch");
    let lease = s.lease_grant(Duration::from_secs(1)).await.expect("grant");
    let key = format!("{p}leased");
    s.create(&key, b("v"), Some(lease))
        .await
        .expect("create with lease");
    s.create(&format!("{p}plain"), b("v"), None)
        .await
        .expect("create");
    assert_eq!(
        s.get(&key).await.expect("get").expect("present").lease,
        Some(lease)
    );
    let mut deleted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < deadline {
        if s.get(&key).await.expect("get").is_none() {
            deleted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(deleted, "a key on an expired lease must vanish");
    assert!(s.get(&format!("{p}plain")).await.expect("get").is_some());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(next_event(&mut w).await);
    }
    assert_eq!(seen[2].kind, EventKind::Deleted);
    assert_eq!(seen[2].kv.key, key);
    let err = s
        .lease_keep_alive(lease)
        .await
        .expect_err("keep-alive of an expired lease");
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "{err:?}");
}

pub async fn lease_keep_alive_and_revoke(s: Arc<dyn Store>, p: &str) {
    let lease = s.lease_grant(Duration::from_secs(2)).await.expect("grant");
    let key = format!("{p}leased");
    s.create(&key, b("v"), Some(lease))
        .await
        .expect("create with lease");
    // Keep it alive well past its TTL.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.lease_keep_alive(lease).await.expect("keep-alive");
    }
    assert!(
        s.get(&key).await.expect("get").is_some(),
        "a renewed lease keeps its keys"
    );
    // Updating a leased key keeps it on the lease.
    s.update(&key, b("v2"), None).await.expect("update");
    assert_eq!(
        s.get(&key).await.expect("get").expect("present").lease,
        Some(lease)
    );
    s.lease_revoke(lease).await.expect("revoke");
    assert!(
        s.get(&key).await.expect("get").is_none(),
        "revoking deletes the lease's keys"
    );
    let err = s
        .lease_keep_alive(lease)
        .await
        .expect_err("keep-alive after revoke");
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "{err:?}");
}

pub async fn create_with_unknown_lease_fails(s: Arc<dyn Store>, p: &str) {
    let err = s
        .create(&format!("{p}a"), b("v"), Some(987_654_321))
        .await
        .expect_err("unknown lease");
    assert!(matches!(err, StoreError::LeaseNotFound(987_654_321)), "{err:?}");
    assert!(s.get(&format!("{p}a")).await.expect("get").is_none());
}

pub async fn concurrent_creates_get_distinct_revisions(s: Arc<dyn Store>, p: &str) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let s = s.clone();
        let p = p.to_owned();
        tasks.spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                revs.push(
                    s.create(&format!("{p}{t}/{i}"), b("x"), None)
                        .await
                        .expect("create"),
                );
            }
            revs
        });
    }
    let mut all = BTreeSet::new();
    while let Some(revs) = tasks.join_next().await {
        for r in revs.expect("task") {
            assert!(all.insert(r), "revision {r} handed out twice");
        }
    }
    assert_eq!(all.len(), 400);
    assert_eq!(s.list(p).await.expect("list").items.len(), 400);
}

pub async fn concurrent_cas_counter(s: Arc<dyn Store>, p: &str) {
    let key = format!("{p}counter");
    s.create(&key, b("0"), None).await.expect("create");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let s = s.clone();
        let key = key.clone();
        tasks.spawn(async move {
            for _ in 0..10 {
                loop {
                    let kv = s.get(&key).await.expect("get").expect("present");
                    let n: u64 = std::str::from_utf8(&kv.value)
                        .expect("utf8")
                        .parse()
                        .expect("number");
                    match s
                        .update(&key, b(&(n + 1).to_string()), Some(kv.mod_revision))
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => panic!("unexpected error {e:?}"),
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    let kv = s.get(&key).await.expect("get").expect("present");
    assert_eq!(kv.value, b("80"), "no lost update under compare-and-swap");
}

/// Lists and watch events bigger than a gRPC client's 4 MiB default still arrive whole.
pub async fn large_values_and_lists(s: Arc<dyn Store>, p: &str) {
    let big = Bytes::from(vec![b'x'; 2_500_000]);
    for i in 0..3 {
        s.create(&format!("{p}big/{i}"), big.clone(), None)
            .await
            .expect("create a 2.5 MB value");
    }
    for i in 0..600 {
        s.create(&format!("{p}small/{i:04}"), b("v"), None)
            .await
            .expect("create");
    }
    let listing = s.list(&format!("{p}big/")).await.expect("list of 7.5 MB");
    assert_eq!(listing.items.len(), 3);
    assert!(listing.items.iter().all(|kv| kv.value.len() == big.len()));
    // More keys than one page of a paged list, in key order, nothing twice.
    let small = s.list(&format!("{p}small/")).await.expect("list");
    let keys: Vec<_> = small.items.iter().map(|kv| kv.key.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((keys.len(), &keys), (600, &sorted));
    let start = s.revision().await.expect("revision");
    let mut w = s.watch(&format!("{p}big/"), start).await.expect("watch");
    s.update(&format!("{p}big/0"), big.clone(), None)
        .await
        .expect("update");
    s.delete(&format!("{p}big/1"), None).await.expect("delete");
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.kv.value.len()), (EventKind::Modified, big.len()));
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.kv.value.len()), (EventKind::Deleted, big.len()));
}
