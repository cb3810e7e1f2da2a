//! Values encrypted at rest: [`EncryptedStore`] wraps any [`Store`] and encrypts the values of
//! keys under chosen prefixes (the API server's Secrets) before they reach the backend, and
//! decrypts every encrypted value it reads back — from get, list, delete and watch alike.
//!
//! Envelope encryption, AES-256-GCM (ring): each value gets a fresh data key; the value is
//! sealed with it (the store key as associated data, so a ciphertext cannot be moved to
//! another key), and the data key is sealed with the key file's first key, named in the
//! value. A stored value is
//! `wisp:enc:aesgcm:v1:<key name>:` ‖ nonce ‖ sealed data key ‖ nonce ‖ sealed value.
//!
//! The key file ([`Keyring`]) lists named 32-byte keys; the first encrypts, every one
//! decrypts. Rotation, as Kubernetes' `EncryptionConfiguration`: put a new key first and
//! restart; [`EncryptedStore::rewrite`] (run at start) seals again every value that the
//! first key did not seal (plain text from before encryption included); then the old key
//! can go.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{
    BackendError, Event, KeyValue, LeaseId, Listing, Result, Revision, Store, StoreError, WatchStream,
};

const MAGIC: &[u8] = b"wisp:enc:aesgcm:v1:";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// A key file that cannot be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("encryption key file {path}: {what}")]
    Invalid { path: String, what: String },
    #[error("encryption key file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Named AES-256 keys: the first encrypts, every one decrypts.
pub struct Keyring {
    keys: Vec<(String, LessSafeKey)>,
    rng: SystemRandom,
}

fn aead_key(bytes: &[u8]) -> Option<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, bytes).ok().map(LessSafeKey::new)
}

