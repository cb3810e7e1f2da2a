//! Pods: containers scheduled together on one node, their volumes, and their status.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::container::Container;
use crate::meta::{Condition, ObjectMeta};
use crate::quantity::Quantity;
use crate::validation::{
    FieldError, child, index, validate_dns1123_label, validate_dns1123_subdomain, validate_labels,
    validate_template_meta,
};

/// Pod condition types.
pub const POD_SCHEDULED: &str = "PodScheduled";
pub const POD_READY: &str = "Ready";
pub const CONTAINERS_READY: &str = "ContainersReady";

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pod {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

impl Pod {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        self.spec.validate("spec")
    }

    pub fn phase(&self) -> PodPhase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }

    /// Whether the pod's `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| crate::meta::condition_is_true(&s.conditions, POD_READY))
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PodSpec {
    /// At least one.
    pub containers: Vec<Container>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Set by the scheduler when the pod is bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    pub restart_policy: RestartPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Secrets of type `registry` (keys `server`, `username`, `password`) the node logs in to
    /// registries with: for `wasm: oci://…` components and for images.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// An object of the same namespace, by name.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LocalObjectReference {
    pub name: String,
}

/// The Secret type of registry credentials (`imagePullSecrets`).
pub const SECRET_TYPE_REGISTRY: &str = "registry";
/// The Secret type of a certificate and its key (`tls.crt`, `tls.key`: PEM), for HTTPS Routes.
pub const SECRET_TYPE_TLS: &str = "tls";

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// A named volume; exactly one source.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Volume {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConfigMapVolumeSource {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SecretVolumeSource {
    pub secret_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EmptyDirVolumeSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

impl PodSpec {
    /// Node runtimes the pod needs (`"wasm"`, `"docker"`).
    pub fn required_runtimes(&self) -> BTreeSet<&'static str> {
        self.containers.iter().map(Container::runtime).collect()
    }

    /// Sum over containers of each resource's request (or limit when no request is set).
    pub fn total_requests(&self) -> BTreeMap<String, Quantity> {
        let mut total: BTreeMap<String, Quantity> = BTreeMap::new();
        for c in &self.containers {
            let names: BTreeSet<&String> = c
                .resources
                .requests
                .keys()
                .chain(c.resources.limits.keys())
                .collect();
            for name in names {
                if let Some(q) = c.resources.effective_request(name) {
                    let sum = total.get(name).map_or(q, |t| t.saturating_add(&q));
                    total.insert(name.clone(), sum);
                }
            }
        }
        total
    }

    /// Field errors of this pod spec at `path` (`spec`, `spec.template.spec`).
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let cpath = child(path, "containers");
        if self.containers.is_empty() {
            errs.push(FieldError::new(&cpath, "required: at least one container"));
        }
        for (i, r) in self.image_pull_secrets.iter().enumerate() {
            let rp = index(&child(path, "imagePullSecrets"), i);
            errs.extend(validate_dns1123_subdomain(&r.name, &child(&rp, "name")));
        }
        // Only the node's pulls of `wasm: oci://` components use them; Docker's image pulls
        // do not yet, so a pod of images is refused rather than pulled without them.
        if !self.image_pull_secrets.is_empty() && self.containers.iter().any(|c| c.image.is_some()) {
            errs.push(FieldError::not_supported(
                child(path, "imagePullSecrets"),
                "registry credentials for images (Docker); they apply to wasm: oci:// components",
            ));
        }
        let mut volume_names = BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let vp = index(&child(path, "volumes"), i);
            errs.extend(validate_dns1123_label(&v.name, &child(&vp, "name")));
            if !volume_names.insert(v.name.as_str()) {
                errs.push(FieldError::new(
                    child(&vp, "name"),
                    format!("duplicate volume name {:?}", v.name),
                ));
            }
            let sources = usize::from(v.config_map.is_some())
                + usize::from(v.secret.is_some())
                + usize::from(v.empty_dir.is_some());
            if sources != 1 {
                errs.push(FieldError::new(
                    &vp,
                    "exactly one of configMap, secret or emptyDir must be set",
                ));
            }
            if let Some(cm) = &v.config_map {
                errs.extend(validate_dns1123_subdomain(
                    &cm.name,
                    &child(&child(&vp, "configMap"), "name"),
                ));
            }
            if v.empty_dir.as_ref().is_some_and(|e| e.size_limit.is_some()) {
                errs.push(FieldError::not_supported(
                    child(&child(&vp, "emptyDir"), "sizeLimit"),
                    "no runtime bounds an emptyDir's size; remove it",
                ));
            }
            if let Some(s) = &v.secret {
                errs.extend(validate_dns1123_subdomain(
                    &s.secret_name,
                    &child(&child(&vp, "secret"), "secretName"),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, c) in self.containers.iter().enumerate() {
            let p = index(&cpath, i);
            errs.extend(c.validate(&p));
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                errs.push(FieldError::new(
                    child(&p, "name"),
                    format!("duplicate container name {:?}", c.name),
                ));
            }
            for (j, m) in c.volume_mounts.iter().enumerate() {
                if !volume_names.contains(m.name.as_str()) {
                    errs.push(FieldError::new(
                        child(&index(&child(&p, "volumeMounts"), j), "name"),
                        format!("no volume named {:?} in {}", m.name, child(path, "volumes")),
                    ));
                }
            }
        }
        let runtimes: BTreeSet<&str> = self
            .containers
            .iter()
            .filter(|c| {
                super::container::is_set(c.image.as_ref()) != super::container::is_set(c.wasm.as_ref())
            })
            .map(super::Container::runtime)
            .collect();
        if runtimes.len() > 1 {
            errs.push(FieldError::new(
                &cpath,
                "a pod cannot mix Wasm (wasm:) and Docker (image:) containers yet: \
                 put them in separate pods and connect them through a Service",
            ));
        }
        if let Some(n) = &self.node_name {
            errs.extend(validate_dns1123_subdomain(n, &child(path, "nodeName")));
        }
        errs.extend(validate_labels(&self.node_selector, &child(path, "nodeSelector")));
        if self.termination_grace_period_seconds.is_some_and(|s| s < 0) {
            errs.push(FieldError::new(
                child(path, "terminationGracePeriodSeconds"),
                "must be non-negative",
            ));
        }
        errs
    }
}

/// Labels/annotations plus a pod spec, stamped out by ReplicaSets, Deployments, Jobs and
/// Functions. `metadata.name` is optional.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PodTemplateSpec {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

impl PodTemplateSpec {
    /// Field errors at `path` (`spec.template`).
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errs = validate_template_meta(&self.metadata, &child(path, "metadata"));
        errs.extend(self.spec.validate(&child(path, "spec")));
        errs
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    /// `Succeeded` or `Failed`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PodStatus {
    pub phase: PodPhase,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Node the pod runs on, as reported by its agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `hostIP`, as Kubernetes spells it.
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// `podIP`, as Kubernetes spells it.
    #[serde(rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// Port on the host where the pod serves HTTP, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ContainerStatus {
    pub name: String,
    pub ready: bool,
    pub restart_count: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_state: Option<ContainerState>,
    /// Runtime id (Docker container id, or a wasm instance id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// At most one of the members is set.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ContainerState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<ContainerStateWaiting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<ContainerStateRunning>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminated: Option<ContainerStateTerminated>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ContainerStateWaiting {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ContainerStateRunning {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ContainerStateTerminated {
    pub exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}
