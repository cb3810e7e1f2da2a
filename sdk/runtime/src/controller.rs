//! A level-triggered controller: triggers from the watched kind, its children and a periodic
//! resync feed the [`crate::runner`]; each run reads the latest object from the
//! reflector cache and calls `reconcile` (never for an object that no longer exists).

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBuilder;
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use tracing::Instrument;
use wisp_api::Resource;
use wisp_client::{Api, ClientError, WatchParams, WatcherEvent};

use crate::reflector::{ObjectRef, Store, Writer, reflector, watcher_stream};
use crate::runner::{self, Action, Outcome, RunnerConfig};
use crate::shared::Informers;
use tokio_util::sync::CancellationToken;

/// Pause after a watch error the watcher cannot fix itself (401/403/404) before retrying.
const WATCH_ERROR_PAUSE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Config {
    /// Most objects reconciled at once (default 16).
    pub concurrency: usize,
    /// Every object is reconciled again this often (default 5 minutes); `None` disables it.
    pub resync: Option<Duration>,
    /// Per-object backoff after errors (default 100ms doubling to 30s; reset on success).
    pub backoff: ExponentialBuilder,
    /// How long in-flight reconciles may finish after shutdown (default 10s).
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let runner = RunnerConfig::default();
        Self {
            concurrency: runner.concurrency,
            resync: Some(Duration::from_secs(300)),
            backoff: runner.backoff,
            shutdown_grace: runner.shutdown_grace,
        }
    }
}

type Events<T> = BoxStream<'static, Result<WatcherEvent<T>, ClientError>>;

/// Reconciles every object of kind `T`. Build with [`Controller::new`], add child triggers
/// with [`Controller::owns`] / [`Controller::watches`], then [`Controller::run`].
pub struct Controller<T: Resource> {
    /// The watched kind's events, already applied to `store` when they arrive.
    events: Events<T>,
    store: Store<T>,
    triggers: Vec<BoxStream<'static, Vec<ObjectRef>>>,
    config: Config,
}

impl<T: Resource> Controller<T> {
    /// Watches `api` with `params` through a reflector cache.
    pub fn new(api: Api<T>, params: WatchParams) -> Self {
        Self::from_events(watcher_stream(api.watcher(params)))
    }

    /// On the process's shared cache of `T` (see [`Informers`]): no watch of its own.
    pub fn shared(informers: &Informers) -> Self {
        let shared = informers.shared::<T>();
        Self {
            events: shared.subscribe(),
            store: shared.store(),
            triggers: Vec::new(),
            config: Config::default(),
        }
    }

    /// From any stream of watch events (tests, or a watcher built elsewhere), through a cache
    /// of its own.
    pub fn from_events<S>(events: S) -> Self
    where
        S: Stream<Item = Result<WatcherEvent<T>, ClientError>> + Send + 'static,
    {
        let writer = Writer::new();
        let store = writer.as_reader();
        Self {
            events: reflector(writer, events).boxed(),
            store,
            triggers: Vec::new(),
            config: Config::default(),
        }
    }

    /// The controller's cache of `T` (ready once the first list has arrived).
    pub fn store(&self) -> Store<T> {
        self.store.clone()
    }

    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    pub fn resync(mut self, every: Option<Duration>) -> Self {
        self.config.resync = every;
        self
    }

    /// Reconciles the owner (an `ownerReferences` entry of kind `T`) when a `C` changes.
    pub fn owns<C: Resource>(self, api: Api<C>, params: WatchParams) -> Self {
        self.owns_events(watcher_stream(api.watcher(params)))
    }

    /// [`Controller::owns`] from any stream of child events.
    pub fn owns_events<C, S>(self, events: S) -> Self
    where
        C: Resource,
        S: Stream<Item = Result<WatcherEvent<C>, ClientError>> + Send + 'static,
    {
        self.watches_events(events, owners::<T, C>)
    }

    /// Reconciles the objects `mapper` names when a `C` changes (or is deleted).
    pub fn watches<C, M>(self, api: Api<C>, params: WatchParams, mapper: M) -> Self
    where
        C: Resource,
        M: Fn(&C) -> Vec<ObjectRef> + Send + Sync + 'static,
    {
        self.watches_events(watcher_stream(api.watcher(params)), mapper)
    }

