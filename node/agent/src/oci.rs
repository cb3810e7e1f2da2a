//! Components from OCI registries (`wasm: oci://…`) for this node's pods: the reference is
//! resolved to the component's digest with the pod's own registry credentials every time (so a
//! component cached for one namespace never reaches another that may not pull it), the
//! registry's addresses pass the node's egress policy (a tenant cannot point the node at a
//! private address), and the component is verified and kept on disk by digest, where
//! [`NodeArtifacts`] serves it to the Wasm runtime.

use std::path::PathBuf;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use wisp_api::OciRef;
use wisp_client::Client;
use wisp_sandbox::{ArtifactSource, EgressPolicy, SandboxError};

use crate::spec::PrepareError;

/// The container waiting reason of a component that cannot be pulled.
pub const REASON_PULL: &str = "ComponentPullBackOff";

fn pull_error(message: String) -> PrepareError {
    PrepareError {
        reason: REASON_PULL,
        message,
    }
}

/// Pulled components on this node's disk, by digest.
#[derive(Clone, Debug)]
pub struct OciCache {
    dir: PathBuf,
    egress: EgressPolicy,
}

impl OciCache {
    pub fn new(dir: PathBuf, egress: EgressPolicy) -> Self {
        Self { dir, egress }
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join(format!("sha256-{hex}")))
    }

    /// The component `digest` if this node pulled it.
    pub async fn get(&self, digest: &str) -> Option<Bytes> {
        let path = self.path(digest)?;
        tokio::fs::read(path).await.ok().map(Bytes::from)
    }

    /// Resolve `reference` (what follows `oci://`) to its component's digest, pulling the
    /// component unless this node has it.
    pub async fn resolve(
        &self,
        reference: &str,
        creds: Option<&wisp_oci::Credentials>,
    ) -> Result<String, PrepareError> {
        let r = OciRef::parse(reference).map_err(|why| pull_error(format!("oci://{reference}: {why}")))?;
        self.check_egress(&r).await?;
        let pulled = wisp_oci::pull(&r, creds, |d| self.path(d).is_some_and(|p| p.exists()))
            .await
            .map_err(|e| pull_error(format!("oci://{}", wisp_oci::chain(&e))))?;
        if let Some(bytes) = pulled.bytes {
            let path = self.path(&pulled.component_digest).ok_or_else(|| {
                pull_error(format!(
                    "oci://{r}: digest {} is not sha256",
                    pulled.component_digest
                ))
            })?;
            let write = async {
                tokio::fs::create_dir_all(&self.dir).await?;
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                tokio::fs::write(&tmp, &bytes).await?;
                tokio::fs::rename(&tmp, &path).await
            };
            write
                .await
                .map_err(|e| pull_error(format!("oci://{r}: cannot keep the component on this node: {e}")))?;
            tracing::info!(reference = %r, digest = %pulled.component_digest, bytes = bytes.len(), "component pulled");
        }
        Ok(pulled.component_digest)
    }

    /// Every address the registry's host resolves to must pass the node's egress policy.
    async fn check_egress(&self, r: &OciRef) -> Result<(), PrepareError> {
        let (host, port) = match r.registry.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().unwrap_or(443)),
            _ => (r.registry.as_str(), 443),
        };
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| pull_error(format!("oci://{r}: cannot resolve {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(pull_error(format!("oci://{r}: {host} resolves to no address")));
        }
        for addr in addrs {
            self.egress.check(addr).map_err(|e| {
                pull_error(format!(
                    "oci://{r}: the node may not reach the registry at {addr}: {e}"
                ))
            })?;
        }
        Ok(())
    }
}

/// The components this node's Wasm runtime fetches by digest: pulled from a registry (on this
/// node's disk), else from the API's blob store.
pub struct NodeArtifacts {
    pub client: Client,
    pub oci: OciCache,
}

impl ArtifactSource for NodeArtifacts {
    fn fetch<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, wisp_sandbox::Result<Bytes>> {
        async move {
            if let Some(bytes) = self.oci.get(digest).await {
                return Ok(bytes);
            }
            self.client
                .get_blob(digest)
                .await
                .map_err(|e| SandboxError::fetch(digest, e))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_registry_on_a_restricted_address_is_refused_before_any_request() {
        let cache = OciCache::new(
            std::env::temp_dir().join("wisp-oci-test"),
            EgressPolicy::default(),
        );
        let err = cache
            .resolve("127.0.0.1:5000/x:v1", None)
            .await
            .expect_err("loopback");
        assert_eq!(err.reason, REASON_PULL);
        assert!(
            err.message
                .contains("may not reach the registry at 127.0.0.1:5000"),
            "{err}"
        );
        let err = cache
            .resolve("169.254.169.254/x:v1", None)
            .await
            .expect_err("metadata");
        assert!(err.message.contains("link-local"), "{err}");
        assert!(
            cache.path("sha256:../../etc").is_none(),
            "a digest never becomes a path outside the cache"
        );
    }
}
