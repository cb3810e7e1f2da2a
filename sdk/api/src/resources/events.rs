//! Event: what happened to an object (a pod that cannot be scheduled, a container backing off,
//! a Function woken from zero), Kubernetes-shaped (`core/v1` Event). Written by the cluster's
//! components, never by tenants; one object per (object, reason, type, component), its
//! `count` and `lastTimestamp` raised on each repeat; deleted after a TTL.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ObjectReference;
use crate::meta::ObjectMeta;
use crate::validation::FieldError;

/// The longest `reason` (a CamelCase word such as `FailedScheduling`).
pub const EVENT_REASON_MAX: usize = 128;
/// The longest `message`, in bytes; recorders cut longer ones.
pub const EVENT_MESSAGE_MAX: usize = 1024;
/// The longest `reportingComponent` and `reportingInstance`.
pub const EVENT_REPORTER_MAX: usize = 128;

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Event {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The object this event is about; in the event's own namespace.
    #[serde(default)]
    pub involved_object: ObjectReference,
    /// Why, as one CamelCase word: `FailedScheduling`, `BackOff`, `ColdStart`.
    #[serde(default)]
    pub reason: String,
    /// What happened, for people.
    #[serde(default)]
    pub message: String,
    #[serde(default, rename = "type")]
    pub type_: EventSeverity,
    /// How many times it happened between `firstTimestamp` and `lastTimestamp`.
    #[serde(default)]
    pub count: i32,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<String>,
    /// RFC 3339; the TTL counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<String>,
    /// Which component saw it: `scheduler`, `node-agent`, `ingress`, `deployment-controller`.
    #[serde(default)]
    pub reporting_component: String,
    /// Which instance of it: a node's name for a node's components.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reporting_instance: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EventSeverity {
    #[default]
    Normal,
    Warning,
}

impl EventSeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// The name of the one Event about `object` for `reason` and `severity` from `component` of
/// `instance`: the object's name and a 64-bit FNV-1a hash of all of it (stable across builds),
/// so every repeat counts on the same Event, and two reporters never share one. The API
/// server holds a node to this name.
pub fn event_name(
    object: &ObjectReference,
    reason: &str,
    severity: EventSeverity,
    component: &str,
    instance: &str,
) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [
        object.kind.as_str(),
        object.name.as_str(),
        object.uid.as_deref().unwrap_or_default(),
        reason,
        severity.as_str(),
        component,
        instance,
    ] {
        for b in part.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut prefix: String = object.name.chars().take(253 - 17).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}.{h:016x}")
}

/// Whether `reason` is one CamelCase word of ASCII letters and digits.
fn reason_problem(reason: &str) -> Option<String> {
    if reason.is_empty() {
        return Some("required".into());
    }
    if reason.len() > EVENT_REASON_MAX {
        return Some(format!("must be at most {EVENT_REASON_MAX} characters"));
    }
    let mut chars = reason.chars();
    let first_upper = chars.next().is_some_and(|c| c.is_ascii_uppercase());
    if !first_upper || !reason.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Some(format!(
            "{reason:?} must be one CamelCase word of ASCII letters and digits (e.g. BackOff)"
        ));
    }
    None
}

