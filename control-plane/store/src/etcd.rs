//! The etcd backend: the same [`Store`] contract on a real etcd cluster through
//! `etcd-client`. Revisions are etcd's own; compare-and-swap is an etcd transaction on the
//! key's `mod_revision`; watches map etcd's compaction answer to [`StoreError::Compacted`].

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, KvClient, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchClient, WatchOptions,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::{
    BackendError, Event, EventKind, KeyValue, LeaseId, Listing, Result, Revision, Store, StoreError,
    WatchStream,
};

/// An etcd error as a store error: the answers the contract names (an unknown lease, a
/// request too large, a compacted revision) by kind, any other kept as the source.
fn backend(e: etcd_client::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("lease not found") {
        // Callers that know the lease id put it in.
        return StoreError::LeaseNotFound(0);
    }
    if text.contains("request is too large") {
        // The contract's variant carries text: this is etcd's own answer, not a cause lost.
        return StoreError::TooLarge(format!("{text} (raise etcd's --max-request-bytes)"));
    }
    if text.contains("required revision has been compacted") {
        return StoreError::Compacted {
            requested: 0,
            compacted: 0,
        };
    }
    StoreError::Backend(BackendError::new("etcd", e))
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|e| BackendError::new("etcd returned a key that is not UTF-8", e))?
            .to_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

/// Largest gRPC message accepted from etcd: an object may be 3 MiB and a watch event
/// carries it twice (value and previous value), so etcd-client's 4 MiB default is too small.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Keys per page when listing (a list is read in pages at one revision).
const LIST_PAGE: i64 = 500;

/// A store on an etcd cluster. Cheap to clone (the client multiplexes one channel).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    kv: KvClient,
    watch: WatchClient,
}

/// The end of the key range holding every key that starts with `prefix`.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// TLS to etcd: the CA its certificate chains to and, for client certificate
/// authentication (`--client-cert-auth`), this client's certificate and key; all PEM.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    pub ca_pem: String,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

