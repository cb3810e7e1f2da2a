//! The pagemap-scan reset of a pool slot against swap: a page the instance dirtied — of its
//! linear memory or of its tables — that is swapped out when the instance is torn down must be
//! reset like any other, or the next instance in the slot reads the previous request's memory
//! or table entries (the bug fixed by `sandboxes/wasm/vendor/`).
//!
//! These tests change the host, so they are opt-in: they run only with
//! `WISP_PRIVILEGED_TESTS=1` (`tests/run.sh --privileged-tests`, which `.ci/run` passes) and
//! are skipped with a notice otherwise. They set the stage themselves, which needs root and
//! Linux 6.7+ (`PAGEMAP_SCAN`): a swapfile under `/var/tmp` (unless swap is on already), and a
//! memory cgroup whose reclaim has the kernel push the process's pages — the live instance's
//! among them — out to swap. On cgroup v1 that is a child of this process's memory cgroup the
//! process moves into for the test (`memory.force_empty`); on cgroup v2, the process's own
//! cgroup (`memory.reclaim`, Linux 5.19+). With the opt-in set, a machine that cannot do that
//! fails the test with the reason. Both are undone after. The tests of this file run one at a
//! time (they move their whole process between cgroups) and alone in their process.

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

/// Where the test has the kernel reclaim its process's memory: a child of the process's
/// cgroup-v1 memory cgroup, holding the process while it lives, or on cgroup v2 the
/// process's own cgroup.
enum MemoryCgroup {
    V1 { dir: PathBuf, parent: PathBuf },
    V2 { dir: PathBuf },
}

