//! Shared test setup: where the guest components are, and a small runtime per test.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use wisp_sandbox::{ArtifactSource, Kind, Limits, SandboxId, SandboxSpec, Source};
use wisp_sandbox_wasm::{WasmConfig, WasmSandbox};

/// `examples/target/wasm32-wasip2/release/<name>.wasm`, or under `$WISP_GUESTS_DIR`.
pub fn guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("WISP_GUESTS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/target/wasm32-wasip2/release"),
        PathBuf::from,
    );
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "guest component {} is missing: build the guests first with `tests/build-guests.sh` \
         (or point WISP_GUESTS_DIR at a directory holding {name}.wasm)",
        path.display()
    );
    path
}

/// A runtime with a small pool (tests run many engines in one process).
pub fn runtime(artifacts: Option<Arc<dyn ArtifactSource>>) -> (WasmSandbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = WasmConfig::new(dir.path().join("cache"));
    config.max_instances = 32;
    config.max_memory_per_instance = 256 << 20;
    let sandbox = WasmSandbox::new(config, artifacts).expect("wasm runtime");
    (sandbox, dir)
}

pub fn spec(id: &str, source: Source, kind: Kind, args: &[&str]) -> SandboxSpec {
    SandboxSpec {
        id: SandboxId::new(&format!("uid-{id}"), "main"),
        source,
        kind,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: Vec::new(),
        mounts: Vec::new(),
        ports: Vec::new(),
        limits: Limits::default(),
        allowed_outbound_hosts: Vec::new(),
        read_only_root: false,
        labels: Default::default(),
    }
}