impl EtcdStore {
    /// Connect to the given endpoints (`host:port` or `http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        Self::connect_with(endpoints, None).await
    }

    /// [`EtcdStore::connect`], over TLS with `tls` when given (the endpoints are then
    /// `https://host:port`).
    pub async fn connect_with(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<Self> {
        let options = tls.map(|t| {
            let mut config =
                etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&t.ca_pem));
            if let (Some(cert), Some(key)) = (&t.cert_pem, &t.key_pem) {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            etcd_client::ConnectOptions::new().with_tls(config)
        });
        let client = Client::connect(endpoints, options).await.map_err(backend)?;
        let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        let store = Self { client, kv, watch };
        // Fail now, not on first use, when nothing answers.
        tokio::time::timeout(Duration::from_secs(5), store.client.clone().status())
            .await
            .map_err(|e| BackendError::new(format!("etcd at {endpoints:?} did not answer within 5 s"), e))?
            .map_err(backend)?;
        Ok(store)
    }

    async fn current(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.kv.clone().get(key, None).await.map_err(backend)?;
        resp.kvs().first().map(convert).transpose()
    }

    /// Explain a failed compare: missing key or a different revision.
    async fn explain(&self, key: &str, expected: Option<Revision>) -> StoreError {
        match self.current(key).await {
            Ok(None) => StoreError::NotFound(key.to_owned()),
            Ok(Some(kv)) => StoreError::Conflict {
                key: key.to_owned(),
                expected: expected.unwrap_or_default(),
                actual: kv.mod_revision,
            },
            Err(e) => e,
        }
    }
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or_default()
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        self.current(key).boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing>> {
        async move {
            // Page through the range, every page at the first page's revision, so a large
            // list is one consistent snapshot without one huge message.
            let end = range_end(prefix.as_bytes());
            let mut kv = self.kv.clone();
            let mut start = prefix.as_bytes().to_vec();
            let mut revision = 0;
            let mut items = Vec::new();
            loop {
                let mut opts = GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
                if revision != 0 {
                    opts = opts.with_revision(revision);
                }
                let resp = kv.get(start.clone(), Some(opts)).await.map_err(backend)?;
                if revision == 0 {
                    revision = header_revision(resp.header());
                }
                for item in resp.kvs() {
                    items.push(convert(item)?);
                }
                match resp.kvs().last() {
                    Some(last) if resp.more() => {
                        start = last.key().to_vec();
                        start.push(0);
                    }
                    _ => break,
                }
            }
            Ok(Listing { items, revision })
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Revision>> {
        async move {
            let opts = lease.map(|id| PutOptions::new().with_lease(id));
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value.to_vec(), opts)]);
            let resp = self.kv.clone().txn(txn).await.map_err(|e| match backend(e) {
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease.unwrap_or_default()),
                other => other,
            })?;
            if !resp.succeeded() {
                return Err(StoreError::AlreadyExists(key.to_owned()));
            }
            Ok(header_revision(resp.header()))
        }
        .boxed()
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<Revision>> {
        async move {
            let cmp = match expected {
                Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
                None => Compare::create_revision(key, CompareOp::Greater, 0),
            };
            let txn = Txn::new().when([cmp]).and_then([TxnOp::put(
                key,
                value.to_vec(),
                Some(PutOptions::new().with_ignore_lease()),
            )]);
            let resp = self.kv.clone().txn(txn).await.map_err(backend)?;
            if !resp.succeeded() {
                return Err(self.explain(key, expected).await);
            }
            Ok(header_revision(resp.header()))
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str, expected: Option<Revision>) -> BoxFuture<'a, Result<KeyValue>> {
        async move {
            let cmp = match expected {
                Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
                None => Compare::create_revision(key, CompareOp::Greater, 0),
            };
            let txn = Txn::new()
                .when([cmp])
                .and_then([TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()))]);
            let resp = self.kv.clone().txn(txn).await.map_err(backend)?;
            if !resp.succeeded() {
                return Err(self.explain(key, expected).await);
            }
            let revision = header_revision(resp.header());
            for op in resp.op_responses() {
                if let TxnOpResponse::Delete(d) = op
                    && let Some(prev) = d.prev_kvs().first()
                {
                    let mut kv = convert(prev)?;
                    kv.mod_revision = revision;
                    return Ok(kv);
                }
            }
            Err(StoreError::NotFound(key.to_owned()))
        }
        .boxed()
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: Revision) -> BoxFuture<'a, Result<WatchStream>> {
        async move {
            // etcd accepts a watch from a compacted revision and cancels it right after
            // creation; a read at that revision tells up front whether that will happen.
            let probe = GetOptions::new()
                .with_revision(after.saturating_add(1))
                .with_limit(1)
                .with_keys_only();
            let compacted = match self.kv.clone().get(prefix, Some(probe)).await {
                Err(e) => matches!(backend(e), StoreError::Compacted { .. }),
                Ok(_) => false,
            };
            let opts = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_start_revision(after.saturating_add(1));
            let mut stream = self
                .watch
                .clone()
                .watch(prefix, Some(opts))
                .await
                .map_err(backend)?;
            let mut head = Vec::new();
            for _ in 0..if compacted { 2 } else { 1 } {
                let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
                    .await
                    .map_err(|e| BackendError::new("etcd did not confirm the watch within 5 s", e))?
                    .map_err(backend)?
                    .ok_or_else(|| BackendError::msg("etcd closed the watch"))?;
                if msg.compact_revision() != 0 {
                    return Err(StoreError::Compacted {
                        requested: after,
                        compacted: msg.compact_revision(),
                    });
                }
                head.extend(events_of(&msg, after)?);
            }
            if compacted {
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted: after.saturating_add(1),
                });
            }
            let rest = stream.flat_map(move |msg| {
                let items: Vec<Result<Event>> = match msg {
                    Err(e) => vec![Err(backend(e))],
                    Ok(m) if m.compact_revision() != 0 => {
                        vec![Err(StoreError::Compacted {
                            requested: after,
                            compacted: m.compact_revision(),
                        })]
                    }
                    Ok(m) if m.canceled() => {
                        vec![Err(StoreError::Backend(BackendError::msg(format!(
                            "etcd canceled the watch: {}",
                            m.cancel_reason()
                        ))))]
                    }
                    Ok(m) => match events_of(&m, after) {
                        Ok(evs) => evs.into_iter().map(Ok).collect(),
                        Err(e) => vec![Err(e)],
                    },
                };
                futures::stream::iter(items)
            });
            Ok(futures::stream::iter(head.into_iter().map(Ok))
                .chain(rest)
                .boxed())
        }
        .boxed()
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision>> {
        async move {
            // A get of a key that cannot exist returns the current revision in its header.
            let resp = self.kv.clone().get("\0", None).await.map_err(backend)?;
            Ok(header_revision(resp.header()))
        }
        .boxed()
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        async move {
            self.client
                .clone()
                .compact(revision, Some(CompactionOptions::new().with_physical()))
                .await
                .map_err(backend)?;
            Ok(())
        }
        .boxed()
    }

    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>> {
        async move {
            // etcd counts lease TTLs in whole seconds.
            let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
                .unwrap_or(i64::MAX)
                .max(1);
            let resp = self
                .client
                .clone()
                .lease_grant(secs, None)
                .await
                .map_err(backend)?;
            Ok(resp.id())
        }
        .boxed()
    }

    fn lease_keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        async move {
            let not_found = |e| match backend(e) {
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(id),
                other => other,
            };
            let (mut keeper, mut stream) = self
                .client
                .clone()
                .lease_keep_alive(id)
                .await
                .map_err(not_found)?;
            keeper.keep_alive().await.map_err(not_found)?;
            match stream.message().await.map_err(not_found)? {
                Some(resp) if resp.ttl() > 0 => Ok(()),
                _ => Err(StoreError::LeaseNotFound(id)),
            }
        }
        .boxed()
    }

    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        async move {
            self.client
                .clone()
                .lease_revoke(id)
                .await
                .map_err(|e| match backend(e) {
                    StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(id),
                    other => other,
                })?;
            Ok(())
        }
        .boxed()
    }
}

fn events_of(msg: &etcd_client::WatchResponse, after: Revision) -> Result<Vec<Event>> {
    let mut out = Vec::with_capacity(msg.events().len());
    for ev in msg.events() {
        let Some(kv) = ev.kv() else { continue };
        let revision = kv.mod_revision();
        if revision <= after {
            continue;
        }
        let event = match ev.event_type() {
            etcd_client::EventType::Put => Event {
                kind: if kv.create_revision() == kv.mod_revision() {
                    EventKind::Added
                } else {
                    EventKind::Modified
                },
                kv: convert(kv)?,
                revision,
                prev: match ev.prev_kv() {
                    Some(p) if kv.create_revision() != kv.mod_revision() => Some(convert(p)?),
                    _ => None,
                },
            },
            etcd_client::EventType::Delete => {
                // The delete event's kv has only the key; the last value is in prev_kv.
                let last = match ev.prev_kv() {
                    Some(prev) => convert(prev)?,
                    None => convert(kv)?,
                };
                Event {
                    kind: EventKind::Deleted,
                    kv: last,
                    revision,
                    prev: None,
                }
            }
        };
        out.push(event);
    }
    Ok(out)
}