impl MemoryCgroup {
    fn enter() -> Result<Self, String> {
        let own =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let mut v2 = None;
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if controllers.split(',').any(|c| c == "memory") {
                return Self::enter_v1(path);
            }
            if id == "0" && controllers.is_empty() {
                v2 = Some(path);
            }
        }
        let rel = v2.ok_or("this process is in no memory cgroup (/proc/self/cgroup)")?;
        let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        if !dir.join("memory.reclaim").exists() {
            return Err(format!(
                "{} has no memory.reclaim (cgroup v2 needs Linux 5.19+ and the memory controller \
                 enabled for this process's cgroup)",
                dir.display()
            ));
        }
        Ok(Self::V2 { dir })
    }

    fn enter_v1(rel: &str) -> Result<Self, String> {
        let parent = Path::new("/sys/fs/cgroup/memory").join(rel.trim_start_matches('/'));
        let dir = parent.join(format!("wisp-swap-test-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cgroup = Self::V1 { dir, parent };
        cgroup.write("cgroup.procs", &std::process::id().to_string())?;
        Ok(cgroup)
    }

    fn dir(&self) -> &Path {
        match self {
            Self::V1 { dir, .. } | Self::V2 { dir } => dir,
        }
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir().join(file);
        std::fs::write(&path, value).map_err(|e| format!("write {value} to {}: {e}", path.display()))
    }

    /// Bytes of this cgroup's memory in swap (`None` without swap accounting).
    fn swapped(&self) -> Option<u64> {
        match self {
            Self::V1 { dir, .. } => std::fs::read_to_string(dir.join("memory.stat"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("swap ")?.parse().ok()),
            Self::V2 { dir } => std::fs::read_to_string(dir.join("memory.swap.current"))
                .ok()?
                .trim()
                .parse()
                .ok(),
        }
    }

    /// Has the kernel reclaim (swap out) all it can of the cgroup's memory, and returns how
    /// much of it is in swap.
    fn push_to_swap(&self) -> u64 {
        match self {
            // cgroup v1's `memory.force_empty` reclaims every page it can, with the tasks still in.
            Self::V1 { .. } => {
                let _ = self.write("memory.force_empty", "0");
            }
            // cgroup v2: ask `memory.reclaim` for all the cgroup holds; it answers EAGAIN when
            // it reclaimed less, which is expected (the test's own running pages).
            Self::V2 { dir } => {
                let current = std::fs::read_to_string(dir.join("memory.current")).unwrap_or_default();
                let _ = self.write("memory.reclaim", current.trim());
            }
        }
        self.swapped()
            .expect("the memory cgroup reports no swap (swap accounting off?)")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        if let Self::V1 { dir, parent } = self {
            let _ = std::fs::write(parent.join("cgroup.procs"), std::process::id().to_string());
            let _ = std::fs::remove_dir(dir);
        }
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
        return Err(
            "the memory cgroup does not account swap (no swap in memory.stat or memory.swap.current)".into(),
        );
    }
    Ok((swap, cgroup))
}

/// One test at a time in this process: they move the process between cgroups and share the
/// swapfile.
static HOST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The stage for `test`, or `None` (with a notice) unless `WISP_PRIVILEGED_TESTS=1`. With the
/// opt-in set, a machine that cannot set the stage fails the test with the reason.
#[allow(clippy::print_stderr)]
fn staged(test: &str) -> Option<(Swap, MemoryCgroup)> {
    if std::env::var("WISP_PRIVILEGED_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED {test}: it changes the host (a swapfile, a memory cgroup); set \
             WISP_PRIVILEGED_TESTS=1 (tests/run.sh --privileged-tests) to run it"
        );
        return None;
    }
    match stage() {
        Ok(stage) => Some(stage),
        Err(reason) => panic!("{test}: WISP_PRIVILEGED_TESTS=1 asks for it to run, but {reason}"),
    }
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
async fn a_dirty_page_swapped_out_at_teardown_is_reset_for_the_next_instance() {
    let test = "a_dirty_page_swapped_out_at_teardown_is_reset_for_the_next_instance";
    let _host = HOST.lock().await;
    let Some((_swap, cgroup)) = staged(test) else {
        return;
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

/// A core module with one funcref table of [`TABLE_LEN`] elements, hand-assembled (Wisp's
/// wasmtime has no text parser):
///
/// ```wat
/// (module
///   (type (func)) (type (func (param i32))) (type (func (param i32) (result i32)))
///   (table 4096 funcref)
///   (func $target)
///   (func (export "set") (param i32) (table.set (local.get 0) (ref.func $target)))
///   (func (export "is_null") (param i32) (result i32) (ref.is_null (table.get (local.get 0))))
///   (elem declare func $target))
/// ```
const TABLE_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    // type section: () -> (), (i32) -> (), (i32) -> i32
    0x01, 0x0d, 0x03, 0x60, 0x00, 0x00, 0x60, 0x01, 0x7f, 0x00, 0x60, 0x01, 0x7f, 0x01, 0x7f,
    // function section: $target: type 0, set: type 1, is_null: type 2
    0x03, 0x04, 0x03, 0x00, 0x01, 0x02,
    // table section: one funcref table, min 4096 (LEB128 0x80 0x20), no max
    0x04, 0x05, 0x01, 0x70, 0x00, 0x80, 0x20, // export section: "set" = func 1, "is_null" = func 2
    0x07, 0x11, 0x02, 0x03, b's', b'e', b't', 0x00, 0x01, 0x07, b'i', b's', b'_', b'n', b'u', b'l', b'l',
    0x00, 0x02, // element section: a declarative segment for $target (so `ref.func` may name it)
    0x09, 0x05, 0x01, 0x03, 0x00, 0x01, 0x00, // code section
    0x0a, 0x15, 0x03, //
    0x02, 0x00, 0x0b, // $target: no locals, end
    0x08, 0x00, 0x20, 0x00, 0xd2, 0x00, 0x26, 0x00, 0x0b, // set: local.get 0, ref.func 0, table.set 0
    0x07, 0x00, 0x20, 0x00, 0x25, 0x00, 0xd1, 0x0b, // is_null: local.get 0, table.get 0, ref.is_null
];
const TABLE_LEN: i32 = 4096;

/// The table twin of the linear-memory test: wasmtime resets a pool slot's tables with the
/// same pagemap scan as its memories (`reset_table_pages_to_zero` calls
/// `reset_with_pagemap`), so a table page swapped out at teardown must be reset too, or the
/// next instance finds the previous one's function references (pointers into an instance
/// that is gone). Engine settings as `sandboxes/wasm/src/engine.rs` makes them (pooling,
/// `table_keep_resident` = `keep_resident / 8`, the pagemap scan), with one slot so that every
/// instance takes the one the last left; a core module, since components cannot write a table
/// entry on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_page_swapped_out_at_teardown_is_reset_for_the_next_instance() {
    use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

    let test = "a_table_page_swapped_out_at_teardown_is_reset_for_the_next_instance";
    let _host = HOST.lock().await;
    let Some((_swap, cgroup)) = staged(test) else {
        return;
    };
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(1)
        .total_core_instances(1)
        .total_memories(1)
        .total_tables(1)
        .total_stacks(1)
        .table_keep_resident(WasmConfig::new(PathBuf::new()).keep_resident / 8)
        .pagemap_scan(Enabled::Yes);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).expect("pooling engine");
    let module = Module::new(&engine, TABLE_MODULE).expect("the table module");
    // Entries on several pages of the table (8 bytes each: 512 to a 4 KiB page), the last
    // past the first 16 KiB.
    let marked = [7, 600, 1500, TABLE_LEN - 1];
    for round in 0..5 {
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiate");
        let set = instance
            .get_typed_func::<i32, ()>(&mut store, "set")
            .expect("set");
        let is_null = instance
            .get_typed_func::<i32, i32>(&mut store, "is_null")
            .expect("is_null");
        for &i in &marked {
            assert_eq!(
                is_null.call(&mut store, i).expect("is_null"),
                1,
                "round {round}: a fresh instance found entry {i} of its table set (by the instance before it, \
                 whose table pages were swapped out at teardown)"
            );
            set.call(&mut store, i).expect("set");
            assert_eq!(is_null.call(&mut store, i).expect("is_null"), 0, "round {round}");
        }
        let swapped = cgroup.push_to_swap();
        assert!(swapped > 0, "round {round}: nothing went to swap");
        // Tears the instance down: its table slot is reset for the next round's.
        drop(store);
    }
}
