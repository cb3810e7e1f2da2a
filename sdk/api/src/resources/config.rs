//! Configuration objects: ConfigMap and Secret, injected as env vars or files.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::validation::{FieldError, child, is_valid_base64, validate_config_key};

/// Total size allowed for the data of one ConfigMap or Secret.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMap {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Base64-encoded binary values; keys must not repeat those of `data`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl ConfigMap {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut size = 0;
        for (k, v) in &self.data {
            errs.extend(validate_config_key(k, "data"));
            size += k.len() + v.len();
        }
        for (k, v) in &self.binary_data {
            errs.extend(validate_config_key(k, "binaryData"));
            if self.data.contains_key(k) {
                errs.push(FieldError::new(
                    child("binaryData", k),
                    "duplicate of a key in data",
                ));
            }
            if !is_valid_base64(v) {
                errs.push(FieldError::new(child("binaryData", k), "must be base64-encoded"));
            }
            size += k.len() + v.len();
        }
        if size > MAX_DATA_BYTES {
            errs.push(FieldError::new("data", "may not exceed 1 MiB in total"));
        }
        errs
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Base64-encoded values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Plain-text values, merged into `data` by the server on write (write-only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    /// Default `Opaque`.
    #[serde(rename = "type", default = "default_secret_type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

fn default_secret_type() -> String {
    "Opaque".into()
}

impl Default for Secret {
    fn default() -> Self {
        Self {
            api_version: String::new(),
            kind: String::new(),
            metadata: ObjectMeta::default(),
            data: BTreeMap::new(),
            string_data: BTreeMap::new(),
            type_: default_secret_type(),
            immutable: None,
        }
    }
}

impl Secret {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut size = 0;
        for (k, v) in &self.data {
            errs.extend(validate_config_key(k, "data"));
            if !is_valid_base64(v) {
                errs.push(FieldError::new(child("data", k), "must be base64-encoded"));
            }
            size += k.len() + v.len();
        }
        for (k, v) in &self.string_data {
            errs.extend(validate_config_key(k, "stringData"));
            // As stored: folded into `data`, base64.
            size += k.len() + v.len().div_ceil(3) * 4;
        }
        if self.type_.is_empty() {
            errs.push(FieldError::required("type"));
        }
        if self.type_ == super::pod::SECRET_TYPE_TLS {
            for key in ["tls.crt", "tls.key"] {
                if !self.data.contains_key(key) && !self.string_data.contains_key(key) {
                    errs.push(FieldError::new(
                        child("data", key),
                        "required: a Secret of type tls holds tls.crt and tls.key (PEM)",
                    ));
                }
            }
        }
        if self.type_ == super::pod::SECRET_TYPE_REGISTRY {
            for key in ["server", "username", "password"] {
                if !self.data.contains_key(key) && !self.string_data.contains_key(key) {
                    errs.push(FieldError::new(
                        child("data", key),
                        "required: a Secret of type registry holds server, username and password",
                    ));
                }
            }
        }
        if size > MAX_DATA_BYTES {
            errs.push(FieldError::new("data", "may not exceed 1 MiB in total"));
        }
        errs
    }
}
