//! CRUD, `/status` and watch for every kind, generically over [`KindInfo`].
//!
//! Objects are stored as JSON under `/registry/<plural>/[<namespace>/]<name>` without
//! `resourceVersion`, which is always the store's `mod_revision` of the key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use wisp_api::{DynamicObject, EventType, KindInfo, LabelSelector, List, WatchEvent};
use wisp_store::{EventKind, KeyValue};

use serde::{Deserialize, Serialize};

use crate::State;
use crate::auth::Principal;
use crate::authz::{self, Condition, Verb};
use crate::body::{ApiBody, json_response};
use crate::error::ApiError;

/// What a request addresses.
#[derive(Clone, Debug)]
pub struct Target {
    pub kind: &'static KindInfo,
    /// The namespace for namespaced kinds (`None` = all namespaces for collections).
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Target {
    pub fn prefix(&self) -> String {
        match &self.namespace {
            Some(ns) if self.kind.namespaced => format!("/registry/{}/{ns}/", self.kind.plural),
            _ => format!("/registry/{}/", self.kind.plural),
        }
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }

    pub(crate) fn what(&self, name: &str) -> String {
        match &self.namespace {
            Some(ns) if self.kind.namespaced => format!("{} \"{ns}/{name}\"", self.kind.plural),
            _ => format!("{} {name:?}", self.kind.plural),
        }
    }
}

/// Decode a stored object and stamp its resourceVersion.
pub fn from_kv(kv: &KeyValue) -> Result<DynamicObject, ApiError> {
    let mut obj: DynamicObject = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("corrupt object at {}: {e}", kv.key)))?;
    obj.metadata.resource_version = Some(kv.mod_revision.to_string());
    Ok(obj)
}

/// An event's object, decoded once for every watcher of its kind.
pub struct Decoded {
    obj: DynamicObject,
    /// The object as JSON, for the event line.
    json: Bytes,
    /// As a JSON value, for field selectors; made on first use (`None`: not representable).
    value: std::sync::OnceLock<Option<Value>>,
}

type Slot = Arc<std::sync::OnceLock<Result<Arc<Decoded>, String>>>;

/// The objects of the most recent events, by revision. A write fans out to every watch of
/// its kind (each controller's, the scheduler's, every node agent's and ingress's): decoding
/// and encoding the object once instead of once per watcher takes most of the API server's
/// work per event off the path of the next component in a chain of writes (a cold start).
#[derive(Default)]
pub struct EventCache(std::sync::Mutex<BTreeMap<(i64, String), Slot>>);

impl EventCache {
    /// Events kept; an older one is decoded again if a slow watcher still needs it.
    const KEEP: usize = 4096;

    /// `kv` as of `revision` (the revision of the write that produced it, or of its deletion),
    /// with `resourceVersion` set to `revision`.
    pub fn decoded(&self, revision: i64, kv: &KeyValue) -> Result<Arc<Decoded>, ApiError> {
        let slot = {
            let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // By revision and key: etcd gives every key a lease revocation deletes the same
            // revision.
            let slot = map.entry((revision, kv.key.clone())).or_default().clone();
            while map.len() > Self::KEEP {
                map.pop_first();
            }
            slot
        };
        slot.get_or_init(|| {
            let mut obj: DynamicObject = serde_json::from_slice(&kv.value)
                .map_err(|e| format!("corrupt object at {}: {e}", kv.key))?;
            obj.metadata.resource_version = Some(revision.to_string());
            let json = serde_json::to_vec(&obj).map_err(|e| e.to_string())?;
            Ok(Arc::new(Decoded {
                obj,
                json: json.into(),
                value: std::sync::OnceLock::new(),
            }))
        })
        .clone()
        .map_err(ApiError::Internal)
    }
}

