//! Shared test setup: where the guest components are, and a small runtime per test.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wisp_sandbox::{ArtifactSource, Kind, SandboxId, SandboxSpec, Source};
use wisp_sandbox_wasm::{HandleError, WasmConfig, WasmSandbox};

/// A guest component built by `tests/build-guests.sh`.
pub fn guest(name: &str) -> PathBuf {
    wisp_testkit::guests::path(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A runtime with a small pool (tests run many engines in one process).
pub fn runtime(artifacts: Option<Arc<dyn ArtifactSource>>) -> (WasmSandbox, tempfile::TempDir) {
    runtime_with(artifacts, |_| {})
}

/// [`runtime`], with its configuration changed by `tune` first.
pub fn runtime_with(
    artifacts: Option<Arc<dyn ArtifactSource>>,
    tune: impl FnOnce(&mut WasmConfig),
) -> (WasmSandbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = WasmConfig::new(dir.path().join("cache"));
    config.max_instances = 32;
    config.max_memory_per_instance = 256 << 20;
    tune(&mut config);
    let sandbox = WasmSandbox::new(config, artifacts).expect("wasm runtime");
    (sandbox, dir)
}

pub fn spec(id: &str, source: Source, kind: Kind, args: &[&str]) -> SandboxSpec {
    let mut s = SandboxSpec::new(SandboxId::new(&format!("uid-{id}"), "main"), source, kind);
    s.args = args.iter().map(|a| (*a).to_owned()).collect();
    s
}

/// GET `path` through the sandbox's in-process hook: the status and the body as text.
pub async fn get(s: &WasmSandbox, spec: &SandboxSpec, path: &str) -> Result<(u16, String), HandleError> {
    let req = hyper::Request::get(format!("http://fn.local{path}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = s.handle(&spec.id, req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
