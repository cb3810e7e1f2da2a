//! Components from OCI registries (`wasm: oci://…`) for this node's pods: the reference is
//! resolved to the component's digest with the pod's own registry credentials every time, the
//! registry's addresses pass the node's egress policy (a tenant cannot point the node at a
//! private address), and the component is verified and kept on disk by digest, where
//! [`NodeArtifacts`] serves it to the Wasm runtime. A namespace uses a cached component only
//! once it has itself downloaded bytes that hash to that digest from its own registry: a
//! manifest is the registry's word, and a registry a tenant controls could name the digest of
//! another namespace's private component to have the node run it for them.

use std::path::PathBuf;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use wisp_api::OciRef;
use wisp_client::Client;
use wisp_sandbox::{ArtifactSource, EgressPolicy, SandboxError};

use crate::spec::PrepareError;

/// The longest a pull may take.
pub const PULL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

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

    /// The mark that namespace `ns` has downloaded `digest` itself.
    fn proven(&self, ns: &str, digest: &str) -> Option<PathBuf> {
        let file = self.path(digest)?.file_name()?.to_owned();
        Some(self.dir.join("by-namespace").join(ns).join(file))
    }

    /// The component `digest` if this node pulled it (a file that no longer hashes to it, torn
    /// by a crash, is removed and pulled again).
    pub async fn get(&self, digest: &str) -> Option<Bytes> {
        let path = self.path(digest)?;
        let bytes = tokio::fs::read(&path).await.ok()?;
        if wisp_oci::digest_of(&bytes) != digest {
            tracing::warn!(path = %path.display(), "a pulled component is corrupt; it is pulled again");
            let _ = tokio::fs::remove_file(&path).await;
            return None;
        }
        Some(Bytes::from(bytes))
    }

    /// Resolve `reference` (what follows `oci://`) to its component's digest, pulling the
    /// component unless this node has it.
    pub async fn resolve(
        &self,
        namespace: &str,
        reference: &str,
        creds: Option<&wisp_oci::Credentials>,
    ) -> Result<String, PrepareError> {
        let r = OciRef::parse(reference).map_err(|why| pull_error(format!("oci://{reference}: {why}")))?;
        self.check_egress(&r).await?;
        let cached = |d: &str| {
            self.proven(namespace, d).is_some_and(|p| p.exists()) && self.path(d).is_some_and(|p| p.exists())
        };
        // A registry that trickles never holds the pod past this.
        let pulled = tokio::time::timeout(PULL_DEADLINE, wisp_oci::pull(&r, creds, cached))
            .await
            .map_err(|_| {
                pull_error(format!(
                    "oci://{r}: the pull took longer than {} s",
                    PULL_DEADLINE.as_secs()
                ))
            })?
            .map_err(|e| pull_error(format!("oci://{}", wisp_oci::chain(&e))))?;
        if let Some(bytes) = pulled.bytes {
            let path = self.path(&pulled.component_digest).ok_or_else(|| {
                pull_error(format!(
                    "oci://{r}: digest {} is not sha256",
                    pulled.component_digest
                ))
            })?;
            let write = async {
                use tokio::io::AsyncWriteExt as _;
                tokio::fs::create_dir_all(&self.dir).await?;
                let tmp = path.with_extension(format!("tmp-{}", uuid_like()));
                let mut file = tokio::fs::File::create(&tmp).await?;
                file.write_all(&bytes).await?;
                file.sync_all().await?;
                drop(file);
                let renamed = tokio::fs::rename(&tmp, &path).await;
                if renamed.is_err() {
                    let _ = tokio::fs::remove_file(&tmp).await;
                }
                renamed
            };
            write
                .await
                .map_err(|e| pull_error(format!("oci://{r}: cannot keep the component on this node: {e}")))?;
            if let Some(mark) = self.proven(namespace, &pulled.component_digest) {
                let marked = async {
                    if let Some(dir) = mark.parent() {
                        tokio::fs::create_dir_all(dir).await?;
                    }
                    tokio::fs::write(&mark, b"").await
                };
                marked.await.map_err(|e| {
                    pull_error(format!("oci://{r}: cannot record the pull on this node: {e}"))
                })?;
            }
            tracing::info!(reference = %r, digest = %pulled.component_digest, bytes = bytes.len(), "component pulled");
        }
        Ok(pulled.component_digest)
    }

    /// Every address the registry's host resolves to must pass the node's egress policy.
    async fn check_egress(&self, r: &OciRef) -> Result<(), PrepareError> {
        let (host, port) = match r.registry.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().unwrap_or(443)),
            // wisp-oci speaks HTTP (port 80) to loopback registries, HTTPS to the others.
            _ if wisp_oci::plain_http(&r.registry) => (r.registry.as_str(), 80),
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

/// A name no other pull of this process uses at the same time.
fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
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
            .resolve("ns", "127.0.0.1:5000/x:v1", None)
            .await
            .expect_err("loopback");
        assert_eq!(err.reason, REASON_PULL);
        assert!(
            err.message
                .contains("may not reach the registry at 127.0.0.1:5000"),
            "{err}"
        );
        let err = cache
            .resolve("ns", "169.254.169.254/x:v1", None)
            .await
            .expect_err("metadata");
        assert!(err.message.contains("link-local"), "{err}");
        assert!(
            cache.path("sha256:../../etc").is_none(),
            "a digest never becomes a path outside the cache"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let (a, b) = (cache.proven("team-a", &d), cache.proven("team-b", &d));
        assert!(
            a.is_some() && a != b,
            "what one namespace proved is not another's"
        );
    }
}