impl Event {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let o = &self.involved_object;
        if o.kind.is_empty() {
            errs.push(FieldError::required("involvedObject.kind"));
        } else {
            match crate::kind_by_name(&o.kind) {
                Some(k) if k.kind == o.kind && k.namespaced => {}
                Some(k) if k.kind == o.kind => errs.push(FieldError::new(
                    "involvedObject.kind",
                    format!(
                        "{} is cluster-scoped; events are kept for namespaced objects only",
                        o.kind
                    ),
                )),
                _ => errs.push(FieldError::new(
                    "involvedObject.kind",
                    format!("{:?} is not a kind of {}", o.kind, crate::API_VERSION),
                )),
            }
        }
        if o.name.is_empty() {
            errs.push(FieldError::required("involvedObject.name"));
        } else {
            errs.extend(crate::validation::validate_dns1123_subdomain(
                &o.name,
                "involvedObject.name",
            ));
        }
        if let (Some(theirs), Some(ours)) = (&o.namespace, &self.metadata.namespace)
            && theirs != ours
        {
            errs.push(FieldError::new(
                "involvedObject.namespace",
                format!(
                    "{theirs:?} is not the event's namespace ({ours:?}): an event lives beside its object"
                ),
            ));
        }
        if let Some(why) = reason_problem(&self.reason) {
            errs.push(FieldError::new("reason", why));
        }
        if self.message.chars().any(char::is_control) {
            errs.push(FieldError::new(
                "message",
                "must not contain control characters (newlines, escapes): it is printed to terminals",
            ));
        }
        if self.message.len() > EVENT_MESSAGE_MAX {
            errs.push(FieldError::new(
                "message",
                format!("must be at most {EVENT_MESSAGE_MAX} bytes"),
            ));
        }
        if self.count < 1 {
            errs.push(FieldError::new("count", "must be at least 1"));
        }
        if self.reporting_component.is_empty() {
            errs.push(FieldError::required("reportingComponent"));
        }
        for (path, v) in [
            ("reportingComponent", &self.reporting_component),
            ("reportingInstance", &self.reporting_instance),
        ] {
            if v.len() > EVENT_REPORTER_MAX {
                errs.push(FieldError::new(
                    path,
                    format!("must be at most {EVENT_REPORTER_MAX} characters"),
                ));
            } else if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
                errs.push(FieldError::new(
                    path,
                    "must be one word without control characters",
                ));
            }
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resource;

    fn event() -> Event {
        let mut e = Event::new(ObjectMeta::namespaced("team-a", "web.1"));
        e.involved_object = ObjectReference {
            kind: "Pod".into(),
            namespace: Some("team-a".into()),
            name: "web".into(),
            ..ObjectReference::default()
        };
        e.reason = "BackOff".into();
        e.count = 1;
        e.reporting_component = "node-agent".into();
        e
    }

    fn paths(e: &Event) -> Vec<String> {
        e.validate().into_iter().map(|f| f.path).collect()
    }

    #[test]
    fn an_event_names_a_namespaced_object_beside_it_with_a_camelcase_reason() {
        assert!(paths(&event()).is_empty(), "{:?}", event().validate());
        let mut e = event();
        e.involved_object.namespace = Some("team-b".into());
        e.reason = "back off".into();
        e.count = 0;
        e.message = "x".repeat(EVENT_MESSAGE_MAX + 1);
        e.reporting_component.clear();
        assert_eq!(
            paths(&e),
            [
                "involvedObject.namespace",
                "reason",
                "message",
                "count",
                "reportingComponent"
            ]
        );
        let mut e = event();
        e.message = "red\u{1b}[31m text\nforged line".into();
        e.involved_object.name = "Not A Name".into();
        assert_eq!(paths(&e), ["involvedObject.name", "message"]);
        let name = |instance: &str, component: &str, reason: &str, severity| {
            event_name(&event().involved_object, reason, severity, component, instance)
        };
        let a = name("n1", "node-agent", "BackOff", EventSeverity::Warning);
        assert_eq!(a, name("n1", "node-agent", "BackOff", EventSeverity::Warning));
        for other in [
            name("n2", "node-agent", "BackOff", EventSeverity::Warning),
            name("n1", "ingress", "BackOff", EventSeverity::Warning),
            name("n1", "node-agent", "Started", EventSeverity::Warning),
            name("n1", "node-agent", "BackOff", EventSeverity::Normal),
        ] {
            assert_ne!(a, other, "each reporter and reason has its own Event");
        }
        assert!(a.starts_with("web."), "{a}");
        for (kind, ok) in [
            ("Node", false),
            ("Nope", false),
            ("pods", false),
            ("Function", true),
        ] {
            let mut e = event();
            e.involved_object.kind = kind.into();
            assert_eq!(paths(&e).is_empty(), ok, "{kind}");
        }
    }
}
