//! Recording [`Event`]s: a component says what happened to an object
//! ([`Recorder::normal`], [`Recorder::warning`]) without waiting, and its [`RecorderTask`]
//! writes them through the API.
//!
//! What bounds the writes (cf. client-go's `EventCorrelator` and its spam filter):
//! * **one object per (object, reason, type, reporter)**, named by [`wisp_api::event_name`]:
//!   a repeat raises `count` and `lastTimestamp` and replaces the message, so a crash loop is
//!   a handful of Events with counts, not one per restart;
//! * **at most one write per [`RecorderConfig::min_interval`] per Event**: repeats in between
//!   are counted and written together;
//! * **at most [`RecorderConfig::writes_per_second`] writes** per recorder, and of them at most
//!   [`RecorderConfig::namespace_writes_per_second`] for one namespace, so one tenant's churn
//!   cannot use up what another's warnings need;
//! * **bounded memory**: a bounded queue (past it an occurrence is dropped, counted and logged
//!   at most every 10 s — the component never waits), at most
//!   [`RecorderConfig::remembered`] Events remembered and
//!   [`RecorderConfig::namespace_remembered`] of one namespace.
//!
//! Messages are cut to [`EVENT_MESSAGE_MAX`] bytes and their control characters escaped
//! (they often quote what a tenant wrote: an image name, a probe path). The Event's name is
//! derived from what it is about and who reports it, so a restarted component counts on the
//! same object; an Event deleted after its TTL is made again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wisp_api::{EVENT_MESSAGE_MAX, Event, EventSeverity, ObjectMeta, ObjectReference, Resource};
use wisp_client::Client;

/// How occurrences become writes.
#[derive(Clone, Debug)]
pub struct RecorderConfig {
    /// The shortest time between two writes of one Event.
    pub min_interval: Duration,
    /// Writes per second, all Events together.
    pub writes_per_second: u32,
    /// Writes per second for the Events of one namespace.
    pub namespace_writes_per_second: u32,
    /// Occurrences waiting for the task; more are dropped.
    pub queue: usize,
    /// Events remembered (to count on without reading them first); the least recently seen
    /// written ones are forgotten past this.
    pub remembered: usize,
    /// Events of one namespace remembered; new ones of a namespace at this are dropped.
    pub namespace_remembered: usize,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(5),
            writes_per_second: 50,
            namespace_writes_per_second: 10,
            queue: 1024,
            remembered: 4096,
            namespace_remembered: 512,
        }
    }
}

/// How often dropped occurrences are reported in the log, at most.
const DROP_LOG_PERIOD: Duration = Duration::from_secs(10);

/// One thing that happened.
#[derive(Clone, Debug)]
struct Occurrence {
    object: ObjectReference,
    severity: EventSeverity,
    reason: String,
    message: String,
    at: jiff::Timestamp,
}

