//! Admission: what a write may contain beyond its schema, given who writes it and what the
//! namespace already holds. Runs on every create and main-resource update, after decoding
//! and validation (`wisp-api`) and authorization (`authz`), before the store write:
//!
//! * a tenant never sets `spec.nodeName` (of a pod or a pod template): pods are bound by the
//!   scheduler, which checks that they fit;
//! * a tenant's `wasm:` digests must be blobs its namespace uploaded;
//! * LimitRanges: defaults for a new pod's containers, bounds for every pod and template, and
//!   the cluster's own ceilings on `timeoutMs` and `terminationGracePeriodSeconds`;
//! * Route (and Function route) hosts: a namespace claims hosts under
//!   `<namespace>.<cluster domain>` and the domains the admin granted it, and never a host
//!   another namespace holds;
//! * ResourceQuotas, checked and written under a per-namespace lock;
//! * what nothing acts on yet is refused, not accepted and ignored: a Job is not created
//!   (no controller runs it); the fields of that kind are refused by `wisp-api`'s validation;
//! * a ConfigMap or Secret marked `immutable` keeps its values and the mark;
//! * an Event's timestamps are RFC 3339 and not in the future; a node writes Events in its
//!   own name, under the name derived from them, about the pods bound to it (a fixed set of
//!   reasons; `Killing` also of its pods deleted in the last ten minutes) and the cold starts
//!   its ingress sees.

use serde_json::Value;
use wisp_api::{
    DynamicObject, FieldError, Function, LimitRange, Namespace, PodSpec, Quantity, QuantityFormat, Route,
    ValidationErrors,
};

use crate::State;
use crate::auth::Principal;
use crate::authz::{self, Verb};
use crate::error::ApiError;
use crate::resources::Target;

/// Where a kind keeps its pod spec (`spec` of a pod, `spec.template.spec` of the others).
fn pod_spec_path(plural: &str) -> Option<&'static [&'static str]> {
    match plural {
        "pods" => Some(&["spec"]),
        "replicasets" | "deployments" | "jobs" | "functions" | "revisions" => {
            Some(&["spec", "template", "spec"])
        }
        _ => None,
    }
}

fn at<'a>(obj: &'a DynamicObject, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(obj.body.get(*first)?, |v, k| v.get(k))
}

fn at_mut<'a>(obj: &'a mut DynamicObject, path: &[&str]) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(obj.body.get_mut(*first)?, |v, k| v.get_mut(k))
}

/// The pod spec of `obj`, if its kind has one.
pub(crate) fn pod_spec(obj: &DynamicObject, plural: &str) -> Option<PodSpec> {
    let path = pod_spec_path(plural)?;
    serde_json::from_value(at(obj, path)?.clone()).ok()
}

/// Every `wasm:` digest a stored object's pod spec names.
pub(crate) fn wasm_digests(obj: &DynamicObject, plural: &str) -> Vec<String> {
    pod_spec(obj, plural)
        .map(|s| s.containers.into_iter().filter_map(|c| c.wasm).collect())
        .unwrap_or_default()
}

/// Held from admission until the write is done: the namespace's quota lock, when it has
/// quotas.
pub(crate) struct Admitted {
    _quota: Option<tokio::sync::OwnedMutexGuard<()>>,
}

fn invalid(obj: &DynamicObject, errors: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        kind: obj.kind.clone(),
        name: obj.metadata.name.clone(),
        errors: ValidationErrors(errors),
    }
}

/// Admit `obj` (created when `existing` is `None`, else replacing it) into `target`'s
/// namespace; may fill defaults into `obj`.
/// A Secret's `stringData` is write-only: folded into `data` (base64; a key in both takes
/// the `stringData` value, as Kubernetes does) and never stored or returned.
fn fold_string_data(obj: &mut DynamicObject) -> Result<(), ApiError> {
    use base64::Engine;
    let mut secret: wisp_api::Secret = obj.to_typed().map_err(|e| ApiError::Internal(e.to_string()))?;
    if secret.string_data.is_empty() {
        return Ok(());
    }
    for (k, v) in std::mem::take(&mut secret.string_data) {
        secret
            .data
            .insert(k, base64::engine::general_purpose::STANDARD.encode(v.as_bytes()));
    }
    *obj = DynamicObject::from_typed(&secret).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(())
}

