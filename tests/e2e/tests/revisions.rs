//! Revisions and traffic splitting against a real `wisp up`: each template change makes a
//! Revision; `spec.traffic` splits requests 90/10 (measured over 2,000 requests), a tag gets
//! its own host, `wisp rollout promote` moves everything to the latest, and the revision left
//! without traffic goes to zero while the other serves; past the retention, old revisions
//! are collected.

#![allow(clippy::print_stderr)] // the tests report what they ran and measured

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wisp_api::{Container, Deployment, EnvVar, Function, ObjectMeta, Pod, Resource, Revision, TrafficTarget};
use wisp_e2e::{Http, Options, Wisp, fast_autoscaler, until};

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

fn container(digest: &str, who: &str) -> Container {
    Container {
        name: "split".into(),
        wasm: Some(digest.to_owned()),
        env: vec![EnvVar {
            name: "WHO".into(),
            value: Some(who.into()),
            value_from: None,
        }],
        ..Container::default()
    }
}

/// Which revision answered: the `fault` guest's `/env?name=WHO`.
async fn who(http: &Http, ingress: &str, host: &str) -> anyhow::Result<String> {
    let (code, _, body) = get(http, ingress, host, "/env?name=WHO").await?;
    anyhow::ensure!(code == 200, "{code}: {body}");
    Ok(body.trim().to_owned())
}

async fn replicas(w: &Wisp, name: &str) -> anyhow::Result<i32> {
    Ok(w.client()
        .api::<Deployment>(Some("default"))
        .get_opt(name)
        .await?
        .map_or(-1, |d| d.spec.replicas))
}

async fn live_pods(w: &Wisp, revision: &str) -> anyhow::Result<usize> {
    let params = wisp_client::ListParams {
        label_selector: Some(format!("wisp.dev/revision={revision}")),
        ..Default::default()
    };
    let pods = w.client().api::<Pod>(Some("default")).list(&params).await?.items;
    Ok(pods.iter().filter(|p| !p.phase().is_terminal()).count())
}

