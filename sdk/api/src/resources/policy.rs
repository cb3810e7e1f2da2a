//! Per-namespace policy set by the cluster admin: ResourceQuota (limits on what a namespace
//! may hold, enforced at admission) and LimitRange (defaults and bounds for its containers).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::quantity::Quantity;
use crate::validation::{FieldError, child, index};

/// Non-terminal pods in the namespace.
pub const QUOTA_PODS: &str = "pods";
/// Sum over non-terminal pods' containers of their requests / limits.
pub const QUOTA_REQUESTS_CPU: &str = "requests.cpu";
pub const QUOTA_REQUESTS_MEMORY: &str = "requests.memory";
pub const QUOTA_LIMITS_CPU: &str = "limits.cpu";
pub const QUOTA_LIMITS_MEMORY: &str = "limits.memory";
/// Sum of the Functions' `spec.scaling.maxScale`.
pub const QUOTA_FUNCTIONS_MAX_SCALE: &str = "functions.maxScale";
/// Bytes of the Wasm components (blobs) the namespace uploaded.
pub const QUOTA_BLOB_BYTES: &str = "blobs.bytes";
/// `count/<plural>`: objects of one kind (`count/configmaps`).
pub const QUOTA_COUNT_PREFIX: &str = "count/";

/// Limits on what one namespace may hold, checked whenever something in it is created or
/// changed: a write that would go over a `hard` limit is refused (403) with the quota's
/// name, what the write asks for, what is used and the limit.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceQuota {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ResourceQuotaSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceQuotaStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourceQuotaSpec {
    /// Limit per resource: `pods`, `requests.cpu`, `requests.memory`, `limits.cpu`,
    /// `limits.memory`, `functions.maxScale`, `blobs.bytes`, `count/<plural>`.
    pub hard: BTreeMap<String, Quantity>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourceQuotaStatus {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hard: BTreeMap<String, Quantity>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub used: BTreeMap<String, Quantity>,
}

/// Whether `name` is a resource a quota can limit.
pub fn is_quota_resource(name: &str) -> bool {
    match name.strip_prefix(QUOTA_COUNT_PREFIX) {
        Some(plural) => crate::kinds::kind_by_plural(plural).is_some_and(|k| k.namespaced),
        None => [
            QUOTA_PODS,
            QUOTA_REQUESTS_CPU,
            QUOTA_REQUESTS_MEMORY,
            QUOTA_LIMITS_CPU,
            QUOTA_LIMITS_MEMORY,
            QUOTA_FUNCTIONS_MAX_SCALE,
            QUOTA_BLOB_BYTES,
        ]
        .contains(&name),
    }
}

impl ResourceQuota {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.spec.hard.is_empty() {
            errs.push(FieldError::new("spec.hard", "required: at least one limit"));
        }
        for (name, q) in &self.spec.hard {
            let p = child("spec.hard", name);
            if !is_quota_resource(name) {
                errs.push(FieldError::new(
                    p,
                    format!(
                        "unknown resource {name:?} (expected pods, requests.cpu, requests.memory, limits.cpu, \
                         limits.memory, functions.maxScale, blobs.bytes or count/<plural> of a namespaced kind)"
                    ),
                ));
            } else if q.is_negative() {
                errs.push(FieldError::new(p, "must be non-negative"));
            }
        }
        errs
    }
}

/// Defaults and bounds for the containers of one namespace, applied when a pod is created
/// (defaults) and when any pod or pod template is written (bounds).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitRange {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: LimitRangeSpec,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitRangeSpec {
    /// Resource defaults and bounds per container (`type: Container`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitRangeItem>,
    /// Default and largest `timeoutMs` of a container (Wasm HTTP components).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Bounds>,
    /// Default and largest `terminationGracePeriodSeconds` of a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<Bounds>,
}

/// `Container` is the only type.
pub const LIMIT_TYPE_CONTAINER: &str = "Container";

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitRangeItem {
    /// `Container`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Limits given to a container that sets none (`cpu`, `memory`, `pids`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub default: BTreeMap<String, Quantity>,
    /// Requests given to a container that sets none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub default_request: BTreeMap<String, Quantity>,
    /// The largest limit (or, without one, request) a container may have.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub max: BTreeMap<String, Quantity>,
    /// The smallest request (or, without one, limit) a container may have.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub min: BTreeMap<String, Quantity>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Bounds {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

impl Bounds {
    fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (field, v) in [("default", self.default), ("max", self.max)] {
            if v.is_some_and(|v| v < 0) {
                errs.push(FieldError::new(child(path, field), "must be non-negative"));
            }
        }
        if let (Some(d), Some(m)) = (self.default, self.max)
            && d > m
        {
            errs.push(FieldError::new(
                child(path, "default"),
                format!("must be at most max ({m})"),
            ));
        }
        errs
    }
}

impl LimitRange {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, item) in self.spec.limits.iter().enumerate() {
            let ip = index("spec.limits", i);
            if item.type_ != LIMIT_TYPE_CONTAINER {
                errs.push(FieldError::new(
                    child(&ip, "type"),
                    format!("unsupported type {:?} (only \"Container\")", item.type_),
                ));
            }
            for (field, map) in [
                ("default", &item.default),
                ("defaultRequest", &item.default_request),
                ("max", &item.max),
                ("min", &item.min),
            ] {
                for (name, q) in map {
                    let p = child(&child(&ip, field), name);
                    if !super::container::KNOWN_RESOURCES.contains(&name.as_str()) {
                        errs.push(FieldError::new(
                            p,
                            format!("unsupported resource {name:?} (expected cpu, memory or pids)"),
                        ));
                    } else if q.is_negative() {
                        errs.push(FieldError::new(p, "must be non-negative"));
                    }
                }
            }
            for (name, max) in &item.max {
                for (field, map) in [
                    ("default", &item.default),
                    ("defaultRequest", &item.default_request),
                ] {
                    if let Some(d) = map.get(name)
                        && d > max
                    {
                        errs.push(FieldError::new(
                            child(&child(&ip, field), name),
                            format!("must be at most max ({max})"),
                        ));
                    }
                }
            }
        }
        if let Some(b) = &self.spec.timeout_ms {
            errs.extend(b.validate("spec.timeoutMs"));
        }
        if let Some(b) = &self.spec.termination_grace_period_seconds {
            errs.extend(b.validate("spec.terminationGracePeriodSeconds"));
        }
        errs
    }
}
