//! The Function controller. Each change of a Function's `spec.template` makes an immutable
//! Revision (`<name>-00001`, `-00002`, …, owned by the Function); each Revision gets a
//! Deployment and a Service of its own name (owned by the Revision), so that revisions scale —
//! and go to zero — on their own traffic. One Route `<name>` splits the Function's host between
//! the revisions' Services by `spec.traffic` (all to the latest by default); a tagged target
//! gets a Route `<name>--<tag>` on `<tag>.<host>`. Revisions with no traffic go to zero, and
//! past [`REVISION_RETENTION`] of them the oldest are deleted (their children with them). The
//! status shows the URL (with the ingress port), the revisions and the resolved traffic.
//!
//! Replicas: a revision's Deployment starts at `minScale` (0 when it gets no traffic);
//! afterwards its `spec.replicas` belongs to the autoscaler and this controller only keeps it
//! within `[minScale, maxScale]`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use wisp_api::{
    Condition, Deployment, Function, FunctionStatus, LabelSelector, Node, ObjectMeta, OwnerReference,
    Resource, Revision, RevisionStatus, Route, RouteBackend, Service, ServicePort, TrafficStatus,
    revision_name, revision_number,
};
use wisp_client::{Api, Client};
use wisp_runtime::{Action, ObjectRef, Store};

use crate::Error;

pub use wisp_api::FUNCTION_LABEL;
/// Label on a revision's Deployment, pods and Service (the Service selects on it).
pub const REVISION_LABEL: &str = "wisp.dev/revision";
/// Label on the Route of a traffic tag.
pub const TAG_LABEL: &str = "wisp.dev/tag";
/// The port a revision's Service exposes.
pub const SERVICE_PORT: u16 = 80;
/// Revisions kept that get no traffic and no tag (the newest of them); older ones are deleted.
pub const REVISION_RETENTION: usize = 3;

pub struct Context {
    pub client: Client,
    pub events: wisp_runtime::Recorder,
    pub(crate) status: crate::StatusDelay,
    /// Watch caches of the kinds a Function expands to: a reconcile (one per change of the
    /// Function or of its children, several per scale-up) reads its children from them, not
    /// from the API. A stale copy costs a conflict on write and a retry, never a wrong write.
    pub(crate) deployments: Store<Deployment>,
    pub(crate) services: Store<Service>,
    pub(crate) routes: Store<Route>,
    pub(crate) revisions: Store<Revision>,
    /// Nodes report where their ingress listens: a Function's URL carries that port.
    pub(crate) nodes: Store<Node>,
    /// A Function's default host is `<name>.<namespace>.<cluster_domain>`.
    pub(crate) cluster_domain: String,
}

/// The port clients reach the ingress on: that of the first ready node (by name) that reports
/// an ingress, so that the URL a Function shows opens as it is (`wisp up`: the port of its
/// `--ingress-listen`). `None` for port 80, or while no node reports one.
pub fn ingress_port(nodes: &[Arc<Node>]) -> Option<u16> {
    let mut candidates: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
    candidates.sort_by_key(|n| (!n.is_ready(), n.metadata.name.clone()));
    let port = candidates.iter().find_map(|n| {
        let url = n.status.as_ref()?.ingress_url.as_deref()?;
        url.parse::<http::Uri>().ok()?.port_u16()
    })?;
    (port != 80).then_some(port)
}

/// `http://<host>[:<port>]<path>`.
pub fn url_of(f: &Function, cluster_domain: &str, port: Option<u16>) -> String {
    url_for(&host_of(f, cluster_domain), &path_of(f), port)
}

fn url_for(host: &str, path: &str, port: Option<u16>) -> String {
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("http://{host}{port}{path}")
}

fn owner(kind: &str, name: &str, uid: Option<&String>) -> OwnerReference {
    OwnerReference {
        api_version: wisp_api::API_VERSION.into(),
        kind: kind.into(),
        name: name.to_owned(),
        uid: uid.cloned().unwrap_or_default(),
        controller: Some(true),
    }
}

