//! Envelopes around objects: lists, watch events, and the schema-less [`DynamicObject`]
//! the API server handles every kind through.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::API_VERSION;
use crate::kinds::Resource;
use crate::meta::{ListMeta, ObjectMeta};

/// `{"apiVersion":"wisp.dev/v1","kind":"PodList","metadata":{...},"items":[...]}`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<T>,
}

impl<T: Resource> List<T> {
    /// A `<Kind>List` read at `resource_version`.
    pub fn new(items: Vec<T>, resource_version: Option<String>) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: format!("{}List", T::KIND),
            metadata: ListMeta {
                resource_version,
                ..ListMeta::default()
            },
            items,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
    /// Carries only `metadata.resourceVersion`: progress of the stream.
    Bookmark,
    /// The object is a `Status` (e.g. 410 Gone when the revision was compacted).
    Error,
}

/// One line of a watch stream: `{"type":"ADDED","object":{...}}`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct WatchEvent<T> {
    #[serde(rename = "type")]
    pub type_: EventType,
    pub object: T,
}

/// Any kind, with typed metadata and the rest (`spec`, `status`, `data`, `subsets`, ...)
/// kept as JSON. Not strict: decode with [`crate::KindInfo::decode`] first.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DynamicObject {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(flatten)]
    pub body: Map<String, Value>,
}

impl DynamicObject {
    pub fn from_typed<T: Resource>(obj: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_value(obj).and_then(serde_json::from_value)
    }

    pub fn to_typed<T: Resource>(&self) -> Result<T, serde_json::Error> {
        serde_json::to_value(self).and_then(serde_json::from_value)
    }

    pub fn spec(&self) -> Option<&Value> {
        self.body.get("spec")
    }

    pub fn status(&self) -> Option<&Value> {
        self.body.get("status")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Pod;
    use serde_json::json;

    #[test]
    fn watch_event_and_list_shapes() {
        let ev = WatchEvent {
            type_: EventType::Added,
            object: json!({"a": 1}),
        };
        assert_eq!(
            serde_json::to_value(&ev).ok(),
            Some(json!({"type": "ADDED", "object": {"a": 1}}))
        );
        let list: List<Pod> = List::new(vec![], Some("7".into()));
        assert_eq!(
            serde_json::to_value(&list).ok(),
            Some(
                json!({"apiVersion": "wisp.dev/v1", "kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": []})
            )
        );
    }

    #[test]
    fn dynamic_object_keeps_body() {
        let v = json!({"apiVersion": "wisp.dev/v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
        let d: Option<DynamicObject> = serde_json::from_value(v.clone()).ok();
        assert_eq!(d.as_ref().map(|d| d.metadata.name.as_str()), Some("c"));
        assert_eq!(
            d.as_ref().and_then(|d| d.body.get("data")),
            Some(&json!({"k": "v"}))
        );
        assert_eq!(d.and_then(|d| serde_json::to_value(d).ok()), Some(v));
    }
}
