//! The [`Resource`] trait, the table of all kinds ([`KINDS`]) and strict decoding.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::API_VERSION;
use crate::meta::ObjectMeta;
use crate::resources::{
    ConfigMap, Deployment, Endpoints, Event, Function, Job, Lease, LimitRange, Namespace, Node, Pod,
    ReplicaSet, ResourceQuota, Revision, Route, Secret, Service,
};
use crate::validation::{FieldError, ValidationErrors, validate_object_meta};

/// A typed kind of `wisp.dev/v1`.
pub trait Resource:
    Serialize + DeserializeOwned + JsonSchema + Clone + Default + Send + Sync + 'static
{
    /// `Pod`
    const KIND: &'static str;
    /// `pods`
    const PLURAL: &'static str;
    const NAMESPACED: bool;

    fn metadata(&self) -> &ObjectMeta;
    fn metadata_mut(&mut self) -> &mut ObjectMeta;

    /// Every error with its field path (`metadata.name`, `spec.containers[1].image`).
    fn validate(&self) -> Vec<FieldError>;

    /// Sets `apiVersion` and `kind` to this kind's values.
    fn set_type_meta(&mut self);

    /// A new object with `apiVersion`/`kind` filled, the given metadata, and a default
    /// spec: `Pod { spec, ..Pod::new(ObjectMeta::namespaced("default", "web")) }`.
    fn new(metadata: ObjectMeta) -> Self {
        let mut obj = Self::default();
        obj.set_type_meta();
        *obj.metadata_mut() = metadata;
        obj
    }

    fn name(&self) -> &str {
        &self.metadata().name
    }

    fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }
}

/// What the API server and CLI need to know about one kind, without its type.
pub struct KindInfo {
    pub kind: &'static str,
    pub plural: &'static str,
    /// `pod`
    pub singular: &'static str,
    /// `po`, `deploy`, ...
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// Strictly decodes a JSON object as this kind: `apiVersion` and `kind` checked, unknown
    /// fields and type errors rejected with their path, then `validate()`; on success the
    /// object re-serialized (normalised, defaults filled). Never panics.
    pub decode: fn(Value) -> Result<Value, ValidationErrors>,
    /// The kind's JSON schema; nested types land in the generator's definitions.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
}

impl std::fmt::Debug for KindInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindInfo")
            .field("kind", &self.kind)
            .field("plural", &self.plural)
            .finish_non_exhaustive()
    }
}

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

fn check_type_field(
    obj: &serde_json::Map<String, Value>,
    field: &str,
    want: &str,
    errs: &mut Vec<FieldError>,
) {
    match obj.get(field) {
        None => errs.push(FieldError::required(field)),
        Some(Value::String(s)) if s == want => {}
        Some(other) => errs.push(FieldError::new(field, format!("must be {want:?}, got {other}"))),
    }
}

/// Strict decode of one kind; see [`KindInfo::decode`].
pub fn decode_as<T: Resource>(value: Value) -> Result<Value, ValidationErrors> {
    let mut errs = Vec::new();
    let Some(obj) = value.as_object() else {
        return Err(FieldError::new("", format!("expected a JSON object for kind {}", T::KIND)).into());
    };
    check_type_field(obj, "apiVersion", API_VERSION, &mut errs);
    check_type_field(obj, "kind", T::KIND, &mut errs);
    let typed: T = match serde_path_to_error::deserialize(value) {
        Ok(t) => t,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            errs.push(FieldError::new(path, e.into_inner().to_string()));
            return Err(ValidationErrors(errs));
        }
    };
    errs.extend(typed.validate());
    if !errs.is_empty() {
        return Err(ValidationErrors(errs));
    }
    serde_json::to_value(&typed).map_err(|e| FieldError::new("", e.to_string()).into())
}

macro_rules! kinds {
    ($($ty:ident: $plural:literal, $singular:literal, [$($short:literal),*], namespaced = $ns:literal;)*) => {
        $(
            impl Resource for $ty {
                const KIND: &'static str = stringify!($ty);
                const PLURAL: &'static str = $plural;
                const NAMESPACED: bool = $ns;

                fn metadata(&self) -> &ObjectMeta {
                    &self.metadata
                }
                fn metadata_mut(&mut self) -> &mut ObjectMeta {
                    &mut self.metadata
                }
                fn validate(&self) -> Vec<FieldError> {
                    let mut errs = validate_object_meta(&self.metadata, $ns, "metadata");
                    errs.extend(self.validate_fields());
                    errs
                }
                fn set_type_meta(&mut self) {
                    self.api_version = API_VERSION.to_owned();
                    self.kind = stringify!($ty).to_owned();
                }
            }
        )*

        /// Every kind of `wisp.dev/v1`.
        pub static KINDS: &[KindInfo] = &[
            $(KindInfo {
                kind: stringify!($ty),
                plural: $plural,
                singular: $singular,
                short_names: &[$($short),*],
                namespaced: $ns,
                decode: decode_as::<$ty>,
                schema: schema_of::<$ty>,
            },)*
        ];
    };
}

kinds! {
    Namespace: "namespaces", "namespace", ["ns"], namespaced = false;
    Node: "nodes", "node", ["no"], namespaced = false;
    Lease: "leases", "lease", [], namespaced = true;
    Pod: "pods", "pod", ["po"], namespaced = true;
    ReplicaSet: "replicasets", "replicaset", ["rs"], namespaced = true;
    Deployment: "deployments", "deployment", ["deploy"], namespaced = true;
    Service: "services", "service", ["svc"], namespaced = true;
    Endpoints: "endpoints", "endpoints", ["ep"], namespaced = true;
    Route: "routes", "route", [], namespaced = true;
    Function: "functions", "function", ["fn"], namespaced = true;
    Revision: "revisions", "revision", ["rev"], namespaced = true;
    ConfigMap: "configmaps", "configmap", ["cm"], namespaced = true;
    Secret: "secrets", "secret", [], namespaced = true;
    Job: "jobs", "job", [], namespaced = true;
    ResourceQuota: "resourcequotas", "resourcequota", ["quota"], namespaced = true;
    LimitRange: "limitranges", "limitrange", ["limits"], namespaced = true;
    Event: "events", "event", ["ev"], namespaced = true;
}

/// Case-insensitive match on kind, plural, singular or short name (`Pod`, `pods`, `po`).
pub fn kind_by_name(name: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| {
        k.kind.eq_ignore_ascii_case(name)
            || k.plural.eq_ignore_ascii_case(name)
            || k.singular.eq_ignore_ascii_case(name)
            || k.short_names.iter().any(|s| s.eq_ignore_ascii_case(name))
    })
}

/// Exact match on the plural used in URLs (`pods`).
pub fn kind_by_plural(plural: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.plural == plural)
}

#[cfg(test)]
#[path = "kinds_tests.rs"]
mod tests;
