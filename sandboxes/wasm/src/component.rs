//! Getting a compiled [`Component`] for a [`Source`]: fetch (or read) the bytes, verify their
//! sha256, keep the blob on disk by digest, and compile once.
//!
//! Compiled code is cached twice: in memory per digest (a `Component` is cheap to clone), and
//! on disk by wasmtime's own compilation cache under `<cache_dir>/compiled`, keyed by the
//! component's bytes *and* the engine's compiler and settings, so a wasmtime upgrade or a
//! configuration change invalidates it. (Deserializing our own `.cwasm` files would need
//! `Component::deserialize_file`, which is `unsafe`; the workspace forbids `unsafe`, and
//! wasmtime's cache does the same safely.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use wasmtime::Engine;
use wasmtime::component::Component;
use wisp_sandbox::{ArtifactSource, SandboxError, Source};

pub(crate) struct Components {
    engine: Engine,
    blobs: PathBuf,
    artifacts: Option<Arc<dyn ArtifactSource>>,
    compiled: Mutex<HashMap<String, Arc<OnceCell<Component>>>>,
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn check_digest(digest: &str) -> Result<&str, SandboxError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(hex),
        _ => Err(SandboxError::InvalidSpec(format!(
            "{digest:?} is not a sha256:<64 hex> digest"
        ))),
    }
}

impl Components {
    pub(crate) fn new(engine: Engine, cache_dir: &Path, artifacts: Option<Arc<dyn ArtifactSource>>) -> Self {
        Self {
            engine,
            blobs: cache_dir.join("blobs"),
            artifacts,
            compiled: Mutex::default(),
        }
    }

    fn cell(&self, digest: &str) -> Arc<OnceCell<Component>> {
        let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(digest.to_owned()).or_default().clone()
    }

    /// The compiled component for `source`, fetched and compiled at most once per digest.
    pub(crate) async fn load(&self, source: &Source) -> Result<Component, SandboxError> {
        match source {
            Source::WasmDigest(digest) => {
                let hex = check_digest(digest)?;
                let cell = self.cell(digest);
                let component = cell
                    .get_or_try_init(|| async {
                        let bytes = self.blob(digest, hex).await?;
                        self.compile(digest, bytes).await
                    })
                    .await?;
                Ok(component.clone())
            }
            Source::WasmFile(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| SandboxError::fetch(path.display().to_string(), e))?;
                let digest = digest_of(&bytes);
                let cell = self.cell(&digest);
                let what = path.display().to_string();
                let component = cell.get_or_try_init(|| self.compile(&what, bytes)).await?;
                Ok(component.clone())
            }
            Source::Image(image) => Err(SandboxError::InvalidSpec(format!(
                "the wasm runtime cannot run the OCI image {image:?}"
            ))),
        }
    }

    /// The component's bytes: from the on-disk blob cache, else fetched and verified.
    async fn blob(&self, digest: &str, hex: &str) -> Result<Vec<u8>, SandboxError> {
        let path = self.blobs.join(format!("sha256-{hex}.wasm"));
        if let Ok(bytes) = tokio::fs::read(&path).await {
            if digest_of(&bytes) == digest {
                return Ok(bytes);
            }
            tracing::warn!(path = %path.display(), "cached blob is corrupt; fetching again");
        }
        let fetch_err = |reason: String| SandboxError::fetch(digest, reason);
        let artifacts = self
            .artifacts
            .as_ref()
            .ok_or_else(|| fetch_err("no artifact source configured".into()))?;
        let bytes = artifacts.fetch(digest).await?;
        let actual = digest_of(&bytes);
        if actual != digest {
            return Err(fetch_err(format!("content has digest {actual}")));
        }
        // Best effort: a failed write only costs a later re-fetch.
        let tmp = self
            .blobs
            .join(format!(".sha256-{hex}.{}.tmp", std::process::id()));
        let write = async {
            tokio::fs::create_dir_all(&self.blobs).await?;
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        if let Err(e) = write.await {
            tracing::warn!(error = %e, path = %path.display(), "cannot cache blob");
        }
        Ok(bytes.to_vec())
    }

    async fn compile(&self, what: &str, bytes: Vec<u8>) -> Result<Component, SandboxError> {
        let engine = self.engine.clone();
        let started = std::time::Instant::now();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| SandboxError::runtime(format!("compiling {what}"), e))?
            .map_err(|e| SandboxError::compile(what, e))?;
        tracing::debug!(component = what, elapsed = ?started.elapsed(), "component ready");
        Ok(component)
    }
}