    /// [`Controller::watches`] from any stream of events.
    pub fn watches_events<C, S, M>(mut self, events: S, mapper: M) -> Self
    where
        C: Resource,
        S: Stream<Item = Result<WatcherEvent<C>, ClientError>> + Send + 'static,
        M: Fn(&C) -> Vec<ObjectRef> + Send + Sync + 'static,
    {
        let map = move |ev: WatcherEvent<C>| match ev {
            WatcherEvent::Restarted(objs) => objs.iter().flat_map(&mapper).collect(),
            WatcherEvent::Applied(o) | WatcherEvent::Deleted(o) => mapper(&o),
        };
        self.triggers.push(to_triggers(events, map));
        self
    }

    /// Runs until `shutdown` is cancelled, then lets in-flight reconciles finish (up to the
    /// shutdown grace) and returns. A reconcile error goes to `error_policy`: its
    /// [`Action::requeue`] is honoured, [`Action::await_change`] means "retry with backoff".
    pub async fn run<R, Fut, E, P, Ctx>(
        self,
        reconcile: R,
        error_policy: P,
        ctx: Arc<Ctx>,
        shutdown: CancellationToken,
    ) where
        R: Fn(Arc<T>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: Display + Send + 'static,
        P: Fn(Arc<T>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
        Ctx: Send + Sync + 'static,
    {
        let Controller {
            events,
            store,
            mut triggers,
            config,
        } = self;
        triggers.push(to_triggers(events, |ev| match ev {
            WatcherEvent::Restarted(objs) => objs.iter().map(ObjectRef::from_obj).collect(),
            WatcherEvent::Applied(o) => vec![ObjectRef::from_obj(&o)],
            WatcherEvent::Deleted(_) => Vec::new(),
        }));
        if let Some(every) = config.resync {
            triggers.push(resync(store.clone(), every));
        }
        let triggers = stream::select_all(triggers).flat_map(stream::iter);

        let reconcile = Arc::new(reconcile);
        let error_policy = Arc::new(error_policy);
        let work = move |key: ObjectRef| {
            let (store, ctx) = (store.clone(), ctx.clone());
            let (reconcile, error_policy) = (reconcile.clone(), error_policy.clone());
            let span = tracing::info_span!("reconcile", kind = T::KIND, object = %key);
            async move {
                if !store.wait_ready().await {
                    return Outcome::Gone;
                }
                let Some(obj) = store.get(&key) else {
                    tracing::debug!("object is gone; not reconciling");
                    return Outcome::Gone;
                };
                match reconcile(obj.clone(), ctx.clone()).await {
                    Ok(action) => Outcome::Done(action),
                    Err(e) => {
                        tracing::warn!(error = %e, "reconcile failed");
                        Outcome::Failed(error_policy(obj, &e, ctx))
                    }
                }
            }
            .instrument(span)
        };
        let runner_config = RunnerConfig {
            concurrency: config.concurrency,
            backoff: config.backoff,
            shutdown_grace: config.shutdown_grace,
        };
        runner::run(triggers, work, runner_config, shutdown).await;
    }
}

/// The owners of kind `T` named in `child`'s ownerReferences.
fn owners<T: Resource, C: Resource>(child: &C) -> Vec<ObjectRef> {
    let meta = child.metadata();
    meta.owner_references
        .iter()
        .filter(|r| r.kind == T::KIND)
        .map(|r| ObjectRef {
            namespace: if T::NAMESPACED {
                meta.namespace.clone()
            } else {
                None
            },
            name: r.name.clone(),
        })
        .collect()
}

/// Maps events to triggers; an error is logged and followed by a pause.
fn to_triggers<K, S, F>(events: S, map: F) -> BoxStream<'static, Vec<ObjectRef>>
where
    K: Resource,
    S: Stream<Item = Result<WatcherEvent<K>, ClientError>> + Send + 'static,
    F: Fn(WatcherEvent<K>) -> Vec<ObjectRef> + Send + 'static,
{
    events
        .then(move |ev| {
            let out = ev.map(&map);
            async move {
                match out {
                    Ok(keys) => keys,
                    Err(e) => {
                        tracing::error!(error = %e, kind = K::KIND, "watch failed; retrying");
                        tokio::time::sleep(WATCH_ERROR_PAUSE).await;
                        Vec::new()
                    }
                }
            }
        })
        .boxed()
}

/// Every `every`, the key of every cached object.
fn resync<T: Resource>(store: Store<T>, every: Duration) -> BoxStream<'static, Vec<ObjectRef>> {
    stream::unfold(store, move |store| async move {
        tokio::time::sleep(every).await;
        Some((store.keys(), store))
    })
    .boxed()
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