/// Says what happened; cheap to clone, never waits. A recorder made by [`Recorder::disabled`]
/// drops everything.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Occurrence>>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// A recorder for `component` (`scheduler`, `node-agent`) of `instance` (a node's name,
    /// or empty), writing with `client`; run the task to have anything written.
    pub fn new(
        client: Client,
        component: &str,
        instance: &str,
        config: RecorderConfig,
    ) -> (Self, RecorderTask) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let task = RecorderTask {
            rx,
            client,
            component: component.to_owned(),
            instance: instance.to_owned(),
            config,
            entries: HashMap::new(),
            per_namespace: HashMap::new(),
            budgets: HashMap::new(),
            next_write: Instant::now(),
            dropped: dropped.clone(),
            dropped_logged_at: None,
        };
        (
            Self {
                tx: Some(tx),
                dropped,
            },
            task,
        )
    }

    /// A recorder that records nothing (components run without an API in unit tests).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            dropped: Arc::default(),
        }
    }

    pub fn normal(&self, object: ObjectReference, reason: &str, message: impl Into<String>) {
        self.record(object, EventSeverity::Normal, reason, message.into());
    }

    pub fn warning(&self, object: ObjectReference, reason: &str, message: impl Into<String>) {
        self.record(object, EventSeverity::Warning, reason, message.into());
    }

    fn record(&self, object: ObjectReference, severity: EventSeverity, reason: &str, message: String) {
        let Some(tx) = &self.tx else { return };
        let occurrence = Occurrence {
            object,
            severity,
            reason: reason.to_owned(),
            message: clean(&message),
            at: jiff::Timestamp::now(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(occurrence) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `message` with its control characters escaped (`\n`, `\u{1b}`), cut to at most
/// [`EVENT_MESSAGE_MAX`] bytes at a character boundary.
fn clean(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(EVENT_MESSAGE_MAX));
    for c in message.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > EVENT_MESSAGE_MAX {
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// Runs `body` with a [`Recorder`] for `component` of `instance`, its writer beside it until
/// `body` returns (then the writer makes its last writes and stops) or `shutdown`.
pub async fn recording<T, Fut: Future<Output = T>>(
    client: Client,
    component: &str,
    instance: &str,
    shutdown: &CancellationToken,
    body: impl FnOnce(Recorder) -> Fut,
) -> T {
    let (recorder, task) = Recorder::new(client, component, instance, RecorderConfig::default());
    let done = shutdown.child_token();
    let (out, ()) = tokio::join!(
        async {
            let out = body(recorder).await;
            done.cancel();
            out
        },
        Box::pin(task.run(done.clone())),
    );
    out
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    kind: String,
    name: String,
    uid: String,
    reason: String,
    severity: EventSeverity,
}

#[derive(Debug)]
struct Entry {
    /// The Event's name.
    name: String,
    last: Occurrence,
    first_at: jiff::Timestamp,
    /// The count the stored Event has (as far as this recorder knows).
    written: i32,
    /// Occurrences since.
    pending: i32,
    /// Whether the Event is known to be stored.
    stored: bool,
    written_at: Option<Instant>,
    seen_at: Instant,
    /// Its namespace used up its writes for now: not before this.
    held_until: Option<Instant>,
}

impl Entry {
    fn due(&self, min_interval: Duration) -> Option<Instant> {
        // Never written: due since it was seen (a fixed time, so a flush finds it due).
        let base = self.written_at.map_or(self.seen_at, |t| t + min_interval);
        (self.pending > 0).then(|| self.held_until.map_or(base, |h| base.max(h)))
    }
}

/// The writer behind a [`Recorder`]; run it for the component's life.
pub struct RecorderTask {
    rx: mpsc::Receiver<Occurrence>,
    client: Client,
    component: String,
    instance: String,
    config: RecorderConfig,
    entries: HashMap<Key, Entry>,
    /// Entries remembered per namespace.
    per_namespace: HashMap<String, usize>,
    /// Writes per namespace in the current second: (second began, writes).
    budgets: HashMap<String, (Instant, u32)>,
    next_write: Instant,
    dropped: Arc<AtomicU64>,
    dropped_logged_at: Option<Instant>,
}

impl RecorderTask {
    /// Writes what the recorders say until `shutdown`, then what is left (for up to 2 s).
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let due = self.next_due();
            tokio::select! {
                got = self.rx.recv() => match got {
                    Some(o) => self.note(o),
                    None => break,
                },
                // One write a pass: the queue and shutdown are looked at between writes.
                () = sleep_until(due) => self.write_next().await,
                () = shutdown.cancelled() => break,
            }
            self.log_drops();
        }
        while let Ok(o) = self.rx.try_recv() {
            self.note(o);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush_all()).await;
        self.log_drops();
    }

    fn log_drops(&mut self) {
        if self
            .dropped_logged_at
            .is_some_and(|t| t.elapsed() < DROP_LOG_PERIOD)
        {
            return;
        }
        let n = self.dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::warn!(dropped = n, component = %self.component, "event queue full; events dropped");
            self.dropped_logged_at = Some(Instant::now());
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| e.due(self.config.min_interval))
            .min()
            .map(|t| t.max(self.next_write))
    }

    fn note(&mut self, o: Occurrence) {
        let key = Key {
            namespace: o.object.namespace.clone().unwrap_or_default(),
            kind: o.object.kind.clone(),
            name: o.object.name.clone(),
            uid: o.object.uid.clone().unwrap_or_default(),
            reason: o.reason.clone(),
            severity: o.severity,
        };
        let now = Instant::now();
        if let Some(e) = self.entries.get_mut(&key) {
            e.pending = e.pending.saturating_add(1);
            e.last = o;
            e.seen_at = now;
            return;
        }
        if self.entries.len() >= self.config.remembered {
            self.forget(None);
        }
        if self.per_namespace.get(&key.namespace).copied().unwrap_or(0) >= self.config.namespace_remembered {
            self.forget(Some(&key.namespace));
        }
        let in_namespace = self.per_namespace.get(&key.namespace).copied().unwrap_or(0);
        if self.entries.len() >= self.config.remembered || in_namespace >= self.config.namespace_remembered {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *self.per_namespace.entry(key.namespace.clone()).or_default() += 1;
        let name = wisp_api::event_name(&o.object, &o.reason, o.severity, &self.component, &self.instance);
        self.entries.insert(
            key,
            Entry {
                name,
                first_at: o.at,
                last: o,
                written: 0,
                pending: 1,
                stored: false,
                written_at: None,
                seen_at: now,
                held_until: None,
            },
        );
    }

    fn remove(&mut self, key: &Key) {
        if self.entries.remove(key).is_some()
            && let Some(n) = self.per_namespace.get_mut(&key.namespace)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_namespace.remove(&key.namespace);
            }
        }
    }

    /// Forgets the older half of the written Events (of `namespace`, or of all); they are
    /// found again by name.
    fn forget(&mut self, namespace: Option<&str>) {
        let mut idle: Vec<(Instant, Key)> = self
            .entries
            .iter()
            .filter(|(k, e)| e.pending == 0 && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(k, e)| (e.seen_at, k.clone()))
            .collect();
        idle.sort_by_key(|(t, _)| *t);
        for (_, k) in idle.iter().take(idle.len().div_ceil(2)) {
            self.remove(k);
        }
    }

    /// Whether `namespace` may have one more write now; if not, when it may.
    fn spend(&mut self, namespace: &str, now: Instant) -> Result<(), Instant> {
        let limit = self.config.namespace_writes_per_second.max(1);
        let (began, used) = self.budgets.entry(namespace.to_owned()).or_insert((now, 0));
        if now.duration_since(*began) >= Duration::from_secs(1) {
            *began = now;
            *used = 0;
        }
        if *used >= limit {
            return Err(*began + Duration::from_secs(1));
        }
        *used += 1;
        Ok(())
    }

    /// Writes the Event due first, if its namespace has writes left (else holds it).
    async fn write_next(&mut self) {
        let now = Instant::now();
        let min_interval = self.config.min_interval;
        let Some(key) = self
            .entries
            .iter()
            .filter_map(|(k, e)| e.due(min_interval).filter(|t| *t <= now).map(|t| (t, k)))
            .min_by_key(|(t, _)| *t)
            .map(|(_, k)| k.clone())
        else {
            return;
        };
        if self.budgets.len() > 4 * self.config.namespace_remembered {
            self.budgets
                .retain(|_, (began, _)| now.duration_since(*began) < Duration::from_secs(1));
        }
        if let Err(until) = self.spend(&key.namespace, now) {
            if let Some(e) = self.entries.get_mut(&key) {
                e.held_until = Some(until);
            }
            return;
        }
        let spacing = Duration::from_secs(1) / self.config.writes_per_second.max(1);
        self.next_write = now + spacing;
        self.write(&key).await;
    }

    /// Writes every pending Event (at shutdown: no rate applies).
    async fn flush_all(&mut self) {
        let pending: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| e.pending > 0)
            .map(|(k, _)| k.clone())
            .collect();
        for key in pending {
            self.write(&key).await;
        }
    }

    fn event(&self, e: &Entry, count: i32, first: jiff::Timestamp) -> Event {
        let mut ev = Event::new(ObjectMeta::namespaced(
            e.last.object.namespace.clone().unwrap_or_default(),
            e.name.clone(),
        ));
        ev.involved_object = e.last.object.clone();
        ev.reason.clone_from(&e.last.reason);
        ev.message.clone_from(&e.last.message);
        ev.type_ = e.last.severity;
        ev.count = count;
        ev.first_timestamp = Some(first.to_string());
        ev.last_timestamp = Some(e.last.at.to_string());
        ev.reporting_component.clone_from(&self.component);
        ev.reporting_instance.clone_from(&self.instance);
        ev
    }

    async fn write(&mut self, key: &Key) {
        let Some(e) = self.entries.get(key) else { return };
        let api = self.client.api::<Event>(Some(&key.namespace));
        let count = e.written.saturating_add(e.pending);
        let result = if e.stored {
            match api.replace(&self.event(e, count, e.first_at)).await {
                Err(err) if err.code() == Some(404) => {
                    create(&api, self.event(e, e.pending, e.first_at)).await
                }
                other => other,
            }
        } else {
            create(&api, self.event(e, count, e.first_at)).await
        };
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.written_at = Some(Instant::now());
        e.held_until = None;
        match result {
            Ok(stored) => {
                e.written = stored.count;
                e.pending = 0;
                e.stored = true;
                if let Some(first) = stored.first_timestamp.and_then(|t| t.parse().ok()) {
                    e.first_at = first;
                }
            }
            // The object's namespace is gone, or the Event is refused: nothing more to say.
            Err(err) if matches!(err.code(), Some(403 | 404 | 422)) => {
                tracing::debug!(event = %e.name, error = %err, "event not written");
                self.remove(key);
            }
            Err(err) => tracing::warn!(event = %e.name, error = %err, "cannot write an event; retrying"),
        }
    }
}

/// Creates `event`, or adds its count to the Event stored under its name (keeping that one's
/// `firstTimestamp`).
async fn create(api: &wisp_client::Api<Event>, event: Event) -> wisp_client::Result<Event> {
    match api.create(&event).await {
        Err(err) if err.code() == Some(409) => {
            let stored = api.get(&event.metadata.name).await?;
            let mut next = event;
            next.count = stored.count.saturating_add(next.count);
            if stored.first_timestamp.is_some() {
                next.first_timestamp = stored.first_timestamp;
            }
            next.metadata.resource_version = stored.metadata.resource_version;
            api.replace(&next).await
        }
        other => other,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
