//! Shared watch caches: one watch and one cache per kind per process, many subscribers (as
//! client-go's informer factory and kube-rs' shared streams).
//!
//! Every controller, the scheduler, the node agent and the ingress used to open watches of
//! their own — a `wisp up` held about 24, Pods three times and Deployments, ReplicaSets,
//! Services and Functions four times each — so every write was decoded, filtered and sent
//! by the API server, and decoded again here, once per watch. [`Informers`] opens the first
//! watch of a kind when something first asks for it and hands out its [`Store`] and streams
//! of its events ([`Shared::subscribe`]).
//!
//! A subscriber first gets the cache's contents as one `Restarted` event (once the first list
//! has arrived), then every later event exactly once: the writer applies an event and
//! broadcasts it under one lock, under which a subscriber takes its snapshot and joins. A
//! subscriber that falls more than [`CHANNEL_CAPACITY`] events behind is caught up with a
//! fresh `Restarted` snapshot rather than slowing everyone down. Errors the watcher cannot fix
//! itself (401/403/404) reach every subscriber, and the watch pauses before it tries again.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wisp_api::{Resource, Status};
use wisp_client::{Client, ClientError, WatchParams, WatcherEvent};

use crate::reflector::{Store, Writer, watcher_stream};

/// Events a subscriber may fall behind before it is caught up with a snapshot instead.
pub const CHANNEL_CAPACITY: usize = 1024;

/// Pause after a watch error the watcher cannot fix itself before watching again.
const WATCH_ERROR_PAUSE: Duration = Duration::from_secs(5);

type Event<T> = Result<WatcherEvent<T>, Box<Status>>;

/// The shared caches of one process. Cheap to clone; every clone shares the same watches.
#[derive(Clone)]
pub struct Informers {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Kind → its `Arc<Shared<T>>`.
    kinds: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// Kind → what to watch instead of everything (set before the kind is first used).
    params: Mutex<HashMap<TypeId, WatchParams>>,
}

