//! Function: the serverless unit (pod template + scaling policy + route), which the
//! Function controller expands to a Deployment, a Service and a Route.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::networking::validate_host_and_prefix;
use super::pod::PodTemplateSpec;
use crate::meta::{Condition, ObjectMeta};
use crate::validation::{FieldError, parse_duration};

/// Default for `scaling.scaleToZeroAfter`.
pub const DEFAULT_SCALE_TO_ZERO_AFTER: &str = "30s";

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Function {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: FunctionSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FunctionStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FunctionSpec {
    /// Pods serving the function (`template.spec.containers`).
    pub template: PodTemplateSpec,
    pub scaling: ScalingSpec,
    /// Where the ingress exposes the function; by default on every host under `/<name>`
    /// (decided by the Function controller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<FunctionRoute>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ScalingSpec {
    /// Default 0 (scale to zero when idle).
    pub min_scale: u32,
    /// Default 10; at least `minScale`.
    pub max_scale: u32,
    /// In-flight requests per pod the autoscaler aims for; unset: the autoscaler's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_concurrency: Option<u32>,
    /// Idle time before scaling to zero: `30s`, `5m`, `1h30m`. Default `30s`.
    pub scale_to_zero_after: String,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_scale: 0,
            max_scale: 10,
            target_concurrency: None,
            scale_to_zero_after: DEFAULT_SCALE_TO_ZERO_AFTER.into(),
        }
    }
}

impl ScalingSpec {
    /// `scaleToZeroAfter` as a duration (30 s when it does not parse; validation rejects that).
    pub fn scale_to_zero_after_duration(&self) -> Duration {
        parse_duration(&self.scale_to_zero_after).unwrap_or(Duration::from_secs(30))
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FunctionRoute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Default `/`; must start with `/`.
    pub path_prefix: String,
}

impl Default for FunctionRoute {
    fn default() -> Self {
        Self {
            host: None,
            path_prefix: "/".into(),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FunctionStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub ready_replicas: i32,
    pub desired_replicas: i32,
    /// RFC 3339 time of the last request the ingress saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_request_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Function {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = s.template.validate("spec.template");
        let sc = &s.scaling;
        if sc.max_scale > crate::resources::workloads::MAX_REPLICAS.unsigned_abs() {
            errs.push(FieldError::new(
                "spec.scaling.maxScale",
                format!("must be at most {}", crate::resources::workloads::MAX_REPLICAS),
            ));
        } else if sc.max_scale == 0 {
            errs.push(FieldError::new("spec.scaling.maxScale", "must be greater than 0"));
        } else if sc.max_scale < sc.min_scale {
            errs.push(FieldError::new(
                "spec.scaling.maxScale",
                format!("must be greater than or equal to minScale ({})", sc.min_scale),
            ));
        }
        if sc.target_concurrency == Some(0) {
            errs.push(FieldError::new(
                "spec.scaling.targetConcurrency",
                "must be greater than 0",
            ));
        }
        if let Err(e) = parse_duration(&sc.scale_to_zero_after) {
            errs.push(FieldError::new("spec.scaling.scaleToZeroAfter", e));
        }
        if let Some(r) = &s.route {
            errs.extend(validate_host_and_prefix(
                r.host.as_ref(),
                &r.path_prefix,
                "spec.route",
            ));
        }
        errs
    }
}
