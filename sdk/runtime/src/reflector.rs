//! A read-only cache of one kind, fed by watch events.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use wisp_api::Resource;
use wisp_client::{ClientError, Watcher, WatcherEvent};

/// Identifies an object of a known kind: namespace (`None` for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// A cluster-scoped reference.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            namespace: None,
            name: name.into(),
        }
    }

    /// The same reference inside `namespace`.
    pub fn within(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The reference of an object.
    pub fn from_obj<T: Resource>(obj: &T) -> Self {
        let meta = obj.metadata();
        Self {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

type Cache<T> = Arc<RwLock<HashMap<ObjectRef, Arc<T>>>>;

/// A cheap-to-clone, read-only view of the cache a [`Writer`] maintains.
pub struct Store<T> {
    cache: Cache<T>,
    ready: watch::Receiver<bool>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Self {
            cache: Arc::clone(&self.cache),
            ready: self.ready.clone(),
        }
    }
}

impl<T> Store<T> {
    pub fn get(&self, key: &ObjectRef) -> Option<Arc<T>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        cache.get(key).cloned()
    }

    /// Every cached object, in no particular order.
    pub fn list(&self) -> Vec<Arc<T>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        cache.values().cloned().collect()
    }

    /// The keys of every cached object.
    pub fn keys(&self) -> Vec<ObjectRef> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        cache.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.cache.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the first full list (`Restarted`) has been applied.
    pub fn ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until [`Store::ready`]. Returns `false` if the writer was dropped before that.
    pub async fn wait_ready(&self) -> bool {
        let mut rx = self.ready.clone();
        rx.wait_for(|r| *r).await.is_ok()
    }
}

/// The single writer of a cache; apply every watch event to it.
pub struct Writer<T> {
    cache: Cache<T>,
    ready: watch::Sender<bool>,
}

impl<T: Resource> Default for Writer<T> {
    fn default() -> Self {
        Self {
            cache: Arc::default(),
            ready: watch::Sender::new(false),
        }
    }
}

impl<T: Resource> Writer<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader of this writer's cache.
    pub fn as_reader(&self) -> Store<T> {
        Store {
            cache: Arc::clone(&self.cache),
            ready: self.ready.subscribe(),
        }
    }

    /// Applies one event: `Restarted` replaces everything (and marks the store ready).
    pub fn apply(&mut self, event: &WatcherEvent<T>) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            WatcherEvent::Restarted(objs) => {
                *cache = objs
                    .iter()
                    .map(|o| (ObjectRef::from_obj(o), Arc::new(o.clone())))
                    .collect();
                drop(cache);
                self.ready.send_replace(true);
            }
            WatcherEvent::Applied(o) => {
                cache.insert(ObjectRef::from_obj(o), Arc::new(o.clone()));
            }
            WatcherEvent::Deleted(o) => {
                cache.remove(&ObjectRef::from_obj(o));
            }
        }
    }
}

/// A [`Watcher`] as an endless stream of events (errors are the watcher's non-retryable ones).
pub fn watcher_stream<T: Resource>(
    watcher: Watcher<T>,
) -> impl Stream<Item = Result<WatcherEvent<T>, ClientError>> + Send + 'static {
    futures::stream::unfold(watcher, |mut w| async move {
        let ev = w.next().await;
        Some((ev, w))
    })
}

/// Applies every event of `events` to `writer`'s cache, then passes it on.
pub fn reflector<T, S>(
    mut writer: Writer<T>,
    events: S,
) -> impl Stream<Item = Result<WatcherEvent<T>, ClientError>> + Send + 'static
where
    T: Resource,
    S: Stream<Item = Result<WatcherEvent<T>, ClientError>> + Send + 'static,
{
    events.map(move |ev| {
        if let Ok(ev) = &ev {
            writer.apply(ev);
        }
        ev
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_api::{ConfigMap, ObjectMeta};

    fn cm(name: &str, v: &str) -> ConfigMap {
        let mut c = ConfigMap::new(ObjectMeta::namespaced("default", name));
        c.data.insert("v".into(), v.into());
        c
    }

    #[tokio::test]
    async fn reflector_applies_events_in_order() {
        let writer = Writer::<ConfigMap>::new();
        let store = writer.as_reader();
        assert!(!store.ready());
        let events = futures::stream::iter(vec![
            Ok(WatcherEvent::Restarted(vec![cm("a", "1"), cm("b", "1")])),
            Ok(WatcherEvent::Applied(cm("a", "2"))),
            Ok(WatcherEvent::Deleted(cm("b", "1"))),
            Ok(WatcherEvent::Restarted(vec![cm("c", "1")])),
        ]);
        let mut s = std::pin::pin!(reflector(writer, events));
        let a = ObjectRef::new("a").within("default");
        s.next().await;
        assert!(store.ready());
        assert!(store.wait_ready().await);
        assert_eq!(store.len(), 2);
        s.next().await;
        assert_eq!(store.get(&a).map(|c| c.data["v"].clone()), Some("2".into()));
        s.next().await;
        assert_eq!(store.keys(), vec![a]);
        s.next().await;
        assert_eq!(store.keys(), vec![ObjectRef::new("c").within("default")]);
        assert_eq!(store.list().len(), 1);
    }

    #[tokio::test]
    async fn wait_ready_fails_when_writer_dropped() {
        let writer = Writer::<ConfigMap>::new();
        let store = writer.as_reader();
        drop(writer);
        assert!(!store.wait_ready().await);
        assert_eq!(ObjectRef::new("x").within("ns").to_string(), "ns/x");
    }
}
