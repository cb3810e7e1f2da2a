//! ResourceQuota enforcement at admission. Usage is computed from what the namespace holds
//! when a write comes in, under a per-namespace lock held until the write is stored, so two
//! concurrent writes cannot both fit into the last unit of a quota (on one API server).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wisp_api::{
    DynamicObject, Function, Pod, PodSpec, QUOTA_BLOB_BYTES, QUOTA_COUNT_PREFIX, QUOTA_FUNCTIONS_MAX_SCALE,
    QUOTA_LIMITS_CPU, QUOTA_LIMITS_MEMORY, QUOTA_PODS, QUOTA_REQUESTS_CPU, QUOTA_REQUESTS_MEMORY, Quantity,
    QuantityFormat, ResourceQuota,
};

use crate::State;
use crate::admission::{limits::sum, list_in, pod_spec};
use crate::error::ApiError;
use crate::resources::Target;

/// One lock per namespace with quotas.
#[derive(Default)]
pub struct Locks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Locks {
    async fn lock(&self, ns: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.len() > 10_000 {
                map.retain(|_, m| Arc::strong_count(m) > 1);
            }
            map.entry(ns.to_owned()).or_default().clone()
        };
        m.lock_owned().await
    }
}

fn units(n: i64) -> Quantity {
    Quantity::from_units(n, QuantityFormat::DecimalSI)
}

/// What one object counts towards `resource`.
fn contribution(resource: &str, plural: &str, obj: &DynamicObject) -> Quantity {
    if let Some(kind) = resource.strip_prefix(QUOTA_COUNT_PREFIX) {
        return units(i64::from(kind == plural));
    }
    match (resource, plural) {
        (QUOTA_FUNCTIONS_MAX_SCALE, "functions") => obj
            .to_typed::<Function>()
            .map_or(units(0), |f| units(i64::from(f.spec.scaling.max_scale))),
        (_, "pods") => {
            let terminal = obj.to_typed::<Pod>().is_ok_and(|p| p.phase().is_terminal());
            let Some(spec) = pod_spec(obj, "pods").filter(|_| !terminal) else {
                return units(0);
            };
            pod_usage(resource, &spec)
        }
        _ => units(0),
    }
}

fn pod_usage(resource: &str, spec: &PodSpec) -> Quantity {
    match resource {
        QUOTA_PODS => units(1),
        QUOTA_REQUESTS_CPU => sum(spec, "cpu", false),
        QUOTA_REQUESTS_MEMORY => sum(spec, "memory", false),
        QUOTA_LIMITS_CPU => sum(spec, "cpu", true),
        QUOTA_LIMITS_MEMORY => sum(spec, "memory", true),
        _ => units(0),
    }
}

/// Whether `resource` is counted from objects of `plural`.
fn counts(resource: &str, plural: &str) -> bool {
    match resource.strip_prefix(QUOTA_COUNT_PREFIX) {
        Some(kind) => kind == plural,
        None => match plural {
            "pods" => [
                QUOTA_PODS,
                QUOTA_REQUESTS_CPU,
                QUOTA_REQUESTS_MEMORY,
                QUOTA_LIMITS_CPU,
                QUOTA_LIMITS_MEMORY,
            ]
            .contains(&resource),
            "functions" => resource == QUOTA_FUNCTIONS_MAX_SCALE,
            _ => false,
        },
    }
}

fn exceeded(quota: &str, resource: &str, requested: &Quantity, used: &Quantity, hard: &Quantity) -> ApiError {
    ApiError::Forbidden(format!(
        "exceeded quota {quota:?}: requested {resource}={requested}, used {resource}={used}, \
         limited {resource}={hard}"
    ))
}

