//! Shared watch caches: one `wisp up` — API server, scheduler, controllers, node agent and
//! ingress in one process — opens one watch per kind it needs, counted by the API server
//! (`wisp_apiserver_watches{resource=…}` on `/metrics`), and still runs a Function end to end
//! on them.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};
use wisp_e2e::{Options, Wisp, until};

/// Open watches by resource, from the API server's metrics.
async fn open_watches(client: &wisp_client::Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let resp = client.raw(Method::GET, "/metrics", None).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8(body.to_vec())?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("wisp_apiserver_watches{")) {
        let (labels, value) = line.rsplit_once(' ').unwrap_or((line, "0"));
        let resource = labels
            .split_once("resource=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(r, _)| r.to_owned())
            .unwrap_or_default();
        out.insert(resource, value.parse()?);
    }
    Ok(out)
}

#[tokio::test]
async fn wisp_up_opens_one_watch_per_kind() -> anyhow::Result<()> {
    let w = Wisp::start(Options {
        command: Some("up".into()),
        ..Options::default()
    })?;
    let admin = w.client();
    // Every component the in-process cluster runs, and what each reads.
    let needed = [
        "deployments",
        "endpoints",
        "functions",
        "leases",
        "namespaces",
        "nodes",
        "pods",
        "replicasets",
        "routes",
        "services",
    ];
    until("every component's watches", 30, async || {
        let open = open_watches(&admin).await?;
        Ok(needed.iter().all(|k| open.get(*k).copied().unwrap_or(0) > 0))
    })
    .await?;
    // Run a Function through the whole chain on the shared caches (apply → scheduled →
    // running → endpoints → route → woken from zero and served), then count again.
    let ingress = wisp_e2e::node_ingress(&admin, "local").await?;
    wisp_e2e::apply_hello_function(&w, |m| m)?;
    let http = wisp_e2e::http_client();
    until("the function to answer through the ingress", 60, async || {
        let req = http::Request::get(format!("{ingress}/"))
            .header(http::header::HOST, "hello.default.localhost")
            .body(Empty::<Bytes>::new())?;
        let Ok(resp) = http.request(req).await else {
            return Ok(false);
        };
        let ok = resp.status() == 200;
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(ok && body.as_ref() == b"Hello from Wisp")
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = open_watches(&admin).await?;
    for kind in needed {
        assert_eq!(
            open.get(kind).copied(),
            Some(1),
            "{kind}: want exactly one watch in the whole process; open: {open:?}"
        );
    }
    for (kind, n) in &open {
        assert!(*n <= 1, "{kind} is watched {n} times: {open:?}");
    }
    Ok(())
}
