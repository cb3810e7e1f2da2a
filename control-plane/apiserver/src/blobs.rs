//! Content-addressed blob store for Wasm components: `sha256:<hex>` → file on disk.
//!
//! A blob is written to a temporary file, fsynced, then renamed into place, so a blob that
//! exists is always complete and matches its digest.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;

#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
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

impl BlobStore {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.join("sha256"),
        }
    }

    /// Store `data` under `digest` after checking that it hashes to it.
    pub async fn put(&self, digest: &str, data: Bytes) -> Result<bool, ApiError> {
        let hex = parse_digest(digest)?;
        let actual = hex::encode(Sha256::digest(&data));
        if actual != hex {
            return Err(ApiError::BadRequest(format!(
                "blob digest mismatch: the URL says sha256:{hex} but the body hashes to sha256:{actual}"
            )));
        }
        let path = self.dir.join(hex);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(false);
        }
        let io = |e: std::io::Error| ApiError::Internal(format!("blob store: {e}"));
        tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
        let tmp = self.dir.join(format!(".{hex}.{}", uuid::Uuid::new_v4()));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        file.write_all(&data).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        // Make the rename itself durable before acknowledging.
        tokio::fs::File::open(&self.dir)
            .await
            .map_err(io)?
            .sync_all()
            .await
            .map_err(io)?;
        Ok(true)
    }

    pub async fn get(&self, digest: &str) -> Result<Bytes, ApiError> {
        let hex = parse_digest(digest)?;
        match tokio::fs::read(self.dir.join(hex)).await {
            Ok(data) => Ok(data.into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ApiError::NotFound(format!("blob {digest} not found")))
            }
            Err(e) => Err(ApiError::Internal(format!("blob store: {e}"))),
        }
    }
}