/// Checks `obj` (replacing `existing`, if any) against the quotas of `ns`; the lock to hold
/// until the write is stored, when a quota applies.
pub(crate) async fn admit(
    state: &State,
    target: &Target,
    ns: &str,
    obj: &DynamicObject,
    existing: Option<&DynamicObject>,
) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, ApiError> {
    let plural = target.kind.plural;
    if plural == "resourcequotas" {
        return Ok(None);
    }
    let quotas = list_in::<ResourceQuota>(state, "resourcequotas", ns).await?;
    let relevant = |q: &ResourceQuota| q.spec.hard.keys().any(|r| counts(r, plural));
    if !quotas.iter().any(relevant) {
        return Ok(None);
    }
    // A quota on requests or limits needs every container to say its own: a pod without
    // one would otherwise count as nothing and slip any number of them past the quota.
    if plural == "pods"
        && existing.is_none()
        && let Some(spec) = pod_spec(obj, "pods")
    {
        for q in &quotas {
            for resource in q.spec.hard.keys() {
                let (limit, name) = match resource.as_str() {
                    QUOTA_REQUESTS_CPU => (false, "cpu"),
                    QUOTA_REQUESTS_MEMORY => (false, "memory"),
                    QUOTA_LIMITS_CPU => (true, "cpu"),
                    QUOTA_LIMITS_MEMORY => (true, "memory"),
                    _ => continue,
                };
                for (i, c) in spec.containers.iter().enumerate() {
                    let set = if limit {
                        c.resources.limits.contains_key(name)
                    } else {
                        c.resources.effective_request(name).is_some()
                    };
                    if !set {
                        return Err(ApiError::Forbidden(format!(
                            "spec.containers[{i}].resources: must say its {resource}: quota {:?} limits it \
                             (a LimitRange can give containers a default)",
                            q.metadata.name
                        )));
                    }
                }
            }
        }
    }
    let guard = state.quota_locks.lock(ns).await;
    // What everything else of this kind in the namespace uses.
    let listing = state
        .store
        .list(&target.prefix())
        .await
        .map_err(|e| ApiError::from_store(e, plural))?;
    let others: Vec<DynamicObject> = listing
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<DynamicObject>(&kv.value).ok())
        .filter(|o| o.metadata.name != obj.metadata.name)
        .collect();
    for q in &quotas {
        for (resource, hard) in &q.spec.hard {
            if !counts(resource, plural) {
                continue;
            }
            let used = others
                .iter()
                .map(|o| contribution(resource, plural, o))
                .reduce(|a, b| a.saturating_add(&b))
                .unwrap_or_else(|| units(0));
            let new = contribution(resource, plural, obj);
            let old = existing.map_or(units(0), |e| contribution(resource, plural, e));
            if new > old && used.saturating_add(&new) > *hard {
                return Err(exceeded(&q.metadata.name, resource, &new, &used, hard));
            }
        }
    }
    Ok(Some(guard))
}

/// Checks that `ns` may hold `adding` more bytes of blobs, given it holds `used`; the lock to
/// hold until the blob is recorded.
pub(crate) async fn admit_blob_bytes(
    state: &State,
    ns: &str,
    adding: u64,
) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, ApiError> {
    let quotas = list_in::<ResourceQuota>(state, "resourcequotas", ns).await?;
    if !quotas.iter().any(|q| q.spec.hard.contains_key(QUOTA_BLOB_BYTES)) {
        return Ok(None);
    }
    let guard = state.quota_locks.lock(ns).await;
    let used = crate::blobs::namespace_bytes(state, ns).await?;
    let to_q = |n: u64| Quantity::from_units(i64::try_from(n).unwrap_or(i64::MAX), QuantityFormat::BinarySI);
    for q in &quotas {
        if let Some(hard) = q.spec.hard.get(QUOTA_BLOB_BYTES)
            && to_q(used.saturating_add(adding)) > *hard
        {
            return Err(exceeded(
                &q.metadata.name,
                QUOTA_BLOB_BYTES,
                &to_q(adding),
                &to_q(used),
                hard,
            ));
        }
    }
    Ok(Some(guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).expect("object")
    }

    #[test]
    fn pods_count_their_requests_and_limits_until_they_end() {
        let pod = obj(serde_json::json!({
            "apiVersion": "wisp.dev/v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "a"},
            "spec": {"containers": [
                {"name": "a", "image": "x", "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "64Mi"}}},
                {"name": "b", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}
            ]}
        }));
        assert_eq!(contribution("pods", "pods", &pod), units(1));
        assert_eq!(contribution("requests.cpu", "pods", &pod).to_string(), "1250m");
        assert_eq!(contribution("limits.memory", "pods", &pod).to_string(), "128Mi");
        assert_eq!(contribution("count/pods", "pods", &pod), units(1));
        assert_eq!(contribution("count/configmaps", "pods", &pod), units(0));
        let mut done = pod;
        done.body
            .insert("status".into(), serde_json::json!({"phase": "Succeeded"}));
        assert_eq!(
            contribution("pods", "pods", &done),
            units(0),
            "a finished pod uses nothing"
        );
        assert!(counts("pods", "pods") && counts("count/functions", "functions"));
        assert!(!counts("pods", "deployments") && !counts("functions.maxScale", "pods"));
    }
}
