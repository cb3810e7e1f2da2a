//! wisp-controllers owns Wisp's level-triggered reconcilers, each a `wisp-runtime`
//! controller that reads watch-fed caches and writes only through the API: the Deployment
//! and ReplicaSet controllers, the Endpoints controller, the Function
//! controller (Function → Deployment + Service + Route), the autoscaler (concurrency from
//! the node ingresses → replicas, scale to zero), garbage collection through
//! `ownerReferences`, and Node lifecycle (lease expiry → NotReady → pods
//! failed and replaced).
//!
//! It must not touch the store or run workloads.

pub mod autoscaler;
pub mod deployment;
pub mod endpoints;
pub mod function;
pub mod gc;
pub mod nodes;
pub mod replicaset;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wisp_api::{Deployment, Endpoints, Function, Lease, Node, Pod, ReplicaSet, Route, Service};
use wisp_client::{Client, ClientError, WatchParams};
use wisp_runtime::{Controller, Writer, reflector, watcher_stream};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("a controller lock was poisoned")]
    Poisoned,
}

/// Run the ReplicaSet controller until `shutdown`.
pub async fn run_replicasets(client: Client, shutdown: CancellationToken) {
    let pod_writer = Writer::<Pod>::new();
    let pods = pod_writer.as_reader();
    let pod_events = reflector(
        pod_writer,
        watcher_stream(client.api::<Pod>(None).watcher(WatchParams::default())),
    );
    let ctx = Arc::new(replicaset::Context::new(client.clone(), pods));
    Controller::new(client.api::<ReplicaSet>(None), WatchParams::default())
        .owns_events(pod_events)
        .run(replicaset::reconcile, replicaset::error_policy, ctx, shutdown)
        .await;
}

/// Run the Endpoints controller until `shutdown`.
pub async fn run_endpoints(client: Client, shutdown: CancellationToken) {
    let pod_writer = Writer::<Pod>::new();
    let pods = pod_writer.as_reader();
    let pod_events = reflector(
        pod_writer,
        watcher_stream(client.api::<Pod>(None).watcher(WatchParams::default())),
    );
    let controller = Controller::new(client.api::<Service>(None), WatchParams::default());
    let services = controller.store();
    let ctx = Arc::new(endpoints::Context {
        client: client.clone(),
        pods,
    });
    controller
        .watches_events(pod_events, move |pod: &Pod| {
            endpoints::services_for(pod, &services)
        })
        .run(
            endpoints::reconcile,
            |_s: Arc<Service>, _e: &Error, _c: Arc<endpoints::Context>| wisp_runtime::Action::await_change(),
            ctx,
            shutdown,
        )
        .await;
}

/// Run the Deployment controller until `shutdown`.
pub async fn run_deployments(client: Client, shutdown: CancellationToken) {
    let rs_writer = Writer::<ReplicaSet>::new();
    let replicasets = rs_writer.as_reader();
    let rs_events = reflector(
        rs_writer,
        watcher_stream(client.api::<ReplicaSet>(None).watcher(WatchParams::default())),
    );
    let ctx = Arc::new(deployment::Context {
        client: client.clone(),
        replicasets,
    });
    Controller::new(client.api::<Deployment>(None), WatchParams::default())
        .owns_events(rs_events)
        .run(
            deployment::reconcile,
            |_d: Arc<Deployment>, _e: &Error, _c: Arc<deployment::Context>| {
                wisp_runtime::Action::await_change()
            },
            ctx,
            shutdown,
        )
        .await;
}

/// Run the Function controller until `shutdown`: reconciled when the Function or its
/// Deployment changes (ready replicas feed its status).
pub async fn run_functions(client: Client, shutdown: CancellationToken) {
    let ctx = Arc::new(function::Context {
        client: client.clone(),
    });
    Controller::new(client.api::<Function>(None), WatchParams::default())
        .owns(client.api::<Deployment>(None), WatchParams::default())
        .run(
            function::reconcile,
            |_f: Arc<Function>, _e: &Error, _c: Arc<function::Context>| {
                wisp_runtime::Action::requeue(std::time::Duration::from_secs(1))
            },
            ctx,
            shutdown,
        )
        .await;
}

/// Run the Node lifecycle controller until `shutdown`.
pub async fn run_nodes(client: Client, grace: std::time::Duration, shutdown: CancellationToken) {
    let lease_writer = Writer::<Lease>::new();
    let leases = lease_writer.as_reader();
    let lease_api = client.api::<Lease>(Some(nodes::LEASE_NAMESPACE));
    let lease_events = reflector(
        lease_writer,
        watcher_stream(lease_api.watcher(WatchParams::default())),
    );
    let ctx = Arc::new(nodes::Context {
        client: client.clone(),
        leases,
        grace,
    });
    Controller::new(client.api::<Node>(None), WatchParams::default())
        .watches_events(lease_events, |l: &Lease| {
            vec![wisp_runtime::ObjectRef::new(l.metadata.name.clone())]
        })
        .run(
            nodes::reconcile,
            |_n: Arc<Node>, _e: &Error, _c: Arc<nodes::Context>| wisp_runtime::Action::await_change(),
            ctx,
            shutdown,
        )
        .await;
}

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct Config {
    /// A node is lost after this long without a lease renewal (default 10 s).
    pub node_grace: std::time::Duration,
    pub autoscaler: autoscaler::AutoscalerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_grace: std::time::Duration::from_secs(10),
            autoscaler: autoscaler::AutoscalerConfig::default(),
        }
    }
}

/// Run every controller this crate has until `shutdown`.
pub async fn run(client: Client, config: Config, shutdown: CancellationToken) {
    tokio::join!(
        run_deployments(client.clone(), shutdown.clone()),
        run_replicasets(client.clone(), shutdown.clone()),
        gc::run::<Pod, ReplicaSet>(client.clone(), shutdown.clone()),
        gc::run::<ReplicaSet, Deployment>(client.clone(), shutdown.clone()),
        run_endpoints(client.clone(), shutdown.clone()),
        gc::run::<Endpoints, Service>(client.clone(), shutdown.clone()),
        run_functions(client.clone(), shutdown.clone()),
        autoscaler::run(client.clone(), config.autoscaler, shutdown.clone()),
        gc::run::<Deployment, Function>(client.clone(), shutdown.clone()),
        gc::run::<Service, Function>(client.clone(), shutdown.clone()),
        gc::run::<Route, Function>(client.clone(), shutdown.clone()),
        run_nodes(client, config.node_grace, shutdown),
    );
}
