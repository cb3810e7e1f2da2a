//! Bearer tokens: who a request acts as ([`Principal`]), minting, listing, expiry and
//! revocation.
//!
//! Tokens are random; only their SHA-256 is stored (under `/wisp/tokens/<hex>`), so a copy
//! of the store does not leak usable credentials. A namespace token is bound to its
//! Namespace's uid: it stops working when that namespace is deleted (from the moment it is
//! `Terminating`), and never works on a namespace re-created with the same name.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wisp_store::{Store, StoreError};

use crate::error::ApiError;

const TOKENS: &str = "/wisp/tokens/";

/// How long a token read from the store is trusted before it is read again (so a token
/// revoked through another API server stops working within this).
const RECHECK: Duration = Duration::from_secs(1);

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Principal {
    /// The cluster admin: everything.
    Admin,
    /// A team: the objects of one namespace (see `authz`).
    #[serde(rename_all = "camelCase")]
    Namespace {
        namespace: String,
        /// The uid of the Namespace the token was minted for.
        namespace_uid: String,
    },
    /// A node agent and its ingress: its own Node and Lease, the status of the pods bound
    /// to it, and what they need to read.
    Node { node: String },
    /// What the autoscaler shows the nodes' ingresses to read their `/.wisp/stats`: the API
    /// answers it nothing but `whoami` (a node that keeps it gains nothing).
    Scraper,
    /// A ticket the API server mints for one log request and hands the pod's node agent:
    /// it may read that one pod and nothing else (never the caller's own token). It names
    /// the caller the API server authorized (`on_behalf_of`, e.g. `a token of namespace
    /// "team-a"`), which the agent records with the stream.
    #[serde(rename_all = "camelCase")]
    PodLogs {
        namespace: String,
        pod: String,
        #[serde(default)]
        on_behalf_of: String,
    },
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    /// The namespace a namespace token is confined to.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Principal::Namespace { namespace, .. } => Some(namespace),
            _ => None,
        }
    }

    /// The node a node credential speaks for.
    pub fn node(&self) -> Option<&str> {
        match self {
            Principal::Node { node } => Some(node),
            _ => None,
        }
    }

    /// The principal and its scope, for messages: `namespace token of "team-a"`.
    pub fn scope(&self) -> String {
        match self {
            Principal::Admin => "the cluster admin".into(),
            Principal::Namespace { namespace, .. } => format!("a token of namespace {namespace:?}"),
            Principal::Node { node } => format!("the credential of node {node:?}"),
            Principal::Scraper => "the ingress statistics credential".into(),
            Principal::PodLogs { namespace, pod, .. } => format!("the log ticket of pod {namespace}/{pod}"),
        }
    }

    /// The namespace, node and pod the principal names (each where it has one).
    pub fn parts(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        match self {
            Principal::Namespace { namespace, .. } => (Some(namespace), None, None),
            Principal::Node { node } => (None, Some(node), None),
            Principal::PodLogs { namespace, pod, .. } => (Some(namespace), None, Some(pod)),
            Principal::Admin | Principal::Scraper => (None, None, None),
        }
    }

    /// The kind's name, as `whoami` and `wisp token list` say it.
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::Admin => "admin",
            Principal::Namespace { .. } => "namespace",
            Principal::Node { .. } => "node",
            Principal::Scraper => "scraper",
            Principal::PodLogs { .. } => "podLogs",
        }
    }
}

/// A stored token (its digest is the key).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(flatten)]
    principal: Principal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    /// RFC 3339; the token is refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

/// A record written before tokens had kinds: `{"namespace": null}` was an admin token.
#[derive(Deserialize)]
struct LegacyRecord {
    namespace: Option<String>,
}

fn decode_record(bytes: &[u8]) -> Result<Record, ApiError> {
    if let Ok(r) = serde_json::from_slice::<Record>(bytes) {
        return Ok(r);
    }
    match serde_json::from_slice::<LegacyRecord>(bytes) {
        Ok(LegacyRecord { namespace: None }) => Ok(Record {
            principal: Principal::Admin,
            created_at: None,
            expires_at: None,
        }),
        Ok(LegacyRecord { namespace: Some(ns) }) => Err(ApiError::Unauthorized(format!(
            "this token of namespace {ns:?} predates tokens bound to a namespace's uid; mint a new one \
             (wisp token create --namespace {ns})"
        ))),
        Err(e) => Err(ApiError::Internal(format!("corrupt token record: {e}"))),
    }
}

