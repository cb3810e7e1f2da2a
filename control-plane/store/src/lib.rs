//! wisp-store owns Wisp's revisioned key-value store: one [`Store`] trait and its two
//! backends, [`embedded::EmbeddedStore`] on redb (the default, durable on commit) and
//! `etcd::EtcdStore` on a real etcd cluster (cargo feature `etcd`).
//!
//! Every write bumps one global revision which becomes the object's `resourceVersion`;
//! updates and deletes can be compare-and-swap on it; watches resume from a revision and
//! fail with [`StoreError::Compacted`] when that revision is no longer kept; leases expire
//! the keys attached to them.
//!
//! [`encrypted::EncryptedStore`] wraps either and encrypts the values under chosen prefixes at
//! rest (AES-256-GCM envelopes, keys from a key file that rotates).
//!
//! The store knows keys and bytes only: it must not know about resource kinds, JSON or
//! validation (that is the API server's job).

pub mod conformance;
pub mod embedded;
pub mod encrypted;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "test-util")]
pub mod testutil;
mod wal;

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use embedded::{EmbeddedOptions, EmbeddedStore};

/// A store revision: strictly increasing, one per mutation.
pub type Revision = i64;
/// A lease handle; keys attached to a lease are deleted when it expires or is revoked.
pub type LeaseId = i64;

/// One stored key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key; the compare-and-swap token.
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The key's value after the change; for [`EventKind::Deleted`], its last value before.
    pub kv: KeyValue,
    /// Revision of the change (for deletes: the deletion's revision).
    pub revision: Revision,
    /// For [`EventKind::Modified`]: the value before the change (so a filtered watch can
    /// tell an object entering or leaving its selector). `None` otherwise.
    pub prev: Option<KeyValue>,
}

/// The result of a list: the items under a prefix and the revision they were read at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub items: Vec<KeyValue>,
    pub revision: Revision,
}

/// A stream of watch events; ends with an error item when the watch cannot continue.
pub type WatchStream = BoxStream<'static, Result<Event, StoreError>>;

/// Everything that can go wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    #[error("key {0:?} not found")]
    NotFound(String),
    #[error("key {key:?} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    #[error("value is larger than the store accepts: {0}")]
    TooLarge(String),
    #[error("store is shut down")]
    Closed,
    /// The backend itself failed (I/O, a corrupt file, etcd unreachable); the error it got
    /// is the source.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure of a store backend: what it was doing, and the error it got (redb's, an I/O
/// error, etcd's) as its source when there is one.
#[derive(Debug, thiserror::Error)]
#[error("store backend: {what}")]
pub struct BackendError {
    what: String,
    #[source]
    source: Option<BoxError>,
}

impl BackendError {
    /// `what` failed because of `source`.
    pub fn new(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// `what` failed (no underlying error: a corrupt record, a timeout).
    pub fn msg(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A revisioned key-value store. Object-safe: hold it as `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// Read one key.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>>;
    /// Read every key starting with `prefix`, in key order, with the revision read at.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing>>;
    /// Create `key`; fails with [`StoreError::AlreadyExists`] if present.
    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Revision>>;
    /// Replace `key`'s value. With `expected`, only if its mod revision still equals it
    /// ([`StoreError::Conflict`] otherwise). A key attached to a lease stays attached.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<Revision>>;
    /// Delete `key` (optionally compare-and-swap) and return its last value, with
    /// `mod_revision` set to the deletion's revision.
    fn delete<'a>(&'a self, key: &'a str, expected: Option<Revision>) -> BoxFuture<'a, Result<KeyValue>>;
    /// Watch every key under `prefix` for changes with a revision strictly greater than
    /// `after`. Fails with [`StoreError::Compacted`] when `after` is older than the kept
    /// history.
    fn watch<'a>(&'a self, prefix: &'a str, after: Revision) -> BoxFuture<'a, Result<WatchStream>>;
    /// The latest committed revision.
    fn revision(&self) -> BoxFuture<'_, Result<Revision>>;
    /// Drop the change history before `revision`: a watch needing an older change (one
    /// with `after < revision - 1`) then fails with [`StoreError::Compacted`].
    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>>;
    /// Grant a lease that expires `ttl` after its last keep-alive.
    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>>;
    /// Renew a lease; [`StoreError::LeaseNotFound`] if it already expired.
    fn lease_keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<()>>;
    /// Revoke a lease now, deleting its keys.
    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>>;
}
