//! The embedded backend: a redb file, one writer thread with group commit, a write-ahead
//! log, an in-memory fan-out of committed events, and the change log kept in redb for watch
//! resumption.
//!
//! Writes are sent to the writer thread, which drains every pending request into one
//! transaction, appends its changes to the write-ahead log and syncs that (one small
//! sequential write for the batch), then commits the transaction to redb without a sync,
//! before answering any of them: an acknowledged write is on disk, in the log until a
//! checkpoint (a durable redb commit, when idle or the log is half full) makes the redb
//! file hold it (see `wal.rs`).
//!
//! The writer thread is owned: [`EmbeddedStore::close`] (or dropping the last handle) stops
//! it after what it was sent, checkpoints, joins it and releases the redb file, so the same
//! directory can be opened again at once. Long scans (lists past a few rows, the change log a
//! watch reads) run on tokio's blocking threads, never on its async workers; a short list is
//! read where it was asked for, since two thread wake-ups would cost more than it does.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use crate::wal::{self, Mutation, Payload, Wal};
use crate::{
    BackendError, BoxError, Event, EventKind, KeyValue, LeaseId, Listing, Result, Revision, Store,
    StoreError, WatchStream,
};

/// Rows a list scans on the async worker that asked for it before it moves to a blocking
/// thread.
const INLINE_ROWS: usize = 128;

const KV: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<'_, i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const LEASES: TableDefinition<'_, i64, i64> = TableDefinition::new("leases");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_NEXT_LEASE: &str = "next_lease";
/// The write-ahead log's current epoch: its records of this epoch are not in redb's last
/// durable commit yet.
const META_WAL_EPOCH: &str = "wal_epoch";
const WAL_FILE: &str = "wisp.wal";
/// Size of the write-ahead log; a checkpoint starts it over once half of it is used.
const WAL_SIZE: u64 = 4 << 20;

/// Once the log is more than an eighth full, this much quiet is enough for a checkpoint (else
/// a lease tick of it): a cluster that writes every few tens of milliseconds (a cold start's
/// chain, then its status writes) is never quiet for a whole tick, and its log would fill to
/// half and be checkpointed in the middle of a request — a durable commit of 2 MiB of changes,
/// 6–14 ms, measured as the slowest cold starts.
const SHORT_QUIET: Duration = Duration::from_millis(10);

/// How long nothing must be logged before an idle writer checkpoints: a lease tick, or
/// [`SHORT_QUIET`] (at most a tick) once the log is over an eighth full.
fn quiet_needed(used: u64, capacity: u64, tick: Duration) -> Duration {
    if used > capacity / 8 {
        SHORT_QUIET.min(tick)
    } else {
        tick
    }
}

/// Whether an idle writer checkpoints now: something is logged, and nothing was for
/// [`quiet_needed`].
fn idle_checkpoint_due(used: u64, capacity: u64, quiet: Duration, tick: Duration) -> bool {
    used > 0 && quiet >= quiet_needed(used, capacity, tick)
}

/// Most requests folded into one transaction.
const MAX_BATCH: usize = 4096;

/// Tuning of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How many revisions of change history to keep for watches (older ones are compacted).
    pub history: i64,
    /// How often the writer checks for expired leases.
    pub lease_tick: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            history: 100_000,
            lease_tick: Duration::from_millis(100),
        }
    }
}

/// A redb (or I/O) error, kept as the source.
fn backend(e: impl Into<BoxError>) -> StoreError {
    StoreError::Backend(BackendError::new("redb", e))
}

/// A failure with no underlying error (a corrupt record).
fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Backend(BackendError::msg(what))
}

/// Value layout in the `kv` table: create revision, mod revision, lease (0 = none), data.
fn encode_kv(create: Revision, modified: Revision, lease: Option<LeaseId>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + data.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(&lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(data);
    out
}

fn read_i64(raw: &[u8], at: usize) -> Result<i64> {
    raw.get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_le_bytes)
        .ok_or_else(|| corrupt("corrupt record: too short"))
}

fn decode_kv(key: &str, raw: &[u8]) -> Result<KeyValue> {
    let lease = read_i64(raw, 16)?;
    Ok(KeyValue {
        key: key.to_owned(),
        create_revision: read_i64(raw, 0)?,
        mod_revision: read_i64(raw, 8)?,
        lease: (lease != 0).then_some(lease),
        value: Bytes::copy_from_slice(&raw[24..]),
    })
}

