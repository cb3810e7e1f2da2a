//! The store conformance suite against the embedded (redb) backend, plus its own
//! durability checks.

use std::sync::Arc;

use wisp_store::{EmbeddedOptions, EmbeddedStore, Store};

async fn embedded() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
    (Arc::new(store), dir)
}

wisp_store::store_conformance!(embedded());

async fn reopen(dir: &std::path::Path) -> EmbeddedStore {
    // The previous writer thread releases the file when it notices its channel closed.
    for _ in 0..100 {
        if let Ok(s) = EmbeddedStore::open(dir, EmbeddedOptions::default()) {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("store did not reopen");
}

#[tokio::test]
async fn data_revision_and_history_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (r1, r2) = {
        let s = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
        let r1 = s.create("/k/a", "1".into(), None).await.expect("create");
        let r2 = s.update("/k/a", "2".into(), Some(r1)).await.expect("update");
        (r1, r2)
    };
    let s = reopen(dir.path()).await;
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
