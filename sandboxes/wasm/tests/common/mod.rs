//! Shared test setup: where the guest components are, and a small runtime per test.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use wisp_sandbox::{ArtifactSource, Kind, SandboxId, SandboxSpec, Source};
use wisp_sandbox_wasm::{WasmConfig, WasmSandbox};

/// A guest component built by `tests/build-guests.sh`.
pub fn guest(name: &str) -> PathBuf {
    wisp_sandbox_wasm::guests::path(name).unwrap_or_else(|e| panic!("{e}"))
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
    let mut s = SandboxSpec::new(SandboxId::new(&format!("uid-{id}"), "main"), source, kind);
    s.args = args.iter().map(|a| (*a).to_owned()).collect();
    s
}