impl Informers {
    /// Caches that watch through `client` until `shutdown`.
    pub fn new(client: Client, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                shutdown,
                tasks: TaskTracker::new(),
                kinds: Mutex::default(),
                params: Mutex::default(),
            }),
        }
    }

    /// Watches `T` with `params` (a selector) instead of every object of the kind. Takes
    /// effect only if the kind has not been asked for yet.
    pub fn with_params<T: Resource>(self, params: WatchParams) -> Self {
        self.inner
            .params
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(TypeId::of::<T>(), params);
        self
    }

    /// The client the watches go through (for the writes of whoever holds these caches).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The shared cache of `T`, starting its watch on first use.
    pub fn shared<T: Resource>(&self) -> Shared<T> {
        let mut kinds = self.inner.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = kinds.get(&TypeId::of::<T>())
            && let Ok(shared) = Arc::clone(existing).downcast::<Shared<T>>()
        {
            return (*shared).clone();
        }
        let params = self
            .inner
            .params
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&TypeId::of::<T>())
            .cloned()
            .unwrap_or_default();
        let events = watcher_stream(self.inner.client.api::<T>(None).watcher(params));
        let (shared, fed) = Shared::from_events(events, self.inner.shutdown.clone());
        kinds.insert(TypeId::of::<T>(), Arc::new(shared.clone()));
        drop(kinds);
        self.inner.tasks.spawn(fed);
        shared
    }

    /// The cache of `T` (see [`Informers::shared`]).
    pub fn store<T: Resource>(&self) -> Store<T> {
        self.shared::<T>().store()
    }

    /// The events of `T` (see [`Shared::subscribe`]).
    pub fn subscribe<T: Resource>(&self) -> BoxStream<'static, Result<WatcherEvent<T>, ClientError>> {
        self.shared::<T>().subscribe()
    }

    /// The cache of `T` and a stream of its events.
    pub fn cached<T: Resource>(
        &self,
    ) -> (Store<T>, BoxStream<'static, Result<WatcherEvent<T>, ClientError>>) {
        let shared = self.shared::<T>();
        (shared.store(), shared.subscribe())
    }

    /// Waits until every watch has stopped (after the shutdown token is cancelled).
    pub async fn join(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// One kind's shared cache and its event broadcast.
pub struct Shared<T> {
    inner: Arc<SharedInner<T>>,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct SharedInner<T> {
    store: Store<T>,
    /// Held while an event is applied and sent, and while a subscriber snapshots and joins;
    /// `None` once the watch has stopped (subscribers' streams end).
    tx: Mutex<Option<broadcast::Sender<Event<T>>>>,
}

impl<T: Resource> Shared<T> {
    pub fn store(&self) -> Store<T> {
        self.inner.store.clone()
    }

    /// The cache's contents as a `Restarted` event (once it has been listed), then every
    /// later event. Ends when the watch stops.
    pub fn subscribe(&self) -> BoxStream<'static, Result<WatcherEvent<T>, ClientError>> {
        let Some((rx, first)) = join(&self.inner) else {
            return futures::stream::empty().boxed();
        };
        let sub = Subscriber {
            rx,
            first,
            inner: Arc::clone(&self.inner),
        };
        futures::stream::unfold(sub, |mut sub| async move {
            if let Some(snapshot) = sub.first.take() {
                return Some((Ok(snapshot), sub));
            }
            loop {
                match sub.rx.recv().await {
                    Ok(ev) => return Some((ev.map_err(ClientError::Api), sub)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            kind = T::KIND,
                            missed,
                            "subscriber fell behind; sending a snapshot"
                        );
                        let (rx, snapshot) = join(&sub.inner)?;
                        sub.rx = rx;
                        if let Some(snapshot) = snapshot {
                            return Some((Ok(snapshot), sub));
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    /// A cache fed by `events` (the caller polls the future, which ends at `shutdown` or when
    /// `events` does): what [`Informers::shared`] runs for a watch, and tests for any stream.
    pub fn from_events<S>(
        events: S,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static)
    where
        S: Stream<Item = Result<WatcherEvent<T>, ClientError>> + Send + 'static,
    {
        let writer = Writer::<T>::new();
        let shared = Self {
            inner: Arc::new(SharedInner {
                store: writer.as_reader(),
                tx: Mutex::new(Some(broadcast::Sender::new(CHANNEL_CAPACITY))),
            }),
        };
        let fed = feed(writer, events, Arc::clone(&shared.inner), shutdown);
        (shared, fed)
    }
}

struct Subscriber<T> {
    rx: broadcast::Receiver<Event<T>>,
    first: Option<WatcherEvent<T>>,
    inner: Arc<SharedInner<T>>,
}

/// A receiver from now on and, when the cache has been listed, its contents.
#[allow(clippy::type_complexity)]
fn join<T: Resource>(
    inner: &SharedInner<T>,
) -> Option<(broadcast::Receiver<Event<T>>, Option<WatcherEvent<T>>)> {
    let tx = inner.tx.lock().unwrap_or_else(PoisonError::into_inner);
    let rx = tx.as_ref()?.subscribe();
    let snapshot = inner
        .store
        .ready()
        .then(|| WatcherEvent::Restarted(inner.store.list().iter().map(|o| (**o).clone()).collect()));
    Some((rx, snapshot))
}

/// The one watch of a kind: applies each event to the cache and sends it to subscribers.
async fn feed<T, S>(
    mut writer: Writer<T>,
    events: S,
    shared: Arc<SharedInner<T>>,
    shutdown: CancellationToken,
) where
    T: Resource,
    S: Stream<Item = Result<WatcherEvent<T>, ClientError>> + Send + 'static,
{
    let mut events = std::pin::pin!(events);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            next = events.next() => next,
        };
        match next {
            None => break,
            Some(Ok(ev)) => {
                let tx = shared.tx.lock().unwrap_or_else(PoisonError::into_inner);
                writer.apply(&ev);
                if let Some(tx) = tx.as_ref() {
                    // No subscriber is not an error: the cache alone is read.
                    let _ = tx.send(Ok(ev));
                }
            }
            Some(Err(e)) => {
                tracing::error!(kind = T::KIND, error = %e, "watch failed; retrying");
                if let ClientError::Api(status) = e {
                    let tx = shared.tx.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(tx) = tx.as_ref() {
                        let _ = tx.send(Err(status));
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(WATCH_ERROR_PAUSE) => {}
                }
            }
        }
    }
    // Subscribers' streams end.
    shared.tx.lock().unwrap_or_else(PoisonError::into_inner).take();
}

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
