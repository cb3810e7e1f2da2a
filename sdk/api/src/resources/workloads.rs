//! Workloads over pod templates: ReplicaSet, Deployment and Job.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::IntOrString;
use super::pod::{PodTemplateSpec, RestartPolicy};
use crate::meta::{Condition, ObjectMeta};
use crate::selector::LabelSelector;
use crate::validation::{FieldError, child};

fn default_replicas() -> i32 {
    1
}

/// Checks a required, non-empty selector that matches the template's labels.
fn validate_selector_and_template(
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    path: &str,
) -> Vec<FieldError> {
    let sp = child(path, "selector");
    let mut errs = Vec::new();
    if selector.is_empty() {
        errs.push(FieldError::new(&sp, "required: a non-empty selector"));
    } else {
        let serrs = selector.validate(&sp);
        if serrs.is_empty() && !selector.matches(&template.metadata.labels) {
            errs.push(FieldError::new(
                child(path, "template.metadata.labels"),
                "selector does not match template labels",
            ));
        }
        errs.extend(serrs);
    }
    errs.extend(template.validate(&child(path, "template")));
    errs
}

/// The most replicas one object may ask for: past it a typo (or a hostile tenant) would have
/// a controller create pods without end; quotas bound what a namespace holds below this.
pub const MAX_REPLICAS: i32 = 10_000;

fn replicas(v: i32, path: &str) -> Option<FieldError> {
    if v > MAX_REPLICAS {
        return Some(FieldError::new(path, format!("must be at most {MAX_REPLICAS}")));
    }
    non_negative(Some(v), path)
}

fn non_negative(v: Option<i32>, path: &str) -> Option<FieldError> {
    v.is_some_and(|v| v < 0)
        .then(|| FieldError::new(path, "must be non-negative"))
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaSet {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ReplicaSetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReplicaSetStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ReplicaSetSpec {
    /// Desired pods; default 1.
    pub replicas: i32,
    /// Required and non-empty; must match `template.metadata.labels`.
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    /// Seconds a pod must have been Ready before it counts as available; default 0. A
    /// Deployment sets it on its ReplicaSets from its own `minReadySeconds`.
    #[serde(skip_serializing_if = "is_zero")]
    pub min_ready_seconds: i32,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

impl Default for ReplicaSetSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            selector: LabelSelector::default(),
            template: PodTemplateSpec::default(),
            min_ready_seconds: 0,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ReplicaSetStatus {
    pub replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ReplicaSet {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        errs.extend(replicas(self.spec.replicas, "spec.replicas"));
        errs.extend(non_negative(
            Some(self.spec.min_ready_seconds),
            "spec.minReadySeconds",
        ));
        errs.extend(validate_selector_and_template(
            &self.spec.selector,
            &self.spec.template,
            "spec",
        ));
        errs
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DeploymentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeploymentSpec {
    /// Desired pods; default 1.
    pub replicas: i32,
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    pub strategy: DeploymentStrategy,
    /// Old ReplicaSets kept for rollback; default 10.
    pub revision_history_limit: i32,
    /// Seconds a new pod must have been Ready before it counts as available (and a rolling
    /// update may take down the next old pod); default 0.
    pub min_ready_seconds: i32,
    pub paused: bool,
}

impl Default for DeploymentSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            selector: LabelSelector::default(),
            template: PodTemplateSpec::default(),
            strategy: DeploymentStrategy::default(),
            revision_history_limit: 10,
            min_ready_seconds: 0,
            paused: false,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeploymentStrategy {
    #[serde(rename = "type")]
    pub type_: DeploymentStrategyType,
    /// Only with `type: RollingUpdate`; defaults to 25% / 25%.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdateDeployment>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeploymentStrategyType {
    #[default]
    RollingUpdate,
    Recreate,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RollingUpdateDeployment {
    /// Pods above `replicas` during an update: a count or a percentage (`"25%"`).
    pub max_surge: IntOrString,
    /// Pods below `replicas` during an update: a count or a percentage (`"25%"`).
    pub max_unavailable: IntOrString,
}

impl Default for RollingUpdateDeployment {
    fn default() -> Self {
        Self {
            max_surge: IntOrString::String("25%".into()),
            max_unavailable: IntOrString::String("25%".into()),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeploymentStatus {
    pub replicas: i32,
    pub updated_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    pub unavailable_replicas: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Deployment {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = Vec::new();
        errs.extend(replicas(s.replicas, "spec.replicas"));
        errs.extend(validate_selector_and_template(&s.selector, &s.template, "spec"));
        errs.extend(non_negative(
            Some(s.revision_history_limit),
            "spec.revisionHistoryLimit",
        ));
        errs.extend(non_negative(Some(s.min_ready_seconds), "spec.minReadySeconds"));
        if let Some(ru) = &s.strategy.rolling_update {
            let p = "spec.strategy.rollingUpdate";
            if s.strategy.type_ == DeploymentStrategyType::Recreate {
                errs.push(FieldError::new(
                    p,
                    "may not be set when strategy type is Recreate",
                ));
            }
            errs.extend(ru.max_surge.validate_non_negative(&child(p, "maxSurge")));
            errs.extend(
                ru.max_unavailable
                    .validate_non_negative(&child(p, "maxUnavailable")),
            );
            if ru.max_surge.is_zero() && ru.max_unavailable.is_zero() {
                errs.push(FieldError::new(
                    child(p, "maxUnavailable"),
                    "may not be 0 when maxSurge is 0",
                ));
            }
            if let IntOrString::String(v) = &ru.max_unavailable
                && v.strip_suffix('%')
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n > 100)
            {
                errs.push(FieldError::new(
                    child(p, "maxUnavailable"),
                    "may not be more than 100%",
                ));
            }
        }
        errs
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Job {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: JobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct JobSpec {
    /// `restartPolicy` must be `OnFailure` or `Never`.
    pub template: PodTemplateSpec,
    /// Successful pods needed; default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completions: Option<i32>,
    /// Pods running at once; default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// Retries before the job fails; default 6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct JobStatus {
    pub active: i32,
    pub succeeded: i32,
    pub failed: i32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// Job condition types.
pub const JOB_COMPLETE: &str = "Complete";
pub const JOB_FAILED: &str = "Failed";

impl Job {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = s.template.validate("spec.template");
        if s.template.spec.restart_policy == RestartPolicy::Always {
            errs.push(FieldError::new(
                "spec.template.spec.restartPolicy",
                "must be OnFailure or Never for a Job",
            ));
        }
        errs.extend(non_negative(s.completions, "spec.completions"));
        errs.extend(s.parallelism.and_then(|p| replicas(p, "spec.parallelism")));
        errs.extend(non_negative(s.backoff_limit, "spec.backoffLimit"));
        errs
    }
}
