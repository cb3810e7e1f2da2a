//! Serverless through the real ingress of `wisp up`: a Function at zero is woken by its first
//! request (cold-start headers), goes back to zero when idle, wakes once for a burst of 100,
//! scales up under load and back down, and a continuous prober sees no failed request while
//! it scales and rolls to a new component.

#![allow(clippy::print_stderr)] // the tests report the figures they measure

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio_util::sync::CancellationToken;
use wisp_api::{Deployment, Function, Pod};
use wisp_client::{Client, ListParams};
use wisp_e2e::{Http, Options, Wisp, fast_autoscaler, ingress_stat, until};

/// GET `/` on the ingress with the Function's host: (status, cold-start header, body).
async fn get(http: &Http, ingress: &str, host: &str) -> anyhow::Result<(u16, bool, String)> {
    let req = http::Request::get(format!("{ingress}/"))
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let resp = http.request(req).await?;
    let code = resp.status().as_u16();
    let cold = resp
        .headers()
        .get(wisp_ingress_header())
        .is_some_and(|v| v == "true");
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, cold, String::from_utf8_lossy(&body).into_owned()))
}

fn wisp_ingress_header() -> &'static str {
    "x-wisp-cold-start"
}

async fn live_pods(client: &Client) -> anyhow::Result<Vec<Pod>> {
    let params = ListParams {
        label_selector: Some("wisp.dev/function=hello".into()),
        field_selector: None,
    };
    let pods = client.api::<Pod>(Some("default")).list(&params).await?.items;
    Ok(pods.into_iter().filter(|p| !p.phase().is_terminal()).collect())
}

async fn cold_starts(http: &Http, ingress: &str, token: &str) -> anyhow::Result<u64> {
    ingress_stat(http, ingress, token, "hello-00001", "coldStarts").await
}

