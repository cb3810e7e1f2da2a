//! Containers beside Wasm through the real `wisp up` (Docker runtime on) and its ingress,
//! against the real Docker engine: the mixed example (a Wasm frontend Function calling a
//! container backend by its Service name), a container-image Function scaled from and to
//! zero by the activator and autoscaler, a canary Route splitting traffic between a container
//! Service and a Wasm one, a Service selecting both kinds of pods, and a pod mixing both
//! runtimes refused at admission. In CI an unreachable engine fails this test.

#![allow(clippy::print_stderr)] // the test reports the figures it measures

use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wisp_api::{Node, Pod};
use wisp_client::{Client, ListParams};
use wisp_e2e::{Http, Options, Wisp, examples_dir, fast_autoscaler, ingress_stat, until};
use wisp_sandbox_docker::testing::{self, Cleanup};

/// GET `path` on the ingress with `host`: (status, cold-start header, body).
async fn get(http: &Http, ingress: &str, host: &str, path: &str) -> anyhow::Result<(u16, bool, String)> {
    let req = http::Request::get(format!("{ingress}{path}"))
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let resp = http.request(req).await?;
    let code = resp.status().as_u16();
    let cold = resp
        .headers()
        .get("x-wisp-cold-start")
        .is_some_and(|v| v == "true");
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, cold, String::from_utf8_lossy(&body).into_owned()))
}

async fn live_pods(client: &Client, selector: &str) -> anyhow::Result<Vec<Pod>> {
    let params = ListParams {
        label_selector: Some(selector.into()),
        field_selector: None,
    };
    let pods = client.api::<Pod>(Some("default")).list(&params).await?.items;
    Ok(pods.into_iter().filter(|p| !p.phase().is_terminal()).collect())
}

/// At zero: no pod, and the ingress has dropped the last backend.
async fn at_zero(client: &Client, http: &Http, ingress: &str) -> anyhow::Result<bool> {
    Ok(live_pods(client, "wisp.dev/function=echo").await?.is_empty()
        && ingress_stat(http, ingress, client.token(), "echo-00001", "readyBackends").await? == 0)
}

