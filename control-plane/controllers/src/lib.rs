//! wisp-controllers owns Wisp's level-triggered reconcilers, each a `wisp-runtime`
//! controller that reads watch-fed caches and writes only through the API: the Deployment
//! and ReplicaSet controllers, the Endpoints controller, the Function
//! controller (Function → Deployment + Service + Route), the autoscaler (concurrency from
//! the node ingresses → replicas, scale to zero), garbage collection through
//! `ownerReferences`, Node lifecycle (lease expiry → NotReady → pods
//! failed and replaced), and Namespace deletion (everything in a Terminating namespace is
//! deleted, then the namespace).
//!
//! It must not touch the store or run workloads.

pub mod autoscaler;
pub mod deployment;
pub mod endpoints;
pub mod function;
pub mod gc;
pub mod namespaces;
pub mod nodes;
pub mod replicaset;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wisp_api::{Deployment, Endpoints, Function, Lease, Node, Pod, ReplicaSet, Route, Service};
use wisp_client::{Client, ClientError, WatchParams};
use wisp_runtime::{Action, Controller, Writer, reflector, watcher_stream};

/// How long a changed status waits before it is written (see [`StatusDelay`]).
pub const STATUS_COALESCE: std::time::Duration = std::time::Duration::from_millis(25);

/// Status writes that wait until a status has been out of date for a moment: a scale-up
/// changes a Deployment's, ReplicaSet's and Function's status several times within a few
/// milliseconds (replicas, then ready replicas), and writing each change at once put those
/// writes in the store's queue ahead of the writes of the scale-up itself (pod create, bind,
/// pod status) — a cold start waited behind bookkeeping. Waiting coalesces them into one
/// write per object, after the chain; anything that reads status sees it that much later.
pub(crate) struct StatusDelay {
    delay: std::time::Duration,
    stale_since: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl StatusDelay {
    pub(crate) fn new(delay: std::time::Duration) -> Self {
        Self {
            delay,
            stale_since: std::sync::Mutex::default(),
        }
    }

    /// For an object whose status differs from what it should be: `Ok` to write it now, or
    /// how long to wait first (reconcile again then).
    pub(crate) fn write_now(&self, key: &str) -> Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        let Ok(mut stale) = self.stale_since.lock() else {
            return Ok(());
        };
        if stale.len() > 4096 {
            // Objects deleted while waiting leave their entry behind.
            stale.retain(|_, since| now.duration_since(*since) < self.delay * 100);
        }
        let since = *stale.entry(key.to_owned()).or_insert(now);
        let waited = now.duration_since(since);
        if waited >= self.delay {
            stale.remove(key);
            Ok(())
        } else {
            Err(self.delay - waited)
        }
    }

    /// The object's status is what it should be.
    pub(crate) fn settled(&self, key: &str) {
        if let Ok(mut stale) = self.stale_since.lock() {
            stale.remove(key);
        }
    }
}

/// `action`, but reconciling again no later than `wait` when a status write waits.
pub(crate) fn sooner(action: Action, wait: Option<std::time::Duration>) -> Action {
    match (action.requeue_after(), wait) {
        (_, None) => action,
        (Some(after), Some(wait)) => Action::requeue(after.min(wait)),
        (None, Some(wait)) => Action::requeue(wait),
    }
}

#[cfg(test)]
mod status_delay_tests {
    use std::time::Duration;

    use super::{Action, StatusDelay, sooner};

    #[test]
    fn a_stale_status_is_written_once_it_has_waited() {
        let d = StatusDelay::new(Duration::from_millis(30));
        let wait = d.write_now("a").expect_err("must wait first");
        assert!(wait <= Duration::from_millis(30) && wait > Duration::ZERO);
        // Another object waits on its own.
        assert!(d.write_now("b").is_err());
        std::thread::sleep(Duration::from_millis(35));
        assert!(d.write_now("a").is_ok(), "waited long enough");
        // Written: the next change waits again.
        assert!(d.write_now("a").is_err());
        d.settled("a");
        d.settled("b");
        assert!(d.write_now("b").is_err(), "settled forgets the wait");
    }

