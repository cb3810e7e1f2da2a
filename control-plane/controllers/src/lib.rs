//! wisp-controllers owns Wisp's level-triggered reconcilers, each a `wisp-runtime`
//! controller that reads watch-fed caches and writes only through the API: the Deployment
//! and ReplicaSet controllers, the Endpoints controller, the Function
//! controller (Function → Deployment + Service + Route), the autoscaler (concurrency from
//! the node ingresses → replicas, scale to zero), garbage collection through
//! `ownerReferences`, Node lifecycle (lease expiry → NotReady → pods
//! failed and replaced), and Namespace deletion (everything in a Terminating namespace is
//! deleted, then the namespace), and the expiry of Events after their TTL.
//!
//! It must not touch the store or run workloads.

pub mod autoscaler;
pub mod deployment;
pub mod endpoints;
pub mod event_ttl;
pub mod function;
pub mod gc;
pub mod namespaces;
pub mod nodes;
pub mod replicaset;
pub mod route_tls;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wisp_api::{Deployment, Endpoints, Function, Lease, Node, Pod, ReplicaSet, Route, Service};
use wisp_client::ClientError;
use wisp_runtime::{Action, Controller, Informers};

/// How long a changed status waits before it is written (see `StatusDelay`).
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
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
}

/// Run the ReplicaSet controller until `shutdown`.
pub async fn run_replicasets(informers: Informers, shutdown: CancellationToken) {
    let (pods, pod_events) = informers.cached::<Pod>();
    let ctx = Arc::new(replicaset::Context::new(informers.client().clone(), pods));
    Controller::<ReplicaSet>::shared(&informers)
        .owns_events(pod_events)
        .run(replicaset::reconcile, replicaset::error_policy, ctx, shutdown)
        .await;
}

