//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the template alive,
//! creating and deleting pods it owns, and reports counts in `status`.
//!
//! Pods it has just created or deleted may not be in its pod cache yet; an expectation per
//! ReplicaSet (the names it is waiting to see appear or vanish) keeps it from acting twice
//! on the same gap, like Kubernetes' controller expectations.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use wisp_api::{ObjectMeta, OwnerReference, Pod, ReplicaSet, ReplicaSetStatus, Resource};
use wisp_client::{Client, ClientError};
use wisp_runtime::{Action, ObjectRef, Store};

use crate::Error;

/// Most pods one reconcile of a ReplicaSet creates (the next reconcile makes more).
const MAX_BURST: usize = 500;

/// What one ReplicaSet is waiting to observe.
#[derive(Default, Debug)]
struct Expectation {
    to_appear: HashSet<String>,
    to_vanish: HashSet<String>,
}

pub struct Context {
    pub client: Client,
    pub pods: Store<Pod>,
    expectations: Mutex<HashMap<String, Expectation>>,
    status: crate::StatusDelay,
}

impl Context {
    pub fn new(client: Client, pods: Store<Pod>) -> Self {
        Self {
            client,
            pods,
            expectations: Mutex::default(),
            status: crate::StatusDelay::new(crate::STATUS_COALESCE),
        }
    }
}

/// Is `pod` controlled by the ReplicaSet with this uid?
pub fn owned_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

fn active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !pod.phase().is_terminal()
}