fn meta(f: &Function, name: &str) -> ObjectMeta {
    let ns = f.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut m = ObjectMeta::namespaced(ns, name);
    m.labels = BTreeMap::from([(FUNCTION_LABEL.to_owned(), f.metadata.name.clone())]);
    m.owner_references = vec![owner(Function::KIND, &f.metadata.name, f.metadata.uid.as_ref())];
    m
}

/// The metadata of a revision's child (Deployment, Service): named as the revision, owned by it.
fn revision_child_meta(f: &Function, rev: &Revision) -> ObjectMeta {
    let mut m = meta(f, &rev.metadata.name);
    m.labels.insert(REVISION_LABEL.into(), rev.metadata.name.clone());
    m.owner_references = vec![owner(
        Revision::KIND,
        &rev.metadata.name,
        rev.metadata.uid.as_ref(),
    )];
    m
}

/// The host a Function answers on: its route's, or `<name>.<namespace>.<cluster domain>`
/// (with the default domain `localhost` that resolves to loopback, so
/// `curl http://hello.default.localhost:8080/` works on a laptop).
pub fn host_of(f: &Function, cluster_domain: &str) -> String {
    f.spec
        .route
        .as_ref()
        .and_then(|r| r.host.clone())
        .unwrap_or_else(|| {
            format!(
                "{}.{}.{cluster_domain}",
                f.metadata.name,
                f.metadata.namespace.as_deref().unwrap_or("default")
            )
        })
}

fn path_of(f: &Function) -> String {
    f.spec
        .route
        .as_ref()
        .map_or_else(|| "/".to_owned(), |r| r.path_prefix.clone())
}

/// Revision `number` of `f`: its template as it is now.
pub fn desired_revision(f: &Function, number: u32) -> Revision {
    let mut r = Revision::new(meta(f, &revision_name(&f.metadata.name, number)));
    r.spec.template = f.spec.template.clone();
    r
}

/// The replicas a revision may have, `(min, max)`: the Function's bounds for the revision that
/// takes all requests (or is coming up to take the latest revision's share); a share of
/// `maxScale` by percent for one of a split, so that a split never holds more pods than the
/// Function may; one pod for a revision reached only by its tag; and none kept for a revision
/// without requests.
pub fn revision_bounds(f: &Function, percent: u32, tagged: bool, coming_up: bool) -> (u32, u32) {
    let sc = &f.spec.scaling;
    let max_all = sc.max_scale.max(sc.min_scale);
    if coming_up || percent >= 100 {
        return (sc.min_scale, max_all);
    }
    if percent > 0 {
        let share = (u64::from(max_all) * u64::from(percent)).div_ceil(100);
        let max = u32::try_from(share).unwrap_or(u32::MAX).max(1);
        return (sc.min_scale.min(max), max);
    }
    if tagged {
        return (0, 1);
    }
    (0, max_all)
}

/// The Deployment of revision `rev` within `(min, max)` replicas, given the replicas it has
/// now (`None`: not created yet).
pub fn desired_deployment(
    f: &Function,
    rev: &Revision,
    bounds: (u32, u32),
    current_replicas: Option<i32>,
) -> Deployment {
    let mut d = Deployment::new(revision_child_meta(f, rev));
    let min = i32::try_from(bounds.0).unwrap_or(i32::MAX);
    let max = i32::try_from(bounds.1).unwrap_or(i32::MAX).max(min);
    d.spec.replicas = current_replicas.unwrap_or(min).clamp(min, max);
    let mut template = rev.spec.template.clone();
    let labels = &mut template.metadata.labels;
    labels.insert(FUNCTION_LABEL.into(), f.metadata.name.clone());
    labels.insert(REVISION_LABEL.into(), rev.metadata.name.clone());
    d.spec.template = template;
    d.spec.selector = LabelSelector::from_labels(BTreeMap::from([(
        REVISION_LABEL.to_owned(),
        rev.metadata.name.clone(),
    )]));
    d
}