fn encode(obj: &DynamicObject) -> Result<Bytes, ApiError> {
    let mut obj = obj.clone();
    obj.metadata.resource_version = None;
    serde_json::to_vec(&obj)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Parse a request body as JSON and validate it as `target.kind`.
fn decode_body(target: &Target, body: &[u8]) -> Result<DynamicObject, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest("request body must be a JSON object".into()));
    }
    let name_hint = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut value = value;
    // The namespace comes from the URL; the body may repeat it but not contradict it.
    if target.kind.namespaced
        && let Some(ns) = &target.namespace
        && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
    {
        match meta.get("namespace").and_then(Value::as_str) {
            Some(body_ns) if body_ns != ns => {
                return Err(ApiError::BadRequest(format!(
                    "metadata.namespace: {body_ns:?} does not match the namespace in the URL ({ns:?})"
                )));
            }
            _ => {
                meta.insert("namespace".into(), Value::String(ns.clone()));
            }
        }
    }
    let normalized = (target.kind.decode)(value).map_err(|errors| ApiError::Invalid {
        kind: target.kind.kind.to_owned(),
        name: name_hint,
        errors,
    })?;
    serde_json::from_value(normalized).map_err(|e| ApiError::Internal(format!("normalized object: {e}")))
}

fn parse_rv(rv: Option<&str>, what: &str) -> Result<Option<i64>, ApiError> {
    match rv {
        None | Some("") => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => Err(ApiError::BadRequest(format!(
                "{what}: {s:?} is not a valid resourceVersion"
            ))),
        },
    }
}

/// The body minus metadata and status: what a change of bumps `generation`.
fn spec_part(obj: &DynamicObject) -> BTreeMap<&String, &Value> {
    obj.body.iter().filter(|(k, _)| k.as_str() != "status").collect()
}

pub async fn get(
    state: &State,
    principal: &Principal,
    target: &Target,
    name: &str,
    condition: Option<&Condition>,
) -> Result<Response<ApiBody>, ApiError> {
    let kv = state
        .store
        .get(&target.key(name))
        .await
        .map_err(|e| ApiError::from_store(e, &target.what(name)))?;
    let existing = kv.as_ref().map(from_kv).transpose()?;
    // A conditional read is refused alike whether the object exists or not.
    if let Some(c) = condition {
        check_condition(
            state,
            principal,
            Verb::Get,
            target,
            name,
            c,
            existing.as_ref(),
            None,
        )
        .await?;
    }
    let existing = existing.ok_or_else(|| ApiError::NotFound(format!("{} not found", target.what(name))))?;
    Ok(json_response(StatusCode::OK, &existing))
}

/// Whether a pod spec uses ConfigMap or Secret `name` (env or volume).
fn uses(spec: &wisp_api::PodSpec, plural: &str, name: &str) -> bool {
    let secret = plural == "secrets";
    let env = spec.containers.iter().flat_map(|c| &c.env).any(|e| {
        e.value_from.as_ref().is_some_and(|f| {
            let r = if secret {
                &f.secret_key_ref
            } else {
                &f.config_map_key_ref
            };
            r.as_ref().is_some_and(|r| r.name == name)
        })
    });
    let pull = secret && spec.image_pull_secrets.iter().any(|r| r.name == name);
    env || pull
        || spec.volumes.iter().any(|v| {
            if secret {
                v.secret.as_ref().is_some_and(|s| s.secret_name == name)
            } else {
                v.config_map.as_ref().is_some_and(|c| c.name == name)
            }
        })
}

