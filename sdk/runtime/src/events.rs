//! Recording [`Event`]s: a component says what happened to an object
//! ([`Recorder::normal`], [`Recorder::warning`]) without waiting, and its [`RecorderTask`]
//! writes them through the API.
//!
//! What bounds the writes (cf. client-go's `EventCorrelator`):
//! * **one object per (object, reason, type, component)**: a repeat raises `count` and
//!   `lastTimestamp` and replaces the message, so a crash loop is a handful of Events with
//!   counts, not one per restart;
//! * **at most one write per [`RecorderConfig::min_interval`] per Event**: repeats in between
//!   are counted and written together;
//! * **at most [`RecorderConfig::writes_per_second`] writes** per recorder, and a bounded
//!   queue: past it an occurrence is dropped (and logged), the component never waits.
//!
//! The Event's name is derived from what it is about, so a restarted component (or a second
//! one) finds and counts on the same object; an Event deleted after its TTL is made again.

use std::collections::HashMap;
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
    /// Occurrences waiting for the task; more are dropped.
    pub queue: usize,
    /// Events remembered (to count on without reading them first); the least recently seen
    /// written ones are forgotten past this.
    pub remembered: usize,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(5),
            writes_per_second: 50,
            queue: 1024,
            remembered: 4096,
        }
    }
}

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
        let task = RecorderTask {
            rx,
            client,
            component: component.to_owned(),
            instance: instance.to_owned(),
            config,
            entries: HashMap::new(),
            next_write: Instant::now(),
        };
        (Self { tx: Some(tx) }, task)
    }

    /// A recorder that records nothing (components run without an API in unit tests).
    pub fn disabled() -> Self {
        Self { tx: None }
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
            message: truncate(message, EVENT_MESSAGE_MAX),
            at: jiff::Timestamp::now(),
        };
        if let Err(mpsc::error::TrySendError::Full(o)) = tx.try_send(occurrence) {
            tracing::warn!(reason = %o.reason, object = %o.object.name, "event queue full; event dropped");
        }
    }
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

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
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
}

impl Entry {
    fn due(&self, min_interval: Duration) -> Option<Instant> {
        // Never written: due since it was seen (a fixed time, so a flush finds it due).
        (self.pending > 0).then(|| self.written_at.map_or(self.seen_at, |t| t + min_interval))
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
    next_write: Instant,
}

/// A 64-bit FNV-1a hash: stable across builds, for names derived from content.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The Event's name: the object's name and a hash of what the Event is about.
fn event_name(key: &Key, component: &str) -> String {
    let hash = fnv1a(&[
        &key.kind,
        &key.name,
        &key.uid,
        &key.reason,
        key.severity.as_str(),
        component,
    ]);
    let mut prefix: String = key.name.chars().take(253 - 17).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}.{hash:016x}")
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
                () = sleep_until(due) => self.flush(false).await,
                () = shutdown.cancelled() => break,
            }
        }
        while let Ok(o) = self.rx.try_recv() {
            self.note(o);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush(true)).await;
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
            self.forget();
            if self.entries.len() >= self.config.remembered {
                tracing::warn!(reason = %o.reason, object = %o.object.name, "too many events waiting; event dropped");
                return;
            }
        }
        let name = event_name(&key, &self.component);
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
            },
        );
    }

    /// Forgets the older half of the written Events (they are found again by name).
    fn forget(&mut self) {
        let mut idle: Vec<(Instant, Key)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.pending == 0)
            .map(|(k, e)| (e.seen_at, k.clone()))
            .collect();
        idle.sort_by_key(|(t, _)| *t);
        for (_, k) in idle.iter().take(idle.len().div_ceil(2)) {
            self.entries.remove(k);
        }
    }

    /// Writes the Events that are due (all that are pending with `all`).
    async fn flush(&mut self, all: bool) {
        let now = Instant::now();
        let min_interval = self.config.min_interval;
        let due: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| e.due(min_interval).is_some_and(|t| all || t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let spacing = Duration::from_secs(1) / self.config.writes_per_second.max(1);
        for key in due {
            if !all {
                tokio::time::sleep_until(self.next_write).await;
            }
            self.next_write = Instant::now() + spacing;
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
                self.entries.remove(key);
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