/// Log layout: kind byte, key length (u32), key, length of the encoded kv (u32), encoded kv
/// (for deletes: the last value), then for modifications the encoded previous kv.
fn encode_log(kind: EventKind, kv: &KeyValue, prev: Option<&KeyValue>) -> Vec<u8> {
    let tag = match kind {
        EventKind::Added => 0u8,
        EventKind::Modified => 1,
        EventKind::Deleted => 2,
    };
    let kvb = encode_kv(kv.create_revision, kv.mod_revision, kv.lease, &kv.value);
    let mut out = Vec::with_capacity(5 + kv.key.len() + kvb.len());
    out.push(tag);
    out.extend_from_slice(&u32::try_from(kv.key.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(kv.key.as_bytes());
    out.extend_from_slice(&u32::try_from(kvb.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&kvb);
    if let Some(p) = prev {
        out.extend_from_slice(&encode_kv(p.create_revision, p.mod_revision, p.lease, &p.value));
    }
    out
}

fn read_u32(raw: &[u8], at: usize) -> Option<usize> {
    raw.get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_le_bytes(b) as usize)
}

fn decode_log(revision: Revision, raw: &[u8]) -> Result<Event> {
    let corrupt = || corrupt(format!("corrupt log record at revision {revision}"));
    let kind = match raw.first() {
        Some(0) => EventKind::Added,
        Some(1) => EventKind::Modified,
        Some(2) => EventKind::Deleted,
        _ => return Err(corrupt()),
    };
    let len = read_u32(raw, 1).ok_or_else(corrupt)?;
    let key = raw
        .get(5..5 + len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(corrupt)?;
    let kv_len = read_u32(raw, 5 + len).ok_or_else(corrupt)?;
    let kv_start = 9 + len;
    let kv = decode_kv(key, raw.get(kv_start..kv_start + kv_len).ok_or_else(corrupt)?)?;
    let rest = raw.get(kv_start + kv_len..).ok_or_else(corrupt)?;
    let prev = if rest.is_empty() {
        None
    } else {
        Some(decode_kv(key, rest)?)
    };
    Ok(Event {
        kind,
        kv,
        revision,
        prev,
    })
}

type Reply<T> = oneshot::Sender<Result<T>>;

enum Op {
    Create {
        key: String,
        value: Bytes,
        lease: Option<LeaseId>,
        reply: Reply<Revision>,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Option<Revision>,
        reply: Reply<Revision>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
        reply: Reply<KeyValue>,
    },
    Compact {
        revision: Revision,
        reply: Reply<()>,
    },
    LeaseGrant {
        ttl: Duration,
        reply: Reply<LeaseId>,
    },
    LeaseKeepAlive {
        id: LeaseId,
        reply: Reply<()>,
    },
    LeaseRevoke {
        id: LeaseId,
        reply: Reply<()>,
    },
    /// Stop after the operations sent before this one (see [`EmbeddedStore::close`]).
    Close,
}

struct Shared {
    /// The database for reads; `None` once closed. A read holds the lock while it reads, so
    /// that closing waits for the reads in flight before it releases the file.
    db: RwLock<Option<Arc<Database>>>,
    /// False once the writer thread has exited (or panicked): writes can no longer succeed.
    alive: AtomicBool,
    revision: AtomicI64,
    compacted: AtomicI64,
    events: broadcast::Sender<Arc<[Event]>>,
    /// Cancelled when the store closes: watches end with [`StoreError::Closed`].
    closed: CancellationToken,
}

impl Shared {
    /// `read` on the open database ([`StoreError::Closed`] once closed).
    fn with_db<T>(&self, read: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match db.as_deref() {
            Some(db) => read(db),
            None => Err(StoreError::Closed),
        }
    }

    /// Events under `prefix` in `(after, upto]`, read from one snapshot whose compaction
    /// point is checked in that same snapshot (so a concurrent compaction cannot silently
    /// remove part of the range).
    fn read_log(&self, prefix: &str, after: Revision, upto: Revision) -> Result<Vec<Event>> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let compacted = read_meta(&txn, META_COMPACTED)?;
            if after.saturating_add(1) < compacted {
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted,
                });
            }
            let log = txn.open_table(LOG).map_err(backend)?;
            let mut out = Vec::new();
            for row in log.range(after.saturating_add(1)..=upto).map_err(backend)? {
                let (rev, raw) = row.map_err(backend)?;
                let event = decode_log(rev.value(), raw.value())?;
                if event.kv.key.starts_with(prefix) {
                    out.push(event);
                }
            }
            Ok(out)
        })
    }

    /// [`Shared::read_log`] on a blocking thread (the log may hold many changes).
    async fn read_log_blocking(
        self: &Arc<Self>,
        prefix: &str,
        after: Revision,
        upto: Revision,
    ) -> Result<Vec<Event>> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        blocking(move || this.read_log(&prefix, after, upto)).await
    }

    /// The keys under `prefix` and the revision, from one snapshot; `None` when there are
    /// more than `limit` of them.
    fn scan(&self, prefix: &str, limit: Option<usize>) -> Result<Option<Listing>> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let revision = read_meta(&txn, META_REVISION)?;
            let kv = txn.open_table(KV).map_err(backend)?;
            let mut items = Vec::new();
            for row in kv.range(prefix..).map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                let key = k.value();
                if !key.starts_with(prefix) {
                    break;
                }
                if limit.is_some_and(|limit| items.len() == limit) {
                    return Ok(None);
                }
                items.push(decode_kv(key, v.value())?);
            }
            Ok(Some(Listing { items, revision }))
        })
    }
}

