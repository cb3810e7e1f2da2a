//! Deployment rollouts against a real API server, with a stand-in for the node agent that
//! makes every new pod Running and Ready: a template change rolls out with no moment below
//! the desired ready count (maxUnavailable resolves to 0 for 3 replicas), and going back to
//! the old template (rollout undo) reuses the old ReplicaSet as the newest revision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wisp_api::{
    Condition, Container, Deployment, LabelSelector, ObjectMeta, Pod, PodPhase, PodStatus, PodTemplateSpec,
    ReplicaSet, Resource,
};
use wisp_client::{Client, WatchParams, WatcherEvent};
use wisp_controllers::deployment::{REVISION, TEMPLATE_HASH};
use wisp_testkit::eventually;

fn deployment(digest: char) -> Deployment {
    let mut d = Deployment::new(ObjectMeta::namespaced("default", "web"));
    d.spec.replicas = 3;
    d.spec.selector =
        LabelSelector::from_labels([("app".to_owned(), "web".to_owned())].into_iter().collect());
    let mut t = PodTemplateSpec::default();
    t.metadata.labels.insert("app".into(), "web".into());
    t.spec.containers.push(Container {
        name: "main".into(),
        wasm: Some(format!("sha256:{}", digest.to_string().repeat(64))),
        ..Container::default()
    });
    d.spec.template = t;
    d
}

/// Marks every pod Running + Ready, like a node agent would; tracks ready pods by name.
async fn fake_agent(
    client: Client,
    ready: Arc<Mutex<HashMap<String, String>>>,
    low: Arc<Mutex<Option<usize>>>,
) {
    let api = client.api::<Pod>(Some("default"));
    let mut w = api.watcher(WatchParams::default());
    let mut n = 0u32;
    loop {
        let Ok(ev) = w.next().await else { return };
        let pods = match ev {
            WatcherEvent::Restarted(all) => all,
            WatcherEvent::Applied(p) => vec![p],
            WatcherEvent::Deleted(p) => {
                let mut r = ready.lock().expect("lock");
                r.remove(&p.metadata.name);
                let mut l = low.lock().expect("lock");
                if let Some(min) = l.as_mut() {
                    *min = (*min).min(r.len());
                }
                continue;
            }
        };
        for mut p in pods {
            if p.is_ready() {
                let hash = p.metadata.labels.get(TEMPLATE_HASH).cloned().unwrap_or_default();
                ready.lock().expect("lock").insert(p.metadata.name.clone(), hash);
                continue;
            }
            n += 1;
            let mut st = PodStatus {
                phase: PodPhase::Running,
                pod_ip: Some(format!("10.0.0.{n}")),
                ..PodStatus::default()
            };
            st.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Condition::default()
            });
            p.status = Some(st);
            let _ = api.replace_status(&p).await;
        }
    }
}