/// Sends a request every 5 ms until stopped; returns (requests, failures).
fn prober(
    http: Http,
    ingress: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let (mut n, mut failures) = (0, Vec::new());
        while !stop.is_cancelled() {
            n += 1;
            match get(&http, &ingress, "hello.default.localhost").await {
                Ok((200, _, _)) => {}
                Ok((code, _, body)) => failures.push(format!("{code}: {body}")),
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (n, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_scales_from_and_to_zero_through_the_ingress() -> anyhow::Result<()> {
    // Short autoscaler windows so that scaling down does not take a minute.
    let w = Wisp::start(Options {
        command: Some("up".into()),
        args: fast_autoscaler(),
        ..Options::default()
    })?;
    let client = w.client();
    let ingress = wisp_e2e::node_ingress(&client, "local").await?;
    let http = wisp_e2e::http_client();

    // A Function that scales to zero after 3 s idle, one pod per in-flight request.
    wisp_e2e::apply_hello_function(&w, |m| {
        m.replace(
            "scaleToZeroAfter: 30s",
            "scaleToZeroAfter: 3s\n    targetConcurrency: 1",
        )
    })?;
    assert!(
        live_pods(&client).await?.is_empty(),
        "minScale 0: no pod before a request"
    );
    // The Function controller writes the Route; the ingress knows it once its Service shows.
    wisp_e2e::until_ingress_knows(&http, &ingress, &w.token, "hello-00001").await?;

    // First request: a cold start, answered.
    let t = Instant::now();
    let (code, cold, body) = get(&http, &ingress, "hello.default.localhost").await?;
    eprintln!("first request at zero answered in {:?}", t.elapsed());
    assert_eq!((code, body.as_str()), (200, "Hello from Wisp"));
    assert!(cold, "the first request carries x-wisp-cold-start: true");
    assert_eq!(
        get(&http, &ingress, "nope.localhost").await?.0,
        404,
        "no route → 404"
    );

    // Idle past scaleToZeroAfter → zero pods, and the ingress knows it (its watch may see
    // the pod go a moment after the API does: a request then is still served warm).
    let idle = until("scale to zero", 60, async || {
        Ok(live_pods(&client).await?.is_empty()
            && wisp_e2e::ingress_stat(&http, &ingress, &w.token, "hello-00001", "readyBackends").await? == 0)
    })
    .await?;
    eprintln!("scaled to zero {idle:?} after the last request (scaleToZeroAfter 3 s)");

    // Again from zero.
    let (code, cold, _) = get(&http, &ingress, "hello.default.localhost").await?;
    assert!(code == 200 && cold, "second cold start: {code} {cold}");
    until("scale to zero again", 60, async || {
        Ok(live_pods(&client).await?.is_empty())
    })
    .await?;

    // 100 concurrent requests at zero: all answered, one activation.
    let before = cold_starts(&http, &ingress, &w.token).await?;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (http, ingress) = (http.clone(), ingress.clone());
        burst.spawn(async move { get(&http, &ingress, "hello.default.localhost").await });
    }
    let mut codes = std::collections::BTreeMap::new();
    while let Some(r) = burst.join_next().await {
        *codes.entry(r??.0).or_insert(0) += 1;
    }
    assert_eq!(
        codes,
        std::collections::BTreeMap::from([(200, 100)]),
        "every request of the burst answered"
    );
    assert_eq!(
        cold_starts(&http, &ingress, &w.token).await? - before,
        1,
        "one activation for the burst"
    );
    let req = http::Request::get(format!("{ingress}/.wisp/metrics"))
        .header(http::header::AUTHORIZATION, format!("Bearer {}", w.token))
        .body(Empty::<Bytes>::new())?;
    let metrics = http.request(req).await?.into_body().collect().await?.to_bytes();
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        "wisp_ingress_cold_starts_total{namespace=\"default\",service=\"hello-00001\"} 3",
        "wisp_ingress_requests_total{namespace=\"default\",service=\"hello-00001\",code=\"200\"} 102",
        "wisp_ingress_queued_requests{namespace=\"default\",service=\"hello-00001\"} 0",
        "wisp_ingress_in_flight_requests{namespace=\"default\",service=\"hello-00001\"} 0",
    ] {
        assert!(
            metrics.contains(line),
            "/.wisp/metrics lacks {line:?}:\n{metrics}"
        );
    }

    // The last minute's traffic, summarised in the Function's status by the autoscaler: the
    // burst's requests, their latency, the cold starts.
    let functions = client.api::<Function>(Some("default"));
    let mut summary = None;
    until("the traffic summary in the Function's status", 30, async || {
        summary = functions.get("hello").await?.status.and_then(|s| s.metrics);
        Ok(summary
            .as_ref()
            .is_some_and(|m| m.requests_per_second > 0.0 && m.cold_starts >= 1))
    })
    .await?;
    let summary = summary.context("metrics")?;
    eprintln!("Function status.metrics after the burst: {summary:?}");
    let (p50, p99) = (summary.p50_ms.context("p50")?, summary.p99_ms.context("p99")?);
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= 30_000.0, "{summary:?}");
    let (ok, listed, err) = w.cli(&["get", "functions"])?;
    assert!(
        ok && listed.contains("REQ/S") && listed.contains("P99"),
        "{listed}{err}"
    );

    // Load above the target (1 in flight per pod) with a prober running → scaled up.
    let stop = CancellationToken::new();
    let probe = prober(http.clone(), ingress.clone(), stop.clone());
    let load_stop = CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (http, ingress, stop) = (http.clone(), ingress.clone(), load_stop.clone());
        load.spawn(async move {
            while !stop.is_cancelled() {
                let _ = get(&http, &ingress, "hello.default.localhost").await;
            }
        });
    }
    let deployments = client.api::<Deployment>(Some("default"));
    until("a scale-up under load", 60, async || {
        Ok(deployments.get("hello-00001").await?.spec.replicas >= 2)
    })
    .await?;
    until("the new pods ready", 60, async || {
        let pods = live_pods(&client).await?;
        Ok(pods.len() >= 2 && pods.iter().all(Pod::is_ready))
    })
    .await?;
    let peak = deployments.get("hello-00001").await?.spec.replicas;

    // A rolling update to another component digest under the prober.
    let functions = client.api::<Function>(Some("default"));
    let mut variant = std::fs::read(wisp_e2e::guest("hello")?)?;
    variant.extend_from_slice(&[0, 5, 4, b'w', b'i', b's', b'p']); // a custom section: new digest
    let digest = client.put_blob(Bytes::from(variant)).await?;
    wisp_testkit::update(&functions, "hello", |f| {
        f.spec.template.spec.containers[0].wasm = Some(digest.clone());
    })
    .await?;
    until("the rollout", 60, async || {
        let pods = live_pods(&client).await?;
        Ok(!pods.is_empty()
            && pods
                .iter()
                .all(|p| p.is_ready() && p.spec.containers[0].wasm.as_deref() == Some(digest.as_str())))
    })
    .await?;

    // Load gone: back down (the prober alone keeps one pod), then to zero without it.
    load_stop.cancel();
    while load.join_next().await.is_some() {}
    until("a scale-down", 120, async || {
        // The template changed: revision 2 serves (revision 1 went to zero with its traffic).
        Ok(deployments.get("hello-00002").await?.spec.replicas <= 1
            && deployments.get("hello-00001").await?.spec.replicas == 0)
    })
    .await?;
    stop.cancel();
    let (probes, failures) = probe.await?;
    eprintln!(
        "peak replicas {peak}; prober: {probes} requests, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "the prober saw failures: {:?}",
        &failures[..failures.len().min(5)]
    );
    until("scale to zero after the load", 60, async || {
        Ok(live_pods(&client).await?.is_empty())
    })
    .await?;
    Ok(())
}