    #[test]
    fn sooner_keeps_the_earlier_requeue() {
        let ms = Duration::from_millis;
        assert_eq!(sooner(Action::await_change(), None).requeue_after(), None);
        assert_eq!(
            sooner(Action::await_change(), Some(ms(5))).requeue_after(),
            Some(ms(5))
        );
        assert_eq!(
            sooner(Action::requeue(ms(500)), Some(ms(5))).requeue_after(),
            Some(ms(5))
        );
        assert_eq!(
            sooner(Action::requeue(ms(2)), Some(ms(5))).requeue_after(),
            Some(ms(2))
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("a controller lock was poisoned")]
    Poisoned,
}

/// A watch cache of every `T` in the cluster: its reader, and the stream of events that
/// fills it as it is polled (hand it to a controller as a trigger).
pub(crate) fn cached<T: wisp_api::Resource>(
    client: &Client,
) -> (
    wisp_runtime::Store<T>,
    impl futures::Stream<Item = Result<wisp_client::WatcherEvent<T>, ClientError>> + Send + 'static,
) {
    let writer = Writer::<T>::new();
    let reader = writer.as_reader();
    let events = reflector(
        writer,
        watcher_stream(client.api::<T>(None).watcher(WatchParams::default())),
    );
    (reader, events)
}

/// Run the ReplicaSet controller until `shutdown`.
pub async fn run_replicasets(client: Client, shutdown: CancellationToken) {
    let (pods, pod_events) = cached::<Pod>(&client);
    let ctx = Arc::new(replicaset::Context::new(client.clone(), pods));
    Controller::new(client.api::<ReplicaSet>(None), WatchParams::default())
        .owns_events(pod_events)
        .run(replicaset::reconcile, replicaset::error_policy, ctx, shutdown)
        .await;
}

/// Run the Endpoints controller until `shutdown`.
pub async fn run_endpoints(client: Client, shutdown: CancellationToken) {
    let (pods, pod_events) = cached::<Pod>(&client);
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
    let (replicasets, rs_events) = cached::<ReplicaSet>(&client);
    let ctx = Arc::new(deployment::Context {
        client: client.clone(),
        replicasets,
        status: StatusDelay::new(STATUS_COALESCE),
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

/// Run the Function controller until `shutdown`: reconciled when the Function or one of its
/// children changes (its Deployment's ready replicas feed its status; an edited or deleted
/// Service or Route is put back).
pub async fn run_functions(client: Client, cluster_domain: String, shutdown: CancellationToken) {
    let (deployments, deployment_events) = cached::<Deployment>(&client);
    let (services, service_events) = cached::<Service>(&client);
    let (routes, route_events) = cached::<Route>(&client);
    let ctx = Arc::new(function::Context {
        client: client.clone(),
        status: StatusDelay::new(STATUS_COALESCE),
        deployments,
        services,
        routes,
        cluster_domain,
    });
    Controller::new(client.api::<Function>(None), WatchParams::default())
        .owns_events(deployment_events)
        .owns_events(service_events)
        .owns_events(route_events)
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
    /// Functions answer on `<name>.<namespace>.<cluster_domain>` by default (`localhost`).
    pub cluster_domain: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_grace: std::time::Duration::from_secs(10),
            autoscaler: autoscaler::AutoscalerConfig::default(),
            cluster_domain: "localhost".into(),
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
        run_functions(client.clone(), config.cluster_domain.clone(), shutdown.clone()),
        namespaces::run(client.clone(), shutdown.clone()),
        autoscaler::run(client.clone(), config.autoscaler, shutdown.clone()),
        gc::run::<Deployment, Function>(client.clone(), shutdown.clone()),
        gc::run::<Service, Function>(client.clone(), shutdown.clone()),
        gc::run::<Route, Function>(client.clone(), shutdown.clone()),
        run_nodes(client, config.node_grace, shutdown),
    );
}
