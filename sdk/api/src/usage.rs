//! Resource usage, like Kubernetes' metrics API: what a node's agent reports at
//! `GET /.wisp/usage` (its own usage from the OS and each running container's from its
//! runtime) and what the API server serves, aggregated over the nodes, at
//! `/apis/metrics.wisp.dev/v1/…`. Not stored: a wire format shared by writers and readers.

use serde::{Deserialize, Serialize};

/// One container's usage: CPU as a rate over the report's window, memory now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerUsage {
    pub name: String,
    /// `wasm` or `docker`.
    pub runtime: String,
    /// Thousandths of a core, averaged over the window.
    pub cpu_millicores: u64,
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
}

/// One pod's containers, on one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    /// RFC 3339: when it was read.
    pub timestamp: String,
    /// Seconds the CPU rate is averaged over.
    pub window_seconds: f64,
    pub containers: Vec<ContainerUsage>,
}

impl PodUsage {
    pub fn cpu_millicores(&self) -> u64 {
        self.containers
            .iter()
            .fold(0u64, |a, c| a.saturating_add(c.cpu_millicores))
    }

    pub fn memory_bytes(&self) -> u64 {
        self.containers
            .iter()
            .fold(0u64, |a, c| a.saturating_add(c.memory_bytes))
    }
}

/// A node's own usage, from the OS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeUsage {
    pub name: String,
    pub timestamp: String,
    pub window_seconds: f64,
    pub cpu_millicores: u64,
    /// The cores the OS reports, in thousandths.
    pub cpu_capacity_millicores: u64,
    /// Memory in use (total less available).
    pub memory_bytes: u64,
    pub memory_capacity_bytes: u64,
}

/// What one node's agent reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeReport {
    pub node: NodeUsage,
    pub pods: Vec<PodUsage>,
}

/// A node whose usage could not be read, and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Unreachable {
    pub node: String,
    pub reason: String,
}

/// `GET /apis/metrics.wisp.dev/v1/[namespaces/<ns>/]pods`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodUsageList {
    pub items: Vec<PodUsage>,
    /// Nodes not heard from: their pods are missing from `items`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<Unreachable>,
}

/// `GET /apis/metrics.wisp.dev/v1/nodes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeUsageList {
    pub items: Vec<NodeUsage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<Unreachable>,
}
