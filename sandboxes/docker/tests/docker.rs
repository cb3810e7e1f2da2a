//! What the Docker runtime adds to the conformance suite, against the real engine: the
//! container is locked down, namespaces are isolated, a namespace's network goes with its
//! last container, OOM kills are reported, ports are published on the node address, images
//! are pulled from a real registry, and a daemon that is down answers `Unavailable` until it
//! is back.

use std::collections::BTreeMap;
use std::time::Duration;

use wisp_sandbox::{
    Endpoint, Kind, LABEL_NAMESPACE, LABEL_POD_UID, Limits, Sandbox, SandboxError, SandboxId, SandboxSpec,
    Source, State,
};
use wisp_sandbox_docker::testing::{self, Cleanup, ECHO_IMAGE, Registry, SocketProxy};
use wisp_sandbox_docker::{DockerConfig, DockerSandbox, container_name};

fn spec(pod: &str, namespace: &str, args: &[&str]) -> SandboxSpec {
    let mut s = SandboxSpec::new(
        SandboxId::new(pod, "main"),
        Source::Image(ECHO_IMAGE.into()),
        Kind::Process,
    );
    s.args = args.iter().map(|a| (*a).to_owned()).collect();
    s.labels = BTreeMap::from([
        (LABEL_NAMESPACE.to_owned(), namespace.to_owned()),
        (LABEL_POD_UID.to_owned(), pod.to_owned()),
    ]);
    s
}

fn server(pod: &str, namespace: &str) -> SandboxSpec {
    let mut s = spec(pod, namespace, &[]);
    s.kind = Kind::Http;
    s.ports = vec![8080];
    s.env = vec![("MESSAGE".into(), format!("from {namespace}"))];
    s
}

async fn run(s: &DockerSandbox, spec: &SandboxSpec) {
    s.prepare(spec).await.expect("prepare");
    s.create(spec).await.expect("create");
    s.start(&spec.id).await.expect("start");
}

