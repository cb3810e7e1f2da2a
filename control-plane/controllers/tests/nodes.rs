//! Node lifecycle against a real API server: a node whose lease goes stale is marked
//! NotReady, its pods fail with NodeLost and their ReplicaSet replaces them; a node with a
//! fresh lease is left alone.

use std::time::Duration;

use wisp_api::{
    Condition, Container, LabelSelector, Lease, Node, NodeStatus, ObjectMeta, Pod, PodPhase, ReplicaSet,
    Resource,
};
use wisp_client::{Client, ListParams};
use wisp_controllers::nodes::LEASE_NAMESPACE;

async fn node(client: &Client, name: &str, renewed_secs_ago: i64) {
    let nodes = client.api::<Node>(None);
    let made = nodes
        .create(&Node::new(ObjectMeta {
            name: name.into(),
            ..ObjectMeta::default()
        }))
        .await
        .expect("node");
    let mut ready = made.clone();
    ready.status = Some(NodeStatus {
        runtimes: vec!["wasm".into()],
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Condition::default()
        }],
        ..NodeStatus::default()
    });
    nodes.replace_status(&ready).await.expect("ready");
    let mut lease = Lease::new(ObjectMeta::namespaced(LEASE_NAMESPACE, name));
    let renewed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(renewed_secs_ago);
    lease.spec.holder_identity = Some(name.into());
    lease.spec.renew_time = Some(renewed.to_string());
    client
        .api::<Lease>(Some(LEASE_NAMESPACE))
        .create(&lease)
        .await
        .expect("lease");
}

fn ready_status(n: &Node) -> String {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_node_is_marked_not_ready_and_its_pods_are_replaced() {
    let (client, shutdown, _dir) = wisp_apiserver::testutil::started().await;
    node(&client, "stale", 60).await;
    node(&client, "fresh", 0).await;
    // Generous: the heartbeat below must never look late on a loaded CI machine.
    let grace = Duration::from_secs(4);
    // The fresh node's agent keeps renewing its lease.
    let heartbeat = tokio::spawn({
        let leases = client.api::<Lease>(Some(LEASE_NAMESPACE));
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Ok(mut l) = leases.get("fresh").await {
                    l.spec.renew_time = Some(jiff::Timestamp::now().to_string());
                    let _ = leases.replace(&l).await;
                }
            }
        }
    });
    let controllers = tokio::spawn({
        let (c, s) = (client.clone(), shutdown.clone());
        async move {
            tokio::join!(
                wisp_controllers::run_nodes(
                    wisp_runtime::Informers::new(c.clone(), s.clone()),
                    grace,
                    s.clone()
                ),
                wisp_controllers::run_replicasets(wisp_runtime::Informers::new(c, s.clone()), s)
            );
        }
    });
    // A one-pod ReplicaSet whose pod we bind to the stale node (as a scheduler would).
    let rss = client.api::<ReplicaSet>(Some("default"));
    let pods = client.api::<Pod>(Some("default"));
    let mut rs = ReplicaSet::new(ObjectMeta::namespaced("default", "web"));
    rs.spec.replicas = 1;
    rs.spec.selector =
        LabelSelector::from_labels([("app".to_owned(), "web".to_owned())].into_iter().collect());
    rs.spec
        .template
        .metadata
        .labels
        .insert("app".into(), "web".into());
    rs.spec.template.spec.containers.push(Container {
        name: "main".into(),
        wasm: Some(format!("sha256:{}", "0".repeat(64))),
        ..Container::default()
    });
    rss.create(&rs).await.expect("rs");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(p) = pods
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .next()
        {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "pod created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut bound = first.clone();
    bound.spec.node_name = Some("stale".into());
    pods.replace(&bound).await.expect("bind");

    let nodes = client.api::<Node>(None);
    loop {
        let stale = nodes.get("stale").await.expect("get");
        let pod_gone = pods
            .get_opt(&first.metadata.name)
            .await
            .expect("get")
            .is_none_or(|p| p.phase() == PodPhase::Failed);
        let replaced = pods
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .any(|p| p.metadata.name != first.metadata.name && !p.phase().is_terminal());
        if ready_status(&stale) == "False" && pod_gone && replaced {
            let cond = stale
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .cloned();
            assert_eq!(cond.and_then(|c| c.reason).as_deref(), Some("NodeStatusUnknown"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stale node handled: ready={}",
            ready_status(&stale)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The node whose lease keeps being renewed stays Ready well past the grace period.
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    assert_eq!(ready_status(&nodes.get("fresh").await.expect("get")), "True");
    heartbeat.abort();
    assert_eq!(Node::KIND, "Node");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), controllers)
        .await
        .expect("stop")
        .expect("join");
}
