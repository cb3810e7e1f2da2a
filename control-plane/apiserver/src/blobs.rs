//! Content-addressed blob store for Wasm components: `sha256:<hex>` → file on disk, and who
//! may see each blob.
//!
//! An upload streams to a temporary file while it is hashed (never held in memory), up to a
//! size cap; it is fsynced and renamed into place only when it matches its digest, so a blob
//! that exists is always complete. A tenant's upload records the namespace
//! (`/wisp/blobrefs/<namespace>/<hex>`, with its size, for the `blobs.bytes` quota); a tenant
//! reads only blobs its namespace uploaded or uses, a node only those of the pods bound to it.
//! Blobs nothing uses are collected after a grace period ([`collect`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use wisp_api::DynamicObject;
use wisp_store::StoreError;

use crate::State;
use crate::auth::Principal;
use crate::body::BodyTimeouts;
use crate::error::ApiError;

const REFS: &str = "/wisp/blobrefs/";
/// Kinds whose pod specs name components.
const USERS: &[&str] = &[
    "pods",
    "replicasets",
    "deployments",
    "jobs",
    "functions",
    "revisions",
];

#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

/// A namespace's upload of a blob.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ref {
    size: u64,
    created_at: String,
    /// The uid of the namespace that uploaded it: a namespace re-created with the same name
    /// does not inherit the old one's blobs.
    #[serde(default)]
    namespace_uid: String,
}

/// Parse `sha256:<64 lowercase hex>` into the hex part.
pub fn parse_digest(digest: &str) -> Result<&str, ApiError> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
        ApiError::BadRequest(format!(
            "blob digest {digest:?} must look like sha256:<64 hex digits>"
        ))
    })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ApiError::BadRequest(format!(
            "blob digest {digest:?} must look like sha256:<64 lowercase hex digits>"
        )));
    }
    Ok(hex)
}

fn io(e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("blob store: {e}"))
}

impl BlobStore {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.join("sha256"),
        }
    }

    fn path(&self, hex: &str) -> PathBuf {
        self.dir.join(hex)
    }

    /// Stream `body` to disk as blob `digest`, refusing more than `limit` bytes (413) and a
    /// body that does not hash to the digest (400). Whether the blob is new, and its size.
    pub async fn put<B>(
        &self,
        digest: &str,
        body: B,
        limit: u64,
        timeouts: BodyTimeouts,
    ) -> Result<(bool, u64), ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let hex = parse_digest(digest)?.to_owned();
        tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
        let tmp = self.dir.join(format!(".{hex}.{}", uuid::Uuid::new_v4()));
        let result = self.receive(&hex, &tmp, body, limit, timeouts).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn receive<B>(
        &self,
        hex: &str,
        tmp: &Path,
        body: B,
        limit: u64,
        timeouts: BodyTimeouts,
    ) -> Result<(bool, u64), ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut file = tokio::fs::File::create(tmp).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut body = std::pin::pin!(body);
        let deadline = tokio::time::Instant::now() + timeouts.total;
        loop {
            let frame = timeouts.next_frame(body.as_mut(), deadline).await?;
            let Some(frame) = frame else { break };
            let frame =
                frame.map_err(|e| ApiError::BadRequest(format!("cannot read the blob: {}", e.into())))?;
            let Ok(data) = frame.into_data() else { continue };
            size += data.len() as u64;
            if size > limit {
                return Err(ApiError::TooLarge {
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                });
            }
            hasher.update(&data);
            file.write_all(&data).await.map_err(io)?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != hex {
            return Err(ApiError::BadRequest(format!(
                "blob digest mismatch: the URL says sha256:{hex} but the body hashes to sha256:{actual}"
            )));
        }
        let path = self.path(hex);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            drop(file);
            let _ = tokio::fs::remove_file(tmp).await;
            return Ok((false, size));
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        tokio::fs::rename(tmp, &path).await.map_err(io)?;
        // Make the rename itself durable before acknowledging.
        tokio::fs::File::open(&self.dir)
            .await
            .map_err(io)?
            .sync_all()
            .await
            .map_err(io)?;
        Ok((true, size))
    }

    /// The blob's file and size.
    pub async fn open(&self, digest: &str) -> Result<(tokio::fs::File, u64), ApiError> {
        let hex = parse_digest(digest)?;
        match tokio::fs::File::open(self.path(hex)).await {
            Ok(f) => {
                let len = f.metadata().await.map_err(io)?.len();
                Ok((f, len))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ApiError::NotFound(format!("blob {digest} not found")))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Removes blob `hex` if no namespace recorded it and nothing uses it (an upload refused
    /// after it was stored).
    pub(crate) async fn remove_unrecorded(&self, state: &State, hex: &str) {
        let digest = format!("sha256:{hex}");
        let recorded = state
            .store
            .list(REFS)
            .await
            .is_ok_and(|l| l.items.iter().any(|kv| kv.key.ends_with(&format!("/{hex}"))));
        let used = users(state, None)
            .await
            .is_ok_and(|objs| objs.iter().any(|(plural, o)| names(o, plural, &digest)));
        if !recorded && !used {
            let _ = tokio::fs::remove_file(self.path(hex)).await;
        }
    }

    /// The whole blob (tests).
    pub async fn get(&self, digest: &str) -> Result<Bytes, ApiError> {
        let hex = parse_digest(digest)?;
        match tokio::fs::read(self.path(hex)).await {
            Ok(data) => Ok(data.into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ApiError::NotFound(format!("blob {digest} not found")))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Every blob on disk: hex digest and last modification.
    async fn all(&self) -> Result<Vec<(String, SystemTime)>, ApiError> {
        let mut out = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(e)),
        };
        while let Some(entry) = dir.next_entry().await.map_err(io)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let modified = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((name, modified));
        }
        Ok(out)
    }
}

/// Whether namespace `ns` (with uid `uid`) uploaded blob `digest`.
pub(crate) async fn namespace_has(
    state: &State,
    ns: &str,
    uid: &str,
    digest: &str,
) -> Result<bool, ApiError> {
    let hex = parse_digest(digest)?;
    Ok(state
        .store
        .get(&format!("{REFS}{ns}/{hex}"))
        .await
        .map_err(|e| ApiError::from_store(e, "blob reference"))?
        .and_then(|kv| serde_json::from_slice::<Ref>(&kv.value).ok())
        .is_some_and(|r| r.namespace_uid == uid))
}

/// Bytes of the blobs namespace `ns` uploaded.
pub(crate) async fn namespace_bytes(state: &State, ns: &str) -> Result<u64, ApiError> {
    let listing = state
        .store
        .list(&format!("{REFS}{ns}/"))
        .await
        .map_err(|e| ApiError::from_store(e, "blob references"))?;
    Ok(listing
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Ref>(&kv.value).ok())
        .map(|r| r.size)
        .sum())
}