/// Writes `example` with its relative component paths made absolute, then applies it.
fn apply(w: &Wisp, example: &str, edits: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut manifest = std::fs::read_to_string(examples_dir().join(example))?;
    for (from, to) in edits {
        anyhow::ensure!(manifest.contains(from), "{example} has no {from:?}");
        manifest = manifest.replace(from, to);
    }
    let file = w.dir.join(example.replace('/', "-"));
    std::fs::write(&file, manifest)?;
    let (ok, out, err) = w.cli(&["apply", "-f", &file.display().to_string()])?;
    anyhow::ensure!(ok, "apply {example} failed: {out}{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_and_wasm_side_by_side_through_the_ingress() -> anyhow::Result<()> {
    if !testing::available("e2e docker") {
        return Ok(());
    }
    testing::ensure_echo_image();
    let node = testing::unique_owner("e2e-mixed");
    let _cleanup = Cleanup::new(&node);
    let w = Wisp::start(Options {
        command: Some("up".into()),
        node_name: Some(node.clone()),
        docker: true,
        args: fast_autoscaler(),
        ..Options::default()
    })?;
    let client = w.client();
    wisp_e2e::docker_node_ready(&client, &node).await?;
    let ingress = client
        .api::<Node>(None)
        .get(&node)
        .await?
        .status
        .and_then(|s| s.ingress_url)
        .context("ingressUrl")?;
    let http = wisp_e2e::http_client();

    // The mixed example: Wasm frontend (at zero) → container backend by Service name.
    let frontend = wisp_e2e::guest("frontend")?.display().to_string();
    apply(
        &w,
        "mixed/app.yaml",
        &[("../target/wasm32-wasip2/release/frontend.wasm", &frontend)],
    )?;
    let mut answer = (0, false, String::new());
    let took = until("the frontend answering through the backend", 60, async || {
        answer = get(&http, &ingress, "frontend.default.localhost", "/hi").await?;
        Ok(answer.0 == 200)
    })
    .await?;
    eprintln!("mixed app answering {took:?} after apply: {answer:?}");
    assert!(
        answer.2.starts_with("frontend -> echo from ") && answer.2.ends_with("hello from the backend /hi"),
        "{answer:?}"
    );

    // A container Function at zero: the first request starts a container and is answered.
    apply(
        &w,
        "container-echo/function.yaml",
        &[("scaleToZeroAfter: 30s", "scaleToZeroAfter: 3s")],
    )?;
    until("the echo Function's route", 30, async || {
        let (code, _, body) = get(&http, &ingress, "echo.default.localhost", "/").await?;
        Ok(code != 404 || !body.starts_with("no route"))
    })
    .await?;
    // The wait above may itself have woken it: let it go back to zero first.
    until("echo at zero", 60, async || {
        at_zero(&client, &http, &ingress).await
    })
    .await?;
    for round in 0..2 {
        let t = Instant::now();
        let (code, cold, body) = get(&http, &ingress, "echo.default.localhost", "/x").await?;
        eprintln!("container function cold start {round}: {:?}", t.elapsed());
        assert_eq!(code, 200, "{body}");
        assert!(cold, "x-wisp-cold-start: true");
        assert!(body.starts_with("echo from ") && body.ends_with(" /x"), "{body}");
        let (code, cold, _) = get(&http, &ingress, "echo.default.localhost", "/").await?;
        assert_eq!((code, cold), (200, false), "warm now");
        let idle = until("echo back to zero", 60, async || {
            at_zero(&client, &http, &ingress).await
        })
        .await?;
        eprintln!("container function back at zero {idle:?} after its last request");
    }

    // The activator and the autoscaler, unchanged for containers: a burst at zero wakes the
    // Function once, and load above its target (1 in flight per pod) scales it up.
    apply(
        &w,
        "container-echo/function.yaml",
        &[(
            "scaleToZeroAfter: 30s",
            "scaleToZeroAfter: 3s\n    targetConcurrency: 1",
        )],
    )?;
    let before = ingress_stat(&http, &ingress, &w.token, "echo-00001", "coldStarts").await?;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, ingress) = (http.clone(), ingress.clone());
        burst.spawn(async move { get(&http, &ingress, "echo.default.localhost", "/").await });
    }
    while let Some(r) = burst.join_next().await {
        let (code, _, body) = r??;
        assert_eq!(code, 200, "every request of the burst answered: {body}");
    }
    assert_eq!(
        ingress_stat(&http, &ingress, &w.token, "echo-00001", "coldStarts").await? - before,
        1,
        "one activation"
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (http, ingress, stop) = (http.clone(), ingress.clone(), stop.clone());
        load.spawn(async move {
            let mut failed = Vec::new();
            while !stop.is_cancelled() {
                match get(&http, &ingress, "echo.default.localhost", "/").await {
                    Ok((200, _, _)) => {}
                    Ok((code, _, body)) => failed.push(format!("{code} {body}")),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            failed
        });
    }
    let scaled = until("echo scaled above one container", 60, async || {
        Ok(live_pods(&client, "wisp.dev/function=echo")
            .await?
            .iter()
            .filter(|p| p.is_ready())
            .count()
            >= 2)
    })
    .await;
    stop.cancel();
    let mut failed = Vec::new();
    while let Some(r) = load.join_next().await {
        failed.extend(r?);
    }
    let took = scaled?;
    eprintln!("container function scaled up {took:?} into the load");
    assert!(failed.is_empty(), "requests failed under load: {failed:?}");
    // Scale-down under a prober (a request every 5 ms): containers stopped by the scale-down
    // never fail a request.
    let probe_stop = tokio_util::sync::CancellationToken::new();
    let probe = {
        let (http, ingress, stop) = (http.clone(), ingress.clone(), probe_stop.clone());
        tokio::spawn(async move {
            let (mut n, mut failed) = (0u64, Vec::new());
            while !stop.is_cancelled() {
                n += 1;
                match get(&http, &ingress, "echo.default.localhost", "/").await {
                    Ok((200, _, _)) => {}
                    Ok((code, _, body)) => failed.push(format!("{code} {body}")),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            (n, failed)
        })
    };
    let down = until("echo scaled down to one container", 90, async || {
        Ok(live_pods(&client, "wisp.dev/function=echo").await?.len() == 1)
    })
    .await;
    // A little longer: the stopped containers' last requests and the Endpoints update.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    probe_stop.cancel();
    let (probes, probe_failed) = probe.await?;
    let down = down?;
    eprintln!(
        "scaled down to one container {down:?} after the load; prober: {probes} requests, {} failed",
        probe_failed.len()
    );
    assert!(
        probe_failed.is_empty(),
        "the prober saw failures while scaling down: {probe_failed:?}"
    );
    let idle = until("echo back to zero after the load", 90, async || {
        at_zero(&client, &http, &ingress).await
    })
    .await?;
    eprintln!("and back at zero {idle:?} after it");

    // A canary Route between a container Service and a Wasm one, and a Service over both.
    let hello = wisp_e2e::guest("hello")?.display().to_string();
    apply(
        &w,
        "mixed/canary.yaml",
        &[("../target/wasm32-wasip2/release/hello.wasm", &hello)],
    )?;
    until("both canary tracks ready", 60, async || {
        let pods = live_pods(&client, "app=echo").await?;
        Ok(pods.len() == 2 && pods.iter().all(Pod::is_ready))
    })
    .await?;
    for (host, what) in [
        ("echo.localhost", "Route 80/20"),
        ("echo-all.localhost", "Service over both"),
    ] {
        let (mut container, mut wasm) = (0, 0);
        until(&format!("{what}: answers from both runtimes"), 30, async || {
            let (code, _, body) = get(&http, &ingress, host, "/").await?;
            anyhow::ensure!(code == 200, "{host}: {code} {body}");
            if body.starts_with("echo from") {
                container += 1;
            } else if body == "Hello from Wisp" {
                wasm += 1;
            } else {
                bail!("{host}: unexpected answer {body:?}");
            }
            Ok(container > 0 && wasm > 0)
        })
        .await?;
        eprintln!("{what}: container {container}, wasm {wasm}");
    }

    // Service names answer only to Wasm guests (through the node's loopback gateway), not
    // on the public ingress.
    let (code, _, body) = get(&http, &ingress, "echo-all.default.svc", "/").await?;
    assert_eq!(code, 404, "{body}");

    // One pod with both runtimes is refused, naming the field.
    let mixed = w.dir.join("mixed-pod.yaml");
    std::fs::write(
        &mixed,
        format!(
            "apiVersion: wisp.dev/v1\nkind: Pod\nmetadata:\n  name: both\nspec:\n  containers:\n    - name: a\n      image: {}\n    - name: b\n      wasm: {hello}\n",
            testing::ECHO_IMAGE
        ),
    )?;
    let (ok, out, err) = w.cli(&["apply", "-f", &mixed.display().to_string()])?;
    assert!(!ok, "a mixed pod is refused: {out}");
    assert!(
        err.contains("spec.containers") && err.contains("cannot mix Wasm"),
        "clear message: {err}"
    );
    Ok(())
}
