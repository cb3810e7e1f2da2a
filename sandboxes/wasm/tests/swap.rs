//! The pagemap-scan reset of a pool slot against swap: a page the guest dirtied that is swapped
//! out when its instance is torn down must be reset like any other, or the next instance in the
//! slot reads the previous request's memory (the bug fixed by `sandboxes/wasm/vendor/`).
//!
//! The test sets the stage itself, which needs root: a swapfile (unless swap is on already) and
//! a memory cgroup (cgroup v1) this test process moves into, whose `memory.force_empty` has the
//! kernel push the process's pages — the live instance's among them — out to swap. With `CI` set a
//! machine that cannot do that fails the test with the reason; without it the test is skipped
//! with a notice. It is alone in this file: it moves its whole process between cgroups.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use wisp_sandbox::{Kind, LogOptions, Sandbox, SandboxSpec, Source};
use wisp_sandbox_wasm::{HandleError, WasmConfig, WasmSandbox};

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn meminfo_kib(field: &str) -> Result<u64, String> {
    let info = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("/proc/meminfo has no {field}"))
}

/// A swapfile turned on for the test's length, when the machine has no swap.
struct Swap(Option<tempfile::TempDir>);

impl Swap {
    fn ensure() -> Result<Self, String> {
        if meminfo_kib("SwapFree")? >= 64 << 10 {
            return Ok(Self(None));
        }
        // Not on tmpfs: a swapfile must live on a disk filesystem.
        let dir = tempfile::Builder::new()
            .prefix("wisp-swap-test")
            .tempdir_in("/var/tmp")
            .map_err(|e| format!("a directory for the swapfile: {e}"))?;
        let file = dir.path().join("swapfile");
        let path = file.to_str().ok_or("swapfile path")?;
        run("fallocate", &["-l", "256M", path])?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| format!("chmod {path}: {e}"))?;
        run("mkswap", &[path])?;
        run("swapon", &[path])?;
        Ok(Self(Some(dir)))
    }
}

impl Drop for Swap {
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        if let Some(dir) = &self.0
            && let Some(path) = dir.path().join("swapfile").to_str()
            && let Err(e) = run("swapoff", &[path])
        {
            eprintln!("cannot turn the test's swapfile off: {e}");
        }
    }
}

/// A child of this process's cgroup-v1 memory cgroup, holding this process while it lives.
struct MemoryCgroup {
    dir: PathBuf,
    parent: PathBuf,
}

impl MemoryCgroup {
    fn enter() -> Result<Self, String> {
        let own =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let rel = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers.split(',').any(|c| c == "memory").then_some(path)
            })
            .ok_or("no cgroup-v1 memory controller for this process (cgroup v2 only?)")?;
        let parent = Path::new("/sys/fs/cgroup/memory").join(rel.trim_start_matches('/'));
        let dir = parent.join(format!("wisp-swap-test-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cgroup = Self { dir, parent };
        cgroup.write("cgroup.procs", &std::process::id().to_string())?;
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).map_err(|e| format!("write {value} to {}: {e}", path.display()))
    }

    /// Bytes of this cgroup's memory in swap (`None` without swap accounting).
    fn swapped(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("memory.stat"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("swap ")?.parse().ok())
    }

    /// Has the kernel reclaim (swap out) all it can of the cgroup's memory, and returns how
    /// much of it is in swap.
    fn push_to_swap(&self) -> u64 {
        // cgroup v1's `memory.force_empty` reclaims every page it can, with the tasks still in.
        let _ = self.write("memory.force_empty", "0");
        self.swapped()
            .expect("memory.stat has no swap line (swap accounting off?)")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.parent.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn stage() -> Result<(Swap, MemoryCgroup), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    if !root {
        return Err("it needs root (swapon, a memory cgroup)".into());
    }
    if !wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
        return Err("this kernel has no PAGEMAP_SCAN (Linux 6.7+): the reset under test is off".into());
    }
    let swap = Swap::ensure()?;
    let cgroup = MemoryCgroup::enter()?;
    if cgroup.swapped().is_none() {
        return Err("the memory cgroup does not account swap (memory.stat has no swap line)".into());
    }
    Ok((swap, cgroup))
}

/// `/mark?ms=N` once the pool's one instance is free: the previous request's instance is
/// dropped (and its slot reset) just after its response, so the pool can still be full.
async fn mark(s: &WasmSandbox, spec: &SandboxSpec, ms: u64) -> String {
    let started = Instant::now();
    loop {
        match common::get(s, spec, &format!("/mark?ms={ms}")).await {
            Ok((status, n)) => {
                assert_eq!(status, 200, "{n}");
                return n;
            }
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                assert!(
                    matches!(e, HandleError::Unavailable(ref m) if m.contains("concurrent limit")),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("no instance within 10 s: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stderr)]
async fn a_dirty_page_swapped_out_at_teardown_is_reset_for_the_next_instance() {
    let test = "a_dirty_page_swapped_out_at_teardown_is_reset_for_the_next_instance";
    let (_swap, cgroup) = match stage() {
        Ok(s) => s,
        Err(reason) if std::env::var_os("CI").is_some() => panic!("{test} must run in CI, but {reason}"),
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason} (set CI=1 to make this a failure)");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = WasmConfig::new(dir.path().join("cache"));
    // One instance at a time: each request's instance takes the slot the last one left.
    config.max_instances = 1;
    config.max_memory_per_instance = 64 << 20;
    config.pagemap_scan = true;
    let s = WasmSandbox::new(config, None).expect("wasm runtime");
    assert!(s.pooling(), "the pooling allocator is what is under test");
    let spec = common::spec("swap", Source::WasmFile(common::guest("fault")), Kind::Http, &[]);
    s.prepare(&spec).await.expect("prepare");
    s.create(&spec).await.expect("create");
    s.start(&spec.id).await.expect("start");

    let mut logs = s
        .logs(
            &spec.id,
            LogOptions {
                follow: true,
                tail: Some(0),
            },
        )
        .await
        .expect("logs");
    for round in 0..5 {
        // The guest writes its counter (a page of its own), says so, then waits before
        // answering: the instance is alive, its counter page dirty, while the test swaps the
        // process out.
        let lingering = {
            let s = s.clone();
            let spec = spec.clone();
            tokio::spawn(async move { mark(&s, &spec, 1000).await })
        };
        let said = tokio::time::timeout(Duration::from_secs(10), logs.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the guest never said it marked"))
            .expect("log stream");
        assert_eq!(said.line, "marked 1", "round {round}");
        let swapped = cgroup.push_to_swap();
        assert!(
            !lingering.is_finished(),
            "round {round}: the instance ended before the swap-out"
        );
        assert!(swapped > 0, "round {round}: nothing went to swap");
        assert_eq!(lingering.await.expect("join"), "1", "round {round}");
        // The next instance takes the slot the answered one left.
        let next = mark(&s, &spec, 0).await;
        // Its own log line, read here so that the next round waits for its instance's.
        let said = tokio::time::timeout(Duration::from_secs(10), logs.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the next instance never said it marked"))
            .expect("log stream");
        assert_eq!(said.line, format!("marked {next}"), "round {round}");
        assert_eq!(
            next, "1",
            "round {round}: the instance after a swapped-out one saw its counter ({swapped} bytes swapped)"
        );
    }
    s.stop(&spec.id, Duration::from_secs(1)).await.expect("stop");
}