/// Records that `ns` (uid `uid`) uploaded blob `hex` of `size` bytes (replacing a record of
/// an earlier namespace of that name).
pub(crate) async fn record(state: &State, ns: &str, uid: &str, hex: &str, size: u64) -> Result<(), ApiError> {
    let r = Ref {
        size,
        created_at: jiff::Timestamp::now().to_string(),
        namespace_uid: uid.to_owned(),
    };
    let value = serde_json::to_vec(&r).map_err(|e| ApiError::Internal(e.to_string()))?;
    let key = format!("{REFS}{ns}/{hex}");
    match state.store.create(&key, value.clone().into(), None).await {
        Ok(_) => Ok(()),
        Err(StoreError::AlreadyExists(_)) => {
            state
                .store
                .update(&key, value.into(), None)
                .await
                .map_err(|e| ApiError::from_store(e, "blob reference"))?;
            Ok(())
        }
        Err(e) => Err(ApiError::from_store(e, "blob reference")),
    }
}

/// Drops every blob reference of namespace `ns` (it is gone).
pub(crate) async fn forget_namespace(state: &State, ns: &str) -> Result<(), ApiError> {
    let listing = state
        .store
        .list(&format!("{REFS}{ns}/"))
        .await
        .map_err(|e| ApiError::from_store(e, "blob references"))?;
    for kv in &listing.items {
        match state.store.delete(&kv.key, None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(ApiError::from_store(e, "blob reference")),
        }
    }
    Ok(())
}

/// The objects of the pod-spec kinds under `prefix_ns` (`""`: every namespace).
async fn users(state: &State, ns: Option<&str>) -> Result<Vec<(&'static str, DynamicObject)>, ApiError> {
    let mut out = Vec::new();
    for plural in USERS {
        let prefix = match ns {
            Some(ns) => format!("/registry/{plural}/{ns}/"),
            None => format!("/registry/{plural}/"),
        };
        let listing = state
            .store
            .list(&prefix)
            .await
            .map_err(|e| ApiError::from_store(e, plural))?;
        out.extend(
            listing
                .items
                .iter()
                .filter_map(|kv| serde_json::from_slice::<DynamicObject>(&kv.value).ok())
                .map(|o| (*plural, o)),
        );
    }
    Ok(out)
}

fn names(obj: &DynamicObject, plural: &str, digest: &str) -> bool {
    crate::admission::wasm_digests(obj, plural)
        .iter()
        .any(|d| d == digest)
}