/// Run the Endpoints controller until `shutdown`.
pub async fn run_endpoints(informers: Informers, shutdown: CancellationToken) {
    let (pods, pod_events) = informers.cached::<Pod>();
    let controller = Controller::<Service>::shared(&informers);
    let services = controller.store();
    let ctx = Arc::new(endpoints::Context {
        client: informers.client().clone(),
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
pub async fn run_deployments(informers: Informers, shutdown: CancellationToken) {
    let (replicasets, rs_events) = informers.cached::<ReplicaSet>();
    let client = informers.client().clone();
    wisp_runtime::recording(
        client.clone(),
        "deployment-controller",
        "",
        &shutdown,
        async |events| {
            let ctx = Arc::new(deployment::Context {
                client,
                replicasets,
                events,
                status: StatusDelay::new(STATUS_COALESCE),
            });
            Controller::<Deployment>::shared(&informers)
                .owns_events(rs_events)
                .run(
                    deployment::reconcile,
                    |_d: Arc<Deployment>, _e: &Error, _c: Arc<deployment::Context>| {
                        wisp_runtime::Action::await_change()
                    },
                    ctx,
                    shutdown.clone(),
                )
                .await;
        },
    )
    .await;
}

/// Run the Function controller until `shutdown`: reconciled when the Function or one of its
/// children changes (its Deployment's ready replicas feed its status; an edited or deleted
/// Service or Route is put back).
pub async fn run_functions(informers: Informers, cluster_domain: String, shutdown: CancellationToken) {
    let (deployments, deployment_events) = informers.cached::<Deployment>();
    let (services, service_events) = informers.cached::<Service>();
    let (routes, route_events) = informers.cached::<Route>();
    let (revisions, revision_events) = informers.cached::<wisp_api::Revision>();
    let client = informers.client().clone();
    wisp_runtime::recording(
        client.clone(),
        "function-controller",
        "",
        &shutdown,
        async |events| {
            let ctx = Arc::new(function::Context {
                client,
                events,
                status: StatusDelay::new(STATUS_COALESCE),
                deployments,
                services,
                routes,
                revisions,
                nodes: informers.store::<wisp_api::Node>(),
                cluster_domain,
            });
            Controller::<Function>::shared(&informers)
                .watches_events(deployment_events, function_of::<Deployment>)
                .watches_events(service_events, function_of::<Service>)
                .watches_events(route_events, function_of::<Route>)
                .watches_events(revision_events, function_of::<wisp_api::Revision>)
                .run(
                    function::reconcile,
                    |_f: Arc<Function>, _e: &Error, _c: Arc<function::Context>| {
                        wisp_runtime::Action::requeue(std::time::Duration::from_secs(1))
                    },
                    ctx,
                    shutdown.clone(),
                )
                .await;
        },
    )
    .await;
}

/// The Function an object was made for (its `wisp.dev/function` label): revisions, their
/// Deployments and Services, and the Function's Routes.
fn function_of<C: wisp_api::Resource>(obj: &C) -> Vec<wisp_runtime::ObjectRef> {
    let m = obj.metadata();
    match (m.labels.get(function::FUNCTION_LABEL), &m.namespace) {
        (Some(f), Some(ns)) => vec![wisp_runtime::ObjectRef::new(f.as_str()).within(ns.as_str())],
        _ => Vec::new(),
    }
}

/// Run the Node lifecycle controller until `shutdown`.
pub async fn run_nodes(informers: Informers, grace: std::time::Duration, shutdown: CancellationToken) {
    // Leases live in one namespace: the shared cache of the kind holds only those the
    // cluster has (every Lease is a node's).
    let (leases, lease_events) = informers.cached::<Lease>();
    let ctx = Arc::new(nodes::Context {
        client: informers.client().clone(),
        leases,
        grace,
    });
    Controller::<Node>::shared(&informers)
        .watches_events(lease_events, |l: &Lease| {
            if l.metadata.namespace.as_deref() == Some(nodes::LEASE_NAMESPACE) {
                vec![wisp_runtime::ObjectRef::new(l.metadata.name.clone())]
            } else {
                Vec::new()
            }
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
    /// The cluster CA, for Routes with `tls.issuer: cluster` (none: such Routes get no
    /// certificate from the cluster).
    pub route_issuer: Option<route_tls::Issuer>,
    /// Events are deleted this long after they were last seen (default 1 h).
    pub event_ttl: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_grace: std::time::Duration::from_secs(10),
            autoscaler: autoscaler::AutoscalerConfig::default(),
            cluster_domain: "localhost".into(),
            route_issuer: None,
            event_ttl: event_ttl::DEFAULT_TTL,
        }
    }
}

/// Run every controller this crate has until `shutdown`, all reading the shared caches of
/// `informers` (one watch per kind, whoever else in the process reads them too).
pub async fn run(informers: Informers, config: Config, shutdown: CancellationToken) {
    let i = &informers;
    tokio::join!(
        run_deployments(i.clone(), shutdown.clone()),
        run_replicasets(i.clone(), shutdown.clone()),
        gc::run::<Pod, ReplicaSet>(i.clone(), shutdown.clone()),
        gc::run::<ReplicaSet, Deployment>(i.clone(), shutdown.clone()),
        run_endpoints(i.clone(), shutdown.clone()),
        gc::run::<Endpoints, Service>(i.clone(), shutdown.clone()),
        run_functions(i.clone(), config.cluster_domain.clone(), shutdown.clone()),
        namespaces::run(i.clone(), shutdown.clone()),
        autoscaler::run(i.clone(), config.autoscaler, shutdown.clone()),
        gc::run::<wisp_api::Revision, Function>(i.clone(), shutdown.clone()),
        gc::run::<Deployment, wisp_api::Revision>(i.clone(), shutdown.clone()),
        gc::run::<Service, wisp_api::Revision>(i.clone(), shutdown.clone()),
        gc::run::<Deployment, Function>(i.clone(), shutdown.clone()),
        gc::run::<Service, Function>(i.clone(), shutdown.clone()),
        gc::run::<Route, Function>(i.clone(), shutdown.clone()),
        run_route_tls(i.clone(), config.route_issuer, shutdown.clone()),
        event_ttl::run(i.client().clone(), config.event_ttl, shutdown.clone()),
        run_nodes(i.clone(), config.node_grace, shutdown),
    );
}

/// Run the cluster issuer (see [`route_tls`]) until `shutdown`; nothing without an issuer.
pub async fn run_route_tls(
    informers: Informers,
    issuer: Option<route_tls::Issuer>,
    shutdown: CancellationToken,
) {
    let Some(issuer) = issuer else { return };
    let ctx = Arc::new(route_tls::Context {
        client: informers.client().clone(),
        issuer,
    });
    Controller::<Route>::shared(&informers)
        .run(
            route_tls::reconcile,
            |_r: Arc<Route>, _e: &Error, _c: Arc<route_tls::Context>| {
                wisp_runtime::Action::requeue(std::time::Duration::from_secs(30))
            },
            ctx,
            shutdown,
        )
        .await;
}