impl Keyring {
    /// Parses a key file: one `name: <base64 of 32 bytes>` per line; `#` starts a comment.
    pub fn parse(text: &str, path: &str) -> Result<Self, KeyringError> {
        let invalid = |what: String| KeyringError::Invalid {
            path: path.to_owned(),
            what,
        };
        let mut keys: Vec<(String, LessSafeKey)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (name, secret) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("line {n}: expected `name: <base64 key>`")))?;
            let name = name.trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(invalid(format!(
                    "line {n}: key name {name:?} must be letters, digits, `-`, `_` or `.`"
                )));
            }
            if keys.iter().any(|(k, _)| k == name) {
                return Err(invalid(format!("line {n}: key {name:?} appears twice")));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(secret.trim())
                .map_err(|e| invalid(format!("line {n}: key {name:?} is not base64: {e}")))?;
            if bytes.len() != KEY_LEN {
                return Err(invalid(format!(
                    "line {n}: key {name:?} is {} bytes; AES-256 needs {KEY_LEN}",
                    bytes.len()
                )));
            }
            let key = aead_key(&bytes).ok_or_else(|| invalid(format!("line {n}: unusable key")))?;
            keys.push((name.to_owned(), key));
        }
        if keys.is_empty() {
            return Err(invalid("no key in it".into()));
        }
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// The key file at `path`; on first start (no file) one is made with a fresh key, mode
    /// 0600.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyringError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &shown),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let text = Self::new_file()?;
                let io = |source| KeyringError::Io {
                    path: shown.clone(),
                    source,
                };
                {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .map_err(io)?;
                    f.write_all(text.as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(io)?;
                }
                Self::parse(&text, &shown)
            }
            Err(source) => Err(KeyringError::Io { path: shown, source }),
        }
    }

    /// The text of a new key file with one fresh key.
    pub fn new_file() -> Result<String, KeyringError> {
        Ok(format!(
            "# Wisp Secret encryption keys (AES-256-GCM): the first encrypts, every one decrypts.\n\
             # To rotate, add a new key first and restart the server: it encrypts every Secret again\n\
             # with it; then the older key can be removed.\n{}\n",
            Self::new_line()?
        ))
    }

    /// `key-<unix seconds>: <fresh base64 key>`: a line to add to a key file.
    pub fn new_line() -> Result<String, KeyringError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyringError::Invalid {
                path: String::new(),
                what: "no randomness for a new key".into(),
            })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Ok(format!(
            "key-{now}: {}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    /// The name of the key that encrypts.
    pub fn primary(&self) -> &str {
        &self.keys[0].0
    }

    fn fill(&self, buf: &mut [u8]) -> Result<()> {
        self.rng
            .fill(buf)
            .map_err(|_| BackendError::msg("no randomness to encrypt with").into())
    }

    fn seal(&self, store_key: &str, plain: &[u8]) -> Result<Bytes> {
        let (name, kek) = &self.keys[0];
        let mut dek = [0u8; KEY_LEN];
        self.fill(&mut dek)?;
        let data_key = aead_key(&dek).ok_or_else(|| BackendError::msg("unusable data key"))?;
        let mut wrap_nonce = [0u8; NONCE_LEN];
        self.fill(&mut wrap_nonce)?;
        let mut wrapped = dek.to_vec();
        kek.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(wrap_nonce),
            Aad::from(name.as_bytes()),
            &mut wrapped,
        )
        .map_err(|_| BackendError::msg("cannot seal a data key"))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.fill(&mut nonce)?;
        let mut sealed = plain.to_vec();
        data_key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(store_key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| BackendError::msg("cannot seal a value"))?;
        let mut out =
            Vec::with_capacity(MAGIC.len() + name.len() + 1 + 2 * NONCE_LEN + wrapped.len() + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&wrap_nonce);
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out.into())
    }

    /// The key name an encrypted value names (`None`: not encrypted).
    fn sealed_by(value: &[u8]) -> Option<&[u8]> {
        let rest = value.strip_prefix(MAGIC)?;
        let end = rest.iter().position(|b| *b == b':')?;
        Some(&rest[..end])
    }

    /// `value` decrypted, or as it is when it is not encrypted.
    fn open(&self, store_key: &str, value: Bytes) -> Result<Bytes> {
        let Some(rest) = value.strip_prefix(MAGIC) else {
            return Ok(value);
        };
        let fail = |what: String| StoreError::from(BackendError::msg(format!("{store_key}: {what}")));
        let end = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| fail("encrypted value without a key name".into()))?;
        let name = String::from_utf8_lossy(&rest[..end]).into_owned();
        let (_, kek) = self.keys.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            fail(format!(
                "encrypted with key {name:?}, which is not in the encryption key file"
            ))
        })?;
        let body = &rest[end + 1..];
        let wrapped_len = KEY_LEN + TAG_LEN;
        if body.len() < 2 * NONCE_LEN + wrapped_len + TAG_LEN {
            return Err(fail("encrypted value is truncated".into()));
        }
        let (wrap_nonce, body) = body.split_at(NONCE_LEN);
        let (wrapped, body) = body.split_at(wrapped_len);
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let mut wrapped = wrapped.to_vec();
        let dek = kek
            .open_in_place(
                Nonce::try_assume_unique_for_key(wrap_nonce).map_err(|_| fail("bad nonce".into()))?,
                Aad::from(name.as_bytes()),
                &mut wrapped,
            )
            .map_err(|_| fail(format!("its data key does not open with key {name:?}")))?;
        let data_key = aead_key(dek).ok_or_else(|| fail("unusable data key".into()))?;
        let mut sealed = sealed.to_vec();
        let plain = data_key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail("bad nonce".into()))?,
                Aad::from(store_key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| fail("the value does not decrypt (altered, or moved from another key)".into()))?;
        Ok(Bytes::copy_from_slice(plain))
    }
}