/// Checks a conditional permission (see `authz::Condition`) against the stored object
/// (`existing`) and, for an update, the object it would become (`next`).
#[allow(clippy::too_many_arguments)]
async fn check_condition(
    state: &State,
    principal: &Principal,
    verb: Verb,
    target: &Target,
    name: &str,
    condition: &Condition,
    existing: Option<&DynamicObject>,
    next: Option<&DynamicObject>,
) -> Result<(), ApiError> {
    let resource = authz::resource_name(target, None);
    let ns = target.namespace.as_deref();
    let deny = |why: String| Err(authz::forbidden(principal, verb, &resource, ns, &why));
    match condition {
        Condition::PodOnNode(node) => {
            let bound = existing
                .and_then(|p| crate::admission::pod_spec(p, "pods"))
                .and_then(|s| s.node_name);
            if bound.as_deref() != Some(node.as_str()) {
                return deny(format!("pod {name:?} is not bound to node {node:?}"));
            }
            Ok(())
        }
        Condition::UsedByPodOnNode(node) => {
            let Some(ns) = ns else {
                return deny("not a namespaced object".into());
            };
            let pods = crate::admission::list_in::<wisp_api::Pod>(state, "pods", ns).await?;
            if pods.iter().any(|p| {
                p.spec.node_name.as_deref() == Some(node.as_str()) && uses(&p.spec, target.kind.plural, name)
            }) {
                return Ok(());
            }
            // Every node's ingress serves every HTTPS Route: it reads the certificate (a
            // Secret of type tls) a Route of the namespace names, and no other Secret.
            let tls_secret = target.kind.plural == "secrets"
                && existing.and_then(|s| s.body.get("type")).and_then(Value::as_str)
                    == Some(wisp_api::SECRET_TYPE_TLS);
            if tls_secret {
                let routes = crate::admission::list_in::<wisp_api::Route>(state, "routes", ns).await?;
                if routes
                    .iter()
                    .any(|r| r.spec.tls.as_ref().is_some_and(|t| t.secret_name == name))
                {
                    return Ok(());
                }
            }
            deny(format!(
                "no pod bound to node {node:?} uses {} {name:?}, and no Route names it as its certificate",
                target.kind.singular
            ))
        }
        Condition::Named(want) => {
            if name != want {
                return deny(format!("it may create only its own, named {want:?}"));
            }
            Ok(())
        }
        Condition::WakeFromZero => {
            let (Some(existing), Some(next)) = (existing, next) else {
                return deny("a node only wakes an existing Deployment".into());
            };
            let replicas = |o: &DynamicObject| {
                o.body
                    .get("spec")
                    .and_then(|s| s.get("replicas"))
                    .and_then(Value::as_i64)
            };
            // With the replicas, the cold start's trace context may be set (a well-formed
            // `traceparent`) or removed.
            let without = |o: &DynamicObject| {
                let mut o = o.clone();
                if let Some(spec) = o.body.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("replicas");
                }
                o.metadata.generation = None;
                o.metadata.annotations.remove(wisp_api::TRACEPARENT_ANNOTATION);
                o
            };
            if replicas(existing) != Some(0)
                || replicas(next) != Some(1)
                || without(existing) != without(next)
            {
                return deny(
                    "a node's activator only wakes a Deployment from zero (spec.replicas 0 to 1 and its wisp.dev/traceparent annotation, nothing else)"
                        .into(),
                );
            }
            if let Some(tp) = next.metadata.annotations.get(wisp_api::TRACEPARENT_ANNOTATION)
                && !wisp_api::is_traceparent(tp)
            {
                return deny(format!(
                    "metadata.annotations[{}]: not a W3C traceparent",
                    wisp_api::TRACEPARENT_ANNOTATION
                ));
            }
            Ok(())
        }
    }
}

async fn ensure_namespace(state: &State, target: &Target) -> Result<(), ApiError> {
    if let (true, Some(ns)) = (target.kind.namespaced, &target.namespace) {
        let found = state
            .store
            .get(&format!("/registry/namespaces/{ns}"))
            .await
            .map_err(|e| ApiError::from_store(e, "namespace"))?;
        let Some(kv) = found else {
            return Err(ApiError::NotFound(format!(
                "namespace {ns:?} not found; create it first (kind: Namespace)"
            )));
        };
        if from_kv(&kv)?.metadata.deletion_timestamp.is_some() {
            return Err(ApiError::Forbidden(format!(
                "namespace {ns:?} is being deleted (Terminating): nothing new can be created in it"
            )));
        }
    }
    Ok(())
}

pub async fn create(
    state: &State,
    principal: &Principal,
    target: &Target,
    body: &[u8],
    condition: Option<&Condition>,
) -> Result<Response<ApiBody>, ApiError> {
    let mut obj = decode_body(target, body)?;
    if let Some(c) = condition {
        let name = obj.metadata.name.clone();
        check_condition(state, principal, Verb::Create, target, &name, c, None, None).await?;
    }
    ensure_namespace(state, target).await?;
    let _admitted = crate::admission::admit(state, principal, target, &mut obj, None).await?;
    let name = obj.metadata.name.clone();
    obj.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    obj.metadata.creation_timestamp = Some(jiff::Timestamp::now().to_string());
    obj.metadata.generation = Some(1);
    obj.metadata.deletion_timestamp = None;
    if !target.kind.namespaced {
        obj.metadata.namespace = None;
    }
    // Status is written through the /status subresource only.
    obj.body.remove("status");
    if target.kind.plural == "namespaces" {
        // A new namespace is Active (a Terminating one is only ever made by a delete).
        obj.body
            .insert("status".into(), serde_json::json!({ "phase": "Active" }));
    }
    let rev = state
        .store
        .create(&target.key(&name), encode(&obj)?, None)
        .await
        .map_err(|e| ApiError::from_store(e, &target.what(&name)))?;
    obj.metadata.resource_version = Some(rev.to_string());
    Ok(json_response(StatusCode::CREATED, &obj))
}

