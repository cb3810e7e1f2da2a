//! Bearer-token authentication and the namespace confinement of tokens.
//!
//! Tokens are random; only their SHA-256 is stored (under `/wisp/tokens/<hex>`), so a copy
//! of the store does not leak usable credentials.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wisp_store::{Store, StoreError};

use crate::error::ApiError;

const TOKENS: &str = "/wisp/tokens/";

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// `None`: cluster admin. `Some(ns)`: confined to namespace `ns`.
    pub namespace: Option<String>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.namespace.is_none()
    }

    /// May this principal touch objects in `namespace` (`None`: cluster-scoped or all)?
    pub fn authorize(&self, namespace: Option<&str>) -> Result<(), ApiError> {
        match (&self.namespace, namespace) {
            (None, _) => Ok(()),
            (Some(own), Some(ns)) if own == ns => Ok(()),
            (Some(own), Some(ns)) => Err(ApiError::Forbidden(format!(
                "this token is confined to namespace {own:?} and cannot access namespace {ns:?}"
            ))),
            (Some(own), None) => Err(ApiError::Forbidden(format!(
                "this token is confined to namespace {own:?} and cannot access cluster-scoped or \
                 cross-namespace resources"
            ))),
        }
    }
}

/// Token verification with a cache of known tokens.
#[derive(Clone)]
pub struct Auth {
    store: Arc<dyn Store>,
    cache: Arc<RwLock<HashMap<String, Principal>>>,
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> Result<String, ApiError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(format!("wisp_{}", hex::encode(raw)))
}

impl Auth {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: Arc::default(),
        }
    }

    /// Check an `Authorization` header value.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("missing bearer token (Authorization: Bearer <token>)".into())
            })?;
        let key = digest(token);
        if let Some(p) = self.cache.read().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(p);
        }
        let kv = self
            .store
            .get(&format!("{TOKENS}{key}"))
            .await
            .map_err(|e| ApiError::from_store(e, "token"))?
            .ok_or_else(|| ApiError::Unauthorized("invalid bearer token".into()))?;
        let principal: Principal = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::Internal(format!("corrupt token record: {e}")))?;
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(key, principal.clone());
        }
        Ok(principal)
    }

    /// Mint a token for `principal` and record its digest.
    pub async fn issue(&self, principal: &Principal) -> Result<String, ApiError> {
        let token = new_token()?;
        let record = serde_json::to_vec(principal).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.store
            .create(&format!("{TOKENS}{}", digest(&token)), record.into(), None)
            .await
            .map_err(|e| ApiError::from_store(e, "token"))?;
        Ok(token)
    }

    /// A token for `principal` that lives only in this process (never stored): for the
    /// components `wisp up` runs in-process, which must still go through the API.
    pub fn issue_ephemeral(&self, principal: Principal) -> Result<String, ApiError> {
        let token = new_token()?;
        let mut cache = self
            .cache
            .write()
            .map_err(|_| ApiError::Internal("token cache poisoned".into()))?;
        cache.insert(digest(&token), principal);
        Ok(token)
    }

    /// On first start, mint the cluster-admin token and return it (exactly once per store).
    pub async fn bootstrap_admin(&self) -> Result<Option<String>, ApiError> {
        let marker = "/wisp/bootstrap/admin-token";
        let exists = self
            .store
            .get(marker)
            .await
            .map_err(|e| ApiError::from_store(e, "bootstrap marker"))?;
        if exists.is_some() {
            return Ok(None);
        }
        // Token first, marker second: a crash in between leaves no marker, so the next start
        // simply issues again (the orphaned digest is unusable without its token).
        let token = self.issue(&Principal { namespace: None }).await?;
        match self.store.create(marker, "issued".into(), None).await {
            Ok(_) => Ok(Some(token)),
            Err(StoreError::AlreadyExists(_)) => Ok(None), // another server bootstrapped first
            Err(e) => Err(ApiError::from_store(e, "bootstrap marker")),
        }
    }

    /// A fresh admin token, for the local recovery path of a server whose CLI config was
    /// lost (only the process that owns the store can call this).
    pub async fn issue_admin(&self) -> Result<String, ApiError> {
        self.issue(&Principal { namespace: None }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_token_is_confined() {
        let p = Principal {
            namespace: Some("team-a".into()),
        };
        assert!(p.authorize(Some("team-a")).is_ok());
        assert_eq!(p.authorize(Some("team-b")).map_err(|e| e.code()), Err(403));
        assert_eq!(p.authorize(None).map_err(|e| e.code()), Err(403));
        assert!(Principal { namespace: None }.authorize(None).is_ok());
    }
}