/// A [`Store`] whose values under `prefixes` are encrypted at rest (see the module docs).
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    keys: Arc<Keyring>,
    prefixes: Vec<String>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, keys: Keyring, prefixes: Vec<String>) -> Self {
        Self {
            inner,
            keys: Arc::new(keys),
            prefixes,
        }
    }

    fn seals(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn write_value(&self, key: &str, value: Bytes) -> Result<Bytes> {
        if self.seals(key) {
            self.keys.seal(key, &value)
        } else {
            Ok(value)
        }
    }

    fn read(keys: &Keyring, mut kv: KeyValue) -> Result<KeyValue> {
        kv.value = keys.open(&kv.key, kv.value)?;
        Ok(kv)
    }

    /// Seals again, with the first key, every value under the prefixes that it did not seal
    /// (plain text included); returns how many. Compare-and-swap: a value changed meanwhile
    /// was written by this store, with the first key, already.
    pub async fn rewrite(&self) -> Result<usize> {
        let primary = self.keys.primary().as_bytes();
        let mut rewritten = 0;
        for prefix in &self.prefixes {
            let listing = self.inner.list(prefix).await?;
            for kv in listing.items {
                if Keyring::sealed_by(&kv.value) == Some(primary) {
                    continue;
                }
                let plain = self.keys.open(&kv.key, kv.value)?;
                let sealed = self.keys.seal(&kv.key, &plain)?;
                match self.inner.update(&kv.key, sealed, Some(kv.mod_revision)).await {
                    Ok(_) => rewritten += 1,
                    Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(rewritten)
    }
}

impl Store for EncryptedStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(async move {
            match self.inner.get(key).await? {
                Some(kv) => Ok(Some(Self::read(&self.keys, kv)?)),
                None => Ok(None),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing>> {
        Box::pin(async move {
            let mut listing = self.inner.list(prefix).await?;
            listing.items = listing
                .items
                .into_iter()
                .map(|kv| Self::read(&self.keys, kv))
                .collect::<Result<_>>()?;
            Ok(listing)
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Revision>> {
        Box::pin(async move {
            let value = self.write_value(key, value)?;
            self.inner.create(key, value, lease).await
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<Revision>> {
        Box::pin(async move {
            let value = self.write_value(key, value)?;
            self.inner.update(key, value, expected).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str, expected: Option<Revision>) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move { Self::read(&self.keys, self.inner.delete(key, expected).await?) })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: Revision) -> BoxFuture<'a, Result<WatchStream>> {
        Box::pin(async move {
            let keys = self.keys.clone();
            let stream = self.inner.watch(prefix, after).await?;
            let decrypted = stream.map(move |item| {
                let mut event: Event = item?;
                event.kv = Self::read(&keys, event.kv)?;
                event.prev = event.prev.map(|p| Self::read(&keys, p)).transpose()?;
                Ok(event)
            });
            Ok(decrypted.boxed())
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision>> {
        self.inner.revision()
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        self.inner.compact(revision)
    }

    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>> {
        self.inner.lease_grant(ttl)
    }

    fn lease_keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        self.inner.lease_keep_alive(id)
    }

    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        self.inner.lease_revoke(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddedOptions, EmbeddedStore};

    fn ring(lines: &[&str]) -> Keyring {
        Keyring::parse(&lines.join("\n"), "test").expect("keys")
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[tokio::test]
    async fn values_under_the_prefix_are_sealed_and_read_back_from_every_path() {
        let tmp = tempfile::tempdir().expect("tmp");
        let raw: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&tmp.path().join("s"), EmbeddedOptions::default()).expect("open"));
        let line = Keyring::new_line().expect("line");
        let store = EncryptedStore::new(raw.clone(), ring(&[&line]), vec!["/registry/secrets/".into()]);
        let mut watch = store.watch("/registry/", 0).await.expect("watch");
        store
            .create(
                "/registry/secrets/a/s",
                Bytes::from_static(b"{\"v\":\"hunter2\"}"),
                None,
            )
            .await
            .expect("create");
        store
            .create(
                "/registry/configmaps/a/c",
                Bytes::from_static(b"{\"v\":\"plain\"}"),
                None,
            )
            .await
            .expect("create");
        let stored = raw
            .get("/registry/secrets/a/s")
            .await
            .expect("get")
            .expect("there");
        assert!(!contains(&stored.value, b"hunter2"), "sealed at rest");
        assert!(stored.value.starts_with(MAGIC));
        let other = raw
            .get("/registry/configmaps/a/c")
            .await
            .expect("get")
            .expect("there");
        assert_eq!(&other.value[..], b"{\"v\":\"plain\"}", "other prefixes untouched");
        let got = store
            .get("/registry/secrets/a/s")
            .await
            .expect("get")
            .expect("there");
        assert_eq!(&got.value[..], b"{\"v\":\"hunter2\"}");
        let listed = store.list("/registry/secrets/").await.expect("list");
        assert_eq!(&listed.items[0].value[..], b"{\"v\":\"hunter2\"}");
        let event = watch.next().await.expect("event").expect("ok");
        assert_eq!(&event.kv.value[..], b"{\"v\":\"hunter2\"}");
        // A ciphertext moved to another key does not open there.
        raw.create("/registry/secrets/a/moved", stored.value.clone(), None)
            .await
            .expect("create");
        let err = store.get("/registry/secrets/a/moved").await.expect_err("moved");
        assert!(err.to_string().contains("store backend"), "{err}");
        let deleted = store.delete("/registry/secrets/a/s", None).await.expect("delete");
        assert_eq!(&deleted.value[..], b"{\"v\":\"hunter2\"}");
    }

    #[tokio::test]
    async fn rotation_seals_again_with_the_new_key_and_old_values_stay_readable() {
        let tmp = tempfile::tempdir().expect("tmp");
        let raw: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&tmp.path().join("s"), EmbeddedOptions::default()).expect("open"));
        // Written before encryption was on: plain text.
        raw.create(
            "/registry/secrets/a/old",
            Bytes::from_static(b"plain-before"),
            None,
        )
        .await
        .expect("create");
        let k1 = Keyring::new_line().expect("k1").replacen("key-", "one-", 1);
        let first = EncryptedStore::new(raw.clone(), ring(&[&k1]), vec!["/registry/secrets/".into()]);
        assert_eq!(
            first.rewrite().await.expect("rewrite"),
            1,
            "the plain value is sealed"
        );
        first
            .create("/registry/secrets/a/new", Bytes::from_static(b"v1"), None)
            .await
            .expect("create");
        let k2 = Keyring::new_line().expect("k2").replacen("key-", "two-", 1);
        let rotated = EncryptedStore::new(raw.clone(), ring(&[&k2, &k1]), vec!["/registry/secrets/".into()]);
        assert_eq!(
            &rotated
                .get("/registry/secrets/a/new")
                .await
                .expect("get")
                .expect("v")
                .value[..],
            b"v1"
        );
        assert_eq!(rotated.rewrite().await.expect("rewrite"), 2);
        assert_eq!(
            rotated.rewrite().await.expect("rewrite"),
            0,
            "nothing left to rotate"
        );
        for kv in raw.list("/registry/secrets/").await.expect("list").items {
            assert!(
                Keyring::sealed_by(&kv.value).is_some_and(|n| n.starts_with(b"two-")),
                "{}",
                kv.key
            );
        }
        // The old key can go.
        let only_new = EncryptedStore::new(raw.clone(), ring(&[&k2]), vec!["/registry/secrets/".into()]);
        assert_eq!(
            &only_new
                .get("/registry/secrets/a/old")
                .await
                .expect("get")
                .expect("v")
                .value[..],
            b"plain-before"
        );
        // Without the key that sealed them, the values do not read, and the error says why.
        let stranger = EncryptedStore::new(raw, ring(&[&k1]), vec!["/registry/secrets/".into()]);
        let err = stranger
            .get("/registry/secrets/a/new")
            .await
            .expect_err("unknown key");
        assert!(
            format!("{err:?}").contains("not in the encryption key file"),
            "{err:?}"
        );
    }

    #[test]
    fn a_bad_key_file_names_the_line_and_what_is_wrong() {
        for (text, want) in [
            ("", "no key"),
            ("k1 abc", "line 1: expected"),
            ("# c\nk1: !!!", "line 2: key \"k1\" is not base64"),
            ("k1: AAAA", "needs 32"),
            ("bad name: AAAA", "must be letters"),
        ] {
            let Err(e) = Keyring::parse(text, "keys") else {
                panic!("{text:?} parsed");
            };
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
    }
}