/// One token as `wisp token list` shows it (never the token itself).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// The first 16 hex digits of the token's SHA-256: what `wisp token revoke` takes.
    pub id: String,
    /// `admin`, `namespace` or `node`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Length of a token id (hex digits of the digest).
pub const TOKEN_ID_LEN: usize = 16;

impl TokenInfo {
    /// What a stored record says (a legacy one that no longer works is still listed, to be
    /// revoked).
    fn stored(digest: &str, value: &[u8]) -> Self {
        decode_record(value).map_or_else(
            |_| Self {
                id: digest.chars().take(TOKEN_ID_LEN).collect(),
                kind: "legacy".into(),
                namespace: None,
                node: None,
                created_at: None,
                expires_at: None,
            },
            |r| Self::of(digest, &r),
        )
    }

    fn of(digest: &str, r: &Record) -> Self {
        let (namespace, node, _) = r.principal.parts();
        Self {
            id: digest.chars().take(TOKEN_ID_LEN).collect(),
            kind: r.principal.kind().into(),
            namespace: namespace.map(str::to_owned),
            node: node.map(str::to_owned),
            created_at: r.created_at.clone(),
            expires_at: r.expires_at.clone(),
        }
    }
}

struct Cached {
    principal: Principal,
    expires: Option<jiff::Timestamp>,
    /// When the store last confirmed it (`None`: lives only in this process).
    checked: Option<Instant>,
    /// Good only for requests of this process's own components (the in-process client),
    /// never over the network: the control plane's own admin and node tokens.
    in_process_only: bool,
}

/// Token verification with a cache of known tokens.
#[derive(Clone)]
pub struct Auth {
    store: Arc<dyn Store>,
    cache: Arc<RwLock<HashMap<String, Cached>>>,
}

/// The SHA-256 of a token, hex: its key in the store.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> Result<String, ApiError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(format!("wisp_{}", hex::encode(raw)))
}

fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, ApiError> {
    header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("missing bearer token (Authorization: Bearer <token>)".into()))
}

