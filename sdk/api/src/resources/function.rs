//! Function: the serverless unit (pod template + scaling policy + route), which the
//! Function controller expands to a Deployment, a Service and a Route.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::networking::validate_host_and_prefix;
use super::pod::PodTemplateSpec;
use crate::meta::{Condition, ObjectMeta};
use crate::validation::{FieldError, parse_duration};

/// Label on a Function's revisions, their pods (and everything else it makes).
pub const FUNCTION_LABEL: &str = "wisp.dev/function";
/// Most entries of `spec.traffic`.
pub const MAX_TRAFFIC_TARGETS: usize = 8;
/// Longest Function name: its revisions' names (`<name>-00001`) label their pods, and a label
/// value is at most 63 characters.
pub const MAX_FUNCTION_NAME: usize = 57;

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
    /// How requests split between revisions (percents summing to 100) and which revisions
    /// get a URL of their own (`tag`). Empty: all of it to the latest revision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

/// A share of a Function's requests: to a named revision, or to whichever is the latest.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TrafficTarget {
    /// A revision of this Function (`hello-00002`); exactly one of this and `latestRevision`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// `true`: the latest revision, whichever it is when the template changes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub latest_revision: bool,
    /// 0–100; the targets' percents sum to 100.
    pub percent: u32,
    /// A URL of its own for this target: `<tag>.<function host>`, whatever its percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// An immutable snapshot of a Function's pod template, made by the Function controller each
/// time the template changes: `<function>-00001`, `-00002`, … Each has its own Deployment and
/// Service of the same name, scaled (and to zero) on its own traffic.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Revision {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RevisionSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RevisionStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RevisionSpec {
    /// The Function's `spec.template` when this revision was made.
    pub template: PodTemplateSpec,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RevisionStatus {
    pub ready_replicas: i32,
    pub desired_replicas: i32,
    /// The percent of its Function's requests it gets now.
    pub percent: u32,
    /// Whether it gets requests (a percent or a tag) or is coming up to take the latest
    /// revision's share; one that does not goes to zero once idle.
    pub routed: bool,
    /// The replicas the autoscaler keeps it within (the Function's, shared out by percent).
    pub min_scale: u32,
    pub max_scale: u32,
    /// RFC 3339 time of the last request the ingress saw for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_request_time: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The number of revision `name` of Function `function` (`hello-00012` → 12).
pub fn revision_number(function: &str, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(function)?.strip_prefix('-')?;
    (digits.len() >= 5 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// The name of revision `number` of Function `function`.
pub fn revision_name(function: &str, number: u32) -> String {
    format!("{function}-{number:05}")
}

impl Revision {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        self.spec.template.validate("spec.template")
    }
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

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
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
    /// The newest revision, and the newest whose pods came up (or that is at zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_created_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision: Option<String>,
    /// `spec.traffic` resolved: the revision each target is, and the URL of each tag.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficStatus>,
    /// Its traffic over the last minute, every revision and node together, as the nodes'
    /// ingresses counted it (the autoscaler writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<FunctionMetrics>,
}

/// A Function's traffic over a window (the last minute, or since the ingresses first saw it).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FunctionMetrics {
    /// Seconds the figures cover.
    pub window_seconds: u32,
    pub requests_per_second: f64,
    /// Answers of status 500 and above, per second.
    pub errors_per_second: f64,
    /// Median time to the response head, in milliseconds (none without requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Wakes from zero in the window.
    pub cold_starts: u64,
    /// Requests in flight at the last reading.
    pub in_flight: u64,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TrafficStatus {
    pub revision_name: String,
    pub percent: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub latest_revision: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Function {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = s.template.validate("spec.template");
        if self.metadata.name.len() > MAX_FUNCTION_NAME {
            errs.push(FieldError::new(
                "metadata.name",
                format!(
                    "a Function's name is at most {MAX_FUNCTION_NAME} characters (its revisions are <name>-00001)"
                ),
            ));
        }
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
        errs.extend(self.validate_traffic());
        errs
    }

    fn validate_traffic(&self) -> Vec<FieldError> {
        let traffic = &self.spec.traffic;
        let mut errs = Vec::new();
        if traffic.is_empty() {
            return errs;
        }
        if traffic.len() > MAX_TRAFFIC_TARGETS {
            errs.push(FieldError::new(
                "spec.traffic",
                format!("at most {MAX_TRAFFIC_TARGETS} targets"),
            ));
        }
        let wildcard = self
            .spec
            .route
            .as_ref()
            .and_then(|r| r.host.as_deref())
            .is_some_and(|h| h.starts_with("*."));
        let mut tags = std::collections::BTreeSet::new();
        for (i, t) in traffic.iter().enumerate() {
            let path = crate::validation::index("spec.traffic", i);
            match (&t.revision_name, t.latest_revision) {
                (Some(_), true) | (None, false) => errs.push(FieldError::new(
                    path.clone(),
                    "needs exactly one of revisionName and latestRevision: true",
                )),
                (Some(r), false) if revision_number(&self.metadata.name, r).is_none() => {
                    errs.push(FieldError::new(
                        crate::validation::child(&path, "revisionName"),
                        format!(
                            "{r:?} is not a revision of {:?} (they are named {:?})",
                            self.metadata.name,
                            revision_name(&self.metadata.name, 1)
                        ),
                    ));
                }
                _ => {}
            }
            if t.percent > 100 {
                errs.push(FieldError::new(
                    crate::validation::child(&path, "percent"),
                    "must be at most 100",
                ));
            }
            if let Some(tag) = &t.tag {
                let tp = crate::validation::child(&path, "tag");
                errs.extend(crate::validation::validate_dns1123_label(tag, &tp));
                if wildcard {
                    errs.push(FieldError::new(
                        tp.clone(),
                        "a tag answers on <tag>.<the route's host>, which a wildcard host (*.…) does not make",
                    ));
                }
                if !tags.insert(tag.clone()) {
                    errs.push(FieldError::new(tp, format!("tag {tag:?} is used twice")));
                }
            }
        }
        let sum: u32 = traffic.iter().map(|t| t.percent).sum();
        if sum != 100 {
            errs.push(FieldError::new(
                "spec.traffic",
                format!("the percents sum to {sum}; they must sum to 100"),
            ));
        }
        errs
    }
}