/// PUT of the object (`status == false`) or of its status subresource.
pub async fn update(
    state: &State,
    principal: &Principal,
    target: &Target,
    name: &str,
    body: &[u8],
    status: bool,
    condition: Option<&Condition>,
) -> Result<Response<ApiBody>, ApiError> {
    let incoming = decode_body(target, body)?;
    if incoming.metadata.name != name {
        return Err(ApiError::BadRequest(format!(
            "metadata.name: {:?} does not match the name in the URL ({name:?})",
            incoming.metadata.name
        )));
    }
    let what = target.what(name);
    let wanted = parse_rv(
        incoming.metadata.resource_version.as_deref(),
        "metadata.resourceVersion",
    )?;
    // Without a resourceVersion the client asked for no precondition: a conflict with a
    // concurrent writer between our read and our write is retried, not reported.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = state
            .store
            .get(&target.key(name))
            .await
            .map_err(|e| ApiError::from_store(e, &what))?
            .ok_or_else(|| ApiError::NotFound(format!("{what} not found")))?;
        if let Some(rv) = wanted
            && rv != current.mod_revision
        {
            let stale = wisp_store::StoreError::Conflict {
                key: current.key.clone(),
                expected: rv,
                actual: current.mod_revision,
            };
            return Err(ApiError::from_store(stale, &what));
        }
        let existing = from_kv(&current)?;
        let mut next = merge(&existing, &incoming, status);
        if let Some(c) = condition {
            check_condition(
                state,
                principal,
                Verb::Update,
                target,
                name,
                c,
                Some(&existing),
                Some(&next),
            )
            .await?;
        }
        if target.kind.plural == "namespaces" {
            // Terminating is only ever set (and never unset) by a delete.
            next.metadata.deletion_timestamp = existing.metadata.deletion_timestamp.clone();
            if existing.metadata.deletion_timestamp.is_some()
                && let Some(st) = existing.body.get("status")
            {
                next.body.insert("status".into(), st.clone());
            }
        }
        if next == existing {
            // Nothing changed: no write, no event (like Kubernetes).
            return Ok(json_response(StatusCode::OK, &existing));
        }
        let _admitted = if status {
            None
        } else {
            Some(crate::admission::admit(state, principal, target, &mut next, Some(&existing)).await?)
        };
        match state
            .store
            .update(&target.key(name), encode(&next)?, Some(current.mod_revision))
            .await
        {
            Ok(rev) => {
                next.metadata.resource_version = Some(rev.to_string());
                return Ok(json_response(StatusCode::OK, &next));
            }
            Err(wisp_store::StoreError::Conflict { .. }) if wanted.is_none() && attempts < 8 => {}
            Err(e) => return Err(ApiError::from_store(e, &what)),
        }
    }
}

/// The object a PUT (`status == false`) or a status PUT makes of what is stored.
fn merge(existing: &DynamicObject, incoming: &DynamicObject, status: bool) -> DynamicObject {
    let mut next = existing.clone();
    if status {
        match incoming.body.get("status") {
            Some(s) => next.body.insert("status".into(), s.clone()),
            None => next.body.remove("status"),
        };
    } else {
        let kept_status = existing.body.get("status").cloned();
        next.body = incoming.body.clone();
        match kept_status {
            Some(s) => next.body.insert("status".into(), s),
            None => next.body.remove("status"),
        };
        next.metadata.labels = incoming.metadata.labels.clone();
        next.metadata.annotations = incoming.metadata.annotations.clone();
        next.metadata.owner_references = incoming.metadata.owner_references.clone();
        if spec_part(&next) != spec_part(existing) {
            next.metadata.generation = Some(existing.metadata.generation.unwrap_or(1) + 1);
        }
    }
    next
}