/// A counter of the META table in a read snapshot (0 when never written).
fn read_meta(txn: &redb::ReadTransaction, key: &str) -> Result<i64> {
    Ok(txn
        .open_table(META)
        .map_err(backend)?
        .get(key)
        .map_err(backend)?
        .map_or(0, |g| g.value()))
}

/// `read` on one of tokio's blocking threads.
async fn blocking<T: Send + 'static>(read: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| StoreError::Backend(BackendError::new("a store read did not finish", e)))?
}

/// The redb-backed store. Cheap to clone; the last clone dropped closes it (see
/// [`EmbeddedStore::close`]).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// What the clones of one store share: the writer thread is owned here.
struct Inner {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
    /// The writer thread; `None` once closed. Locked for the whole of a close, so that a
    /// second close returns only once the first is done.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Inner {
    /// Stops the writer after what it was sent (a final checkpoint), joins it, waits for the
    /// reads in flight and releases the database file. Blocks; idempotent. False if the
    /// writer thread had panicked.
    fn shutdown(&self) -> bool {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(thread) = writer.take() else {
            return true;
        };
        self.shared.closed.cancel();
        let _ = self.ops.send(Op::Close);
        let joined = thread.join().is_ok();
        if !joined {
            tracing::error!("the store's writer thread panicked");
        }
        let db = self
            .shared
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The writer's handle went with its thread: this was the last one.
        drop(db);
        joined
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl EmbeddedStore {
    /// Open (or create) the store in directory `dir` (file `wisp.redb` inside it).
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BackendError::new(format!("cannot create {}", dir.display()), e))?;
        let path: PathBuf = dir.join("wisp.redb");
        let db = Database::create(&path)
            .map_err(|e| BackendError::new(format!("cannot open {}", path.display()), e))?;
        let wal_path = dir.join(WAL_FILE);
        let mut wal = Wal::open(&wal_path, WAL_SIZE)
            .map_err(|e| BackendError::new(format!("cannot open {}", wal_path.display()), e))?;
        let (revision, compacted, epoch) = {
            let txn = db.begin_write().map_err(backend)?;
            let (revision, compacted, next_epoch);
            {
                let mut meta = txn.open_table(META).map_err(backend)?;
                // Writes acknowledged after redb's last durable commit are in the log: apply
                // them again, then start a new epoch with this (durable) commit.
                let epoch = meta
                    .get(META_WAL_EPOCH)
                    .map_err(backend)?
                    .map_or(0, |g| g.value());
                let records = wal
                    .read_epoch(epoch.cast_unsigned())
                    .map_err(|e| BackendError::new("cannot read the write-ahead log", e))?;
                if !records.is_empty() {
                    tracing::info!(records = records.len(), "replaying the write-ahead log");
                }
                let mut kv = txn.open_table(KV).map_err(backend)?;
                let mut log = txn.open_table(LOG).map_err(backend)?;
                let mut leases = txn.open_table(LEASES).map_err(backend)?;
                for (i, raw) in records.iter().enumerate() {
                    let muts = wal::decode(raw)
                        .ok_or_else(|| corrupt(format!("write-ahead log record {i} is malformed")))?;
                    for m in muts {
                        match m {
                            Mutation::KvPut(k, v) => drop(kv.insert(k, v).map_err(backend)?),
                            Mutation::KvDel(k) => drop(kv.remove(k).map_err(backend)?),
                            Mutation::LogPut(r, v) => drop(log.insert(r, v).map_err(backend)?),
                            Mutation::LogRetainFrom(r) => {
                                log.retain_in(..r, |_, _| false).map_err(backend)?;
                            }
                            Mutation::LeasePut(id, ttl) => drop(leases.insert(id, ttl).map_err(backend)?),
                            Mutation::LeaseDel(id) => drop(leases.remove(id).map_err(backend)?),
                            Mutation::MetaPut(k, v) => drop(meta.insert(k, v).map_err(backend)?),
                        }
                    }
                }
                next_epoch = epoch + 1;
                meta.insert(META_WAL_EPOCH, next_epoch).map_err(backend)?;
                revision = meta
                    .get(META_REVISION)
                    .map_err(backend)?
                    .map(|g| g.value())
                    .unwrap_or(0);
                compacted = meta
                    .get(META_COMPACTED)
                    .map_err(backend)?
                    .map(|g| g.value())
                    .unwrap_or(0);
            }
            txn.commit().map_err(backend)?;
            (revision, compacted, next_epoch)
        };
        wal.restart(epoch.cast_unsigned());
        let lease_state = load_leases(&db)?;
        let (events, _) = broadcast::channel(4096);
        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db.clone())),
            alive: AtomicBool::new(true),
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            events,
            closed: CancellationToken::new(),
        });
        let (ops, rx) = mpsc::channel();
        let writer = Writer {
            db,
            shared: shared.clone(),
            leases: lease_state,
            options,
            wal,
            dead: false,
            last_logged: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("wisp-store-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| BackendError::new("cannot start the store's writer thread", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                ops,
                writer: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Closes the store, for every clone: the writer finishes what it was sent and
    /// checkpoints, its thread is joined, reads in flight finish, watches end with
    /// [`StoreError::Closed`], and the redb file is released — the same directory can be
    /// opened again as soon as this returns. Later calls (of any clone) fail with
    /// [`StoreError::Closed`]. Dropping the last clone does the same (blocking the dropping
    /// thread for as long).
    pub async fn close(&self) -> Result<()> {
        let inner = self.inner.clone();
        let joined = tokio::task::spawn_blocking(move || inner.shutdown())
            .await
            .map_err(|e| BackendError::new("closing the store did not finish", e))?;
        if joined {
            Ok(())
        } else {
            Err(corrupt("the store's writer thread had panicked"))
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.inner.ops.send(make(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn check_compacted(&self, after: Revision) -> Result<()> {
        let compacted = self.shared().compacted.load(Ordering::Acquire);
        if after.saturating_add(1) < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        Ok(())
    }
}

struct WatchState {
    shared: Arc<Shared>,
    prefix: String,
    last: Revision,
    rx: broadcast::Receiver<Arc<[Event]>>,
    pending: std::collections::VecDeque<Event>,
    done: bool,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<Event>, Self)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(ev) = self.pending.pop_front() {
                self.last = ev.revision;
                return Some((Ok(ev), self));
            }
            let received = tokio::select! {
                biased;
                () = self.shared.closed.cancelled() => Err(broadcast::error::RecvError::Closed),
                r = self.rx.recv() => r,
            };
            match received {
                Ok(batch) => {
                    let last = self.last;
                    self.pending.extend(
                        batch
                            .iter()
                            .filter(|e| e.revision > last && e.kv.key.starts_with(&self.prefix))
                            .cloned(),
                    );
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the in-memory fan-out: catch up from the on-disk log.
                    let upto = self.shared.revision.load(Ordering::Acquire);
                    let caught_up = self.shared.read_log_blocking(&self.prefix, self.last, upto).await;
                    match caught_up {
                        Ok(events) => self.pending.extend(events),
                        Err(e) => {
                            self.done = true;
                            return Some((Err(e), self));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some((Err(StoreError::Closed), self));
                }
            }
        }
    }
}

impl Store for EmbeddedStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        // One key: a point read, short enough for an async worker.
        async move {
            self.shared().with_db(|db| {
                let txn = db.begin_read().map_err(backend)?;
                let kv = txn.open_table(KV).map_err(backend)?;
                match kv.get(key).map_err(backend)? {
                    Some(v) => Ok(Some(decode_kv(key, v.value())?)),
                    None => Ok(None),
                }
            })
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing>> {
        // Most lists are short (a namespace's quotas or limit ranges, read on every write):
        // scanned right here, since handing them to a blocking thread and back would cost
        // two thread wake-ups, more than the scan. A scan that runs past INLINE_ROWS stops
        // and starts over, from its own snapshot, on a blocking thread.
        async move {
            if let Some(listing) = self.shared().scan(prefix, Some(INLINE_ROWS))? {
                return Ok(listing);
            }
            let shared = self.shared().clone();
            let prefix = prefix.to_owned();
            blocking(move || match shared.scan(&prefix, None)? {
                Some(listing) => Ok(listing),
                None => unreachable!("a scan without a limit runs to its end"),
            })
            .await
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Revision>> {
        self.call(move |reply| Op::Create {
            key: key.to_owned(),
            value,
            lease,
            reply,
        })
        .boxed()
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<Revision>> {
        self.call(move |reply| Op::Update {
            key: key.to_owned(),
            value,
            expected,
            reply,
        })
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str, expected: Option<Revision>) -> BoxFuture<'a, Result<KeyValue>> {
        self.call(move |reply| Op::Delete {
            key: key.to_owned(),
            expected,
            reply,
        })
        .boxed()
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: Revision) -> BoxFuture<'a, Result<WatchStream>> {
        async move {
            let shared = self.shared();
            // Subscribe first so nothing committed after the history read is missed.
            let rx = shared.events.subscribe();
            self.check_compacted(after)?;
            let upto = shared.revision.load(Ordering::Acquire);
            // read_log checks compaction in the same snapshot it reads, so a racing
            // compaction is caught there.
            let history = if after < upto {
                shared.read_log_blocking(prefix, after, upto).await?
            } else {
                Vec::new()
            };
            let state = WatchState {
                shared: shared.clone(),
                prefix: prefix.to_owned(),
                last: after,
                rx,
                pending: history.into(),
                done: false,
            };
            Ok(stream::unfold(state, WatchState::next).boxed())
        }
        .boxed()
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision>> {
        let shared = self.shared();
        let rev = if shared.alive.load(Ordering::Acquire) {
            Ok(shared.revision.load(Ordering::Acquire))
        } else {
            Err(StoreError::Closed)
        };
        async move { rev }.boxed()
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        self.call(move |reply| Op::Compact { revision, reply }).boxed()
    }

    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>> {
        self.call(move |reply| Op::LeaseGrant { ttl, reply }).boxed()
    }

    fn lease_keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        self.call(move |reply| Op::LeaseKeepAlive { id, reply }).boxed()
    }

    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        self.call(move |reply| Op::LeaseRevoke { id, reply }).boxed()
    }
}

/// Every lease on disk with the keys attached to it; each gets a full TTL from now (as etcd
/// does after a restart).
fn load_leases(db: &Database) -> Result<HashMap<LeaseId, LeaseState>> {
    let txn = db.begin_read().map_err(backend)?;
    let mut state = HashMap::new();
    for row in txn.open_table(LEASES).map_err(backend)?.iter().map_err(backend)? {
        let (id, ttl_ms) = row.map_err(backend)?;
        let ttl = Duration::from_millis(u64::try_from(ttl_ms.value()).unwrap_or(0));
        state.insert(
            id.value(),
            LeaseState {
                ttl,
                deadline: deadline_after(ttl),
                keys: BTreeSet::new(),
            },
        );
    }
    for row in txn.open_table(KV).map_err(backend)?.iter().map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        let lease = read_i64(v.value(), 16)?;
        if lease != 0
            && let Some(s) = state.get_mut(&lease)
        {
            s.keys.insert(k.value().to_owned());
        }
    }
    Ok(state)
}

/// Marks the store dead when the writer thread ends, however it ends (panics included).
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

/// Now plus `ttl`, saturating far in the future instead of overflowing.
fn deadline_after(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

struct LeaseState {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Writer {
    /// The database's write side (readers reach it through [`Shared::db`]).
    db: Arc<Database>,
    shared: Arc<Shared>,
    leases: HashMap<LeaseId, LeaseState>,
    options: EmbeddedOptions,
    wal: Wal,
    /// A commit failed after its batch was in the log: the writer stops.
    dead: bool,
    /// When a batch was last appended to the log.
    last_logged: Instant,
}

/// A reply to send once the batch is durable.
enum Done {
    Rev(Reply<Revision>, Result<Revision>),
    Kv(Reply<KeyValue>, Result<KeyValue>),
    Unit(Reply<()>, Result<()>),
    Lease(Reply<LeaseId>, Result<LeaseId>),
}

impl Done {
    /// The batch's commit failed with `cause`: every request in it gets that as its source.
    fn fail(self, cause: &Arc<StoreError>) {
        let e = || {
            StoreError::Backend(BackendError::new(
                "the commit of this write's batch failed",
                cause.clone(),
            ))
        };
        match self {
            Done::Rev(r, _) => drop(r.send(Err(e()))),
            Done::Kv(r, _) => drop(r.send(Err(e()))),
            Done::Unit(r, _) => drop(r.send(Err(e()))),
            Done::Lease(r, _) => drop(r.send(Err(e()))),
        }
    }
    fn send(self) {
        match self {
            Done::Rev(r, v) => drop(r.send(v)),
            Done::Kv(r, v) => drop(r.send(v)),
            Done::Unit(r, v) => drop(r.send(v)),
            Done::Lease(r, v) => drop(r.send(v)),
        }
    }
}

/// State of one write transaction being filled.
struct Batch<'t> {
    kv: redb::Table<'t, &'static str, &'static [u8]>,
    log: redb::Table<'t, i64, &'static [u8]>,
    leases: redb::Table<'t, i64, i64>,
    meta: redb::Table<'t, &'static str, i64>,
    revision: Revision,
    events: Vec<Event>,
    /// Every change made to the tables, for the write-ahead log.
    changes: Payload,
}

impl Batch<'_> {
    fn kv_put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.kv.insert(key, value).map_err(backend)?;
        self.changes.push(&Mutation::KvPut(key, value));
        Ok(())
    }

    fn kv_del(&mut self, key: &str) -> Result<()> {
        self.kv.remove(key).map_err(backend)?;
        self.changes.push(&Mutation::KvDel(key));
        Ok(())
    }

    fn log_put(&mut self, revision: Revision, raw: &[u8]) -> Result<()> {
        self.log.insert(revision, raw).map_err(backend)?;
        self.changes.push(&Mutation::LogPut(revision, raw));
        Ok(())
    }

    fn log_retain_from(&mut self, revision: Revision) -> Result<()> {
        self.log.retain_in(..revision, |_, _| false).map_err(backend)?;
        self.changes.push(&Mutation::LogRetainFrom(revision));
        Ok(())
    }

    fn lease_put(&mut self, id: LeaseId, ttl_ms: i64) -> Result<()> {
        self.leases.insert(id, ttl_ms).map_err(backend)?;
        self.changes.push(&Mutation::LeasePut(id, ttl_ms));
        Ok(())
    }

    fn lease_del(&mut self, id: LeaseId) -> Result<()> {
        self.leases.remove(id).map_err(backend)?;
        self.changes.push(&Mutation::LeaseDel(id));
        Ok(())
    }

    fn meta_put(&mut self, key: &str, value: i64) -> Result<()> {
        self.meta.insert(key, value).map_err(backend)?;
        self.changes.push(&Mutation::MetaPut(key, value));
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        match self.kv.get(key).map_err(backend)? {
            Some(v) => Ok(Some(decode_kv(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn record(&mut self, kind: EventKind, kv: KeyValue, prev: Option<KeyValue>) -> Result<()> {
        self.log_put(self.revision, &encode_log(kind, &kv, prev.as_ref()))?;
        self.events.push(Event {
            kind,
            kv,
            revision: self.revision,
            prev,
        });
        Ok(())
    }

    /// Write `key`; `prev` is its current value when it exists (an update).
    fn put(
        &mut self,
        key: &str,
        value: Bytes,
        prev: Option<KeyValue>,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        self.revision += 1;
        let rev = self.revision;
        let create = prev.as_ref().map(|p| p.create_revision);
        let create_revision = create.unwrap_or(rev);
        self.kv_put(key, &encode_kv(create_revision, rev, lease, &value))?;
        let kind = if create.is_some() {
            EventKind::Modified
        } else {
            EventKind::Added
        };
        self.record(
            kind,
            KeyValue {
                key: key.to_owned(),
                value,
                create_revision,
                mod_revision: rev,
                lease,
            },
            prev,
        )?;
        Ok(rev)
    }

    fn remove(&mut self, mut prev: KeyValue) -> Result<KeyValue> {
        self.revision += 1;
        self.kv_del(&prev.key)?;
        self.record(EventKind::Deleted, prev.clone(), None)?;
        prev.mod_revision = self.revision;
        Ok(prev)
    }
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Op>) {
        let _alive = AliveGuard(self.shared.clone());
        loop {
            let tick = self.options.lease_tick;
            let wait = quiet_needed(self.wal.used(), self.wal.capacity(), tick);
            let first = match rx.recv_timeout(wait) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if self.wal.used() > 0 {
                        self.checkpoint();
                    }
                    return;
                }
            };
            let mut closing = false;
            let mut ops: Vec<Op> = Vec::new();
            let mut next = first;
            while let Some(op) = next.take() {
                if matches!(op, Op::Close) {
                    closing = true;
                    break;
                }
                ops.push(op);
                if ops.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let now = Instant::now();
            let expired: Vec<LeaseId> = self
                .leases
                .iter()
                .filter(|(_, s)| s.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            if closing {
                // What was sent before the close, then a checkpoint: the redb file alone
                // holds everything when the store is reopened.
                if !ops.is_empty() || !expired.is_empty() {
                    self.apply(ops, &expired);
                }
                if !self.dead && self.wal.used() > 0 {
                    self.checkpoint();
                }
                return;
            }
            if ops.is_empty() && expired.is_empty() {
                // Idle: make what the log holds durable in redb, off any request's path.
                if idle_checkpoint_due(
                    self.wal.used(),
                    self.wal.capacity(),
                    self.last_logged.elapsed(),
                    tick,
                ) {
                    self.checkpoint();
                }
                continue;
            }
            self.apply(ops, &expired);
            if self.dead {
                return;
            }
            // Half full, or nothing logged for a while (only keep-alives): checkpoint.
            if self.wal.used() > self.wal.capacity() / 2
                || (self.wal.used() > 0 && self.last_logged.elapsed() >= self.options.lease_tick)
            {
                self.checkpoint();
            }
        }
    }

    /// A durable redb commit (everything committed so far is then in the redb file), after
    /// which the write-ahead log starts its next epoch from the beginning.
    fn checkpoint(&mut self) {
        let next = self.wal.epoch() + 1;
        let started = Instant::now();
        let result = (|| -> Result<()> {
            let txn = self.db.begin_write().map_err(backend)?;
            txn.open_table(META)
                .map_err(backend)?
                .insert(META_WAL_EPOCH, next.cast_signed())
                .map_err(backend)?;
            txn.commit().map_err(backend)
        })();
        match result {
            Ok(()) => {
                tracing::debug!(
                    log_bytes = self.wal.used(),
                    took_us = started.elapsed().as_micros(),
                    "store checkpoint"
                );
                self.wal.restart(next);
            }
            Err(e) => {
                tracing::warn!(error = %e, "store checkpoint failed; the write-ahead log still holds the writes");
            }
        }
    }

    fn apply(&mut self, ops: Vec<Op>, expired: &[LeaseId]) {
        let mut done = Vec::with_capacity(ops.len());
        let outcome = self.transact(ops, expired, &mut done);
        match outcome {
            Ok(events) => {
                if let Some(last) = events.last() {
                    self.shared.revision.store(last.revision, Ordering::Release);
                }
                for d in done {
                    d.send();
                }
                if !events.is_empty() {
                    let _ = self.shared.events.send(events.into());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                let cause = Arc::new(e);
                for d in done {
                    d.fail(&cause);
                }
                // The batch changed lease state in memory that never reached disk: reload it.
                match load_leases(&self.db) {
                    Ok(leases) => self.leases = leases,
                    Err(e) => tracing::error!(error = %e, "cannot reload leases after a failed commit"),
                }
            }
        }
    }

    fn transact(&mut self, ops: Vec<Op>, expired: &[LeaseId], done: &mut Vec<Done>) -> Result<Vec<Event>> {
        let mut txn = self.db.begin_write().map_err(backend)?;
        // Made durable by the write-ahead log below, not by redb.
        txn.set_durability(redb::Durability::None).map_err(backend)?;
        let mut compact_to = None;
        let (events, changes, logged) = {
            let mut b = Batch {
                kv: txn.open_table(KV).map_err(backend)?,
                log: txn.open_table(LOG).map_err(backend)?,
                leases: txn.open_table(LEASES).map_err(backend)?,
                meta: txn.open_table(META).map_err(backend)?,
                revision: self.shared.revision.load(Ordering::Acquire),
                events: Vec::new(),
                changes: Payload::default(),
            };
            for id in expired {
                self.revoke(&mut b, *id)?;
            }
            for op in ops {
                self.one(&mut b, op, done, &mut compact_to)?;
            }
            let auto = b.revision - self.options.history;
            let compacted = self.shared.compacted.load(Ordering::Acquire);
            if auto > compacted + 1000 {
                compact_to = Some(compact_to.map_or(auto, |c: Revision| c.max(auto)));
            }
            if let Some(to) = compact_to.filter(|to| *to > compacted) {
                b.log_retain_from(to)?;
                b.meta_put(META_COMPACTED, to)?;
            }
            if b.changes.is_empty() {
                // Nothing changed (only failed preconditions, keep-alives): nothing to log.
                (b.events, b.changes, true)
            } else {
                b.meta_put(META_REVISION, b.revision)?;
                let logged = self.wal.fits(&b.changes);
                if !logged {
                    // Too big for what is left of the log: this commit is durable itself
                    // and starts the log's next epoch.
                    b.meta
                        .insert(META_WAL_EPOCH, self.wal.epoch().cast_signed() + 1)
                        .map_err(backend)?;
                }
                (b.events, b.changes, logged)
            }
        };
        if !logged {
            txn.set_durability(redb::Durability::Immediate).map_err(backend)?;
            txn.commit().map_err(backend)?;
            self.wal.restart(self.wal.epoch() + 1);
        } else if changes.is_empty() {
            txn.commit().map_err(backend)?;
        } else {
            if let Err(e) = self.wal.append(&changes) {
                // The record may reach the disk anyway (a failed sync says nothing about what
                // was written): a later open could apply a batch reported as failed. Stop,
                // like a database whose fsync failed; the outcome is unknown to the callers.
                tracing::error!(error = %e, "cannot write the write-ahead log; stopping the store");
                self.dead = true;
                return Err(StoreError::Backend(BackendError::new(
                    "write-ahead log failed; the write may or may not have been applied and the store has stopped",
                    e,
                )));
            }
            self.last_logged = Instant::now();
            if let Err(e) = txn.commit() {
                // The log already has it: a later open applies it. Stop here rather than
                // serve a store that misses a logged write.
                tracing::error!(error = %e, "store commit failed after the write-ahead log had it; stopping the store");
                self.dead = true;
                return Err(StoreError::Backend(BackendError::new(
                    "store commit failed; the write may or may not have been applied and the store has stopped",
                    e,
                )));
            }
        }
        if let Some(to) = compact_to {
            self.shared.compacted.fetch_max(to, Ordering::AcqRel);
        }
        Ok(events)
    }

    fn revoke(&mut self, b: &mut Batch<'_>, id: LeaseId) -> Result<bool> {
        let Some(state) = self.leases.remove(&id) else {
            return Ok(false);
        };
        for key in state.keys {
            if let Some(prev) = b.get(&key)?
                && prev.lease == Some(id)
            {
                b.remove(prev)?;
            }
        }
        b.lease_del(id)?;
        Ok(true)
    }

    fn one(
        &mut self,
        b: &mut Batch<'_>,
        op: Op,
        done: &mut Vec<Done>,
        compact_to: &mut Option<Revision>,
    ) -> Result<()> {
        match op {
            Op::Create {
                key,
                value,
                lease,
                reply,
            } => {
                let res = if b.get(&key)?.is_some() {
                    Err(StoreError::AlreadyExists(key))
                } else if let Some(id) = lease.filter(|id| !self.leases.contains_key(id)) {
                    Err(StoreError::LeaseNotFound(id))
                } else {
                    let rev = b.put(&key, value, None, lease)?;
                    if let Some(state) = lease.and_then(|id| self.leases.get_mut(&id)) {
                        state.keys.insert(key);
                    }
                    Ok(rev)
                };
                done.push(Done::Rev(reply, res));
            }
            Op::Update {
                key,
                value,
                expected,
                reply,
            } => {
                let res = match b.get(&key)? {
                    None => Err(StoreError::NotFound(key)),
                    Some(prev) if expected.is_some_and(|e| e != prev.mod_revision) => {
                        Err(StoreError::Conflict {
                            key,
                            expected: expected.unwrap_or_default(),
                            actual: prev.mod_revision,
                        })
                    }
                    Some(prev) => {
                        let lease = prev.lease;
                        b.put(&key, value, Some(prev), lease)
                    }
                };
                done.push(Done::Rev(reply, res));
            }
            Op::Delete { key, expected, reply } => {
                let res = match b.get(&key)? {
                    None => Err(StoreError::NotFound(key)),
                    Some(prev) if expected.is_some_and(|e| e != prev.mod_revision) => {
                        Err(StoreError::Conflict {
                            key,
                            expected: expected.unwrap_or_default(),
                            actual: prev.mod_revision,
                        })
                    }
                    Some(prev) => {
                        if let Some(state) = prev.lease.and_then(|id| self.leases.get_mut(&id)) {
                            state.keys.remove(&key);
                        }
                        b.remove(prev)
                    }
                };
                done.push(Done::Kv(reply, res));
            }
            Op::Compact { revision, reply } => {
                let res = if revision > b.revision {
                    Err(corrupt(format!(
                        "cannot compact to revision {revision}: newer than the current revision {}",
                        b.revision
                    )))
                } else {
                    *compact_to = Some(compact_to.map_or(revision, |c: Revision| c.max(revision)));
                    Ok(())
                };
                done.push(Done::Unit(reply, res));
            }
            Op::LeaseGrant { ttl, reply } => {
                let id = b
                    .meta
                    .get(META_NEXT_LEASE)
                    .map_err(backend)?
                    .map(|g| g.value())
                    .unwrap_or(1);
                b.meta_put(META_NEXT_LEASE, id + 1)?;
                let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                b.lease_put(id, ttl_ms)?;
                self.leases.insert(
                    id,
                    LeaseState {
                        ttl,
                        deadline: deadline_after(ttl),
                        keys: BTreeSet::new(),
                    },
                );
                done.push(Done::Lease(reply, Ok(id)));
            }
            Op::LeaseKeepAlive { id, reply } => {
                let res = match self.leases.get_mut(&id) {
                    Some(state) => {
                        state.deadline = deadline_after(state.ttl);
                        Ok(())
                    }
                    None => Err(StoreError::LeaseNotFound(id)),
                };
                done.push(Done::Unit(reply, res));
            }
            // Taken out of the batch by `run`.
            Op::Close => {}
            Op::LeaseRevoke { id, reply } => {
                let res = if self.revoke(b, id)? {
                    Ok(())
                } else {
                    Err(StoreError::LeaseNotFound(id))
                };
                done.push(Done::Unit(reply, res));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use std::time::Duration;

    use super::{SHORT_QUIET, idle_checkpoint_due};

    #[test]
    fn a_fuller_log_is_checkpointed_after_a_shorter_quiet() {
        let (cap, tick, ms) = (4 << 20, Duration::from_millis(100), Duration::from_millis);
        assert!(!idle_checkpoint_due(0, cap, ms(500), tick), "nothing logged");
        assert!(
            !idle_checkpoint_due(4096, cap, ms(50), tick),
            "little logged: a tick of quiet"
        );
        assert!(idle_checkpoint_due(4096, cap, tick, tick));
        let eighth = cap / 8;
        assert!(!idle_checkpoint_due(eighth, cap, SHORT_QUIET, tick));
        assert!(!idle_checkpoint_due(eighth + 1, cap, SHORT_QUIET / 2, tick));
        assert!(idle_checkpoint_due(eighth + 1, cap, SHORT_QUIET, tick));
        // A lease tick shorter than the short quiet bounds it.
        assert!(idle_checkpoint_due(eighth + 1, cap, ms(2), ms(2)));
    }
}

#[cfg(test)]
mod list_tests {
    use bytes::Bytes;

    use super::{EmbeddedOptions, EmbeddedStore, INLINE_ROWS};
    use crate::Store;

    /// A list short enough to scan on the worker and one long enough to move to a blocking
    /// thread give the same thing: every key under the prefix, in order, nothing else.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_and_long_lists_hold_every_key_under_their_prefix_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
        let long = INLINE_ROWS * 2 + 3;
        for i in 0..long {
            store
                .create(&format!("/long/{i:05}"), Bytes::from(format!("{i}")), None)
                .await
                .expect("create");
        }
        for i in 0..3 {
            store
                .create(&format!("/short/{i}"), Bytes::new(), None)
                .await
                .expect("create");
        }
        store.create("/longer", Bytes::new(), None).await.expect("create");
        for (prefix, n) in [("/long/", long), ("/short/", 3)] {
            let listing = store.list(prefix).await.expect("list");
            let keys: Vec<&str> = listing.items.iter().map(|kv| kv.key.as_str()).collect();
            assert_eq!(keys.len(), n, "{prefix}");
            assert!(keys.iter().all(|k| k.starts_with(prefix)), "{prefix}: {keys:?}");
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "{prefix}: out of order");
            assert_eq!(listing.revision, i64::try_from(long + 4).expect("small"));
        }
        assert_eq!(store.list("/long/00002").await.expect("list").items.len(), 1);
        store.close().await.expect("close");
    }
}
