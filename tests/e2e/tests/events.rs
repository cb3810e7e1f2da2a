//! Events through `wisp up` and the CLI: a pod that fits on no node (FailedScheduling), a
//! crash-looping container (BackOff, a handful of Events with counts after a minute, not one
//! per restart) and a Function woken from zero (ColdStart with its milliseconds), found with
//! `wisp get events`, `--for` and `wisp describe`; a tenant reads its namespace's events and
//! not another's; Events expire after the TTL.

#![allow(clippy::print_stderr)] // the test reports what it saw

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wisp_api::{Container, Event, Namespace, ObjectMeta, Pod, Resource, RestartPolicy};
use wisp_client::{Client, ListParams};
use wisp_e2e::{Options, Wisp, until};

async fn events_of(client: &Client, ns: &str, kind: &str, name: &str) -> anyhow::Result<Vec<Event>> {
    let params = ListParams {
        label_selector: None,
        field_selector: Some(format!("involvedObject.kind={kind},involvedObject.name={name}")),
    };
    Ok(client.api::<Event>(Some(ns)).list(&params).await?.items)
}

fn has(events: &[Event], reason: &str) -> bool {
    events.iter().any(|e| e.reason == reason)
}

fn wasm_pod(name: &str, digest: &str, args: &[&str]) -> Pod {
    let mut p = Pod::new(ObjectMeta::namespaced("default", name));
    p.spec.restart_policy = RestartPolicy::Always;
    p.spec.containers = vec![Container {
        name: "main".into(),
        wasm: Some(digest.into()),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Container::default()
    }];
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_scheduling_back_off_and_cold_start_are_events_bounded_under_a_crash_loop()
-> anyhow::Result<()> {
    let w = Wisp::start(Options {
        command: Some("up".into()),
        ..Options::default()
    })?;
    let client = w.client();
    let pods = client.api::<Pod>(Some("default"));
    let digest = client
        .put_blob(Bytes::from(std::fs::read(wisp_e2e::guest("cli-fixture")?)?))
        .await?;

    // A pod no node can take, and a container that exits 3 at once, restarted for ever.
    let mut pending = wasm_pod("pending", &digest, &["exit", "0", "never"]);
    pending
        .spec
        .node_selector
        .insert("disk".into(), "none-has-this".into());
    pods.create(&pending).await?;
    let crash = pods
        .create(&wasm_pod("crash", &digest, &["exit", "3", "bye"]))
        .await?;
    let looping_since = Instant::now();

    // A Function at zero, woken by one request.
    wisp_e2e::apply_hello_function(&w, |m| m)?;
    let ingress = wisp_e2e::node_ingress(&client, "local").await?;
    let http = wisp_e2e::http_client();
    until("the function answers from zero", 30, async || {
        let req = http::Request::get(format!("{ingress}/"))
            .header(http::header::HOST, "hello.default.localhost")
            .body(Empty::<Bytes>::new())?;
        let resp = http.request(req).await?;
        let code = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok(code == 200)
    })
    .await?;

    until("FailedScheduling, BackOff and ColdStart events", 30, async || {
        Ok(has(
            &events_of(&client, "default", "Pod", "pending").await?,
            "FailedScheduling",
        ) && has(&events_of(&client, "default", "Pod", "crash").await?, "BackOff")
            && has(
                &events_of(&client, "default", "Function", "hello").await?,
                "ColdStart",
            ))
    })
    .await?;
    let cold = events_of(&client, "default", "Function", "hello").await?;
    let cold = cold
        .iter()
        .find(|e| e.reason == "ColdStart")
        .ok_or_else(|| anyhow::anyhow!("no ColdStart"))?;
    assert!(
        cold.message.contains(" ms") && cold.reporting_component == "ingress",
        "{cold:?}"
    );
    eprintln!("ColdStart: {}", cold.message);

    // Through the CLI: all three in `get events`, one object's with --for, and in describe.
    let (ok, listed, err) = w.cli(&["get", "events"])?;
    anyhow::ensure!(ok, "get events: {err}");
    eprintln!("wisp get events:\n{listed}");
    for want in [
        "FailedScheduling",
        "BackOff",
        "ColdStart",
        "pod/crash",
        "function/hello",
    ] {
        assert!(listed.contains(want), "{want} in `wisp get events`:\n{listed}");
    }
    let (ok, only, err) = w.cli(&["get", "events", "--for", "pod/crash"])?;
    anyhow::ensure!(ok, "get events --for: {err}");
    assert!(
        only.contains("BackOff") && !only.contains("FailedScheduling") && !only.contains("ColdStart"),
        "{only}"
    );
    let (ok, described, err) = w.cli(&["describe", "pod", "pending"])?;
    anyhow::ensure!(ok, "describe: {err}");
    assert!(
        described.contains("Status:       Pending")
            && described.contains("Events:")
            && described.contains("FailedScheduling")
            && described.contains("none-has-this"),
        "{described}"
    );
    let (ok, described, err) = w.cli(&["describe", "function", "hello"])?;
    anyhow::ensure!(ok, "describe: {err}");
    assert!(
        described.contains("URL:") && described.contains("ColdStart") && !described.contains("apiVersion"),
        "{described}"
    );
    let (ok, bad, err) = w.cli(&["get", "pods", "--for", "pod/crash"])?;
    assert!(!ok && bad.is_empty() && err.contains("--for"), "{err}");

    // A crash loop of a minute: a handful of Events with counts, not one per restart.
    let left = Duration::from_secs(60).saturating_sub(looping_since.elapsed());
    tokio::time::sleep(left).await;
    let restarts = pods.get("crash").await?.status.map_or(0, |s| {
        s.container_statuses.iter().map(|c| c.restart_count).sum::<i32>()
    });
    let crash_events = events_of(&client, "default", "Pod", "crash").await?;
    let summary: Vec<String> = crash_events
        .iter()
        .map(|e| format!("{} x{}", e.reason, e.count))
        .collect();
    eprintln!(
        "after {:?} of crash loop: {restarts} restarts, {} events: {summary:?}",
        looping_since.elapsed(),
        crash_events.len()
    );
    assert!(restarts >= 4, "the container kept crashing: {restarts} restarts");
    assert!(crash_events.len() <= 10, "{summary:?}");
    let backoff = crash_events
        .iter()
        .find(|e| e.reason == "BackOff")
        .ok_or_else(|| anyhow::anyhow!("no BackOff"))?;
    let started = crash_events
        .iter()
        .find(|e| e.reason == "Started")
        .ok_or_else(|| anyhow::anyhow!("no Started"))?;
    assert!(backoff.count >= 3 && started.count >= 4, "{summary:?}");
    assert_eq!(backoff.involved_object.uid, crash.metadata.uid);
    assert_eq!(
        (
            backoff.reporting_component.as_str(),
            backoff.reporting_instance.as_str()
        ),
        ("node-agent", "local")
    );
    let (ok, described, _) = w.cli(&["describe", "pod", "crash"])?;
    eprintln!("wisp describe pod crash:\n{described}");
    assert!(
        ok && described.contains("CrashLoopBackOff")
            && described.contains("BackOff")
            && described.contains("(x"),
        "{described}"
    );

    // Deleted: the node stops its container and says so, about the pod that is gone.
    pods.delete("crash").await?;
    until("a Killing event of the deleted pod", 30, async || {
        Ok(has(
            &events_of(&client, "default", "Pod", "crash").await?,
            "Killing",
        ))
    })
    .await?;

    // A tenant reads the events of its namespace only.
    client
        .api::<Namespace>(None)
        .create(&Namespace::new(ObjectMeta::named("team-b")))
        .await?;
    let token = client.create_token("team-b").await?;
    let tenant = w.client_as(&token);
    assert_eq!(
        tenant
            .api::<Event>(Some("team-b"))
            .list(&ListParams::default())
            .await?
            .items
            .len(),
        0
    );
    let refused = tenant
        .api::<Event>(Some("default"))
        .list(&ListParams::default())
        .await
        .map(|l| l.items.len());
    assert_eq!(
        refused.map_err(|e| e.code()),
        Err(Some(403)),
        "another namespace's events"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_expire_after_their_ttl() -> anyhow::Result<()> {
    let w = Wisp::start(Options {
        args: vec!["--event-ttl-seconds".into(), "2".into()],
        ..Options::default()
    })?;
    let client = w.client();
    let mut e = Event::new(ObjectMeta::namespaced("default", "old.1"));
    e.involved_object = wisp_api::ObjectReference {
        kind: "Pod".into(),
        name: "gone".into(),
        ..wisp_api::ObjectReference::default()
    };
    e.reason = "BackOff".into();
    e.count = 1;
    e.reporting_component = "test".into();
    let events = client.api::<Event>(Some("default"));
    events.create(&e).await?;
    let took = until("the event expires", 30, async || {
        Ok(events.get_opt("old.1").await?.is_none())
    })
    .await?;
    eprintln!("an event with a TTL of 2 s was deleted {took:?} after it was written");
    assert!(took >= Duration::from_secs(2), "not before its TTL: {took:?}");
    Ok(())
}
