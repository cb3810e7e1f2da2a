//! The store conformance suite against the embedded (redb) backend, plus its own
//! durability checks.

use std::sync::Arc;

use wisp_store::{EmbeddedOptions, EmbeddedStore, Store, StoreError};

async fn embedded() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
    (Arc::new(store), dir)
}

wisp_store::store_conformance!(embedded());

#[tokio::test]
async fn data_revision_and_history_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r1, r2) = {
        let s = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
        let r1 = s.create("/k/a", "1".into(), None).await.expect("create");
        let r2 = s.update("/k/a", "2".into(), Some(r1)).await.expect("update");
        s.close().await.expect("close");
        (r1, r2)
    };
    // Closed: the file is free at once, no retrying.
    let s = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("reopen");
    let kv = s.get("/k/a").await.expect("get").expect("present after reopen");
    assert_eq!(
        (kv.value.as_ref(), kv.create_revision, kv.mod_revision),
        (&b"2"[..], r1, r2)
    );
    assert_eq!(s.revision().await.expect("revision"), r2);
    let r3 = s.create("/k/b", "x".into(), None).await.expect("create");
    assert!(r3 > r2, "revision never goes backwards across restarts");
    // The change log is durable too: a watch can resume from before the restart.
    use futures::StreamExt;
    let mut w = s.watch("/k/", r1).await.expect("watch");
    let e = w.next().await.expect("event").expect("ok");
    assert_eq!(e.revision, r2);
}

#[tokio::test]
async fn automatic_compaction_bounds_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = EmbeddedOptions {
        history: 10,
        ..EmbeddedOptions::default()
    };
    let s = EmbeddedStore::open(dir.path(), opts).expect("open");
    s.create("/c/k", "0".into(), None).await.expect("create");
    for i in 0..1100 {
        s.update("/c/k", i.to_string().into(), None)
            .await
            .expect("update");
    }
    let err = s.watch("/c/", 1).await.err().expect("old revision compacted");
    assert!(matches!(err, wisp_store::StoreError::Compacted { .. }), "{err:?}");
}

#[tokio::test]
async fn close_ends_every_clone_and_its_watches_and_frees_the_directory_at_once() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
    let clone = s.clone();
    let rev = s.create("/c/a", "1".into(), None).await.expect("create");
    let mut watch = clone.watch("/c/", rev).await.expect("watch");
    s.close().await.expect("close");
    // Every clone is closed, and so is a watch that was open.
    assert!(matches!(clone.get("/c/a").await, Err(StoreError::Closed)));
    assert!(matches!(clone.list("/c/").await, Err(StoreError::Closed)));
    assert!(matches!(
        clone.create("/c/b", "2".into(), None).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(clone.revision().await, Err(StoreError::Closed)));
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
        .await
        .expect("the watch ended");
    assert!(matches!(ended, Some(Err(StoreError::Closed))), "{ended:?}");
    // A second close (of any clone) is a no-op.
    clone.close().await.expect("close again");
    // Reopened at once, with the write: the file lock is released.
    let again = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("reopen");
    let kv = again.get("/c/a").await.expect("get").expect("kept");
    assert_eq!(kv.mod_revision, rev);
}

#[tokio::test]
async fn dropping_the_last_clone_frees_the_directory_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
    s.create("/d/a", "1".into(), None).await.expect("create");
    let clone = s.clone();
    drop(s);
    // One clone is left: the store is open and the directory taken.
    clone.get("/d/a").await.expect("still open");
    let taken = EmbeddedStore::open(dir.path(), EmbeddedOptions::default());
    let err = taken.err().expect("the directory is in use");
    drop(clone);
    let again = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("reopen after drop");
    assert!(again.get("/d/a").await.expect("get").is_some());
    // The failed open kept redb's error as its source.
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let source = std::error::Error::source(&err).expect("a source");
    assert!(
        source.downcast_ref::<redb::DatabaseError>().is_some(),
        "the source is redb's error: {source:?}"
    );
    assert!(err.to_string().contains("wisp.redb"), "names the file: {err}");
}