pub(crate) async fn admit(
    state: &State,
    principal: &Principal,
    target: &Target,
    obj: &mut DynamicObject,
    existing: Option<&DynamicObject>,
) -> Result<Admitted, ApiError> {
    let plural = target.kind.plural;
    if plural == "jobs" && existing.is_none() {
        return Err(invalid(
            obj,
            vec![FieldError::not_supported(
                "kind",
                "no controller runs Jobs, so a Job would never start a pod; run the work as a Pod \
                 with restartPolicy: Never or OnFailure",
            )],
        ));
    }
    if plural == "secrets" {
        fold_string_data(obj)?;
    }
    if let Some(before) = existing {
        admit_immutable(obj, before)?;
    }
    let Some(ns) = target.namespace.clone().filter(|_| target.kind.namespaced) else {
        return Ok(Admitted { _quota: None });
    };
    let verb = if existing.is_some() {
        Verb::Update
    } else {
        Verb::Create
    };
    if let Some(path) = pod_spec_path(plural) {
        admit_pod_spec(state, principal, verb, target, &ns, path, obj, existing).await?;
    }
    match plural {
        "routes" => {
            let route: Route = obj.to_typed().map_err(|e| ApiError::Internal(e.to_string()))?;
            if let Some(host) = &route.spec.host {
                admit_host(state, principal, verb, target, &ns, host, "spec.host").await?;
            }
        }
        "functions" => {
            let f: Function = obj.to_typed().map_err(|e| ApiError::Internal(e.to_string()))?;
            let route_host = f.spec.route.as_ref().and_then(|r| r.host.clone());
            if let Some(host) = &route_host {
                admit_host(state, principal, verb, target, &ns, host, "spec.route.host").await?;
            }
            // A tag answers on `<tag>.<the function's host>`: a host like any other, which the
            // namespace must be able to claim (the controller writes its Route as the admin).
            let host = route_host
                .unwrap_or_else(|| format!("{}.{ns}.{}", f.metadata.name, state.config.cluster_domain));
            for (i, t) in f.spec.traffic.iter().enumerate() {
                if let Some(tag) = &t.tag {
                    let field = format!("spec.traffic[{i}].tag");
                    admit_host(
                        state,
                        principal,
                        verb,
                        target,
                        &ns,
                        &format!("{tag}.{host}"),
                        &field,
                    )
                    .await?;
                }
            }
        }
        "events" => admit_event(state, principal, verb, target, &ns, obj, existing).await?,
        _ => {}
    }
    let quota = crate::quota::admit(state, target, &ns, obj, existing).await?;
    Ok(Admitted { _quota: quota })
}

/// What a node's ingress reports about a workload it wakes (not its own pods).
const NODE_WORKLOAD_EVENTS: &[(&str, &str)] = &[("Function", "ColdStart"), ("Service", "ColdStart")];
/// What a node's agent reports of its pods (the kubelet's reasons).
const NODE_POD_REASONS: &[&str] = &[
    "Pulling",
    "Pulled",
    "Failed",
    "Started",
    "Killing",
    "BackOff",
    "Unhealthy",
    "OOMKilled",
];
/// The components of a node that record events.
const NODE_COMPONENTS: &[&str] = &["node-agent", "ingress"];