pub fn desired_service(f: &Function, rev: &Revision) -> Service {
    let mut s = Service::new(revision_child_meta(f, rev));
    s.spec.selector = BTreeMap::from([(REVISION_LABEL.to_owned(), rev.metadata.name.clone())]);
    let target = rev
        .spec
        .template
        .spec
        .containers
        .iter()
        .find_map(|c| c.ports.first().map(|p| p.container_port));
    s.spec.ports = vec![ServicePort {
        name: Some("http".into()),
        port: SERVICE_PORT,
        target_port: target,
        ..ServicePort::default()
    }];
    s
}

/// The Function's Route: its host and path, split between revisions' Services by percent.
pub fn desired_route(f: &Function, cluster_domain: &str, traffic: &[TrafficStatus]) -> Route {
    let mut r = Route::new(meta(f, &f.metadata.name));
    r.spec.host = Some(host_of(f, cluster_domain));
    r.spec.path_prefix = path_of(f);
    // One backend per revision (two targets may name the same one).
    let mut weights: BTreeMap<&str, u32> = BTreeMap::new();
    for t in traffic.iter().filter(|t| t.percent > 0) {
        *weights.entry(&t.revision_name).or_default() += t.percent;
    }
    r.spec.backends = weights
        .into_iter()
        .map(|(service, weight)| RouteBackend {
            service: service.to_owned(),
            port: Some(SERVICE_PORT),
            weight,
        })
        .collect();
    r
}

/// The host of tag `tag`: `<tag>.<function host>`.
pub fn tag_host(f: &Function, cluster_domain: &str, tag: &str) -> String {
    format!("{tag}.{}", host_of(f, cluster_domain))
}

/// The Route of tag `tag`: all of `<tag>.<host>` to one revision.
pub fn desired_tag_route(f: &Function, cluster_domain: &str, tag: &str, revision: &str) -> Route {
    let mut r = Route::new(meta(f, &format!("{}--{tag}", f.metadata.name)));
    r.metadata.labels.insert(TAG_LABEL.into(), tag.to_owned());
    r.spec.host = Some(tag_host(f, cluster_domain, tag));
    r.spec.path_prefix = path_of(f);
    r.spec.backends = vec![RouteBackend {
        service: revision.to_owned(),
        port: Some(SERVICE_PORT),
        weight: 100,
    }];
    r
}

/// `spec.traffic` against the revisions there are: each target's revision (`latest` for the
/// latest-revision targets), or what is wrong (a revision that does not exist).
pub fn resolve_traffic(
    f: &Function,
    revisions: &[Arc<Revision>],
    latest: &str,
) -> Result<Vec<TrafficStatus>, String> {
    let latest = latest.to_owned();
    if f.spec.traffic.is_empty() {
        return Ok(vec![TrafficStatus {
            revision_name: latest,
            percent: 100,
            latest_revision: true,
            ..TrafficStatus::default()
        }]);
    }
    let names: BTreeSet<&str> = revisions.iter().map(|r| r.metadata.name.as_str()).collect();
    f.spec
        .traffic
        .iter()
        .map(|t| {
            let revision_name = match &t.revision_name {
                Some(r) if !names.contains(r.as_str()) => {
                    return Err(format!("spec.traffic names revision {r:?}, which does not exist"));
                }
                Some(r) => r.clone(),
                None => latest.clone(),
            };
            Ok(TrafficStatus {
                revision_name,
                percent: t.percent,
                latest_revision: t.latest_revision,
                tag: t.tag.clone(),
                url: None,
            })
        })
        .collect()
}

