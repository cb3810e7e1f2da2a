//! The Function controller against a real API server: a Function expands to a Revision with
//! its own Deployment and Service and a Route to it, keeps the autoscaler's replicas within
//! its bounds, makes a new Revision when the template changes, reports its URL and replicas,
//! and takes everything with it when deleted.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use wisp_api::{Container, Deployment, Function, ObjectMeta, Resource, Revision, Route, Service};
use wisp_client::Client;
use wisp_testkit::try_eventually as eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_expands_scales_within_bounds_and_is_collected() -> anyhow::Result<()> {
    let server = wisp_apiserver::testutil::TestServer::start().await?;
    let client = Client::new(&server.url, &server.token);
    let shutdown = CancellationToken::new();
    // The Function controller and the collectors of its children; no autoscaler, so that
    // the replicas this test sets stand for the "autoscaler's choice".
    let controllers = tokio::spawn({
        let (c, s) = (client.clone(), shutdown.clone());
        let i = wisp_runtime::Informers::new(c, s.clone());
        async move {
            tokio::join!(
                wisp_controllers::run_functions(i.clone(), "localhost".into(), s.clone()),
                wisp_controllers::gc::run::<Revision, Function>(i.clone(), s.clone()),
                wisp_controllers::gc::run::<Deployment, Revision>(i.clone(), s.clone()),
                wisp_controllers::gc::run::<Service, Revision>(i.clone(), s.clone()),
                wisp_controllers::gc::run::<Route, Function>(i, s),
            );
        }
    });
    let mut f = Function::new(ObjectMeta::namespaced("default", "hello"));
    f.spec.scaling.min_scale = 1;
    f.spec.scaling.max_scale = 3;
    f.spec.template.spec.containers = vec![Container {
        name: "hello".into(),
        wasm: Some(format!("sha256:{}", "0".repeat(64))),
        ..Container::default()
    }];
    let functions = client.api::<Function>(Some("default"));
    let created = functions.create(&f).await?;
    let uid = created.metadata.uid.clone().context("uid")?;

    let deployments = client.api::<Deployment>(Some("default"));
    let rev = eventually("revision 1", async || {
        Ok(client
            .api::<Revision>(Some("default"))
            .get_opt("hello-00001")
            .await?)
    })
    .await?;
    assert_eq!(rev.metadata.owner_references[0].uid, uid);
    assert_eq!(rev.spec.template, f.spec.template);
    let d = eventually("the deployment", async || {
        Ok(deployments.get_opt("hello-00001").await?)
    })
    .await?;
    assert_eq!(d.spec.replicas, 1, "starts at minScale");
    assert_eq!(
        d.metadata.owner_references[0].uid,
        rev.metadata.uid.clone().context("uid")?
    );
    let svc = eventually("the service", async || {
        Ok(client
            .api::<Service>(Some("default"))
            .get_opt("hello-00001")
            .await?)
    })
    .await?;
    assert_eq!(svc.spec.selector["wisp.dev/revision"], "hello-00001");
    let route = eventually("the route", async || {
        Ok(client.api::<Route>(Some("default")).get_opt("hello").await?)
    })
    .await?;
    assert_eq!(route.spec.host.as_deref(), Some("hello.default.localhost"));
    assert_eq!(route.spec.backends[0].service, "hello-00001");
    let st = eventually("the status", async || {
        Ok(functions
            .get("hello")
            .await?
            .status
            .filter(|s| s.url.is_some() && s.desired_replicas == 1))
    })
    .await?;
    assert_eq!(st.url.as_deref(), Some("http://hello.default.localhost/"));

    // The autoscaler's choice stands within [min, max] and is clamped beyond it.
    for (set, want) in [(2, 2), (7, 3)] {
        wisp_testkit::update(&deployments, "hello-00001", |d| d.spec.replicas = set).await?;
        eventually("the clamped replicas", async || {
            let d = deployments.get("hello-00001").await?;
            let f = functions.get("hello").await?;
            Ok(
                (d.spec.replicas == want && f.status.is_some_and(|s| s.desired_replicas == want))
                    .then_some(()),
            )
        })
        .await?;
    }

    // A new template: revision 2, and the route moves to it once it is up.
    wisp_testkit::update(&functions, "hello", |f| {
        f.spec.template.spec.containers[0].args = vec!["v2".into()];
    })
    .await?;
    let d2 = eventually("revision 2's deployment", async || {
        Ok(deployments.get_opt("hello-00002").await?)
    })
    .await?;
    assert_eq!(d2.spec.template.spec.containers[0].args, ["v2"]);
    // No node runs pods here, so revision 1 never came up: nothing to keep the traffic on.
    eventually("the route on revision 2", async || {
        let route = client.api::<Route>(Some("default")).get("hello").await?;
        let st = functions.get("hello").await?.status.unwrap_or_default();
        Ok((route.spec.backends[0].service == "hello-00002"
            && st.latest_created_revision.as_deref() == Some("hello-00002"))
        .then_some(()))
    })
    .await?;

    functions.delete("hello").await?;
    eventually("the children to be collected", async || {
        let gone = deployments.get_opt("hello-00001").await?.is_none()
            && deployments.get_opt("hello-00002").await?.is_none()
            && client
                .api::<Revision>(Some("default"))
                .get_opt("hello-00001")
                .await?
                .is_none()
            && client
                .api::<Service>(Some("default"))
                .get_opt("hello-00001")
                .await?
                .is_none()
            && client
                .api::<Route>(Some("default"))
                .get_opt("hello")
                .await?
                .is_none();
        Ok(gone.then_some(()))
    })
    .await?;
    shutdown.cancel();
    controllers.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_never_takes_over_an_object_it_does_not_own() -> anyhow::Result<()> {
    let server = wisp_apiserver::testutil::TestServer::start().await?;
    let client = Client::new(&server.url, &server.token);
    // A Service with the name revision 1's would have.
    let mut svc = Service::new(ObjectMeta::namespaced("default", "taken-00001"));
    svc.spec.selector.insert("app".into(), "mine".into());
    svc.spec.ports = vec![wisp_api::ServicePort {
        port: 9000,
        ..wisp_api::ServicePort::default()
    }];
    client.api::<Service>(Some("default")).create(&svc).await?;
    let shutdown = CancellationToken::new();
    let controllers = tokio::spawn(wisp_controllers::run_functions(
        wisp_runtime::Informers::new(client.clone(), shutdown.clone()),
        "localhost".into(),
        shutdown.clone(),
    ));
    let mut f = Function::new(ObjectMeta::namespaced("default", "taken"));
    f.spec.template.spec.containers = vec![Container {
        name: "hello".into(),
        wasm: Some(format!("sha256:{}", "0".repeat(64))),
        ..Container::default()
    }];
    let functions = client.api::<Function>(Some("default"));
    functions.create(&f).await?;
    let reason = eventually("the NameConflict condition", async || {
        let f = functions.get("taken").await?;
        Ok(f.status
            .and_then(|s| wisp_api::meta::find_condition(&s.conditions, "Ready").cloned())
            .and_then(|c| c.reason)
            .filter(|r| r == "NameConflict"))
    })
    .await?;
    assert_eq!(reason, "NameConflict");
    let untouched = client.api::<Service>(Some("default")).get("taken-00001").await?;
    assert_eq!(
        untouched.spec.ports[0].port, 9000,
        "the user's Service is left alone"
    );
    assert!(untouched.metadata.owner_references.is_empty());
    assert!(
        client
            .api::<Deployment>(Some("default"))
            .get_opt("taken-00001")
            .await?
            .is_none(),
        "nothing created while the name is taken"
    );
    shutdown.cancel();
    controllers.await?;
    Ok(())
}

/// From before revisions: a Function's Deployment named as the Function keeps serving until
/// revision 1 is up, and revision 1 starts with its replicas (not a cold cutover to minScale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_the_old_deployment_until_revision_1_is_up() -> anyhow::Result<()> {
    let server = wisp_apiserver::testutil::TestServer::start().await?;
    let client = Client::new(&server.url, &server.token);
    let mut f = Function::new(ObjectMeta::namespaced("default", "old"));
    f.spec.scaling.max_scale = 5;
    f.spec.template.spec.containers = vec![Container {
        name: "hello".into(),
        wasm: Some(format!("sha256:{}", "0".repeat(64))),
        ..Container::default()
    }];
    let created = client.api::<Function>(Some("default")).create(&f).await?;
    // The old layout: Deployment `old`, owned by the Function, at 3 replicas.
    let mut legacy = wisp_controllers::function::desired_revision(&created, 1);
    legacy.metadata.uid = created.metadata.uid.clone();
    let mut d = wisp_controllers::function::desired_deployment(&created, &legacy, (0, 5), Some(3));
    d.metadata.name = "old".into();
    d.metadata.owner_references = legacy.metadata.owner_references.clone();
    let deployments = client.api::<Deployment>(Some("default"));
    deployments.create(&d).await?;

    let shutdown = CancellationToken::new();
    let controllers = tokio::spawn(wisp_controllers::run_functions(
        wisp_runtime::Informers::new(client.clone(), shutdown.clone()),
        "localhost".into(),
        shutdown.clone(),
    ));
    let d1 = eventually("revision 1's deployment", async || {
        Ok(deployments.get_opt("old-00001").await?)
    })
    .await?;
    assert_eq!(d1.spec.replicas, 3, "revision 1 starts with the old replicas");
    // No node here: revision 1 never comes up, so the old Deployment stays.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        deployments.get_opt("old").await?.is_some(),
        "kept until revision 1 is up"
    );
    shutdown.cancel();
    controllers.await?;
    Ok(())
}
