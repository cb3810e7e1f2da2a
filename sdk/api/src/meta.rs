//! Object metadata, owner references, conditions and list metadata shared by every kind.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The annotation that carries a cold start's W3C trace context (a `traceparent`) from the
/// Deployment the activator wakes to the ReplicaSet and pods made for it, so the controllers,
/// the scheduler and the node record their part of the start in the request's trace.
pub const TRACEPARENT_ANNOTATION: &str = "wisp.dev/traceparent";

/// Whether `v` is a W3C `traceparent` of version `00`: `00-<32 hex>-<16 hex>-<2 hex>`, lower
/// case, ids not all zero.
pub fn is_traceparent(v: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let parts: Vec<&str> = v.split('-').collect();
    matches!(parts.as_slice(), ["00", trace, span, flags]
        if trace.len() == 32 && span.len() == 16 && flags.len() == 2
            && hex(trace) && hex(span) && hex(flags)
            && trace.bytes().any(|b| b != b'0') && span.bytes().any(|b| b != b'0'))
}

/// Metadata every persisted object carries. The server owns `uid`, `resourceVersion`,
/// `generation`, `creationTimestamp` and `deletionTimestamp`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// DNS-1123 subdomain, unique per kind within its namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Opaque store revision of the last write; compare-and-swap token on update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Bumped by the server when `spec` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// RFC 3339 timestamp; set when a graceful delete has begun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

impl ObjectMeta {
    /// Metadata with just a name (cluster-scoped objects).
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Metadata with a namespace and a name.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: Some(namespace.into()),
            ..Self::default()
        }
    }

    /// The owner reference marked `controller: true`, if any.
    pub fn controller_ref(&self) -> Option<&OwnerReference> {
        self.owner_references.iter().find(|r| r.controller == Some(true))
    }
}

/// Points at the object that owns this one; garbage collection follows these.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
}

pub const CONDITION_TRUE: &str = "True";
pub const CONDITION_FALSE: &str = "False";
pub const CONDITION_UNKNOWN: &str = "Unknown";

/// A Kubernetes-style status condition.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type", default)]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition with status `True` when `ok`, `False` otherwise.
    pub fn new(
        type_: impl Into<String>,
        ok: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        Self {
            type_: type_.into(),
            status: if ok { CONDITION_TRUE } else { CONDITION_FALSE }.to_owned(),
            reason: Some(reason.into()),
            message: (!message.is_empty()).then_some(message),
            ..Self::default()
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == CONDITION_TRUE
    }
}

/// The condition of the given type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present with status `True`.
pub fn condition_is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(Condition::is_true)
}

/// Inserts or replaces the condition of `new.type_`. `lastTransitionTime` is kept from the
/// old condition when the status did not change, else set to `now` (an RFC 3339 string the
/// caller supplies; this crate reads no clock). Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: &str) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                Some(now.to_owned())
            };
            if *old == new {
                return false;
            }
            *old = new;
            true
        }
        None => {
            new.last_transition_time = Some(now.to_owned());
            conditions.push(new);
            true
        }
    }
}

/// Metadata of a list response.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListMeta {
    /// Store revision the list was read at; start a watch from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Set when the list was cut at `limit`: pass it as `continue` for the next page.
    #[serde(rename = "continue", default, skip_serializing_if = "Option::is_none")]
    pub continue_: Option<String>,
    /// Items after this page (when the list was cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_item_count: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_w3c_version_00_only() {
        assert!(is_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
        ] {
            assert!(!is_traceparent(bad), "{bad}");
        }
    }

    #[test]
    fn meta_skips_empty_fields() {
        let m = ObjectMeta::namespaced("default", "web");
        let v = serde_json::to_value(&m).ok();
        assert_eq!(
            v,
            Some(serde_json::json!({"name": "web", "namespace": "default"}))
        );
    }

    #[test]
    fn set_condition_keeps_transition_time() {
        let mut cs = Vec::new();
        assert!(set_condition(
            &mut cs,
            Condition::new("Ready", true, "Up", ""),
            "t1"
        ));
        assert!(!set_condition(
            &mut cs,
            Condition::new("Ready", true, "Up", ""),
            "t2"
        ));
        assert!(set_condition(
            &mut cs,
            Condition::new("Ready", true, "Other", "m"),
            "t3"
        ));
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("t1"));
        assert!(set_condition(
            &mut cs,
            Condition::new("Ready", false, "Down", ""),
            "t4"
        ));
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("t4"));
        assert!(!condition_is_true(&cs, "Ready"));
    }
}