/// Whether a pod counts as available at `now` (Kubernetes' definition): Ready, and Ready
/// for at least `min_ready_seconds` by its Ready condition's `lastTransitionTime`.
/// `Err(wait)`: Ready, available after `wait`. Without that time a pod is not available.
pub fn availability(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> Result<bool, Duration> {
    if !pod.is_ready() {
        return Ok(false);
    }
    let min = u64::try_from(min_ready_seconds).unwrap_or(0);
    if min == 0 {
        return Ok(true);
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| wisp_api::meta::find_condition(&s.conditions, wisp_api::POD_READY))
        .and_then(|c| c.last_transition_time.as_deref())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let Some(since) = since else {
        // Ready since an unknown time: never known to be Ready long enough (as Kubernetes).
        return Ok(false);
    };
    let ready_for = now.duration_since(since).as_secs_f64().max(0.0);
    let min = Duration::from_secs(min);
    if ready_for >= min.as_secs_f64() {
        Ok(true)
    } else {
        Err(min - Duration::from_secs_f64(ready_for))
    }
}

/// Which pods to delete when scaling down: unscheduled first, then not ready, then newest.
pub fn deletion_order(mut pods: Vec<Arc<Pod>>) -> Vec<Arc<Pod>> {
    pods.sort_by(|a, b| {
        let key = |p: &Pod| {
            (
                p.spec.node_name.is_some(),
                p.is_ready(),
                std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    pods
}

/// A new pod for `rs` from its template, with a random name suffix and a controller ref.
pub fn pod_for(rs: &ReplicaSet) -> Pod {
    let ns = rs.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let suffix: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(5)
        .collect();
    let mut meta = ObjectMeta::namespaced(ns, format!("{}-{suffix}", rs.metadata.name));
    meta.labels = rs.spec.template.metadata.labels.clone();
    meta.annotations = rs.spec.template.metadata.annotations.clone();
    // A cold start's trace context is the controllers' to give (below), not the template's.
    meta.annotations.remove(wisp_api::TRACEPARENT_ANNOTATION);
    meta.owner_references.push(OwnerReference {
        api_version: wisp_api::API_VERSION.into(),
        kind: ReplicaSet::KIND.into(),
        name: rs.metadata.name.clone(),
        uid: rs.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
    });
    Pod {
        spec: rs.spec.template.spec.clone(),
        ..Pod::new(meta)
    }
}

fn key(rs: &ReplicaSet) -> String {
    ObjectRef::from_obj(rs).to_string()
}

pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let ns = rs.metadata.namespace.clone();
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .list()
        .into_iter()
        .filter(|p| p.metadata.namespace == ns && owned_by(p, &uid))
        .collect();
    let names: HashSet<String> = owned.iter().map(|p| p.metadata.name.clone()).collect();
    // Settle expectations against what the cache shows now.
    {
        let mut exp = ctx.expectations.lock().map_err(|_| Error::Poisoned)?;
        if let Some(e) = exp.get_mut(&key(&rs)) {
            e.to_appear.retain(|n| !names.contains(n));
            e.to_vanish.retain(|n| names.contains(n));
            if !e.to_appear.is_empty() || !e.to_vanish.is_empty() {
                // Our own last changes are not visible yet: act on a settled view only.
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
        }
    }
    let active: Vec<Arc<Pod>> = owned.iter().filter(|p| active(p)).cloned().collect();
    let want = usize::try_from(rs.spec.replicas.max(0)).unwrap_or(0);
    let pods_api = ctx.client.api::<Pod>(ns.as_deref());
    let mut expectation = Expectation::default();
    if active.len() < want {
        // Slow start, as Kubernetes does: batches of 1, 2, 4, … pods, at most MAX_BURST per
        // reconcile, stopping at the first batch with a failure (a quota refusing more, the
        // API away) — a Deployment asking for millions of pods makes a few refused requests,
        // not millions, and never holds them all in memory.
        let mut missing = (want - active.len()).min(MAX_BURST);
        let mut batch = 1;
        // Pods made from none carry the cold-start trace the ReplicaSet was scaled in.
        let incoming = rs.metadata.annotations.get(wisp_api::TRACEPARENT_ANNOTATION);
        let span = if active.is_empty() && incoming.is_some() {
            tracing::info_span!(
                target: wisp_telemetry::TARGET,
                "replicaset.create",
                wisp.namespace = ns.as_deref().unwrap_or_default(),
                wisp.replicaset = %rs.metadata.name,
                wisp.pods = missing,
            )
        } else {
            tracing::Span::none()
        };
        let traceparent = if active.is_empty() {
            wisp_telemetry::carried(&span, incoming.map(String::as_str))
        } else {
            None
        };
        while missing > 0 {
            let n = batch.min(missing);
            let new: Vec<Pod> = (0..n)
                .map(|_| {
                    let mut p = pod_for(&rs);
                    if let Some(tp) = &traceparent {
                        p.metadata
                            .annotations
                            .insert(wisp_api::TRACEPARENT_ANNOTATION.into(), tp.clone());
                    }
                    p
                })
                .collect();
            let results = tracing::Instrument::instrument(
                join_all(new.iter().map(|p| pods_api.create(p))),
                span.clone(),
            )
            .await;
            let mut failed = false;
            for (pod, r) in new.iter().zip(results) {
                match r {
                    Ok(_) => {
                        expectation.to_appear.insert(pod.metadata.name.clone());
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(pod = %pod.metadata.name, error = %e, "cannot create pod");
                    }
                }
            }
            if failed {
                break;
            }
            missing -= n;
            batch *= 2;
        }
    } else if active.len() > want {
        let doomed: Vec<Arc<Pod>> = deletion_order(active.clone())
            .into_iter()
            .take(active.len() - want)
            .collect();
        let results = join_all(doomed.iter().map(|p| pods_api.delete(&p.metadata.name))).await;
        for (pod, r) in doomed.iter().zip(results) {
            match r {
                Ok(_) => {
                    expectation.to_vanish.insert(pod.metadata.name.clone());
                }
                Err(e) if e.code() == Some(404) => {}
                Err(e) => tracing::warn!(pod = %pod.metadata.name, error = %e, "cannot delete pod"),
            }
        }
    }
    let changed = !expectation.to_appear.is_empty() || !expectation.to_vanish.is_empty();
    ctx.expectations
        .lock()
        .map_err(|_| Error::Poisoned)?
        .insert(key(&rs), expectation);
    // Terminal pods are replaced above; clean them up so they do not pile up.
    for done in owned.iter().filter(|p| p.phase().is_terminal()) {
        match pods_api.delete(&done.metadata.name).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let status_wait = update_status(&ctx, &rs, &active).await?;
    Ok(crate::sooner(
        if changed {
            Action::requeue(Duration::from_millis(200))
        } else {
            Action::await_change()
        },
        status_wait,
    ))
}

/// Writes the status when it changed and has waited [`crate::STATUS_COALESCE`]; else says
/// how long until it may be written.
async fn update_status(
    ctx: &Context,
    rs: &ReplicaSet,
    active: &[Arc<Pod>],
) -> Result<Option<Duration>, Error> {
    let ready = i32::try_from(active.iter().filter(|p| p.is_ready()).count()).unwrap_or(i32::MAX);
    // Pods Ready for less than minReadySeconds are not available yet: look again when the
    // first of them will be.
    let now = jiff::Timestamp::now();
    let mut available = 0i32;
    let mut next_available: Option<Duration> = None;
    for p in active {
        match availability(p, rs.spec.min_ready_seconds, now) {
            Ok(true) => available = available.saturating_add(1),
            Ok(false) => {}
            Err(wait) => next_available = Some(next_available.map_or(wait, |n| n.min(wait))),
        }
    }
    // A little past the moment, so the pass that looks sees it passed.
    let next_available = next_available.map(|w| w + Duration::from_millis(20));
    let status = ReplicaSetStatus {
        replicas: i32::try_from(active.len()).unwrap_or(i32::MAX),
        ready_replicas: ready,
        available_replicas: available,
        observed_generation: rs.metadata.generation,
        conditions: rs
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
    };
    let k = key(rs);
    if rs.status.as_ref() == Some(&status) {
        ctx.status.settled(&k);
        return Ok(next_available);
    }
    if let Err(wait) = ctx.status.write_now(&k) {
        return Ok(Some(next_available.map_or(wait, |n| n.min(wait))));
    }
    let mut next = rs.clone();
    next.status = Some(status);
    let api = ctx.client.api::<ReplicaSet>(rs.metadata.namespace.as_deref());
    match api.replace_status(&next).await {
        Ok(_) => Ok(next_available),
        // A newer version exists: its own event triggers another reconcile.
        Err(ClientError::Api(s)) if s.code == 409 || s.code == 404 => Ok(next_available),
        Err(e) => Err(e.into()),
    }
}

pub fn error_policy(_rs: Arc<ReplicaSet>, _err: &Error, _ctx: Arc<Context>) -> Action {
    Action::await_change()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_api::{PodPhase, PodStatus};

    fn pod(name: &str, node: Option<&str>, ready: bool, created: &str) -> Arc<Pod> {
        let mut p = Pod::new(ObjectMeta::namespaced("default", name));
        p.spec.node_name = node.map(Into::into);
        p.metadata.creation_timestamp = Some(created.into());
        if ready {
            let mut st = PodStatus {
                phase: PodPhase::Running,
                ..PodStatus::default()
            };
            st.conditions.push(wisp_api::Condition {
                type_: "Ready".into(),
                status: "True".into(),
                ..wisp_api::Condition::default()
            });
            p.status = Some(st);
        }
        Arc::new(p)
    }

    #[test]
    fn scale_down_prefers_unscheduled_then_unready_then_newest() {
        let pods = vec![
            pod("ready-old", Some("n1"), true, "2026-01-01T00:00:00Z"),
            pod("ready-new", Some("n1"), true, "2026-01-02T00:00:00Z"),
            pod("unready", Some("n1"), false, "2026-01-01T00:00:00Z"),
            pod("unscheduled", None, false, "2026-01-01T00:00:00Z"),
        ];
        let order: Vec<_> = deletion_order(pods)
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(order, ["unscheduled", "unready", "ready-new", "ready-old"]);
    }

    fn ready_since(since: &str) -> Pod {
        let mut p = (*pod("p", Some("n1"), true, "2026-01-01T00:00:00Z")).clone();
        if let Some(st) = p.status.as_mut() {
            st.conditions[0].last_transition_time = Some(since.into());
        }
        p
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let p = ready_since("2026-01-01T00:00:50Z");
        assert_eq!(
            availability(&p, 0, now),
            Ok(true),
            "no minimum: Ready is available"
        );
        assert_eq!(
            availability(&p, 10, now),
            Ok(true),
            "Ready for exactly minReadySeconds"
        );
        assert_eq!(
            availability(&p, 30, now),
            Err(Duration::from_secs(20)),
            "Ready 10 s of 30: available in 20 s"
        );
        let unready = pod("u", Some("n1"), false, "2026-01-01T00:00:00Z");
        assert_eq!(availability(&unready, 30, now), Ok(false));
        let unknown = pod("k", Some("n1"), true, "2026-01-01T00:00:00Z");
        assert_eq!(
            availability(&unknown, 5, now),
            Ok(false),
            "Ready since an unknown time is never known to be available"
        );
        assert_eq!(availability(&unknown, 0, now), Ok(true));
    }

    #[test]
    fn new_pods_carry_template_labels_and_a_controller_ref() {
        let mut rs = ReplicaSet::new(ObjectMeta::namespaced("team", "web"));
        rs.metadata.uid = Some("rs-uid".into());
        rs.spec
            .template
            .metadata
            .labels
            .insert("app".into(), "web".into());
        let p = pod_for(&rs);
        assert!(p.metadata.name.starts_with("web-") && p.metadata.name.len() == "web-".len() + 5);
        assert_eq!(p.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(p.metadata.labels.get("app").map(String::as_str), Some("web"));
        assert!(owned_by(&p, "rs-uid"));
        assert_ne!(pod_for(&rs).metadata.name, p.metadata.name, "names are random");
    }
}