/// May `principal` read blob `digest`? The same answer whether it exists or not.
pub(crate) async fn authorize_read(
    state: &State,
    principal: &Principal,
    digest: &str,
) -> Result<(), ApiError> {
    parse_digest(digest)?;
    match principal {
        Principal::Admin => Ok(()),
        Principal::Namespace {
            namespace,
            namespace_uid,
        } => {
            if namespace_has(state, namespace, namespace_uid, digest).await?
                || users(state, Some(namespace))
                    .await?
                    .iter()
                    .any(|(plural, o)| names(o, plural, digest))
            {
                return Ok(());
            }
            Err(ApiError::Forbidden(format!(
                "{} cannot get blob {digest}: namespace {namespace:?} neither uploaded nor uses it",
                principal.scope()
            )))
        }
        Principal::Scraper | Principal::PodLogs { .. } => Err(ApiError::Forbidden(format!(
            "{} cannot get blobs",
            principal.scope()
        ))),
        Principal::Node { node } => {
            let listing = state
                .store
                .list("/registry/pods/")
                .await
                .map_err(|e| ApiError::from_store(e, "pods"))?;
            let used = listing
                .items
                .iter()
                .filter_map(|kv| serde_json::from_slice::<DynamicObject>(&kv.value).ok())
                .any(|p| {
                    p.body
                        .get("spec")
                        .and_then(|s| s.get("nodeName"))
                        .and_then(|n| n.as_str())
                        == Some(node.as_str())
                        && names(&p, "pods", digest)
                });
            if used {
                Ok(())
            } else {
                Err(ApiError::Forbidden(format!(
                    "{} cannot get blob {digest}: no pod bound to it uses it",
                    principal.scope()
                )))
            }
        }
    }
}

/// One pass of blob garbage collection: a namespace's reference to a blob none of its objects
/// uses is dropped once older than `grace`; a blob file with no reference that no object uses
/// is removed once older than `grace`. How many files were removed.
pub async fn collect(state: &State, grace: Duration) -> Result<usize, ApiError> {
    let now = SystemTime::now();
    let objects = users(state, None).await?;
    let mut used: HashSet<(String, String)> = HashSet::new();
    let mut used_anywhere: HashSet<String> = HashSet::new();
    for (plural, o) in &objects {
        let ns = o.metadata.namespace.clone().unwrap_or_default();
        for d in crate::admission::wasm_digests(o, plural) {
            if let Some(hex) = d.strip_prefix("sha256:") {
                used.insert((ns.clone(), hex.to_owned()));
                used_anywhere.insert(hex.to_owned());
            }
        }
    }
    let refs = state
        .store
        .list(REFS)
        .await
        .map_err(|e| ApiError::from_store(e, "blob references"))?;
    let old = |ts: &str| {
        ts.parse::<jiff::Timestamp>()
            .is_ok_and(|t| jiff::Timestamp::now().duration_since(t).unsigned_abs() >= grace)
    };
    let mut referenced: HashSet<String> = HashSet::new();
    for kv in &refs.items {
        let Some((ns, hex)) = kv.key.trim_start_matches(REFS).split_once('/') else {
            continue;
        };
        let stale = serde_json::from_slice::<Ref>(&kv.value).is_ok_and(|r| old(&r.created_at));
        if stale && !used.contains(&(ns.to_owned(), hex.to_owned())) {
            match state.store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) | Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => {}
                Err(e) => return Err(ApiError::from_store(e, "blob reference")),
            }
            continue;
        }
        referenced.insert(hex.to_owned());
    }
    let mut removed = 0;
    for (name, modified) in state.blobs.all().await? {
        if name.starts_with('.') {
            // An upload in progress, or one a crash left behind.
            if now.duration_since(modified).unwrap_or_default() > grace.max(Duration::from_secs(3600)) {
                let _ = tokio::fs::remove_file(state.blobs.dir.join(&name)).await;
            }
            continue;
        }
        if referenced.contains(&name) || used_anywhere.contains(&name) {
            continue;
        }
        if now.duration_since(modified).unwrap_or_default() >= grace {
            tracing::info!(blob = %name, "removing a blob nothing uses");
            tokio::fs::remove_file(state.blobs.path(&name))
                .await
                .map_err(io)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Streams an open blob file as a response body.
pub(crate) fn file_body(file: tokio::fs::File) -> crate::body::ApiBody {
    let stream = tokio_util::io::ReaderStream::new(file);
    http_body_util::StreamBody::new(futures::StreamExt::map(stream, |r| {
        r.map(hyper::body::Frame::data)
    }))
    .boxed_unsync()
}
