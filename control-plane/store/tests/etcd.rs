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
