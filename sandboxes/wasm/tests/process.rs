//! `wasi:cli/run` sandboxes beyond the conformance suite: no ambient authority, a spinning
//! guest stopped past its grace, memory caps, and components by digest.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use wisp_sandbox::{ArtifactSource, Kind, LogOptions, Mount, Sandbox, SandboxError, SandboxSpec, Source};
use wisp_sandbox_wasm::{WasmSandbox, digest_of};

fn cli(id: &str, args: &[&str]) -> SandboxSpec {
    common::spec(
        id,
        Source::WasmFile(common::guest("cli-fixture")),
        Kind::Process,
        args,
    )
}

async fn run_to_end(s: &WasmSandbox, spec: &SandboxSpec) -> (i32, Vec<String>) {
    s.prepare(spec).await.expect("prepare");
    s.create(spec).await.expect("create");
    s.start(&spec.id).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(30), s.wait(&spec.id))
        .await
        .expect("in time")
        .expect("wait");
    let lines = s
        .logs(&spec.id, LogOptions::default())
        .await
        .expect("logs")
        .map(|l| l.line)
        .collect()
        .await;
    (exit.exit_code, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_args_and_files_are_only_what_the_spec_gives() {
    let (s, dir) = common::runtime(None);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("config"), "key=value\n").expect("write");
    let mount = Mount {
        host_path: data.clone(),
        guest_path: "/etc/app".into(),
        read_only: true,
    };

    let mut read = cli("read", &["read", "/etc/app/config"]);
    read.mounts.push(mount.clone());
    assert_eq!(run_to_end(&s, &read).await, (0, vec!["key=value".to_owned()]));

    let mut outside = cli("outside", &["read", "/etc/passwd"]);
    outside.mounts.push(mount.clone());
    assert_eq!(run_to_end(&s, &outside).await.0, 1);

    let mut write = cli("write", &["write", "/etc/app/new"]);
    write.mounts.push(mount);
    assert_eq!(run_to_end(&s, &write).await.0, 1);
    assert!(!data.join("new").exists());

    let mut env = cli("env", &["env", "MODE"]);
    env.env.push(("MODE".into(), "prod".into()));
    assert_eq!(run_to_end(&s, &env).await, (0, vec!["prod".to_owned()]));
    assert_eq!(run_to_end(&s, &cli("home", &["env", "HOME"])).await.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_guest_is_killed_after_its_grace() {
    let (s, _dir) = common::runtime(None);
    let spec = cli("spin", &["spin", "spinning"]);
    s.prepare(&spec).await.expect("prepare");
    s.create(&spec).await.expect("create");
    s.start(&spec.id).await.expect("start");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let exit = s.stop(&spec.id, Duration::from_millis(200)).await.expect("stop");
    assert_eq!(exit.reason.as_deref(), Some("Killed"));
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
}

struct Blobs(Vec<u8>);

impl ArtifactSource for Blobs {
    fn fetch<'a>(&'a self, _digest: &'a str) -> BoxFuture<'a, wisp_sandbox::Result<Bytes>> {
        Box::pin(async move { Ok(Bytes::from(self.0.clone())) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_by_digest_are_verified() {
    let bytes = std::fs::read(common::guest("cli-fixture")).expect("read");
    let digest = digest_of(&bytes);
    let (s, dir) = common::runtime(Some(Arc::new(Blobs(bytes))));
    let mut spec = cli("digest", &["exit", "4", "by digest"]);
    spec.source = Source::WasmDigest(digest.clone());
    assert_eq!(run_to_end(&s, &spec).await.0, 4);
    let hex = digest.trim_start_matches("sha256:");
    assert!(
        dir.path()
            .join(format!("cache/blobs/sha256-{hex}.wasm"))
            .is_file(),
        "the blob is cached on disk"
    );

    let mut wrong = cli("wrong", &[]);
    wrong.source = Source::WasmDigest(format!("sha256:{}", "0".repeat(64)));
    assert!(matches!(s.prepare(&wrong).await, Err(SandboxError::Fetch { .. })));
    wrong.source = Source::WasmDigest("md5:abc".into());
    assert!(matches!(
        s.prepare(&wrong).await,
        Err(SandboxError::InvalidSpec(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiled_component_is_reused_from_the_disk_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = cli("cache", &["exit", "0", "x"]);
    let mut times = Vec::new();
    for _ in 0..2 {
        let mut config = wisp_sandbox_wasm::WasmConfig::new(dir.path().join("cache"));
        config.max_instances = 8;
        let s = WasmSandbox::new(config, None).expect("runtime");
        let t = Instant::now();
        s.prepare(&spec).await.expect("prepare");
        times.push(t.elapsed());
    }
    let compiled = dir.path().join("cache/compiled");
    let files = walk(&compiled);
    assert!(files > 0, "nothing cached under {}", compiled.display());
    // Loading compiled code is far cheaper than compiling it (the figure is in the message).
    assert!(
        times[1] < times[0],
        "prepare: cold {:?}, from disk cache {:?}",
        times[0],
        times[1]
    );
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 })
            .sum()
    })
}
