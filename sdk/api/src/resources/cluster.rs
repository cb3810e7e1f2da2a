//! Cluster objects: Namespace and Node (cluster-scoped) and Lease (heartbeats and leader
//! election).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta};
use crate::quantity::Quantity;
use crate::validation::{FieldError, child, index, validate_dns1123_label};

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<NamespaceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NamespaceStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NamespaceSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// DNS domains whose hosts (the domain and every name under it) this namespace's Routes
    /// may claim, besides `<namespace>.<cluster domain>`. Set by the cluster admin.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route_domains: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NamespaceStatus {
    pub phase: NamespacePhase,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NamespacePhase {
    #[default]
    Active,
    Terminating,
}

impl Namespace {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        // Namespace names end up in DNS labels and network names: stricter than subdomains.
        let mut errs = Vec::new();
        let name = &self.metadata.name;
        if name.contains('.') || name.len() > 63 {
            errs.extend(validate_dns1123_label(name, "metadata.name"));
        }
        if let Some(spec) = &self.spec {
            for (i, f) in spec.finalizers.iter().enumerate() {
                if f.is_empty() {
                    errs.push(FieldError::required(index("spec.finalizers", i)));
                } else {
                    errs.push(FieldError::not_supported(
                        index("spec.finalizers", i),
                        "nothing waits on a namespace's finalizers: deleting a namespace deletes \
                         everything in it at once",
                    ));
                }
            }
            for (i, d) in spec.route_domains.iter().enumerate() {
                errs.extend(crate::validation::validate_dns1123_subdomain(
                    d,
                    &index("spec.routeDomains", i),
                ));
            }
        }
        errs
    }
}

/// Runtime names a node can offer and a container can need.
pub const RUNTIME_WASM: &str = "wasm";
pub const RUNTIME_DOCKER: &str = "docker";

/// Node condition types.
pub const NODE_READY: &str = "Ready";
/// Node condition: the Docker daemon answers (absent on nodes without the docker runtime).
pub const NODE_DOCKER_READY: &str = "DockerReady";

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeSpec {
    /// No new pods are scheduled here (cordon).
    pub unschedulable: bool,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeStatus {
    /// Total resources (`cpu`, `memory`, `pods`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    /// What pods may use (capacity minus reservations).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub allocatable: BTreeMap<String, Quantity>,
    /// Runtimes available now: `wasm`, `docker`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// Base URL of this node's ingress, for reaching its pods from other nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_url: Option<String>,
    /// Base URL of this node's agent, HTTPS: container logs for the API server, requests
    /// other nodes' ingresses forward to this node's pods, and the ingress statistics the
    /// autoscaler reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
    /// The CA (PEM) the node made for itself, which signs its agent's certificate: whoever
    /// reaches `agentUrl` trusts it for this node only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_ca: Option<String>,
    /// Version of the node agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

/// The most a Node's `status.agentCa` may hold: one certificate, PEM (a node's CA is ~600).
pub const AGENT_CA_MAX: usize = 8192;

impl Node {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(st) = &self.status {
            for (field, map) in [("capacity", &st.capacity), ("allocatable", &st.allocatable)] {
                for (k, q) in map {
                    if q.is_negative() {
                        errs.push(FieldError::new(
                            child(&child("status", field), k),
                            "must be non-negative",
                        ));
                    }
                }
            }
            if let Some(ca) = &st.agent_ca {
                let certs = ca.matches("-----BEGIN CERTIFICATE-----").count();
                if ca.len() > AGENT_CA_MAX || certs != 1 {
                    errs.push(FieldError::new(
                        "status.agentCa",
                        format!(
                            "must be one PEM certificate of at most {AGENT_CA_MAX} bytes (the \
                             node's own CA), not {certs} in {} bytes",
                            ca.len()
                        ),
                    ));
                }
            }
            for (i, r) in st.runtimes.iter().enumerate() {
                if r != RUNTIME_WASM && r != RUNTIME_DOCKER {
                    errs.push(FieldError::new(
                        index("status.runtimes", i),
                        format!("unknown runtime {r:?} (expected \"wasm\" or \"docker\")"),
                    ));
                }
            }
            for (i, a) in st.addresses.iter().enumerate() {
                let ap = index("status.addresses", i);
                if a.type_.is_empty() {
                    errs.push(FieldError::required(child(&ap, "type")));
                }
                if a.address.is_empty() {
                    errs.push(FieldError::required(child(&ap, "address")));
                }
            }
        }
        errs
    }

    /// Whether the node's `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| crate::meta::condition_is_true(&s.conditions, NODE_READY))
    }
}

/// A lease: node heartbeats (`kube-node-lease`-style) and leader election.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lease {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: LeaseSpec,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaseSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder_identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<i64>,
    /// RFC 3339 (microsecond precision recommended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquire_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<String>,
    pub lease_transitions: i32,
}

impl Lease {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.spec.lease_duration_seconds.is_some_and(|d| d <= 0) {
            errs.push(FieldError::new(
                "spec.leaseDurationSeconds",
                "must be greater than 0",
            ));
        }
        if self.spec.lease_transitions < 0 {
            errs.push(FieldError::new("spec.leaseTransitions", "must be non-negative"));
        } else if self.spec.lease_transitions > 0 {
            errs.push(FieldError::not_supported(
                "spec.leaseTransitions",
                "nothing counts lease transitions; leave it 0",
            ));
        }
        errs
    }
}