fn inspect(id: &SandboxId) -> serde_json::Value {
    let out = std::process::Command::new("docker")
        .args(["inspect", &container_name(id)])
        .output()
        .expect("docker inspect");
    assert!(out.status.success(), "inspect {id}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v[0].clone()
}

/// GET `path` from a published HTTP endpoint, retried while the server starts.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let mut c = tokio::net::TcpStream::connect(addr).await?;
            c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
                .await?;
            let mut out = String::new();
            c.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        match attempt.await {
            Ok(body) if !body.is_empty() => return body,
            _ if tokio::time::Instant::now() > deadline => panic!("{addr} does not answer"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn ip_of(id: &SandboxId) -> String {
    let v = inspect(id);
    let nets = v["NetworkSettings"]["Networks"].as_object().expect("networks");
    nets.values()
        .next()
        .and_then(|n| n["IPAddress"].as_str())
        .expect("an address")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_locked_down_and_publish_on_the_node_address() {
    let Some((s, _cleanup)) = testing::runtime("locked_down") else {
        return;
    };
    let mut spec = server("uid-lock", "lockdown");
    spec.read_only_root = true;
    spec.limits = Limits {
        memory_bytes: Some(64 << 20),
        cpu_millis: Some(500),
        pids: Some(64),
        request_timeout: None,
    };
    spec.capabilities = vec!["NET_BIND_SERVICE".into()];
    run(&s, &spec).await;
    let v = inspect(&spec.id);
    let hc = &v["HostConfig"];
    assert_eq!(hc["Privileged"], false);
    assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(hc["CapAdd"], serde_json::json!(["NET_BIND_SERVICE"]));
    assert_eq!(hc["SecurityOpt"], serde_json::json!(["no-new-privileges"]));
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert_eq!(hc["Memory"], 64 << 20);
    assert_eq!(hc["MemorySwap"], 64 << 20, "no swap beyond the limit");
    assert_eq!(hc["NanoCpus"], 500_000_000);
    assert_eq!(hc["PidsLimit"], 64);
    assert_eq!(hc["NetworkMode"], "wisp-lockdown");
    let mounts = v["Mounts"].as_array().expect("mounts");
    assert!(mounts.is_empty(), "no host mounts were asked for: {mounts:?}");
    let env: Vec<&str> = v["Config"]["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(env.contains(&"MESSAGE=from lockdown"), "{env:?}");
    assert!(
        !env.iter()
            .any(|e| e.starts_with("CARGO") || e.starts_with("HOME=/root")),
        "no host env: {env:?}"
    );
    // The port is published on 127.0.0.1 only, and the status names it.
    let st = s.status(&spec.id).await.expect("status");
    let Some(Endpoint::Http(addr)) = st.endpoint else {
        panic!("an HTTP endpoint: {st:?}")
    };
    assert!(addr.ip().is_loopback(), "{addr}");
    let bindings = &v["HostConfig"]["PortBindings"]["8080/tcp"][0];
    assert_eq!(bindings["HostIp"], "127.0.0.1");
    let body = get(addr, "/env/MESSAGE").await;
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with("from lockdown"),
        "{body}"
    );
    s.stop(&spec.id, Duration::from_secs(5)).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_cannot_reach_each_other() {
    let Some((s, _cleanup)) = testing::runtime("isolation") else {
        return;
    };
    let b = server("uid-iso-b", "iso-b");
    run(&s, &b).await;
    let target = format!("{}:8080", ip_of(&b.id));
    // Wait until it serves (through its published port).
    let Some(Endpoint::Http(addr)) = s.status(&b.id).await.expect("status").endpoint else {
        panic!("endpoint")
    };
    get(addr, "/").await;
    // Same namespace: reachable.
    let same = spec("uid-iso-b-client", "iso-b", &["connect", &target]);
    run(&s, &same).await;
    let exit = s.wait(&same.id).await.expect("wait");
    assert_eq!(
        exit.exit_code, 0,
        "a container of the same namespace connects to {target}"
    );
    // Another namespace: not reachable.
    let other = spec("uid-iso-a-client", "iso-a", &["connect", &target]);
    run(&s, &other).await;
    let exit = s.wait(&other.id).await.expect("wait");
    assert_eq!(
        exit.exit_code, 1,
        "a container of namespace iso-a must not reach {target} in iso-b (1: refused or timed out)"
    );
    // Nor B's published port, which listens on the node's loopback only: from A, the host
    // is its network's gateway.
    let gateway = {
        let out = std::process::Command::new("docker")
            .args([
                "network",
                "inspect",
                "wisp-iso-a",
                "--format",
                "{{(index .IPAM.Config 0).Gateway}}",
            ])
            .output()
            .expect("network inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(!gateway.is_empty(), "iso-a's gateway");
    let published = format!("{gateway}:{}", addr.port());
    let via_host = spec("uid-iso-a-host", "iso-a", &["connect", &published]);
    run(&s, &via_host).await;
    let exit = s.wait(&via_host.id).await.expect("wait");
    assert_eq!(
        exit.exit_code, 1,
        "iso-a must not reach iso-b's published port at {published}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_is_reported() {
    let Some((s, _cleanup)) = testing::runtime("oom") else {
        return;
    };
    let mut spec = spec("uid-oom", "oom", &["alloc", "256"]);
    spec.limits.memory_bytes = Some(32 << 20);
    run(&s, &spec).await;
    let exit = tokio::time::timeout(Duration::from_secs(30), s.wait(&spec.id))
        .await
        .expect("ends")
        .expect("wait");
    assert_eq!(exit.reason.as_deref(), Some("OOMKilled"), "{exit:?}");
    assert_eq!(exit.exit_code, 137);
    match s.status(&spec.id).await.expect("status").state {
        State::Exited { reason, .. } => assert_eq!(reason.as_deref(), Some("OOMKilled")),
        other => panic!("exited, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_from_a_registry() {
    let Some((s, _cleanup)) = testing::runtime("pull") else {
        return;
    };
    let registry = Registry::start().expect("registry");
    let tag = format!("wisp/echo:pull-{}", std::process::id());
    let image = registry.push(ECHO_IMAGE, &tag).expect("push");
    let gone = std::process::Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .expect("inspect");
    assert!(!gone.status.success(), "{image} is only in the registry now");
    let mut spec = spec("uid-pull", "pull", &["exit", "0", "pulled"]);
    spec.source = Source::Image(image.clone());
    run(&s, &spec).await;
    assert_eq!(s.wait(&spec.id).await.expect("wait").exit_code, 0);
    let here = std::process::Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .expect("inspect");
    assert!(here.status.success(), "{image} was pulled");
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &image])
        .output();
    // A tag the registry does not have: a fetch error naming the image.
    let mut missing = spec.clone();
    missing.id = SandboxId::new("uid-missing", "main");
    missing.source = Source::Image(format!("{}/wisp/echo:no-such-tag", registry.addr));
    match s.prepare(&missing).await {
        Err(SandboxError::Fetch { what, source }) => {
            assert!(what.contains("no-such-tag"), "{what}");
            assert!(
                source.downcast_ref::<bollard::errors::Error>().is_some(),
                "the daemon's error is kept: {source:?}"
            );
        }
        other => panic!("a fetch error, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_is_down_is_unavailable_until_it_returns() {
    if !testing::available("daemon_down") {
        return;
    }
    testing::ensure_echo_image();
    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("docker.sock");
    let owner = testing::unique_owner("down");
    let _cleanup = Cleanup::new(&owner);
    let mut config = DockerConfig::new(owner);
    config.socket = socket.clone();
    let s = DockerSandbox::new(config);
    let spec = spec("uid-down", "down", &["sleep", "up"]);
    match s.prepare(&spec).await {
        Err(SandboxError::Unavailable { what, .. }) => {
            assert!(what.contains(&socket.display().to_string()), "{what}");
        }
        other => panic!("unavailable, not {other:?}"),
    }
    assert!(s.ping().await.is_err());
    // The daemon comes back.
    let proxy = SocketProxy::start(socket.clone(), wisp_sandbox_docker::default_socket()).expect("proxy");
    s.ping().await.expect("reachable again");
    run(&s, &spec).await;
    // It goes away again while the container runs: calls fail as Unavailable, not panics,
    // and a wait does not report an exit.
    let waiting = {
        let (s, id) = (s.clone(), spec.id.clone());
        tokio::spawn(async move { s.wait(&id).await })
    };
    proxy.stop().await;
    match s.status(&spec.id).await {
        Err(SandboxError::Unavailable { .. }) => {}
        other => panic!("unavailable, not {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "an outage is not an exit");
    let _proxy = SocketProxy::start(socket, wisp_sandbox_docker::default_socket()).expect("proxy");
    assert!(matches!(
        s.status(&spec.id).await.expect("status").state,
        State::Running { .. }
    ));
    s.kill(&spec.id).await.expect("kill");
    let exit = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait ends with the kill")
        .expect("join")
        .expect("wait");
    assert_ne!(exit.exit_code, 0);
}

fn network_exists(name: &str) -> bool {
    std::process::Command::new("docker")
        .args(["network", "inspect", name])
        .output()
        .expect("network inspect")
        .status
        .success()
}

async fn stop_and_delete(s: &DockerSandbox, id: &SandboxId) {
    s.stop(id, Duration::from_secs(5)).await.expect("stop");
    s.delete(id).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_network_goes_with_its_last_container() {
    let Some((s, mut cleanup)) = testing::runtime("network_gc") else {
        return;
    };
    let namespace = testing::unique_owner("gc");
    let network = wisp_sandbox_docker::network_name("wisp-", &namespace);
    cleanup.networks.push(network.clone());
    let sleeper = |pod: &str| spec(pod, &namespace, &["sleep", pod]);

    // One container: deleting it removes the network.
    let a = sleeper("uid-gc-a");
    run(&s, &a).await;
    assert!(network_exists(&network), "created with the first container");
    stop_and_delete(&s, &a.id).await;
    assert!(
        !network_exists(&network),
        "{network} is gone with its last container"
    );

    // Two: deleting one leaves it to the other, deleting both removes it.
    let (b, c) = (sleeper("uid-gc-b"), sleeper("uid-gc-c"));
    run(&s, &b).await;
    run(&s, &c).await;
    stop_and_delete(&s, &b.id).await;
    assert!(network_exists(&network), "{c:?} still uses {network}", c = c.id);
    assert!(matches!(
        s.status(&c.id).await.expect("status").state,
        State::Running { .. }
    ));
    // A container of another owner counts as well.
    let other = DockerSandbox::new(DockerConfig::new(format!("{}-other", cleanup.owner)));
    let _other_cleanup = Cleanup::new(&other.config().owner);
    let d = sleeper("uid-gc-d");
    run(&other, &d).await;
    stop_and_delete(&s, &c.id).await;
    assert!(
        network_exists(&network),
        "another owner's container still uses {network}"
    );
    stop_and_delete(&other, &d.id).await;
    assert!(
        !network_exists(&network),
        "{network} is gone with its last container"
    );

    // Regression: a created, never started container is on no network yet as far as the
    // network's own list says, but removing the network would make its start fail.
    let (e, f) = (sleeper("uid-gc-e"), sleeper("uid-gc-f"));
    s.prepare(&e).await.expect("prepare");
    s.create(&e).await.expect("create");
    run(&s, &f).await;
    stop_and_delete(&s, &f.id).await;
    assert!(
        network_exists(&network),
        "a created container still names {network}"
    );
    s.start(&e.id)
        .await
        .expect("the created container starts on its network");
    stop_and_delete(&s, &e.id).await;
    assert!(
        !network_exists(&network),
        "{network} is gone with its last container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_and_deletes_racing_in_one_namespace_all_succeed() {
    let Some((s, mut cleanup)) = testing::runtime("network_race") else {
        return;
    };
    let namespace = testing::unique_owner("race");
    cleanup
        .networks
        .push(wisp_sandbox_docker::network_name("wisp-", &namespace));
    // Two runtimes (as two agents sharing the daemon would), each creating, starting and
    // deleting containers in the same namespace: a network removed under one's feet fails
    // its create or its start.
    let owners = [
        s,
        DockerSandbox::new(DockerConfig::new(format!("{}-2", cleanup.owner))),
    ];
    let _second = Cleanup::new(&owners[1].config().owner);
    let mut tasks = tokio::task::JoinSet::new();
    for (n, runtime) in owners.into_iter().enumerate() {
        let namespace = namespace.clone();
        tasks.spawn(async move {
            for round in 0..4 {
                let pod = format!("uid-race-{n}-{round}");
                let spec = spec(&pod, &namespace, &["exit", "0", &pod]);
                run(&runtime, &spec).await;
                assert_eq!(runtime.wait(&spec.id).await.expect("wait").exit_code, 0);
                runtime.delete(&spec.id).await.expect("delete");
            }
        });
    }
    // A lock taken in the wrong order would hang here: bounded.
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(done) = tasks.join_next().await {
            done.expect("every round succeeds");
        }
    })
    .await
    .expect("no deadlock between creates and deletes");
}
