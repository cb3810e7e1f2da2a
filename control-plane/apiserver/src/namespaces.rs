//! A Namespace's deletion, in two steps as in Kubernetes: the first DELETE marks it
//! `Terminating` (its `deletionTimestamp` set; nothing new may be created in it and its
//! tokens stop working at once); the namespace controller then deletes everything in it and
//! calls DELETE again, which removes the Namespace once it is empty — with its tokens and the
//! record of the blobs it uploaded.

use http::{Response, StatusCode};
use wisp_api::{DynamicObject, KINDS};
use wisp_store::StoreError;

use crate::State;
use crate::body::{ApiBody, json_response};
use crate::error::ApiError;
use crate::resources::from_kv;

fn key(name: &str) -> String {
    format!("/registry/namespaces/{name}")
}

/// The uid of namespace `name` (404 when there is none, 403 while it is being deleted).
pub(crate) async fn uid_of(state: &State, name: &str) -> Result<String, ApiError> {
    let kv = state
        .store
        .get(&key(name))
        .await
        .map_err(|e| ApiError::from_store(e, "namespace"))?
        .ok_or_else(|| ApiError::NotFound(format!("namespace {name:?} not found; create it first")))?;
    let ns = from_kv(&kv)?;
    if ns.metadata.deletion_timestamp.is_some() {
        return Err(ApiError::Forbidden(format!(
            "namespace {name:?} is being deleted"
        )));
    }
    ns.metadata
        .uid
        .ok_or_else(|| ApiError::Internal(format!("namespace {name:?} has no uid")))
}

/// What namespace `name` still holds: (kind, count) of each kind with objects.
async fn contents(state: &State, name: &str) -> Result<Vec<(&'static str, usize)>, ApiError> {
    let mut left = Vec::new();
    for kind in KINDS.iter().filter(|k| k.namespaced) {
        let listing = state
            .store
            .list(&format!("/registry/{}/{name}/", kind.plural))
            .await
            .map_err(|e| ApiError::from_store(e, kind.plural))?;
        if !listing.items.is_empty() {
            left.push((kind.plural, listing.items.len()));
        }
    }
    Ok(left)
}

/// `DELETE /apis/wisp.dev/v1/namespaces/<name>` (admin).
pub(crate) async fn delete(
    state: &State,
    name: &str,
    rv: Option<&str>,
) -> Result<Response<ApiBody>, ApiError> {
    if crate::PROTECTED_NAMESPACES.contains(&name) {
        return Err(ApiError::Forbidden(format!(
            "namespace {name:?} is part of the cluster and cannot be deleted"
        )));
    }
    let what = format!("namespaces {name:?}");
    let kv = state
        .store
        .get(&key(name))
        .await
        .map_err(|e| ApiError::from_store(e, &what))?
        .ok_or_else(|| ApiError::NotFound(format!("{what} not found")))?;
    if let Some(rv) = rv.filter(|r| !r.is_empty())
        && rv != kv.mod_revision.to_string()
    {
        return Err(ApiError::Conflict(format!(
            "Operation cannot be fulfilled on {what}: resourceVersion {rv} is stale (current is {})",
            kv.mod_revision
        )));
    }
    let mut ns: DynamicObject = from_kv(&kv)?;
    if ns.metadata.deletion_timestamp.is_none() {
        ns.metadata.deletion_timestamp = Some(jiff::Timestamp::now().to_string());
        ns.body
            .insert("status".into(), serde_json::json!({ "phase": "Terminating" }));
        let mut stored = ns.clone();
        stored.metadata.resource_version = None;
        let bytes = serde_json::to_vec(&stored).map_err(|e| ApiError::Internal(e.to_string()))?;
        let rev = state
            .store
            .update(&key(name), bytes.into(), Some(kv.mod_revision))
            .await
            .map_err(|e| ApiError::from_store(e, &what))?;
        ns.metadata.resource_version = Some(rev.to_string());
        tracing::info!(namespace = name, "namespace is terminating");
        return Ok(json_response(StatusCode::OK, &ns));
    }
    // Terminating already: gone once empty.
    if !contents(state, name).await?.is_empty() {
        return Ok(json_response(StatusCode::OK, &ns));
    }
    match state.store.delete(&key(name), Some(kv.mod_revision)).await {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => return Err(ApiError::NotFound(format!("{what} not found"))),
        Err(e) => return Err(ApiError::from_store(e, &what)),
    }
    if let Some(uid) = &ns.metadata.uid {
        let revoked = state.auth.revoke_namespace(uid).await?;
        tracing::info!(namespace = name, tokens = revoked, "namespace deleted");
    }
    crate::blobs::forget_namespace(state, name).await?;
    Ok(json_response(StatusCode::OK, &ns))
}
