//! The ReplicaSet controller and garbage collection against a real API server over loopback.

use std::time::Duration;

use wisp_api::{
    Container, Deployment, LabelSelector, ObjectMeta, OwnerReference, Pod, PodTemplateSpec, ReplicaSet,
    Resource,
};
use wisp_client::{Api, ListParams};
use wisp_testkit::eventually;

fn replicaset(name: &str, replicas: i32) -> ReplicaSet {
    let mut rs = ReplicaSet::new(ObjectMeta::namespaced("default", name));
    rs.spec.replicas = replicas;
    rs.spec.selector =
        LabelSelector::from_labels([("app".to_owned(), name.to_owned())].into_iter().collect());
    let mut template = PodTemplateSpec::default();
    template.metadata.labels.insert("app".into(), name.into());
    template.spec.containers.push(Container {
        name: "main".into(),
        wasm: Some(format!("sha256:{}", "0".repeat(64))),
        ..Container::default()
    });
    rs.spec.template = template;
    rs
}

async fn owned_pods(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    let params = ListParams {
        label_selector: Some(format!("app={app}")),
        field_selector: None,
    };
    pods.list(&params).await.expect("list").items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_keeps_its_pods_and_gc_cleans_up() {
    let (client, shutdown, _dir) = wisp_apiserver::testutil::started().await;
    let controllers = tokio::spawn(wisp_controllers::run(
        wisp_runtime::Informers::new(client.clone(), shutdown.clone()),
        wisp_controllers::Config::default(),
        shutdown.clone(),
    ));
    let rss = client.api::<ReplicaSet>(Some("default"));
    let pods = client.api::<Pod>(Some("default"));

    let rs = rss.create(&replicaset("web", 3)).await.expect("create rs");
    let uid = rs.metadata.uid.clone().expect("uid");
    eventually("3 pods", async || owned_pods(&pods, "web").await.len() == 3).await;
    // No over-creation while the controller's caches catch up with its own writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let three = owned_pods(&pods, "web").await;
    assert_eq!(three.len(), 3, "exactly 3, not more");
    assert!(
        three
            .iter()
            .all(|p| p.metadata.owner_references.iter().any(|o| o.uid == uid))
    );
    eventually("status.replicas = 3", async || {
        rss.get("web")
            .await
            .expect("get")
            .status
            .is_some_and(|s| s.replicas == 3)
    })
    .await;

    // A deleted pod is replaced.
    let victim = three[0].metadata.name.clone();
    pods.delete(&victim).await.expect("delete pod");
    eventually("replacement", async || {
        let now = owned_pods(&pods, "web").await;
        now.len() == 3 && now.iter().all(|p| p.metadata.name != victim)
    })
    .await;

    // Scale down to 1 (read-modify-write; the controller may write the status in between,
    // which makes our copy stale: read again on a conflict, as any client must).
    loop {
        let mut current = rss.get("web").await.expect("get");
        current.spec.replicas = 1;
        match rss.replace(&current).await {
            Ok(_) => break,
            Err(e) if e.code() == Some(409) => {}
            Err(e) => panic!("scale down: {e}"),
        }
    }
    eventually("1 pod", async || owned_pods(&pods, "web").await.len() == 1).await;

    // Deleting the ReplicaSet deletes its pods (garbage collection).
    rss.delete("web").await.expect("delete rs");
    eventually("pods collected", async || {
        owned_pods(&pods, "web").await.is_empty()
    })
    .await;

    // A ReplicaSet owned by a Deployment that does not exist is collected too, and pods of a
    // live owner are left alone.
    let mut orphan = replicaset("orphan", 0);
    orphan.metadata.owner_references.push(OwnerReference {
        api_version: wisp_api::API_VERSION.into(),
        kind: Deployment::KIND.into(),
        name: "gone".into(),
        uid: "no-such-uid".into(),
        controller: Some(true),
    });
    rss.create(&orphan).await.expect("create orphan");
    rss.create(&replicaset("keep", 1)).await.expect("create keep");
    eventually("orphan collected", async || {
        rss.get_opt("orphan").await.expect("get").is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rss.get_opt("keep").await.expect("get").is_some());
    assert_eq!(owned_pods(&pods, "keep").await.len(), 1);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), controllers)
        .await
        .expect("controllers stop")
        .expect("join");
}