impl Auth {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: Arc::default(),
        }
    }

    /// Check an `Authorization` header value (of a request from the network).
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let token = bearer(header)?;
        self.authenticate_digest(&digest(token), false).await
    }

    /// Check a token by its digest; `in_process`: the request comes from this process's own
    /// components (which alone may use the in-process admin and node tokens).
    pub async fn authenticate_digest(&self, key: &str, in_process: bool) -> Result<Principal, ApiError> {
        let now = jiff::Timestamp::now();
        let cached = self.cache.read().ok().and_then(|c| {
            c.get(key).map(|e| {
                let fresh = e.checked.is_none_or(|t| t.elapsed() < RECHECK);
                (e.principal.clone(), e.expires, fresh, e.in_process_only)
            })
        });
        let principal = match cached {
            Some((_, _, _, true)) if !in_process => {
                return Err(ApiError::Unauthorized("invalid bearer token".into()));
            }
            Some((_, Some(expires), _, _)) if expires <= now => {
                self.forget(key);
                return Err(ApiError::Unauthorized(format!("this token expired at {expires}")));
            }
            Some((p, _, true, _)) => p,
            _ => self.load(key, now).await?,
        };
        if let Principal::Namespace {
            namespace,
            namespace_uid,
        } = &principal
        {
            self.check_namespace(namespace, namespace_uid).await?;
        }
        Ok(principal)
    }

    async fn load(&self, key: &str, now: jiff::Timestamp) -> Result<Principal, ApiError> {
        let Some(kv) = self
            .store
            .get(&format!("{TOKENS}{key}"))
            .await
            .map_err(|e| ApiError::from_store(e, "token"))?
        else {
            self.forget(key);
            return Err(ApiError::Unauthorized("invalid bearer token".into()));
        };
        let record = decode_record(&kv.value)?;
        let expires = record.expires_at.as_deref().and_then(parse_time);
        if let Some(at) = expires
            && at <= now
        {
            return Err(ApiError::Unauthorized(format!("this token expired at {at}")));
        }
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(
                key.to_owned(),
                Cached {
                    principal: record.principal.clone(),
                    expires,
                    checked: Some(Instant::now()),
                    in_process_only: false,
                },
            );
        }
        Ok(record.principal)
    }

    /// A namespace token works only while the namespace it was minted for exists and is not
    /// being deleted.
    async fn check_namespace(&self, namespace: &str, uid: &str) -> Result<(), ApiError> {
        let kv = self
            .store
            .get(&format!("/registry/namespaces/{namespace}"))
            .await
            .map_err(|e| ApiError::from_store(e, "namespace"))?;
        let gone = || {
            ApiError::Unauthorized(format!(
                "this token's namespace {namespace:?} was deleted; its tokens no longer work"
            ))
        };
        let Some(kv) = kv else { return Err(gone()) };
        let ns: wisp_api::Namespace = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::Internal(format!("corrupt namespace {namespace}: {e}")))?;
        if ns.metadata.uid.as_deref() != Some(uid) || ns.metadata.deletion_timestamp.is_some() {
            return Err(gone());
        }
        Ok(())
    }

    fn forget(&self, key: &str) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(key);
        }
    }

    /// Mint a token for `principal` (expiring after `ttl`, if given) and record its digest.
    pub async fn issue(
        &self,
        principal: &Principal,
        ttl: Option<Duration>,
    ) -> Result<(String, TokenInfo), ApiError> {
        let token = new_token()?;
        let now = jiff::Timestamp::now();
        let expires_at = match ttl {
            Some(ttl) => {
                let span = jiff::SignedDuration::try_from(ttl)
                    .map_err(|_| ApiError::BadRequest("ttlSeconds: too large".into()))?;
                Some(
                    now.checked_add(span)
                        .map_err(|_| ApiError::BadRequest("ttlSeconds: too large".into()))?
                        .to_string(),
                )
            }
            None => None,
        };
        let record = Record {
            principal: principal.clone(),
            created_at: Some(now.to_string()),
            expires_at,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| ApiError::Internal(e.to_string()))?;
        let key = digest(&token);
        self.store
            .create(&format!("{TOKENS}{key}"), bytes.into(), None)
            .await
            .map_err(|e| ApiError::from_store(e, "token"))?;
        Ok((token, TokenInfo::of(&key, &record)))
    }

    /// A token for `principal` that lives only in this process (never stored) and is good
    /// only for requests of the in-process client: for the components `wisp up` runs in
    /// process, which must still go through the API. Refused over the network, so a copy
    /// that leaks (it is never sent anywhere) is worth nothing.
    pub fn issue_ephemeral(&self, principal: Principal) -> Result<String, ApiError> {
        self.remember(principal, None, true)
    }

    /// A memory-only token good over the network too, expiring after `ttl` if given: for
    /// principals that may reach other processes and can do next to nothing
    /// ([`Principal::Scraper`], [`Principal::PodLogs`]).
    pub fn issue_ticket(&self, principal: Principal, ttl: Option<Duration>) -> Result<String, ApiError> {
        if matches!(
            principal,
            Principal::Admin | Principal::Node { .. } | Principal::Namespace { .. }
        ) {
            return Err(ApiError::Internal(format!(
                "a ticket is never minted for {}",
                principal.scope()
            )));
        }
        let expires = match ttl {
            Some(ttl) => Some(
                jiff::SignedDuration::try_from(ttl)
                    .ok()
                    .and_then(|d| jiff::Timestamp::now().checked_add(d).ok())
                    .ok_or_else(|| ApiError::Internal("ticket lifetime too long".into()))?,
            ),
            None => None,
        };
        self.remember(principal, expires, false)
    }

    fn remember(
        &self,
        principal: Principal,
        expires: Option<jiff::Timestamp>,
        in_process_only: bool,
    ) -> Result<String, ApiError> {
        let token = new_token()?;
        let mut cache = self
            .cache
            .write()
            .map_err(|_| ApiError::Internal("token cache poisoned".into()))?;
        if cache.len() > 10_000 {
            let now = jiff::Timestamp::now();
            cache.retain(|_, e| e.expires.is_none_or(|t| t > now));
        }
        cache.insert(
            digest(&token),
            Cached {
                principal,
                expires,
                checked: None,
                in_process_only,
            },
        );
        Ok(token)
    }

    /// Every stored token, oldest first.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, ApiError> {
        let listing = self
            .store
            .list(TOKENS)
            .await
            .map_err(|e| ApiError::from_store(e, "tokens"))?;
        let mut out = Vec::new();
        for kv in &listing.items {
            let key = kv.key.trim_start_matches(TOKENS);
            // A legacy namespace token cannot be used; it is still listed, to be revoked.
            out.push(TokenInfo::stored(key, &kv.value));
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Revoke the token whose id (a prefix of its digest, at least 8 hex digits) is `id`.
    pub async fn revoke(&self, id: &str) -> Result<TokenInfo, ApiError> {
        if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::BadRequest(format!(
                "token id {id:?}: expected at least 8 hex digits, as `wisp token list` shows"
            )));
        }
        let id = id.to_ascii_lowercase();
        let listing = self
            .store
            .list(&format!("{TOKENS}{id}"))
            .await
            .map_err(|e| ApiError::from_store(e, "tokens"))?;
        let kv = match listing.items.as_slice() {
            [one] => one,
            [] => return Err(ApiError::NotFound(format!("no token with id {id}"))),
            _ => {
                return Err(ApiError::Conflict(format!(
                    "several tokens have ids starting with {id}; give more digits"
                )));
            }
        };
        let key = kv.key.trim_start_matches(TOKENS).to_owned();
        let info = TokenInfo::stored(&key, &kv.value);
        match self.store.delete(&kv.key, None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(ApiError::from_store(e, "token")),
        }
        self.forget(&key);
        Ok(info)
    }

    /// Delete the tokens of the namespace whose uid is `uid` (it is gone).
    pub async fn revoke_namespace(&self, uid: &str) -> Result<usize, ApiError> {
        let listing = self
            .store
            .list(TOKENS)
            .await
            .map_err(|e| ApiError::from_store(e, "tokens"))?;
        let mut n = 0;
        for kv in &listing.items {
            let Ok(r) = decode_record(&kv.value) else { continue };
            if let Principal::Namespace { namespace_uid, .. } = &r.principal
                && namespace_uid == uid
            {
                match self.store.delete(&kv.key, None).await {
                    Ok(_) | Err(StoreError::NotFound(_)) => n += 1,
                    Err(e) => return Err(ApiError::from_store(e, "token")),
                }
                self.forget(kv.key.trim_start_matches(TOKENS));
            }
        }
        Ok(n)
    }

    /// On first start, mint the cluster-admin token and return it (exactly once per store).
    pub async fn bootstrap_admin(&self) -> Result<Option<String>, ApiError> {
        let marker = "/wisp/bootstrap/admin-token";
        let exists = self
            .store
            .get(marker)
            .await
            .map_err(|e| ApiError::from_store(e, "bootstrap marker"))?;
        if exists.is_some() {
            return Ok(None);
        }
        // Token first, marker second: a crash in between leaves no marker, so the next start
        // simply issues again (the orphaned digest is unusable without its token).
        let (token, _) = self.issue(&Principal::Admin, None).await?;
        match self.store.create(marker, "issued".into(), None).await {
            Ok(_) => Ok(Some(token)),
            Err(StoreError::AlreadyExists(_)) => Ok(None), // another server bootstrapped first
            Err(e) => Err(ApiError::from_store(e, "bootstrap marker")),
        }
    }

    /// A fresh admin token, for the local recovery path of a server whose CLI config was
    /// lost (only the process that owns the store can call this).
    pub async fn issue_admin(&self) -> Result<String, ApiError> {
        Ok(self.issue(&Principal::Admin, None).await?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_legacy_admin_tokens_still_work() {
        let r = Record {
            principal: Principal::Namespace {
                namespace: "team-a".into(),
                namespace_uid: "u1".into(),
            },
            created_at: None,
            expires_at: None,
        };
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(
            json,
            r#"{"kind":"namespace","namespace":"team-a","namespaceUid":"u1"}"#
        );
        assert_eq!(
            decode_record(json.as_bytes()).expect("decoded").principal,
            r.principal
        );
        let node = decode_record(br#"{"kind":"node","node":"n1"}"#).expect("node");
        assert_eq!(node.principal, Principal::Node { node: "n1".into() });
        assert_eq!(
            decode_record(br#"{"namespace":null}"#).expect("legacy").principal,
            Principal::Admin
        );
        let legacy_ns = decode_record(br#"{"namespace":"team-a"}"#).expect_err("unbound");
        assert_eq!(legacy_ns.code(), 401);
    }
}