pub async fn delete(
    state: &State,
    target: &Target,
    name: &str,
    rv: Option<&str>,
) -> Result<Response<ApiBody>, ApiError> {
    let what = target.what(name);
    let expected = parse_rv(rv, "resourceVersion")?;
    let prev = state
        .store
        .delete(&target.key(name), expected)
        .await
        .map_err(|e| ApiError::from_store(e, &what))?;
    let mut obj = from_kv(&prev)?;
    if target.kind.plural == "pods" {
        remember_deleted_pod(state, &obj);
    }
    obj.metadata.deletion_timestamp = Some(jiff::Timestamp::now().to_string());
    Ok(json_response(StatusCode::OK, &obj))
}

/// How long, and how many, deleted pods are remembered for their node's last events.
const DELETED_PODS_FOR: std::time::Duration = std::time::Duration::from_secs(600);
const DELETED_PODS_MAX: usize = 10_000;

fn remember_deleted_pod(state: &State, pod: &DynamicObject) {
    let node = pod
        .body
        .get("spec")
        .and_then(|s| s.get("nodeName"))
        .and_then(Value::as_str);
    let (Some(uid), Some(node)) = (pod.metadata.uid.clone(), node) else {
        return;
    };
    let mut deleted = state
        .deleted_pods
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::time::Instant::now();
    if deleted.len() >= DELETED_PODS_MAX {
        deleted.retain(|_, (_, at)| now.duration_since(*at) < DELETED_PODS_FOR);
        if deleted.len() >= DELETED_PODS_MAX {
            // Full of recent ones: this pod's node will not report stopping it.
            return;
        }
    }
    let place = format!(
        "{}/{}@{node}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name
    );
    deleted.insert(uid, (place, now));
}

/// Whether pod `namespace/name` of uid `uid`, bound to `node`, was deleted within the last
/// ten minutes.
pub(crate) fn deleted_lately(state: &State, namespace: &str, name: &str, uid: &str, node: &str) -> bool {
    let place = format!("{namespace}/{name}@{node}");
    state
        .deleted_pods
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(uid)
        .is_some_and(|(p, at)| *p == place && at.elapsed() < DELETED_PODS_FOR)
}

/// Filters of a list or watch: label selector and simple field selectors.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub labels: Option<LabelSelector>,
    /// (JSON pointer, value, equal?)
    pub fields: Vec<(String, String, bool)>,
}

