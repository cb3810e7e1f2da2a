//! wisp-controllers owns Wisp's level-triggered reconcilers, each a `wisp-runtime`
//! controller that reads watch-fed caches and writes only through the API: the ReplicaSet
//! controller and garbage collection through `ownerReferences` so far (Deployment,
//! Endpoints and Node lifecycle are not built yet).
//!
//! It must not touch the store or run workloads.

pub mod gc;
pub mod replicaset;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wisp_api::{Deployment, Pod, ReplicaSet};
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

/// Run every controller this crate has until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    tokio::join!(
        run_replicasets(client.clone(), shutdown.clone()),
        gc::run::<Pod, ReplicaSet>(client.clone(), shutdown.clone()),
        gc::run::<ReplicaSet, Deployment>(client, shutdown),
    );
}
