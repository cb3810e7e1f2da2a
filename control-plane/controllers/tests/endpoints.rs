//! The Endpoints controller against a real API server: pod status written through /status
//! (as a node agent will) moves addresses between ready and not ready.

use std::time::Duration;

use wisp_api::{
    Condition, Container, Endpoints, ObjectMeta, Pod, PodPhase, PodStatus, Resource, Service, ServicePort,
};

fn pod(name: &str) -> Pod {
    let mut p = Pod::new(ObjectMeta::namespaced("default", name));
    p.metadata.labels.insert("app".into(), "web".into());
    p.spec.containers.push(Container {
        name: "main".into(),
        image: Some("web:1".into()),
        ..Container::default()
    });
    p
}

fn status(ip: &str, ready: bool) -> PodStatus {
    let mut st = PodStatus {
        phase: PodPhase::Running,
        pod_ip: Some(ip.into()),
        ..PodStatus::default()
    };
    st.conditions.push(Condition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        ..Condition::default()
    });
    st
}

async fn addresses(api: &wisp_client::Api<Endpoints>) -> Option<(Vec<String>, Vec<String>)> {
    let ep = api.get_opt("web").await.expect("get")?;
    let ips = |v: &Vec<wisp_api::EndpointAddress>| v.iter().map(|a| a.ip.clone()).collect::<Vec<_>>();
    Some(ep.subsets.first().map_or((vec![], vec![]), |s| {
        (ips(&s.addresses), ips(&s.not_ready_addresses))
    }))
}

/// Waits until the Endpoints' ready and not-ready addresses are `want`.
async fn eventually(api: &wisp_client::Api<Endpoints>, want: (Vec<&str>, Vec<&str>)) {
    let want = (
        want.0.into_iter().map(String::from).collect::<Vec<_>>(),
        want.1.into_iter().map(String::from).collect::<Vec<_>>(),
    );
    wisp_testkit::eventually(&format!("endpoints {want:?}"), async || {
        addresses(api).await.as_ref() == Some(&want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_pod_readiness() {
    let (client, shutdown, _dir) = wisp_apiserver::testutil::started().await;
    let controllers = tokio::spawn(wisp_controllers::run(
        wisp_runtime::Informers::new(client.clone(), shutdown.clone()),
        wisp_controllers::Config::default(),
        shutdown.clone(),
    ));
    let pods = client.api::<Pod>(Some("default"));
    let services = client.api::<Service>(Some("default"));
    let endpoints = client.api::<Endpoints>(Some("default"));

    let mut svc = Service::new(ObjectMeta::namespaced("default", "web"));
    svc.spec.selector.insert("app".into(), "web".into());
    svc.spec.ports.push(ServicePort {
        port: 80,
        target_port: Some(8080),
        ..ServicePort::default()
    });
    services.create(&svc).await.expect("service");
    eventually(&endpoints, (vec![], vec![])).await;

    for (name, ip, ready) in [("a", "10.0.0.1", true), ("b", "10.0.0.2", false)] {
        let mut p = pods.create(&pod(name)).await.expect("pod");
        p.status = Some(status(ip, ready));
        pods.replace_status(&p).await.expect("status");
    }
    eventually(&endpoints, (vec!["10.0.0.1"], vec!["10.0.0.2"])).await;
    let ep = endpoints.get("web").await.expect("get");
    assert_eq!(ep.subsets[0].ports[0].port, 8080, "target port");

    // b becomes ready; a goes away.
    let mut b = pods.get("b").await.expect("get");
    b.status = Some(status("10.0.0.2", true));
    pods.replace_status(&b).await.expect("status");
    pods.delete("a").await.expect("delete");
    eventually(&endpoints, (vec!["10.0.0.2"], vec![])).await;

    // Deleting the Service collects its Endpoints.
    services.delete("web").await.expect("delete svc");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while endpoints.get_opt("web").await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "endpoints collected with their service"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), controllers)
        .await
        .expect("stop")
        .expect("join");
}