impl Filter {
    pub fn parse(label_selector: Option<&str>, field_selector: Option<&str>) -> Result<Self, ApiError> {
        let labels = match label_selector.filter(|s| !s.trim().is_empty()) {
            Some(s) => Some(
                LabelSelector::parse(s)
                    .map_err(|e| ApiError::BadRequest(format!("labelSelector {s:?}: {e}")))?,
            ),
            None => None,
        };
        let mut fields = Vec::new();
        for term in field_selector
            .unwrap_or_default()
            .split(',')
            .filter(|t| !t.trim().is_empty())
        {
            let (path, value, eq) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, v, true)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "fieldSelector term {term:?}: expected FIELD=VALUE or FIELD!=VALUE"
                )));
            };
            let path = path.trim();
            if path.is_empty() || !path.split('.').all(|p| !p.is_empty()) {
                return Err(ApiError::BadRequest(format!(
                    "fieldSelector term {term:?}: bad field path"
                )));
            }
            fields.push((
                format!("/{}", path.replace('.', "/")),
                value.trim().to_owned(),
                eq,
            ));
        }
        Ok(Self { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_none() && self.fields.is_empty()
    }

    /// The watch event type a filtered watcher sees for `ev` (whose object is `obj`), like
    /// Kubernetes: an object entering the selector is ADDED, one leaving it is DELETED,
    /// changes outside it are not sent at all.
    pub fn classify(&self, ev: &wisp_store::Event, obj: &Decoded, cache: &EventCache) -> Option<EventType> {
        let now = self.is_empty() || self.matches_decoded(obj);
        match ev.kind {
            EventKind::Added => now.then_some(EventType::Added),
            EventKind::Deleted => now.then_some(EventType::Deleted),
            EventKind::Modified => {
                let before = self.is_empty()
                    || ev
                        .prev
                        .as_ref()
                        .and_then(|p| cache.decoded(p.mod_revision, p).ok())
                        .map_or(now, |p| self.matches_decoded(&p));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }

    pub fn matches(&self, obj: &DynamicObject) -> bool {
        if let Some(sel) = &self.labels
            && !sel.matches(&obj.metadata.labels)
        {
            return false;
        }
        if self.fields.is_empty() {
            return true;
        }
        let Ok(value) = serde_json::to_value(obj) else {
            return false;
        };
        self.fields_match(&value)
    }

    /// [`Filter::matches`] on an event's shared decoding.
    pub fn matches_decoded(&self, d: &Decoded) -> bool {
        if let Some(sel) = &self.labels
            && !sel.matches(&d.obj.metadata.labels)
        {
            return false;
        }
        if self.fields.is_empty() {
            return true;
        }
        match d.value.get_or_init(|| serde_json::to_value(&d.obj).ok()) {
            Some(value) => self.fields_match(value),
            None => false,
        }
    }

    fn fields_match(&self, value: &Value) -> bool {
        self.fields.iter().all(|(ptr, want, eq)| {
            let got = match value.pointer(ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *eq
        })
    }
}

/// `limit` and `continue` of a list.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub limit: Option<usize>,
    /// The last key of the previous page, and the revision the first page was read at.
    pub after: Option<(String, i64)>,
}

#[derive(Serialize, Deserialize)]
struct Continue {
    key: String,
    rv: i64,
}

impl Page {
    /// From the query's `limit` and `continue`.
    pub fn parse(limit: Option<&str>, cont: Option<&str>) -> Result<Self, ApiError> {
        use base64::Engine;
        let limit = match limit.filter(|l| !l.is_empty()) {
            Some(l) => match l.parse::<usize>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => return Err(ApiError::BadRequest(format!("limit: {l:?} is not a number"))),
            },
            None => None,
        };
        let after = match cont.filter(|c| !c.is_empty()) {
            Some(c) => {
                let bad = || {
                    ApiError::BadRequest(format!("continue: {c:?} is not a continue token of this server"))
                };
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .map_err(|_| bad())?;
                let t: Continue = serde_json::from_slice(&raw).map_err(|_| bad())?;
                Some((t.key, t.rv))
            }
            None => None,
        };
        Ok(Self { limit, after })
    }
}

/// A list, `page.limit` items at a time: the next page starts after the last key of this one
/// (objects changed meanwhile show as they are then; the list's `resourceVersion` stays the
/// first page's, from which a watch misses nothing).
pub async fn list(
    state: &State,
    target: &Target,
    filter: &Filter,
    page: &Page,
) -> Result<Response<ApiBody>, ApiError> {
    use base64::Engine;
    let listing = state
        .store
        .list(&target.prefix())
        .await
        .map_err(|e| ApiError::from_store(e, target.kind.plural))?;
    let mut kvs: Vec<&KeyValue> = listing.items.iter().collect();
    kvs.sort_by(|a, b| a.key.cmp(&b.key));
    let revision = page.after.as_ref().map_or(listing.revision, |(_, rv)| *rv);
    let start = match &page.after {
        Some((key, _)) => kvs.partition_point(|kv| kv.key.as_str() <= key.as_str()),
        None => 0,
    };
    let mut items = Vec::new();
    let mut last_key = None;
    let mut remaining = 0i64;
    for kv in &kvs[start..] {
        let obj = from_kv(kv)?;
        if !filter.matches(&obj) {
            continue;
        }
        if page.limit.is_some_and(|l| items.len() >= l) {
            remaining += 1;
            continue;
        }
        last_key = Some(kv.key.clone());
        items.push(obj);
    }
    let continue_ = match (remaining > 0, last_key) {
        (true, Some(key)) => {
            let token = serde_json::to_vec(&Continue { key, rv: revision })
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token))
        }
        _ => None,
    };
    let list = List {
        api_version: wisp_api::API_VERSION.to_owned(),
        kind: format!("{}List", target.kind.kind),
        metadata: wisp_api::ListMeta {
            resource_version: Some(revision.to_string()),
            remaining_item_count: continue_.is_some().then_some(remaining),
            continue_,
        },
        items,
    };
    Ok(json_response(StatusCode::OK, &list))
}

