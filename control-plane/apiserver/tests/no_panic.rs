//! Property test: no request — any method, path, query or body, with or without a valid
//! token — panics the server or gets a 5xx; the server keeps answering afterwards.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;
use wisp_apiserver::{ApiServer, Config};

fn server() -> (ApiServer, String, tempfile::TempDir, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("rt");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = wisp_store::EmbeddedStore::open(dir.path(), Default::default()).expect("store");
    let api = ApiServer::new(
        Arc::new(store),
        Config::new(dir.path().join("blobs")),
        CancellationToken::new(),
    );
    let token = rt
        .block_on(api.bootstrap())
        .expect("bootstrap")
        .expect("admin token");
    (api, token, dir, rt)
}

fn paths() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("apis".to_owned()),
        Just("wisp.dev".to_owned()),
        Just("v1".to_owned()),
        Just("namespaces".to_owned()),
        Just("default".to_owned()),
        Just("pods".to_owned()),
        Just("configmaps".to_owned()),
        Just("nodes".to_owned()),
        Just("status".to_owned()),
        Just("blobs".to_owned()),
        Just("tokens".to_owned()),
        "[a-zA-Z0-9_.%:-]{0,12}",
    ];
    prop::collection::vec(seg, 0..7).prop_map(|s| format!("/{}", s.join("/")))
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let valid = r#"{"apiVersion":"wisp.dev/v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"x"}]}}"#;
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        // A valid object with one byte replaced: mostly malformed, sometimes subtly wrong.
        (0..valid.len(), any::<u8>()).prop_map(move |(i, b)| {
            let mut v = valid.as_bytes().to_vec();
            v[i] = b;
            v
        }),
        // Valid JSON of the wrong shapes.
        prop_oneof![
            Just("null"),
            Just("[]"),
            Just("{}"),
            Just("{\"metadata\":[]}"),
            Just("{\"spec\":{\"containers\":7}}")
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn no_input_panics_or_5xx(
        method in prop_oneof![Just(Method::GET), Just(Method::POST), Just(Method::PUT), Just(Method::DELETE), Just(Method::PATCH)],
        path in paths(),
        query in "(watch=true&resourceVersion=[0-9a-z]{0,3}&timeoutSeconds=0|labelSelector=[a-z!=(), ]{0,10}|fieldSelector=[a-z.=!]{0,10})?",
        body in bodies(),
        authed in any::<bool>(),
    ) {
        let (api, token, _dir, rt) = server();
        let uri = if query.is_empty() { path } else { format!("{path}?{query}") };
        let Ok(mut req) = Request::builder().method(method).uri(&uri).body(Full::new(Bytes::from(body))) else {
            return Ok(()); // not a valid URI: hyper would have refused it before us
        };
        if authed {
            req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
        }
        let resp = rt.block_on(async {
            let resp = api.handle(req).await;
            let code = resp.status();
            // Drain the body (a watch with timeoutSeconds=0 ends at once).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), resp.into_body().collect()).await;
            code
        });
        prop_assert!(resp.as_u16() < 500, "{uri} -> {resp}");
        let health = rt.block_on(api.handle(Request::get("/healthz").body(Full::new(Bytes::new())).expect("req")));
        prop_assert_eq!(health.status().as_u16(), 200);
    }
}
