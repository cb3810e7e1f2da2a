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

/// The same suite over TLS, with client certificate authentication.
mod over_tls {
    use super::*;

    async fn etcd_tls() -> (Arc<dyn Store>, EtcdServer) {
        let server = EtcdServer::start_tls().expect("start etcd with TLS");
        let store = EtcdStore::connect_with(std::slice::from_ref(&server.endpoint), server.tls.as_ref())
            .await
            .expect("connect over TLS with a client certificate");
        (Arc::new(store), server)
    }

    wisp_store::store_conformance!(etcd_tls());

    #[tokio::test]
    async fn a_client_without_a_certificate_or_the_ca_is_refused() {
        let server = EtcdServer::start_tls().expect("start etcd with TLS");
        let tls = server.tls.clone().expect("tls");
        let no_identity = wisp_store::etcd::EtcdTls {
            cert_pem: None,
            key_pem: None,
            ..tls.clone()
        };
        let endpoints = std::slice::from_ref(&server.endpoint);
        assert!(
            EtcdStore::connect_with(endpoints, Some(&no_identity))
                .await
                .is_err(),
            "no client certificate"
        );
        let stranger = wisp_tls::Ca::create().expect("ca");
        let wrong_ca = wisp_store::etcd::EtcdTls {
            ca_pem: stranger.cert_pem().to_owned(),
            ..tls
        };
        assert!(
            EtcdStore::connect_with(endpoints, Some(&wrong_ca)).await.is_err(),
            "a CA that did not sign etcd's certificate"
        );
        assert!(EtcdStore::connect(endpoints).await.is_err(), "no TLS at all");
    }
}

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
