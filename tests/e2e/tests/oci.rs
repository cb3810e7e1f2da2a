//! Components from OCI registries against a real `wisp up` and Debian's `docker-registry` on
//! loopback ports: `wisp push` publishes a component, a Function with `wasm: oci://…` runs it;
//! a wrong digest and a missing tag each give a clear pod condition; a private repository
//! needs its credentials Secret (and gets nowhere without it).

#![allow(clippy::print_stderr)] // the test reports what it ran

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wisp_api::{Container, Function, LocalObjectReference, ObjectMeta, Pod, Resource, RestartPolicy, Secret};
use wisp_e2e::{Options, Wisp, until};
use wisp_sandbox_docker::testing::Registry;

/// `wisp:registry-secret` (bcrypt), for the private registry.
const HTPASSWD: &str = "wisp:$2y$10$hGy7lB6v/jeED1ZN1MNRZekxS9x867poxYdCRlCCPCK6dmYIBGGYy\n";

async fn get(ingress: &str, host: &str) -> anyhow::Result<(u16, String)> {
    let req = http::Request::get(format!("{ingress}/"))
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let resp = wisp_e2e::http_client().request(req).await?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn pod(name: &str, wasm: &str, pull_secret: Option<&str>) -> Pod {
    let mut p = Pod::new(ObjectMeta::namespaced("default", name));
    p.spec.restart_policy = RestartPolicy::Never;
    p.spec.containers = vec![Container {
        name: "app".into(),
        wasm: Some(wasm.into()),
        ports: vec![wisp_api::ContainerPort {
            container_port: 8080,
            ..Default::default()
        }],
        ..Container::default()
    }];
    p.spec.image_pull_secrets = pull_secret
        .map(|n| vec![LocalObjectReference { name: n.into() }])
        .unwrap_or_default();
    p
}

/// The reason and message a pod's container waits with.
fn waiting(p: &Pod) -> Option<(String, String)> {
    let w = p
        .status
        .as_ref()?
        .container_statuses
        .first()?
        .state
        .as_ref()?
        .waiting
        .clone()?;
    Some((w.reason.unwrap_or_default(), w.message.unwrap_or_default()))
}

fn registries() -> Option<(Registry, Registry)> {
    let public = wisp_testkit::required("components_are_pulled_from_oci_registries", Registry::start())?;
    let private = wisp_testkit::required(
        "components_are_pulled_from_oci_registries",
        Registry::start_private(HTPASSWD),
    )?;
    Some((public, private))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_are_pulled_from_oci_registries() -> anyhow::Result<()> {
    let Some((public, private)) = registries() else {
        return Ok(());
    };
    // The registries are on loopback: the node must be allowed to reach them.
    let w = Wisp::start(Options {
        command: Some("up".into()),
        args: vec!["--allow-egress".into(), "127.0.0.1/32".into()],
        ..Options::default()
    })?;
    let client = w.client();
    let ingress = wisp_e2e::node_ingress(&client, "local").await?;
    let hello = wisp_e2e::guest("hello")?.display().to_string();

    // wisp push to the public registry; a Function runs the component from there.
    let reference = format!("oci://{}/team/hello:v1", public.addr);
    let (ok, out, err) = w.cli(&["push", &reference, "--path", &hello])?;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("pinned: oci://") && out.contains("@sha256:"),
        "{out}"
    );
    let pinned = out
        .lines()
        .find_map(|l| l.strip_prefix("pinned: "))
        .context("pinned")?
        .to_owned();
    let mut f = Function::new(ObjectMeta::namespaced("default", "fromoci"));
    f.spec.template.spec.containers = vec![Container {
        name: "hello".into(),
        wasm: Some(reference.clone()),
        ..Container::default()
    }];
    client.api::<Function>(Some("default")).create(&f).await?;
    until("the component from the registry answering", 60, async || {
        Ok(get(&ingress, "fromoci.default.localhost").await?.1 == "Hello from Wisp")
    })
    .await?;
    // Pinned by the manifest digest the push printed: the same component.
    let pods = client.api::<Pod>(Some("default"));
    pods.create(&pod("pinned", &pinned, None)).await?;
    wisp_testkit::wait_pod(&client, "pinned", 60, Pod::is_ready).await?;

    // A wrong digest and a missing tag: each a clear condition on the pod.
    let wrong = format!("oci://{}/team/hello@sha256:{}", public.addr, "0".repeat(64));
    for (name, wasm) in [
        ("wrong-digest", wrong),
        ("missing-tag", format!("oci://{}/team/hello:nope", public.addr)),
    ] {
        pods.create(&pod(name, &wasm, None)).await?;
        let p = wisp_testkit::wait_pod(&client, name, 60, |p| {
            waiting(p).is_some_and(|(r, _)| r == "ComponentPullBackOff")
        })
        .await?;
        let (_, message) = waiting(&p).context("waiting")?;
        eprintln!("{name}: {message}");
        assert!(
            message.contains("not found in the registry") && message.contains("team/hello"),
            "{message}"
        );
    }

    // A private repository: pushed with credentials; a pod without them is refused, with them
    // it runs.
    let private_ref = format!("oci://{}/team/secret-hello:v1", private.addr);
    let (ok, _, err) = w.cli(&["push", &private_ref, "--path", &hello])?;
    assert!(
        !ok && err.contains("refused the credentials"),
        "a push without credentials: {err}"
    );
    let out = std::process::Command::new(wisp_e2e::wisp_bin()?)
        .args(["push", &private_ref, "--path", &hello, "--username", "wisp"])
        .env("WISP_REGISTRY_PASSWORD", "registry-secret")
        .env("WISP_CONFIG", w.config_path())
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pods.create(&pod("no-credentials", &private_ref, None)).await?;
    let p = wisp_testkit::wait_pod(&client, "no-credentials", 60, |p| {
        waiting(p).is_some_and(|(r, _)| r == "ComponentPullBackOff")
    })
    .await?;
    let (_, message) = waiting(&p).context("waiting")?;
    assert!(
        message.contains("refused the credentials") && message.contains("imagePullSecrets"),
        "{message}"
    );
    let mut secret = Secret::new(ObjectMeta::namespaced("default", "regcred"));
    secret.type_ = wisp_api::SECRET_TYPE_REGISTRY.into();
    secret.string_data = [
        ("server", private.addr.as_str()),
        ("username", "wisp"),
        ("password", "registry-secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    client.api::<Secret>(Some("default")).create(&secret).await?;
    pods.create(&pod("with-credentials", &private_ref, Some("regcred")))
        .await?;
    wisp_testkit::wait_pod(&client, "with-credentials", 60, Pod::is_ready).await?;
    // A wrong password is refused too (the cached component does not stand in for access).
    let mut bad = secret.clone();
    bad.metadata = ObjectMeta::namespaced("default", "badcred");
    bad.string_data.insert("password".into(), "guess".into());
    client.api::<Secret>(Some("default")).create(&bad).await?;
    pods.create(&pod("bad-credentials", &private_ref, Some("badcred")))
        .await?;
    let p = wisp_testkit::wait_pod(&client, "bad-credentials", 60, |p| {
        waiting(p).is_some_and(|(r, _)| r == "ComponentPullBackOff")
    })
    .await?;
    assert!(
        waiting(&p).is_some_and(|(_, m)| m.contains("refused the credentials")),
        "{p:?}"
    );
    Ok(())
}