/// Set the template, retrying on 409 like any client racing the controller's status writes.
async fn set_template(api: &wisp_client::Api<Deployment>, digest: char) {
    for _ in 0..50 {
        let mut d = api.get("web").await.expect("get");
        d.spec.template = deployment(digest).spec.template;
        match api.replace(&d).await {
            Ok(_) => return,
            Err(e) if e.code() == Some(409) => continue,
            Err(e) => panic!("update: {e}"),
        }
    }
    panic!("could not update the deployment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_keeps_ready_pods_and_undo_restores() {
    let (client, shutdown, _dir) = wisp_apiserver::testutil::started().await;
    let controllers = tokio::spawn(wisp_controllers::run(
        wisp_runtime::Informers::new(client.clone(), shutdown.clone()),
        wisp_controllers::Config::default(),
        shutdown.clone(),
    ));
    let ready = Arc::new(Mutex::new(HashMap::new()));
    let low = Arc::new(Mutex::new(None::<usize>));
    let agent = tokio::spawn(fake_agent(client.clone(), ready.clone(), low.clone()));
    let deployments = client.api::<Deployment>(Some("default"));
    let replicasets = client.api::<ReplicaSet>(Some("default"));

    deployments.create(&deployment('a')).await.expect("create");
    let hashes = |r: &Arc<Mutex<HashMap<String, String>>>| {
        let mut v: Vec<String> = r.lock().expect("lock").values().cloned().collect();
        v.sort();
        v.dedup();
        (r.lock().expect("lock").len(), v)
    };
    eventually("3 ready pods of revision 1", async || hashes(&ready).0 == 3).await;
    let first_hash = hashes(&ready).1[0].clone();
    // Let the first rollout settle, then watch the minimum through the update.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hashes(&ready).0, 3, "no extra pods once settled");
    *low.lock().expect("lock") = Some(3);

    // Update the component digest: a rolling update.
    set_template(&deployments, 'b').await;
    eventually("all 3 pods on the new template", async || {
        let (n, hs) = hashes(&ready);
        n == 3 && hs.len() == 1 && hs[0] != first_hash
    })
    .await;
    let min = low.lock().expect("lock").expect("tracked");
    assert!(
        min >= 3,
        "ready pods dropped to {min} during the rollout (maxUnavailable is 0)"
    );
    let sets = replicasets.list(&Default::default()).await.expect("list").items;
    assert_eq!(sets.len(), 2, "one ReplicaSet per template");
    let new_hash = hashes(&ready).1[0].clone();

    // Undo: back to the first template; its ReplicaSet is reused as revision 3.
    *low.lock().expect("lock") = Some(3);
    set_template(&deployments, 'a').await;
    eventually("back on the first template", async || {
        let (n, hs) = hashes(&ready);
        n == 3 && hs == vec![first_hash.clone()]
    })
    .await;
    assert!(
        low.lock().expect("lock").expect("tracked") >= 3,
        "undo kept every pod ready"
    );
    let sets = replicasets.list(&Default::default()).await.expect("list").items;
    assert_eq!(sets.len(), 2, "the old ReplicaSet was reused, not recreated");
    let revision = |h: &str| {
        sets.iter()
            .find(|rs| rs.metadata.labels.get(TEMPLATE_HASH).map(String::as_str) == Some(h))
            .and_then(|rs| rs.metadata.annotations.get(REVISION).cloned())
    };
    assert_eq!(revision(&first_hash).as_deref(), Some("3"));
    assert_eq!(revision(&new_hash).as_deref(), Some("2"));
    let mut status_ok = false;
    for _ in 0..100 {
        let d = deployments.get("web").await.expect("get");
        if d.status
            .as_ref()
            .is_some_and(|s| s.available_replicas == 3 && s.updated_replicas == 3)
        {
            status_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(status_ok, "deployment status reports the finished rollout");
    assert_eq!(Deployment::KIND, "Deployment");

    shutdown.cancel();
    agent.abort();
    tokio::time::timeout(Duration::from_secs(15), controllers)
        .await
        .expect("stop")
        .expect("join");
}

/// What the timed agent saw: `ready` or `deleted`, the pod's template hash, and when.
type Log = Arc<Mutex<Vec<(String, String, tokio::time::Instant)>>>;

/// Like [`fake_agent`], but each pod's Ready condition carries the time it became Ready
/// (as the real agent's does), and every Ready time and deletion is recorded.
async fn timed_agent(client: Client, log: Log) {
    let api = client.api::<Pod>(Some("default"));
    let mut w = api.watcher(WatchParams::default());
    loop {
        let Ok(ev) = w.next().await else { return };
        let pods = match ev {
            WatcherEvent::Restarted(all) => all,
            WatcherEvent::Applied(p) => vec![p],
            WatcherEvent::Deleted(p) => {
                let hash = p.metadata.labels.get(TEMPLATE_HASH).cloned().unwrap_or_default();
                log.lock()
                    .expect("lock")
                    .push(("deleted".into(), hash, tokio::time::Instant::now()));
                continue;
            }
        };
        for mut p in pods {
            if p.is_ready() || p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let mut st = PodStatus {
                phase: PodPhase::Running,
                ..PodStatus::default()
            };
            st.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(jiff::Timestamp::now().to_string()),
                ..Condition::default()
            });
            p.status = Some(st);
            if api.replace_status(&p).await.is_ok() {
                let hash = p.metadata.labels.get(TEMPLATE_HASH).cloned().unwrap_or_default();
                log.lock()
                    .expect("lock")
                    .push(("ready".into(), hash, tokio::time::Instant::now()));
            }
        }
    }
}

/// `minReadySeconds`: a Ready pod is not available until it has been Ready that long, and a
/// rolling update (maxUnavailable 0) takes no old pod down before a new one is available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_ready_seconds_gates_availability_and_the_rollout() {
    const MIN_READY: u64 = 2;
    let (client, shutdown, _dir) = wisp_apiserver::testutil::started().await;
    let controllers = tokio::spawn(wisp_controllers::run(
        wisp_runtime::Informers::new(client.clone(), shutdown.clone()),
        wisp_controllers::Config::default(),
        shutdown.clone(),
    ));
    let log = Arc::new(Mutex::new(Vec::new()));
    let agent = tokio::spawn(timed_agent(client.clone(), log.clone()));
    let deployments = client.api::<Deployment>(Some("default"));
    let replicasets = client.api::<ReplicaSet>(Some("default"));

    let mut d = deployment('a');
    d.spec.replicas = 2;
    d.spec.min_ready_seconds = i32::try_from(MIN_READY).expect("small");
    d.spec.strategy.rolling_update = Some(wisp_api::RollingUpdateDeployment {
        max_surge: wisp_api::IntOrString::Int(1),
        max_unavailable: wisp_api::IntOrString::Int(0),
    });
    deployments.create(&d).await.expect("create");

    // Both pods Ready: the ReplicaSet carries minReadySeconds and counts them ready, not
    // available, until they have been Ready for it.
    let ready_count = |l: &Log| l.lock().expect("lock").iter().filter(|e| e.0 == "ready").count();
    eventually("2 ready pods", async || ready_count(&log) == 2).await;
    let both_ready = log.lock().expect("lock")[1].2;
    let rs_status = async || {
        let sets = replicasets.list(&Default::default()).await.expect("list").items;
        assert_eq!(sets.len(), 1);
        assert_eq!(
            sets[0].spec.min_ready_seconds, 2,
            "the Deployment hands minReadySeconds to its ReplicaSet"
        );
        sets[0].status.clone().unwrap_or_default()
    };
    let mut saw_ready_not_available = false;
    loop {
        let st = rs_status().await;
        let elapsed = both_ready.elapsed();
        if st.available_replicas == 2 {
            assert!(
                elapsed >= Duration::from_millis(MIN_READY * 1000 - 300),
                "available after {elapsed:?}, before minReadySeconds"
            );
            break;
        }
        if st.ready_replicas == 2 {
            saw_ready_not_available = true;
        }
        assert!(elapsed < Duration::from_secs(MIN_READY + 8), "never available");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        saw_ready_not_available,
        "the ReplicaSet reported its pods ready but not yet available"
    );
    eventually("the deployment's 2 pods ready and available", async || {
        let d = deployments.get("web").await.expect("get");
        d.status
            .as_ref()
            .is_some_and(|s| s.available_replicas == 2 && s.ready_replicas == 2)
    })
    .await;
    let first_hash = log.lock().expect("lock")[0].1.clone();

    // Roll: no old pod goes before a new pod has been Ready for minReadySeconds.
    log.lock().expect("lock").clear();
    set_template(&deployments, 'b').await;
    eventually("the old pods gone", async || {
        log.lock()
            .expect("lock")
            .iter()
            .filter(|e| e.0 == "deleted" && e.1 == first_hash)
            .count()
            == 2
    })
    .await;
    let events = log.lock().expect("lock").clone();
    let first_new_ready = events
        .iter()
        .find(|e| e.0 == "ready" && e.1 != first_hash)
        .map(|e| e.2)
        .expect("a new pod became ready");
    let first_old_deleted = events
        .iter()
        .find(|e| e.0 == "deleted" && e.1 == first_hash)
        .map(|e| e.2)
        .expect("an old pod was deleted");
    let gap = first_old_deleted.saturating_duration_since(first_new_ready);
    assert!(
        gap >= Duration::from_millis(MIN_READY * 1000 - 300),
        "an old pod went {gap:?} after the first new pod was Ready (minReadySeconds {MIN_READY})"
    );

    shutdown.cancel();
    agent.abort();
    tokio::time::timeout(Duration::from_secs(15), controllers)
        .await
        .expect("stop")
        .expect("join");
}
