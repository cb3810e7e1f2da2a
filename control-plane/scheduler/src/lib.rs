//! `wisp-scheduler`: binds pending pods to nodes.
//!
//! Owns the scheduling decision and nothing else: a cache of Nodes and Pods fed by watches
//! ([`cache`]), the filter and score functions ([`plugins`]: node Ready, not cordoned, runtime
//! supported, cpu/memory/pod-count fit, `nodeSelector`; least allocated plus spread of pods
//! of one ReplicaSet, ties broken by node name), and the loop that binds ([`run`]): a pending
//! pod is assumed on its node in the cache at once, bound with a compare-and-swap PUT of
//! `spec.nodeName` on its `resourceVersion` (up to [`SchedulerConfig::max_concurrent_binds`]
//! in flight), and rolled back if the bind fails. A pod that fits nowhere stays Pending with
//! `PodScheduled=False` (reason `Unschedulable`, a message counting why nodes were rejected)
//! written through `/status`, and is tried again when nodes change or pods release resources.
//!
//! It must not touch the store: everything goes through the Wisp API (`wisp-client`). It does
//! not run pods, mark nodes NotReady or evict pods (node agent and node lifecycle controller).

pub mod cache;
pub mod plugins;
mod scheduler;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wisp_client::ClientError;
use wisp_runtime::Informers;

pub use cache::{Cache, Decision};
pub use plugins::{Allocation, NodeInfo, PodRequirements, Rejection};

/// The condition reason of a pod that fits on no node.
pub const REASON_UNSCHEDULABLE: &str = "Unschedulable";
/// The condition reason once such a pod is bound after all, and the event of every bind.
pub const REASON_SCHEDULED: &str = "Scheduled";
/// The event of a pod that fits on no node (one per pod, counted per attempt).
pub const REASON_FAILED_SCHEDULING: &str = "FailedScheduling";

/// Tuning of [`run`].
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Most binds (and status writes) in flight at once (default 64).
    pub max_concurrent_binds: usize,
    /// Share of the nodes to find feasible before picking the best of them; `None` (the
    /// default) adapts like kube-scheduler: all nodes up to `min_feasible_nodes`, 50% of a
    /// few hundred, about 10% of 5,000, never below 5%.
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Feasible nodes to find at least (default 100).
    pub min_feasible_nodes: usize,
    /// Unschedulable pods are tried again at least this often (default 30 s), besides on
    /// every node change and every release of resources.
    pub unschedulable_retry: Duration,
    /// First wait after a failed API call for a pod; doubles per failure up to 30 s
    /// (default 100 ms).
    pub error_backoff: Duration,
    /// How long in-flight binds may finish after shutdown (default 5 s).
    pub shutdown_grace: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_binds: 64,
            percentage_of_nodes_to_score: None,
            min_feasible_nodes: 100,
            unschedulable_retry: Duration::from_secs(30),
            error_backoff: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A watch failed in a way retrying cannot fix (the token may not read nodes or pods).
    #[error("watching {kind}: {source}")]
    Watch {
        kind: &'static str,
        #[source]
        source: ClientError,
    },
}

/// Schedules every pending pod of every namespace until `shutdown` is cancelled, then lets
/// in-flight binds finish (up to [`SchedulerConfig::shutdown_grace`]). `client` needs a token
/// that may read nodes and read and write pods in all namespaces (the admin token).
pub async fn run(
    informers: Informers,
    config: SchedulerConfig,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    let client = informers.client().clone();
    wisp_runtime::recording(client.clone(), "scheduler", "", &shutdown, |events| {
        scheduler::Scheduler::new(client, config, events).run(&informers, shutdown.clone())
    })
    .await
}
