//! `wasi:http/proxy` sandboxes through the in-process hook: answers, a fresh store per
//! request, and guest faults (loop, memory bomb, trap) that fail only their own request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wisp_sandbox::{Endpoint, Kind, Mount, Sandbox, SandboxSpec, Source, State};
use wisp_sandbox_wasm::{HandleError, WasmSandbox};

async fn started(s: &WasmSandbox, spec: &SandboxSpec) {
    s.prepare(spec).await.expect("prepare");
    s.create(spec).await.expect("create");
    s.start(&spec.id).await.expect("start");
}

fn http_spec(id: &str, guest: &str) -> SandboxSpec {
    common::spec(id, Source::WasmFile(common::guest(guest)), Kind::Http, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_answers_in_process() {
    let (s, _dir) = common::runtime(None);
    let spec = http_spec("hello", "hello");
    started(&s, &spec).await;
    let status = s.status(&spec.id).await.expect("status");
    assert!(matches!(status.state, State::Running { .. }));
    assert_eq!(status.endpoint, Some(Endpoint::InProcess));
    assert_eq!(
        common::get(&s, &spec, "/").await.expect("hello"),
        (200, "Hello from Wisp".to_owned())
    );
    // An HTTP sandbox runs until stopped; wait() returns then.
    let waiter = {
        let s = s.clone();
        let id = spec.id.clone();
        tokio::spawn(async move { s.wait(&id).await })
    };
    let exit = s.stop(&spec.id, Duration::from_secs(1)).await.expect("stop");
    assert_eq!(exit.exit_code, 0);
    assert_eq!(waiter.await.expect("join").expect("wait"), exit);
    assert!(matches!(
        common::get(&s, &spec, "/").await,
        Err(HandleError::NotServing(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_fresh_instance() {
    let (s, _dir) = common::runtime(None);
    let spec = http_spec("count", "fault");
    started(&s, &spec).await;
    // Enough requests that pool slots are reset and reused (by default, the pages the
    // instance dirtied within the 2 MiB kept resident, found by the pagemap scan).
    for _ in 0..20 {
        assert_eq!(common::get(&s, &spec, "/count").await.expect("count").1, "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instantiate_only_times_a_fresh_instance_of_a_serving_sandbox() {
    let (s, _dir) = common::runtime(None);
    let spec = http_spec("inst", "hello");
    let unknown = http_spec("unknown", "hello");
    assert!(matches!(
        s.instantiate_only(&unknown.id).await,
        Err(HandleError::NotFound(_))
    ));
    s.create(&spec).await.expect("create");
    assert!(matches!(
        s.instantiate_only(&spec.id).await,
        Err(HandleError::NotServing(_))
    ));
    s.start(&spec.id).await.expect("start");
    for _ in 0..3 {
        let t = s.instantiate_only(&spec.id).await.expect("instantiate");
        assert!(t.instantiate > Duration::ZERO, "{t:?}");
    }
    // The instances were dropped: requests are still served.
    assert_eq!(
        common::get(&s, &spec, "/").await.expect("hello").1,
        "Hello from Wisp"
    );
    s.stop(&spec.id, Duration::from_secs(1)).await.expect("stop");
    assert!(matches!(
        s.instantiate_only(&spec.id).await,
        Err(HandleError::NotServing(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_fresh_instance_with_the_memset_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = wisp_sandbox_wasm::WasmConfig::new(dir.path().join("cache"));
    config.max_instances = 4;
    config.max_memory_per_instance = 256 << 20;
    // Without the pagemap scan: all the kept-resident bytes are reset by memset and image copy.
    config.pagemap_scan = false;
    let s = WasmSandbox::new(config, None).expect("wasm runtime");
    let spec = http_spec("count-memset", "fault");
    started(&s, &spec).await;
    // Few slots, so the same one is reset and reused.
    for _ in 0..20 {
        assert_eq!(common::get(&s, &spec, "/count").await.expect("count").1, "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_ends_at_the_deadline_and_others_keep_serving() {
    let (s, _dir) = common::runtime(None);
    let mut looping = http_spec("loop", "fault");
    looping.limits.request_timeout = Some(Duration::from_millis(300));
    let hello = http_spec("hello2", "hello");
    started(&s, &looping).await;
    started(&s, &hello).await;
    let started_at = Instant::now();
    let spin = {
        let s = s.clone();
        let spec = looping.clone();
        tokio::spawn(async move { common::get(&s, &spec, "/loop").await })
    };
    // Meanwhile another sandbox answers promptly.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    assert_eq!(common::get(&s, &hello, "/").await.expect("hello").0, 200);
    assert!(t.elapsed() < Duration::from_millis(250), "hello was not held up");
    let result = spin.await.expect("join");
    let took = started_at.elapsed();
    assert!(
        matches!(result, Err(HandleError::DeadlineExceeded(_))),
        "got {result:?}"
    );
    // Deadline + one epoch tick, with slack for a loaded 2-core machine.
    assert!(took < Duration::from_millis(800), "took {took:?}");
    assert_eq!(common::get(&s, &looping, "/").await.expect("next request").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_capped_and_fails_only_its_request() {
    let (s, _dir) = common::runtime(None);
    let mut spec = http_spec("bomb", "fault");
    spec.limits.memory_bytes = Some(32 << 20);
    started(&s, &spec).await;
    let result = common::get(&s, &spec, "/alloc?mb=200").await;
    assert!(matches!(result, Err(HandleError::OutOfMemory)), "got {result:?}");
    assert_eq!(result.err().map(|e| e.status().as_u16()), Some(500));
    // Under the cap it works, and the sandbox keeps serving.
    assert_eq!(
        common::get(&s, &spec, "/alloc?mb=8").await.expect("small alloc"),
        (200, "allocated 8 MiB".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_fails_only_its_request() {
    let (s, _dir) = common::runtime(None);
    let spec = http_spec("trap", "fault");
    started(&s, &spec).await;
    let result = common::get(&s, &spec, "/trap").await;
    assert!(matches!(result, Err(HandleError::Guest(_))), "got {result:?}");
    assert_eq!(common::get(&s, &spec, "/").await.expect("next").1, "fault ok");
    // The guest's panic message went to the sandbox's logs.
    let logs: Vec<_> =
        futures::StreamExt::collect::<Vec<_>>(s.logs(&spec.id, Default::default()).await.expect("logs"))
            .await;
    assert!(
        logs.iter().any(|l| l.line.contains("traps on purpose")),
        "{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_only_through_mounts_and_env_only_as_declared() {
    let (s, dir) = common::runtime(None);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("greeting"), "hi from a mount").expect("write");
    let mut spec = http_spec("files", "fault");
    spec.mounts.push(Mount {
        host_path: data.clone(),
        guest_path: "/data".into(),
        read_only: true,
    });
    spec.env.push(("GREETING".into(), "hello".into()));
    started(&s, &spec).await;
    assert_eq!(
        common::get(&s, &spec, "/read?path=/data/greeting")
            .await
            .expect("read"),
        (200, "hi from a mount".to_owned())
    );
    assert_eq!(
        common::get(&s, &spec, "/read?path=/etc/passwd")
            .await
            .expect("outside")
            .0,
        403
    );
    assert_eq!(
        common::get(&s, &spec, "/read?path=/data/../../etc/passwd")
            .await
            .expect("escape")
            .0,
        403
    );
    assert_eq!(
        common::get(&s, &spec, "/write?path=/data/new")
            .await
            .expect("ro")
            .0,
        403
    );
    assert!(!data.join("new").exists(), "a read-only mount was written");
    assert_eq!(
        common::get(&s, &spec, "/env?name=GREETING").await.expect("env"),
        (200, "hello".to_owned())
    );
    assert_eq!(
        common::get(&s, &spec, "/env?name=PATH")
            .await
            .expect("ambient env")
            .0,
        404
    );
}

/// A tiny HTTP/1.1 server on loopback answering 200 (body `secret`) to every connection,
/// counting them.
async fn upstream() -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecret")
                .await;
        }
    });
    (addr, connections, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_only_to_allowed_hosts() {
    // The node's egress policy allows loopback here, so the allow-list alone decides.
    let (s, _dir) = common::runtime_with(None, |c| {
        c.egress
            .allow
            .push(wisp_sandbox::egress::parse_cidr("127.0.0.0/8").expect("cidr"));
    });
    let (addr, connections, server) = upstream().await;
    let denied = http_spec("denied", "fault");
    let mut allowed = http_spec("allowed", "fault");
    allowed.allowed_outbound_hosts.push(addr.to_string());
    started(&s, &denied).await;
    started(&s, &allowed).await;
    let path = format!("/fetch?url=http://{addr}/");
    let (status, body) = common::get(&s, &denied, &path).await.expect("denied");
    // The guest sees an error (wstd reports the denied request as a failed send) and the
    // upstream never sees a connection.
    assert_eq!(status, 502, "{body}");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "a denied request went out");
    assert_eq!(
        common::get(&s, &allowed, &path).await.expect("allowed"),
        (200, "upstream 200: secret".to_owned())
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    server.abort();
}

/// The guest lists loopback and metadata hosts itself: the node's default egress policy
/// refuses them on the resolved address, by IP or by name, and no connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_policy_holds_whatever_the_guest_allows_itself() {
    let (s, _dir) = common::runtime(None);
    let (addr, connections, server) = upstream().await;
    let mut spec = http_spec("egress", "fault");
    let port = addr.port();
    spec.allowed_outbound_hosts = vec![
        addr.to_string(),
        format!("localhost:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        "169.254.169.254".into(),
        "*".into(),
    ];
    started(&s, &spec).await;
    for url in [
        format!("http://{addr}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let (status, body) = common::get(&s, &spec, &format!("/fetch?url={url}"))
            .await
            .expect("answered");
        assert_eq!(status, 502, "{url}: {body}");
        assert!(!body.contains("secret"), "{url}: {body}");
        assert!(
            body.contains("Prohibited"),
            "{url}: the guest is told why: {body}"
        );
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing reached loopback");
    server.abort();
}

/// A client that goes away stops its guest: a request to a guest that waits is cancelled when
/// its caller drops it, and its namespace's slot is free again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_stops_when_its_client_goes_away_and_namespaces_share_the_pool() {
    let (s, _dir) = common::runtime_with(None, |c| c.namespace_slots = 2);
    let mut a = http_spec("slots-a", "fault");
    a.labels
        .insert(wisp_sandbox::LABEL_NAMESPACE.into(), "team-a".into());
    let mut b = http_spec("slots-b", "fault");
    b.labels
        .insert(wisp_sandbox::LABEL_NAMESPACE.into(), "team-b".into());
    started(&s, &a).await;
    started(&s, &b).await;
    // Two slow requests of team-a take its share; a third is refused at once, while team-b
    // still gets through.
    let slow = |spec: &wisp_sandbox::SandboxSpec| {
        let (s, spec) = (s.clone(), spec.clone());
        tokio::spawn(async move { common::get(&s, &spec, "/mark?ms=30000").await })
    };
    let first = slow(&a);
    let second = slow(&a);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    match common::get(&s, &a, "/").await {
        Err(e @ wisp_sandbox_wasm::HandleError::Busy { .. }) => assert_eq!(e.status().as_u16(), 503),
        other => panic!("a third request of team-a must be refused: {other:?}"),
    }
    assert_eq!(
        common::get(&s, &b, "/").await.expect("team-b"),
        (200, "fault ok".to_owned())
    );
    // Team-a's clients go away: their guests are cancelled and the share is free again.
    first.abort();
    second.abort();
    let freed = async {
        loop {
            if let Ok((200, _)) = common::get(&s, &a, "/").await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), freed)
        .await
        .expect("the aborted requests' guests stopped and freed their slots long before their 30 s");
}

/// A node whose instance pool is full answers 503 (retry), not 500 (the guest failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stderr)]
async fn a_full_instance_pool_is_unavailable_not_a_guest_failure() {
    let (s, _dir) = common::runtime_with(None, |c| {
        c.max_instances = 2;
        c.namespace_slots = 10;
    });
    if !s.pooling() {
        eprintln!("no pooling allocator here: nothing to fill");
        return;
    }
    let spec = http_spec("pool", "fault");
    started(&s, &spec).await;
    let slow = |s: &WasmSandbox| {
        let (s, spec) = (s.clone(), spec.clone());
        tokio::spawn(async move { common::get(&s, &spec, "/mark?ms=3000").await })
    };
    let (a, b) = (slow(&s), slow(&s));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    match common::get(&s, &spec, "/").await {
        Err(e) => assert_eq!(e.status().as_u16(), 503, "{e}"),
        Ok(r) => panic!("a third instance in a pool of two: {r:?}"),
    }
    a.abort();
    b.abort();
}