/// Must show: 90/10 between two revisions within ±3 points over 2,000 requests; a tagged
/// revision answers on its own host; `promote` moves 100 %; the idle revision goes to zero
/// while the other serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_splits_between_revisions_and_promote_moves_it_all() -> anyhow::Result<()> {
    let w = Wisp::start(Options {
        command: Some("up".into()),
        args: fast_autoscaler(),
        ..Options::default()
    })?;
    let client = w.client();
    let ingress = wisp_e2e::node_ingress(&client, "local").await?;
    let http = wisp_e2e::http_client();
    let digest = client
        .put_blob(Bytes::from(std::fs::read(wisp_e2e::guest("fault")?)?))
        .await?;

    let functions = client.api::<Function>(Some("default"));
    let mut f = Function::new(ObjectMeta::namespaced("default", "split"));
    f.spec.scaling.scale_to_zero_after = "5s".into();
    f.spec.template.spec.containers = vec![container(&digest, "one")];
    functions.create(&f).await?;
    until("revision 1 serving", 30, async || {
        Ok(who(&http, &ingress, "split.default.localhost")
            .await
            .ok()
            .as_deref()
            == Some("one"))
    })
    .await?;

    // A new template (WHO=two) with 10 % to it, tagged v2; 90 % stays on revision 1.
    wisp_testkit::update(&functions, "split", |f| {
        f.spec.template.spec.containers = vec![container(&digest, "two")];
        f.spec.traffic = vec![
            TrafficTarget {
                revision_name: Some("split-00001".into()),
                percent: 90,
                ..TrafficTarget::default()
            },
            TrafficTarget {
                latest_revision: true,
                percent: 10,
                tag: Some("v2".into()),
                ..TrafficTarget::default()
            },
        ];
    })
    .await?;
    let status = until("the split resolved", 30, async || {
        let st = functions.get("split").await?.status.unwrap_or_default();
        Ok(st
            .traffic
            .iter()
            .any(|t| t.revision_name == "split-00002" && t.percent == 10))
    })
    .await;
    status?;
    let f = functions.get("split").await?;
    let st = f.status.clone().context("status")?;
    assert_eq!(st.latest_created_revision.as_deref(), Some("split-00002"));
    // Revision 2 starts at zero: up at once, so the latest-revision share is on it.
    assert_eq!(st.latest_ready_revision.as_deref(), Some("split-00002"));
    let tagged = st
        .traffic
        .iter()
        .find(|t| t.tag.as_deref() == Some("v2"))
        .context("tag")?;
    assert!(
        tagged
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("http://v2.split.default.localhost:")),
        "{tagged:?}"
    );
    let revisions = client
        .api::<Revision>(Some("default"))
        .list(&Default::default())
        .await?
        .items;
    let names: Vec<&str> = revisions.iter().map(|r| r.metadata.name.as_str()).collect();
    assert_eq!(names, ["split-00001", "split-00002"]);
    assert_eq!(
        revisions[0].spec.template.spec.containers[0].env[0]
            .value
            .as_deref(),
        Some("one"),
        "a revision keeps the template it was made from"
    );

    // The tag answers on its own host, always from revision 2.
    until("the tag's route", 30, async || {
        Ok(who(&http, &ingress, "v2.split.default.localhost")
            .await
            .ok()
            .as_deref()
            == Some("two"))
    })
    .await?;
    for _ in 0..20 {
        assert_eq!(who(&http, &ingress, "v2.split.default.localhost").await?, "two");
    }

    // 2,000 requests, 8 at a time: 10 % ± 3 points from revision 2.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, ingress) = (http.clone(), ingress.clone());
        tasks.spawn(async move {
            let mut twos = 0u32;
            for _ in 0..250 {
                match who(&http, &ingress, "split.default.localhost").await?.as_str() {
                    "two" => twos += 1,
                    "one" => {}
                    other => anyhow::bail!("an answer from neither revision: {other:?}"),
                }
            }
            Ok(twos)
        });
    }
    let mut twos = 0;
    while let Some(r) = tasks.join_next().await {
        twos += r??;
    }
    let share = f64::from(twos) / 2000.0 * 100.0;
    eprintln!("revision 2 answered {twos} of 2000 requests: {share:.1} %");
    assert!((7.0..=13.0).contains(&share), "10 % ± 3 points, got {share:.1} %");
    // Each revision's status: its share, its pods, its last request.
    let revs = client.api::<Revision>(Some("default"));
    until("the revisions' status", 30, async || {
        let r1 = revs.get("split-00001").await?.status.unwrap_or_default();
        let r2 = revs.get("split-00002").await?.status.unwrap_or_default();
        // maxScale 10 shared out: 90 % may hold 9 pods, 10 % one.
        Ok(r1.percent == 90
            && r2.percent == 10
            && (r1.routed, r1.min_scale, r1.max_scale) == (true, 0, 9)
            && (r2.routed, r2.max_scale) == (true, 1)
            && r1.ready_replicas >= 1
            && r1.desired_replicas >= 1
            && r1.last_request_time.is_some()
            && r2.last_request_time.is_some()
            && wisp_api::meta::condition_is_true(&r1.conditions, "Ready"))
    })
    .await?;

    // Promote: all of it to revision 2, through the CLI.
    let (ok, out, err) = w.cli(&["rollout", "promote", "function/split"])?;
    assert!(ok, "{out}{err}");
    until("promoted", 30, async || {
        let st = functions.get("split").await?.status.unwrap_or_default();
        Ok(st.traffic.len() == 1
            && st.traffic[0].revision_name == "split-00002"
            && st.traffic[0].percent == 100)
    })
    .await?;
    // Revision 1 goes to zero while revision 2 serves (a request every 20 ms keeps it up).
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn({
        let (http, ingress, stop) = (http.clone(), ingress.clone(), stop.clone());
        async move {
            let mut answers = Vec::new();
            while !stop.is_cancelled() {
                answers.push(who(&http, &ingress, "split.default.localhost").await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        }
    });
    let took = until("revision 1 at zero", 60, async || {
        Ok(replicas(&w, "split-00001").await? == 0 && live_pods(&w, "split-00001").await? == 0)
    })
    .await?;
    assert!(live_pods(&w, "split-00002").await? >= 1, "revision 2 serves");
    until("revision 1's status at zero", 30, async || {
        let r1 = revs.get("split-00001").await?.status.unwrap_or_default();
        Ok((r1.percent, r1.desired_replicas, r1.routed) == (0, 0, false))
    })
    .await?;
    stop.cancel();
    let answers = load.await?;
    let settled: Vec<String> = answers
        .into_iter()
        .skip(5)
        .map(|a| a.unwrap_or_else(|e| format!("error: {e}")))
        .collect();
    assert!(
        settled.iter().all(|a| a == "two"),
        "after promote only revision 2: {settled:?}"
    );
    eprintln!("revision 1 at zero {} ms after promote", took.as_millis());

    // Rollback: back to revision 1 (woken from zero).
    let (ok, out, err) = w.cli(&["rollout", "rollback", "split"])?;
    assert!(ok && out.contains("100% to split-00001"), "{out}{err}");
    until("rolled back", 30, async || {
        Ok(who(&http, &ingress, "split.default.localhost")
            .await
            .ok()
            .as_deref()
            == Some("one"))
    })
    .await?;

    // Retention: five more templates; the oldest revisions without traffic are collected.
    for n in 3..=8 {
        wisp_testkit::update(&functions, "split", |f| {
            f.spec.template.spec.containers = vec![container(&digest, &format!("n{n}"))];
        })
        .await?;
        until("the revision", 30, async || {
            Ok(functions
                .get("split")
                .await?
                .status
                .and_then(|s| s.latest_created_revision)
                == Some(format!("split-{n:05}")))
        })
        .await?;
    }
    until("old revisions collected", 30, async || {
        let names: Vec<String> = client
            .api::<Revision>(Some("default"))
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(|r| r.metadata.name)
            .collect();
        // Revision 1 has all the traffic; 8 is the latest; 3 idle ones are kept (5, 6, 7).
        Ok(names
            == [
                "split-00001",
                "split-00005",
                "split-00006",
                "split-00007",
                "split-00008",
            ])
    })
    .await?;
    until("their deployments collected", 30, async || {
        Ok(replicas(&w, "split-00002").await? == -1 && replicas(&w, "split-00003").await? == -1)
    })
    .await?;
    assert_eq!(who(&http, &ingress, "split.default.localhost").await?, "one");
    Ok(())
}