/// Creates `want`, or replaces the existing object when `differs` says so. Returns the
/// object as stored.
async fn ensure<T: Resource + Clone>(
    api: &Api<T>,
    want: T,
    existing: Option<T>,
    differs: impl Fn(&T, &T) -> bool,
) -> Result<Option<T>, Error> {
    match existing {
        None => match api.create(&want).await {
            Ok(created) => Ok(Some(created)),
            Err(e) if e.code() == Some(409) => Ok(None),
            Err(e) => Err(e.into()),
        },
        Some(current) if !differs(&current, &want) => Ok(Some(current)),
        Some(current) => {
            let mut next = want;
            next.metadata_mut().resource_version = current.metadata().resource_version.clone();
            match api.replace(&next).await {
                Ok(updated) => Ok(Some(updated)),
                Err(e) if e.code() == Some(409) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn owned_by(m: &ObjectMeta, uid: Option<&String>) -> bool {
    uid.is_some_and(|uid| m.owner_references.iter().any(|r| &r.uid == uid))
}

/// Sets the Function's `Ready` condition to false for `reason` (and writes it if it changed).
async fn not_ready(ctx: &Context, f: &Function, reason: &str, message: String) -> Result<Action, Error> {
    ctx.events
        .warning(wisp_api::ObjectReference::to(f), reason, message.clone());
    let mut updated = f.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    let mut changed = wisp_api::meta::set_condition(
        &mut status.conditions,
        Condition::new("Ready", false, reason, message),
        &jiff::Timestamp::now().to_string(),
    );
    // Observed: a client waiting for this generation sees the reason instead of waiting on.
    if status.observed_generation != f.metadata.generation {
        status.observed_generation = f.metadata.generation;
        changed = true;
    }
    if changed {
        let ns = f.metadata.namespace.as_deref();
        let _ = ctx.client.api::<Function>(ns).replace_status(&updated).await;
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

pub async fn reconcile(f: Arc<Function>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = f.metadata.namespace.as_deref();
    let name = &f.metadata.name;
    let caches_ready =
        ctx.deployments.ready() && ctx.services.ready() && ctx.routes.ready() && ctx.revisions.ready();
    if !caches_ready {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let uid = f.metadata.uid.as_ref();
    let key = |n: &str| ObjectRef::new(n).within(ns.unwrap_or_default());
    // Never take over a Route of the same name that something else made.
    let current_route = ctx.routes.get(&key(name)).map(|r| (*r).clone());
    if current_route
        .as_ref()
        .is_some_and(|r| !owned_by(&r.metadata, uid))
    {
        return not_ready(
            &ctx,
            &f,
            "NameConflict",
            format!("a Route named {name} exists and is not owned by this Function; rename one of them"),
        )
        .await;
    }

    // Its revisions, oldest first; a new one when the template changed.
    let mut revisions: Vec<Arc<Revision>> = ctx
        .revisions
        .list()
        .into_iter()
        .filter(|r| r.metadata.namespace.as_deref() == ns && owned_by(&r.metadata, uid))
        .filter(|r| revision_number(name, &r.metadata.name).is_some())
        .collect();
    revisions.sort_by_key(|r| revision_number(name, &r.metadata.name));
    // Numbers only go up: one the status recorded is never reissued, even when that revision
    // was deleted, so a name always means the same template.
    let recorded = f
        .status
        .as_ref()
        .and_then(|s| s.latest_created_revision.as_deref())
        .and_then(|r| revision_number(name, r));
    let latest_number = revisions
        .last()
        .and_then(|r| revision_number(name, &r.metadata.name))
        .max(recorded);
    if revisions
        .last()
        .is_none_or(|r| r.spec.template != f.spec.template)
    {
        let want = desired_revision(&f, latest_number.unwrap_or(0) + 1);
        match ctx.client.api::<Revision>(ns).create(&want).await {
            Ok(created) => {
                tracing::info!(function = %name, revision = %created.metadata.name, "new revision");
                revisions.push(Arc::new(created));
            }
            Err(e) if e.code() == Some(409) => {
                // Made concurrently (the cache lags), or a foreign object has the name.
                let foreign = ctx
                    .revisions
                    .get(&key(&want.metadata.name))
                    .is_some_and(|r| !owned_by(&r.metadata, uid));
                if foreign {
                    return not_ready(
                        &ctx,
                        &f,
                        "NameConflict",
                        format!(
                            "a Revision named {} exists and is not owned by this Function",
                            want.metadata.name
                        ),
                    )
                    .await;
                }
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let latest = revisions
        .last()
        .map(|r| r.metadata.name.clone())
        .unwrap_or_default();
    // The latest-revision targets move to a new revision once it is up (at once when it
    // starts at zero): a rollout under minScale ≥ 1 never sends requests to pods not ready.
    // A revision is up when its pods are ready; at zero only when it may be at zero (with
    // minScale ≥ 1 the new revision must have pods before it takes requests).
    let up = |r: &str| {
        ctx.deployments.get(&key(r)).is_some_and(|d| {
            let ready = d.status.as_ref().map_or(0, |s| s.ready_replicas);
            ready >= d.spec.replicas && (d.spec.replicas > 0 || f.spec.scaling.min_scale == 0)
        })
    };
    let previous = f
        .status
        .as_ref()
        .and_then(|s| s.latest_ready_revision.clone())
        .filter(|p| revisions.iter().any(|r| &r.metadata.name == p));
    let latest_ready = if up(&latest) {
        Some(latest.clone())
    } else {
        previous
    };
    let serving = latest_ready.clone().unwrap_or_else(|| latest.clone());
    // A split that names a revision that is gone keeps the last split that worked (or all to
    // the latest) and says why; the rest of the Function is still reconciled.
    let mut unresolved = None;
    let traffic = match resolve_traffic(&f, &revisions, &serving) {
        Ok(t) => t,
        Err(message) => {
            unresolved = Some(message);
            let last: Vec<TrafficStatus> = f.status.as_ref().map(|s| s.traffic.clone()).unwrap_or_default();
            if !last.is_empty()
                && last
                    .iter()
                    .all(|t| revisions.iter().any(|r| r.metadata.name == t.revision_name))
            {
                last
            } else {
                vec![TrafficStatus {
                    revision_name: serving.clone(),
                    percent: 100,
                    latest_revision: true,
                    ..TrafficStatus::default()
                }]
            }
        }
    };
    // What gets requests, or will: the latest revision comes up while the previous serves.
    let mut routed: BTreeSet<&str> = traffic
        .iter()
        .filter(|t| t.percent > 0 || t.tag.is_some())
        .map(|t| t.revision_name.as_str())
        .collect();
    if traffic.iter().any(|t| t.latest_revision) {
        routed.insert(latest.as_str());
    }

    // Revisions past the retention (no traffic, no tag, not named in spec.traffic, not the
    // latest, the oldest first).
    let pinned: BTreeSet<&str> = f
        .spec
        .traffic
        .iter()
        .filter_map(|t| t.revision_name.as_deref())
        .collect();
    let idle: Vec<&Arc<Revision>> = revisions
        .iter()
        .filter(|r| {
            let n = r.metadata.name.as_str();
            !routed.contains(n) && !pinned.contains(n) && n != latest
        })
        .collect();
    let doomed: BTreeSet<String> = idle
        .iter()
        .take(idle.len().saturating_sub(REVISION_RETENTION))
        .map(|r| r.metadata.name.clone())
        .collect();
    for r in &doomed {
        match ctx.client.api::<Revision>(ns).delete(r).await {
            Ok(_) => tracing::info!(function = %name, revision = %r, "revision collected"),
            Err(e) if e.code() == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    revisions.retain(|r| !doomed.contains(&r.metadata.name));

    // Each revision's Deployment and Service.
    let legacy = ctx
        .deployments
        .get(&key(name))
        .filter(|d| owned_by(&d.metadata, uid))
        .map(|d| (*d).clone());
    let deployments = ctx.client.api::<Deployment>(ns);
    let services = ctx.client.api::<Service>(ns);
    let mut ready_sum = 0;
    let mut desired_sum = 0;
    let mut all_routed_ready = true;
    let mut settled = true;
    for rev in &revisions {
        let rname = &rev.metadata.name;
        let rev_uid = rev.metadata.uid.as_ref();
        let current = ctx.deployments.get(&key(rname)).map(|d| (*d).clone());
        let current_service = ctx.services.get(&key(rname)).map(|s| (*s).clone());
        let conflict = [
            current
                .as_ref()
                .map(|d| &d.metadata)
                .filter(|m| !owned_by(m, rev_uid))
                .map(|_| "Deployment"),
            current_service
                .as_ref()
                .map(|s| &s.metadata)
                .filter(|m| !owned_by(m, rev_uid))
                .map(|_| "Service"),
        ];
        if let Some(kind) = conflict.into_iter().flatten().next() {
            return not_ready(
                &ctx,
                &f,
                "NameConflict",
                format!("a {kind} named {rname} exists and is not owned by revision {rname}; rename it"),
            )
            .await;
        }
        let is_routed = routed.contains(rname.as_str());
        let percent: u32 = traffic
            .iter()
            .filter(|t| &t.revision_name == rname)
            .map(|t| t.percent)
            .sum();
        let tagged = traffic
            .iter()
            .any(|t| &t.revision_name == rname && t.tag.is_some());
        let coming_up = *rname == latest && is_routed && percent == 0 && !tagged;
        let bounds = if is_routed {
            revision_bounds(&f, percent, tagged, coming_up)
        } else {
            revision_bounds(&f, 0, false, false)
        };
        // From before revisions: the first one starts with the pods the old Deployment had.
        let initial = current.as_ref().map(|d| d.spec.replicas).or_else(|| {
            legacy
                .as_ref()
                .filter(|_| revisions.len() == 1)
                .map(|d| d.spec.replicas)
        });
        let want = desired_deployment(&f, rev, bounds, initial);
        let deployment = ensure(&deployments, want, current, |c, w| {
            c.spec.replicas != w.spec.replicas
                || c.spec.template != w.spec.template
                || c.spec.selector != w.spec.selector
                || c.metadata.labels != w.metadata.labels
                || c.metadata.owner_references != w.metadata.owner_references
        })
        .await?;
        let service = ensure(&services, desired_service(&f, rev), current_service, |c, w| {
            c.spec != w.spec || c.metadata.owner_references != w.metadata.owner_references
        })
        .await?;
        let (Some(deployment), Some(_)) = (deployment, service) else {
            settled = false;
            continue;
        };
        let ready = deployment.status.as_ref().map_or(0, |s| s.ready_replicas);
        let desired = deployment.spec.replicas;
        let up = ready >= desired;
        if is_routed {
            ready_sum += ready;
            desired_sum += desired;
            all_routed_ready &= up;
        }
        let mut rstatus = rev.status.clone().unwrap_or_default();
        rstatus = RevisionStatus {
            ready_replicas: ready,
            desired_replicas: desired,
            percent,
            routed: is_routed,
            min_scale: bounds.0,
            max_scale: bounds.1,
            ..rstatus
        };
        wisp_api::meta::set_condition(
            &mut rstatus.conditions,
            Condition::new(
                "Ready",
                up,
                if desired == 0 {
                    "ScaledToZero"
                } else if up {
                    "ReplicasReady"
                } else {
                    "ReplicasNotReady"
                },
                format!("{ready}/{desired} replicas ready"),
            ),
            &jiff::Timestamp::now().to_string(),
        );
        if rev.status.as_ref() != Some(&rstatus) {
            let mut next = (**rev).clone();
            next.status = Some(rstatus);
            match ctx.client.api::<Revision>(ns).replace_status(&next).await {
                Ok(_) => {}
                Err(e) if matches!(e.code(), Some(404 | 409)) => settled = false,
                Err(e) => return Err(e.into()),
            }
        }
    }

    // The Function's Route and its tags' Routes.
    let routes = ctx.client.api::<Route>(ns);
    let route = ensure(
        &routes,
        desired_route(&f, &ctx.cluster_domain, &traffic),
        current_route,
        |c, w| c.spec != w.spec || c.metadata.owner_references != w.metadata.owner_references,
    )
    .await?;
    settled &= route.is_some();
    let mut tags = BTreeSet::new();
    for t in &traffic {
        let Some(tag) = &t.tag else { continue };
        let want = desired_tag_route(&f, &ctx.cluster_domain, tag, &t.revision_name);
        tags.insert(want.metadata.name.clone());
        let current = ctx.routes.get(&key(&want.metadata.name)).map(|r| (*r).clone());
        if current.as_ref().is_some_and(|r| !owned_by(&r.metadata, uid)) {
            return not_ready(
                &ctx,
                &f,
                "NameConflict",
                format!(
                    "a Route named {} exists and is not owned by this Function",
                    want.metadata.name
                ),
            )
            .await;
        }
        let stored = ensure(&routes, want, current, |c, w| {
            c.spec != w.spec || c.metadata.labels != w.metadata.labels
        })
        .await?;
        settled &= stored.is_some();
    }
    for r in ctx.routes.list() {
        let m = &r.metadata;
        if m.namespace.as_deref() == ns
            && owned_by(m, uid)
            && m.labels.contains_key(TAG_LABEL)
            && !tags.contains(&m.name)
        {
            match routes.delete(&m.name).await {
                Ok(_) | Err(_) => {}
            }
        }
    }
    // Children from before revisions (a Deployment and Service named as the Function, owned
    // by it): they go once the latest revision is up (it started with their replicas).
    if up(&latest) {
        if legacy.is_some() {
            let _ = deployments.delete(name).await;
        }
        if ctx
            .services
            .get(&key(name))
            .is_some_and(|s| owned_by(&s.metadata, uid))
        {
            let _ = services.delete(name).await;
        }
    }
    if !settled {
        // Created or changed concurrently: look again shortly.
        return Ok(Action::requeue(Duration::from_millis(100)));
    }

    let port = ingress_port(&ctx.nodes.list());
    let traffic: Vec<TrafficStatus> = traffic
        .into_iter()
        .map(|mut t| {
            t.url = t
                .tag
                .as_ref()
                .map(|tag| url_for(&tag_host(&f, &ctx.cluster_domain, tag), &path_of(&f), port));
            t
        })
        .collect();
    let last_request_time = revisions
        .iter()
        .filter_map(|r| r.status.as_ref()?.last_request_time.clone())
        .max_by_key(|t| t.parse::<jiff::Timestamp>().ok())
        .or_else(|| f.status.as_ref().and_then(|s| s.last_request_time.clone()));
    let mut status = f.status.clone().unwrap_or_default();
    status = FunctionStatus {
        url: Some(url_of(&f, &ctx.cluster_domain, port)),
        ready_replicas: ready_sum,
        desired_replicas: desired_sum,
        observed_generation: f.metadata.generation,
        latest_created_revision: Some(latest),
        latest_ready_revision: latest_ready,
        traffic,
        last_request_time,
        ..status
    };
    let condition = match unresolved {
        Some(message) => Condition::new("Ready", false, "TrafficNotResolved", message),
        None => Condition::new(
            "Ready",
            all_routed_ready,
            if desired_sum == 0 {
                "ScaledToZero"
            } else if all_routed_ready {
                "ReplicasReady"
            } else {
                "ReplicasNotReady"
            },
            format!("{ready_sum}/{desired_sum} replicas ready"),
        ),
    };
    wisp_api::meta::set_condition(
        &mut status.conditions,
        condition,
        &jiff::Timestamp::now().to_string(),
    );
    let status_key = format!("{}/{name}", ns.unwrap_or_default());
    if f.status.as_ref() == Some(&status) {
        ctx.status.settled(&status_key);
    } else if let Err(wait) = ctx.status.write_now(&status_key) {
        return Ok(Action::requeue(wait));
    } else {
        let mut updated = (*f).clone();
        updated.status = Some(status);
        match ctx.client.api::<Function>(ns).replace_status(&updated).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some(404 | 409)) => {
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

#[cfg(test)]
#[path = "function_tests.rs"]
mod tests;