/// An Event: its object's namespace is filled in, its timestamps parse and none is in the
/// future (a later one is brought back to now: the TTL counts from `lastTimestamp`). A node
/// writes only in its own name, as one of its components, under the name
/// [`wisp_api::event_name`] gives (so it can neither take nor block another reporter's
/// Event), about a pod bound to it (the same uid), a pod of its gone since (`Killing`), or a
/// cold start of a Function or Service that exists.
async fn admit_event(
    state: &State,
    principal: &Principal,
    verb: Verb,
    target: &Target,
    ns: &str,
    obj: &mut DynamicObject,
    existing: Option<&DynamicObject>,
) -> Result<(), ApiError> {
    if let Some(o) = obj.body.get_mut("involvedObject").and_then(Value::as_object_mut) {
        o.entry("namespace")
            .or_insert_with(|| Value::String(ns.to_owned()));
    }
    let now = jiff::Timestamp::now();
    let mut errs = Vec::new();
    for field in ["firstTimestamp", "lastTimestamp"] {
        let Some(t) = obj.body.get(field).and_then(Value::as_str) else {
            continue;
        };
        match t.parse::<jiff::Timestamp>() {
            Ok(at) if at > now => {
                obj.body.insert(field.into(), Value::String(now.to_string()));
            }
            Ok(_) => {}
            Err(_) => errs.push(FieldError::new(
                field,
                format!("{t:?} is not an RFC 3339 time (e.g. 2026-12-07T10:00:00Z)"),
            )),
        }
    }
    if !errs.is_empty() {
        return Err(invalid(obj, errs));
    }
    let Principal::Node { node } = principal else {
        return Ok(());
    };
    let resource = authz::resource_name(target, None);
    let deny = |why: String| Err(authz::forbidden(principal, verb, &resource, Some(ns), &why));
    let event: wisp_api::Event = obj.to_typed().map_err(|e| ApiError::Internal(e.to_string()))?;
    let instance = |o: &DynamicObject| {
        o.body
            .get("reportingInstance")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if event.reporting_instance != *node
        || existing.is_some_and(|e| instance(e).as_deref() != Some(node.as_str()))
    {
        return deny(format!(
            "a node writes events in its own name only (reportingInstance {node:?})"
        ));
    }
    if !NODE_COMPONENTS.contains(&event.reporting_component.as_str()) {
        return deny(format!(
            "a node reports as one of its components ({}), not as {:?}",
            NODE_COMPONENTS.join(", "),
            event.reporting_component
        ));
    }
    let about = &event.involved_object;
    let want = wisp_api::event_name(
        about,
        &event.reason,
        event.type_,
        &event.reporting_component,
        &event.reporting_instance,
    );
    if event.metadata.name != want {
        return deny(format!(
            "a node's event about {} {:?} for {} is named {want:?}",
            about.kind, about.name, event.reason
        ));
    }
    let stored = |plural: &str| format!("/registry/{plural}/{ns}/{}", about.name);
    if about.kind == "Pod" && !NODE_POD_REASONS.contains(&event.reason.as_str()) {
        return deny(format!(
            "a node reports of its pods only: {}",
            NODE_POD_REASONS.join(", ")
        ));
    }
    if about.kind == "Pod" {
        let pod = state
            .store
            .get(&stored("pods"))
            .await
            .map_err(|e| ApiError::from_store(e, "pods"))?
            .and_then(|kv| serde_json::from_slice::<wisp_api::Pod>(&kv.value).ok());
        match pod {
            Some(p)
                if p.spec.node_name.as_deref() == Some(node.as_str())
                    && (about.uid.is_none() || about.uid == p.metadata.uid) => {}
            // Deleting a pod is immediate: its containers are stopped after it is gone, by
            // the node it was bound to.
            None if event.reason == "Killing"
                && about.uid.as_deref().is_some_and(|uid| {
                    crate::resources::deleted_lately(state, ns, &about.name, uid, node)
                }) => {}
            _ => {
                return deny(format!(
                    "pod {:?} is not bound to node {node:?}: a node reports events of its own pods",
                    about.name
                ));
            }
        }
    } else if NODE_WORKLOAD_EVENTS.contains(&(about.kind.as_str(), event.reason.as_str())) {
        let plural = if about.kind == "Function" {
            "functions"
        } else {
            "services"
        };
        let found = state
            .store
            .get(&stored(plural))
            .await
            .map_err(|e| ApiError::from_store(e, plural))?;
        if found.is_none() {
            return deny(format!("{} {:?} does not exist", about.kind, about.name));
        }
    } else {
        return deny(format!(
            "a node reports events of its own pods and cold starts (ColdStart of a Function or \
             Service), not {} of a {}",
            event.reason, about.kind
        ));
    }
    Ok(())
}

/// A ConfigMap or Secret marked `immutable: true` keeps its values and the mark for good
/// (like Kubernetes): each changed field is named.
fn admit_immutable(obj: &DynamicObject, before: &DynamicObject) -> Result<(), ApiError> {
    let fields: &[&str] = match obj.kind.as_str() {
        "ConfigMap" => &["data", "binaryData"],
        "Secret" => &["data", "stringData", "type"],
        _ => return Ok(()),
    };
    if before.body.get("immutable") != Some(&Value::Bool(true)) {
        return Ok(());
    }
    let mut errs = Vec::new();
    if obj.body.get("immutable") != Some(&Value::Bool(true)) {
        errs.push(FieldError::new(
            "immutable",
            "field is immutable when `immutable` is set: it cannot be unset; delete and recreate the object",
        ));
    }
    for field in fields {
        if obj.body.get(*field) != before.body.get(*field) {
            errs.push(FieldError::new(
                *field,
                format!(
                    "field is immutable when `immutable` is set: this {} cannot change; delete and \
                     recreate it",
                    obj.kind
                ),
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(invalid(obj, errs))
    }
}

#[allow(clippy::too_many_arguments)]
async fn admit_pod_spec(
    state: &State,
    principal: &Principal,
    verb: Verb,
    target: &Target,
    ns: &str,
    path: &[&str],
    obj: &mut DynamicObject,
    existing: Option<&DynamicObject>,
) -> Result<(), ApiError> {
    let Some(mut spec) = pod_spec(obj, target.kind.plural) else {
        return Ok(());
    };
    let field = path.join(".");
    // A pod's spec is fixed once it exists, but for its binding: changing what runs, or what
    // it asks for, under a pod already bound would bypass the scheduler's fit.
    if target.kind.plural == "pods"
        && let Some(before) = existing.and_then(|e| pod_spec(e, "pods"))
    {
        let bound_once = before.node_name.is_none() || before.node_name == spec.node_name;
        let mut a = before;
        let mut b = spec.clone();
        a.node_name = None;
        b.node_name = None;
        if a != b || !bound_once {
            return Err(invalid(
                obj,
                vec![FieldError::new(
                    "spec",
                    "a pod's spec cannot change once it is created (only spec.nodeName, set once when \
                     the pod is bound); create a new pod instead",
                )],
            ));
        }
    }
    if let Principal::Namespace { namespace_uid, .. } = principal {
        let before = existing
            .and_then(|e| pod_spec(e, target.kind.plural))
            .and_then(|s| s.node_name);
        if spec.node_name.is_some() && spec.node_name != before {
            return Err(authz::forbidden(
                principal,
                verb,
                target.kind.plural,
                Some(ns),
                &format!("{field}.nodeName is set by the scheduler, which checks that a pod fits its node"),
            ));
        }
        let mut errs = Vec::new();
        for (i, c) in spec.containers.iter().enumerate() {
            // A blob digest must be the namespace's; an oci:// component is pulled by the node
            // with the pod's own registry credentials.
            let Some(digest) = c.wasm.as_deref().filter(|w| w.starts_with("sha256:")) else {
                continue;
            };
            if !crate::blobs::namespace_has(state, ns, namespace_uid, digest).await? {
                errs.push(FieldError::new(
                    format!("{field}.containers[{i}].wasm"),
                    format!(
                        "blob {digest} has not been uploaded by namespace {ns:?}: upload the component \
                         first (wisp apply uploads the .wasm files a manifest names)"
                    ),
                ));
            }
        }
        if !errs.is_empty() {
            return Err(invalid(obj, errs));
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        let caps = c
            .security_context
            .as_ref()
            .map(wisp_api::SecurityContext::added_capabilities)
            .unwrap_or_default();
        for cap in caps {
            if wisp_api::OPT_IN_CAPABILITIES.contains(&cap.as_str())
                && !state
                    .config
                    .allowed_capabilities
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(&cap))
            {
                return Err(authz::forbidden(
                    principal,
                    verb,
                    target.kind.plural,
                    Some(ns),
                    &format!(
                        "{field}.containers[{i}].securityContext.capabilities.add: {cap} is not allowed on \
                         this cluster (the admin allows it with --allow-capabilities {cap})"
                    ),
                ));
            }
        }
    }
    let ranges = list_in::<LimitRange>(state, "limitranges", ns).await?;
    let creating_pod = target.kind.plural == "pods" && existing.is_none();
    let changed = limits::apply(&ranges, &state.config, &mut spec, creating_pod, &field)?;
    if changed {
        let value = serde_json::to_value(&spec).map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Some(slot) = at_mut(obj, path) {
            *slot = value;
        }
    }
    Ok(())
}

/// The objects of one kind in `ns`, decoded.
pub(crate) async fn list_in<T: wisp_api::Resource>(
    state: &State,
    plural: &str,
    ns: &str,
) -> Result<Vec<T>, ApiError> {
    let listing = state
        .store
        .list(&format!("/registry/{plural}/{ns}/"))
        .await
        .map_err(|e| ApiError::from_store(e, plural))?;
    listing
        .items
        .iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::Internal(format!("corrupt object at {}: {e}", kv.key)))
        })
        .collect()
}

/// `host` (without `*.`) is `domain` or a name under it.
fn under(host: &str, domain: &str) -> bool {
    let (host, domain) = (host.to_ascii_lowercase(), domain.to_ascii_lowercase());
    host == domain || host.ends_with(&format!(".{domain}"))
}

/// The hosts namespace `ns` may claim: under `<ns>.<cluster domain>` and `granted`.
pub fn may_claim(ns: &str, cluster_domain: &str, granted: &[String], host: &str) -> bool {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    under(bare, &format!("{ns}.{cluster_domain}")) || granted.iter().any(|d| under(bare, d))
}

async fn admit_host(
    state: &State,
    principal: &Principal,
    verb: Verb,
    target: &Target,
    ns: &str,
    host: &str,
    field: &str,
) -> Result<(), ApiError> {
    let domain = &state.config.cluster_domain;
    if !principal.is_admin() {
        let granted = match state
            .store
            .get(&format!("/registry/namespaces/{ns}"))
            .await
            .map_err(|e| ApiError::from_store(e, "namespace"))?
        {
            Some(kv) => serde_json::from_slice::<Namespace>(&kv.value)
                .ok()
                .and_then(|n| n.spec)
                .map(|s| s.route_domains)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        if !may_claim(ns, domain, &granted, host) {
            let extra = if granted.is_empty() {
                String::new()
            } else {
                format!(" or under {}", granted.join(", "))
            };
            return Err(authz::forbidden(
                principal,
                verb,
                target.kind.plural,
                Some(ns),
                &format!(
                    "{field} {host:?} is not a host of this namespace: it may claim hosts under \
                     {ns}.{domain}{extra} (the cluster admin grants other domains in the Namespace's \
                     spec.routeDomains)"
                ),
            ));
        }
    }
    // No other namespace's Route (or Function route) holds this host.
    let wanted = host.to_ascii_lowercase();
    let routes = state
        .store
        .list("/registry/routes/")
        .await
        .map_err(|e| ApiError::from_store(e, "routes"))?;
    for kv in &routes.items {
        let Ok(r) = serde_json::from_slice::<Route>(&kv.value) else {
            continue;
        };
        let other_ns = r.metadata.namespace.as_deref().unwrap_or_default();
        if other_ns != ns
            && r.spec
                .host
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(&wanted))
        {
            return Err(ApiError::Conflict(format!(
                "{field}: host {host:?} is held by a Route of another namespace; a host belongs to one namespace"
            )));
        }
    }
    Ok(())
}

/// LimitRange defaults and bounds, and the cluster's ceilings.
pub(crate) mod limits {
    use super::*;

    /// Applies `ranges` to `spec` at `field` (`spec`, `spec.template.spec`): defaults when
    /// `defaults` (a pod being created), bounds always. Whether `spec` changed.
    pub(crate) fn apply(
        ranges: &[LimitRange],
        config: &crate::Config,
        spec: &mut PodSpec,
        defaults: bool,
        field: &str,
    ) -> Result<bool, ApiError> {
        let mut changed = false;
        for lr in ranges {
            let name = &lr.metadata.name;
            if defaults {
                if let Some(d) = lr
                    .spec
                    .termination_grace_period_seconds
                    .as_ref()
                    .and_then(|b| b.default)
                    && spec.termination_grace_period_seconds.is_none()
                {
                    spec.termination_grace_period_seconds = Some(d);
                    changed = true;
                }
                for c in &mut spec.containers {
                    if let Some(d) = lr.spec.timeout_ms.as_ref().and_then(|b| b.default)
                        && c.timeout_ms.is_none()
                    {
                        c.timeout_ms = Some(u64::try_from(d).unwrap_or(0).max(1));
                        changed = true;
                    }
                    for item in &lr.spec.limits {
                        for (r, q) in &item.default {
                            if !c.resources.limits.contains_key(r) {
                                c.resources.limits.insert(r.clone(), *q);
                                changed = true;
                            }
                        }
                        for (r, q) in &item.default_request {
                            if !c.resources.requests.contains_key(r) {
                                // Never above the container's own limit.
                                let q = c
                                    .resources
                                    .limits
                                    .get(r)
                                    .map_or(*q, |l| if q > l { *l } else { *q });
                                c.resources.requests.insert(r.clone(), q);
                                changed = true;
                            }
                        }
                    }
                }
            }
            if let Some(max) = lr
                .spec
                .termination_grace_period_seconds
                .as_ref()
                .and_then(|b| b.max)
                && spec.termination_grace_period_seconds.is_some_and(|g| g > max)
            {
                return Err(ApiError::Forbidden(format!(
                    "{field}.terminationGracePeriodSeconds: LimitRange {name:?} allows at most {max}"
                )));
            }
            for (i, c) in spec.containers.iter().enumerate() {
                let cp = format!("{field}.containers[{i}]");
                if let Some(max) = lr.spec.timeout_ms.as_ref().and_then(|b| b.max)
                    && c.timeout_ms
                        .is_some_and(|t| i64::try_from(t).unwrap_or(i64::MAX) > max)
                {
                    return Err(ApiError::Forbidden(format!(
                        "{cp}.timeoutMs: LimitRange {name:?} allows at most {max}"
                    )));
                }
                for item in &lr.spec.limits {
                    for (r, max) in &item.max {
                        let have = c.resources.limits.get(r).or_else(|| c.resources.requests.get(r));
                        match have {
                            Some(q) if q > max => {
                                return Err(ApiError::Forbidden(format!(
                                    "{cp}.resources: LimitRange {name:?} allows a {r} of at most {max} per \
                                     container, this one asks for {q}"
                                )));
                            }
                            Some(_) => {}
                            None => {
                                return Err(ApiError::Forbidden(format!(
                                    "{cp}.resources.limits.{r}: required by LimitRange {name:?} (at most {max})"
                                )));
                            }
                        }
                    }
                    for (r, min) in &item.min {
                        let have = c.resources.requests.get(r).or_else(|| c.resources.limits.get(r));
                        if have.is_none_or(|q| q < min) {
                            return Err(ApiError::Forbidden(format!(
                                "{cp}.resources.requests.{r}: LimitRange {name:?} requires at least {min}"
                            )));
                        }
                    }
                }
            }
        }
        // The cluster's own ceilings hold whatever a namespace's LimitRanges say.
        for (i, c) in spec.containers.iter().enumerate() {
            if c.timeout_ms.is_some_and(|t| t > config.max_timeout_ms) {
                return Err(ApiError::Forbidden(format!(
                    "{field}.containers[{i}].timeoutMs: the cluster allows at most {} ms per request",
                    config.max_timeout_ms
                )));
            }
        }
        if spec
            .termination_grace_period_seconds
            .is_some_and(|g| g > config.max_grace_seconds)
        {
            return Err(ApiError::Forbidden(format!(
                "{field}.terminationGracePeriodSeconds: the cluster allows at most {} s",
                config.max_grace_seconds
            )));
        }
        Ok(changed)
    }

    /// Sum of one resource over a pod spec's containers: requests (or limits when absent).
    pub(crate) fn sum(spec: &PodSpec, resource: &str, limits: bool) -> Quantity {
        spec.containers
            .iter()
            .filter_map(|c| {
                if limits {
                    c.resources.limits.get(resource).copied()
                } else {
                    c.resources.effective_request(resource)
                }
            })
            .reduce(|a, b| a.saturating_add(&b))
            .unwrap_or_else(|| Quantity::from_units(0, QuantityFormat::DecimalSI))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_belong_to_their_namespace_and_granted_domains() {
        let granted = vec!["example.com".to_owned()];
        assert!(may_claim("team-a", "localhost", &[], "hello.team-a.localhost"));
        assert!(may_claim("team-a", "localhost", &[], "*.team-a.localhost"));
        assert!(may_claim("team-a", "localhost", &[], "team-a.localhost"));
        assert!(!may_claim("team-b", "localhost", &[], "hello.team-a.localhost"));
        assert!(!may_claim("team-b", "localhost", &[], "evil-team-a.localhost"));
        assert!(
            !may_claim("a", "localhost", &[], "x.team-a.localhost"),
            "a suffix is not a label"
        );
        assert!(!may_claim("team-a", "localhost", &[], "localhost"));
        assert!(!may_claim("team-a", "localhost", &[], "*.localhost"));
        assert!(may_claim("team-a", "localhost", &granted, "api.example.com"));
        assert!(may_claim("team-a", "localhost", &granted, "*.example.com"));
        assert!(!may_claim("team-a", "localhost", &granted, "example.com.evil.io"));
    }
}
