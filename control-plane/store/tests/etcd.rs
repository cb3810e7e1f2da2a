//! The store conformance suite against a real etcd started on loopback ports.
#![cfg(feature = "etcd")]

use std::sync::Arc;

use wisp_store::Store;
use wisp_store::etcd::EtcdStore;
use wisp_store::testutil::EtcdServer;

async fn etcd() -> (Arc<dyn Store>, EtcdServer) {
    let server = EtcdServer::start().expect("start etcd");
    let store = EtcdStore::connect(std::slice::from_ref(&server.endpoint))
        .await
        .expect("connect");
    (Arc::new(store), server)
}

wisp_store::store_conformance!(etcd());

#[tokio::test]
async fn an_unreachable_etcd_is_a_backend_error_that_keeps_its_cause() {
    let port = wisp_store::testutil::free_port().expect("port");
    let Err(err) = EtcdStore::connect(&[format!("http://127.0.0.1:{port}")]).await else {
        panic!("nothing listens on {port}");
    };
    assert!(matches!(err, wisp_store::StoreError::Backend(_)), "{err:?}");
    // The chain reaches etcd-client's error (or the timeout), not a string.
    let source = std::error::Error::source(&err).expect("a source");
    assert!(
        source.downcast_ref::<etcd_client::Error>().is_some()
            || source.downcast_ref::<tokio::time::error::Elapsed>().is_some(),
        "{source:?}"
    );
}