/// `{"type":…,"object":…}` and a newline, around an object already encoded.
fn event_line_json(type_: EventType, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":");
    line.extend_from_slice(&serde_json::to_vec(&type_).unwrap_or_default());
    line.extend_from_slice(b",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    line.into()
}

fn event_line(type_: EventType, object: &impl serde::Serialize) -> Bytes {
    let mut line = serde_json::to_vec(&WatchEvent { type_, object }).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

fn bookmark(kind: &KindInfo, revision: i64) -> Bytes {
    let object = serde_json::json!({
        "apiVersion": wisp_api::API_VERSION,
        "kind": kind.kind,
        "metadata": { "resourceVersion": revision.to_string() }
    });
    event_line(EventType::Bookmark, &object)
}

/// `?watch=true`: newline-delimited JSON events, BOOKMARKs every `bookmark_interval`.
pub async fn watch(
    state: &State,
    target: &Target,
    filter: Filter,
    resource_version: Option<&str>,
    timeout: Option<Duration>,
) -> Result<Response<ApiBody>, ApiError> {
    let rv = parse_rv(resource_version, "resourceVersion")?.unwrap_or(0);
    let prefix = target.prefix();
    // resourceVersion 0 / absent: the current state as ADDED events, then changes.
    let (initial, after) = if rv == 0 {
        let listing = state
            .store
            .list(&prefix)
            .await
            .map_err(|e| ApiError::from_store(e, target.kind.plural))?;
        let mut lines = Vec::new();
        for kv in &listing.items {
            let obj = from_kv(kv)?;
            if filter.matches(&obj) {
                lines.push(event_line(EventType::Added, &obj));
            }
        }
        (lines, listing.revision)
    } else {
        (Vec::new(), rv)
    };
    let events = state
        .store
        .watch(&prefix, after)
        .await
        .map_err(|e| ApiError::from_store(e, target.kind.plural))?;
    let kind = target.kind;
    let interval = state.config.bookmark_interval;
    let shutdown = state.shutdown.clone();
    let cache = state.events.clone();
    let gauge = state
        .metrics
        .watches
        .get_or_create(&crate::metrics::ResourceLabel {
            resource: kind.plural.to_owned(),
        })
        .clone();
    gauge.inc();
    let guard = GaugeGuard(gauge);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);

    let stream = futures::stream::unfold(
        (events, after, false, guard),
        move |(mut events, mut last, done, guard)| {
            let filter = filter.clone();
            let shutdown = shutdown.clone();
            let cache = cache.clone();
            async move {
                if done {
                    return None;
                }
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                loop {
                    let until_deadline = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        () = until_deadline => return None,
                        _ = tick.tick() => {
                            return Some((Ok(bookmark(kind, last)), (events, last, false, guard)));
                        }
                        next = events.next() => match next {
                            None => return None,
                            Some(Err(e)) => {
                                let status = ApiError::from_store(e, kind.plural).status();
                                let line = event_line(EventType::Error, &status);
                                return Some((Ok(line), (events, last, true, guard)));
                            }
                            Some(Ok(ev)) => {
                                last = ev.revision;
                                // resourceVersion is the event's revision (for a deletion,
                                // the deletion's, not the last write's).
                                let obj = match cache.decoded(ev.revision, &ev.kv) {
                                    Ok(o) => o,
                                    Err(e) => {
                                        let line = event_line(EventType::Error, &e.status());
                                        return Some((Ok(line), (events, last, true, guard)));
                                    }
                                };
                                let Some(type_) = filter.classify(&ev, &obj, &cache) else { continue };
                                let line = event_line_json(type_, &obj.json);
                                return Some((Ok(line), (events, last, false, guard)));
                            }
                        }
                    }
                }
            }
        },
    );
    let frames = futures::stream::iter(initial.into_iter().map(Ok))
        .chain(stream)
        .map(|r: Result<Bytes, std::io::Error>| r.map(Frame::data));
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
