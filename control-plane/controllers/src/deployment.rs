//! The Deployment controller: one ReplicaSet per distinct pod template (named by a hash of
//! the template), rolled from old to new within `maxSurge` / `maxUnavailable`, or all at
//! once with `Recreate`; revisions numbered in an annotation on each ReplicaSet (the
//! Deployment itself is left as its author wrote it, so re-applying it changes nothing); old
//! ReplicaSets kept up to `revisionHistoryLimit` so `wisp rollout undo` can bring one back.
//! `minReadySeconds` is handed to every ReplicaSet, whose available count (a pod Ready for
//! that long) is what the rolling arithmetic plans with.

use std::sync::Arc;
use std::time::Duration;

use wisp_api::{
    Condition, Deployment, DeploymentStatus, DeploymentStrategyType, LabelSelector, ObjectMeta,
    OwnerReference, ReplicaSet, Resource,
};
use wisp_client::{Client, ClientError};
use wisp_runtime::{Action, Store};

use crate::Error;

/// Label on ReplicaSets and their pods: which template they run.
pub const TEMPLATE_HASH: &str = "pod-template-hash";
/// Annotation on ReplicaSets: the rollout revision.
pub const REVISION: &str = "deployment.wisp.dev/revision";

pub struct Context {
    pub client: Client,
    pub replicasets: Store<ReplicaSet>,
    pub events: wisp_runtime::Recorder,
    pub(crate) status: crate::StatusDelay,
}

/// The event of a Deployment scaling one of its ReplicaSets.
pub const REASON_SCALING: &str = "ScalingReplicaSet";

/// FNV-1a over the template's JSON: stable across builds and Rust versions.
pub fn template_hash(d: &Deployment) -> String {
    let mut template = d.spec.template.clone();
    template.metadata.labels.remove(TEMPLATE_HASH);
    let json = serde_json::to_vec(&template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:x}", h & 0xff_ffff_ffff)
}

pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn owned(ctx: &Context, d: &Deployment) -> Vec<Arc<ReplicaSet>> {
    let uid = d.metadata.uid.clone().unwrap_or_default();
    ctx.replicasets
        .list()
        .into_iter()
        .filter(|rs| rs.metadata.namespace == d.metadata.namespace)
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .collect()
}

fn new_replicaset(d: &Deployment, hash: &str, revision: i64, replicas: i32) -> ReplicaSet {
    let ns = d.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut meta = ObjectMeta::namespaced(ns, format!("{}-{hash}", d.metadata.name));
    meta.labels = d.spec.template.metadata.labels.clone();
    meta.labels.insert(TEMPLATE_HASH.into(), hash.into());
    meta.annotations.insert(REVISION.into(), revision.to_string());
    meta.owner_references.push(OwnerReference {
        api_version: wisp_api::API_VERSION.into(),
        kind: Deployment::KIND.into(),
        name: d.metadata.name.clone(),
        uid: d.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
    });
    let mut rs = ReplicaSet::new(meta);
    rs.spec.replicas = replicas;
    rs.spec.min_ready_seconds = d.spec.min_ready_seconds;
    let mut selector: LabelSelector = d.spec.selector.clone();
    selector.match_labels.insert(TEMPLATE_HASH.into(), hash.into());
    rs.spec.selector = selector;
    rs.spec.template = d.spec.template.clone();
    rs.spec
        .template
        .metadata
        .labels
        .insert(TEMPLATE_HASH.into(), hash.into());
    rs
}

/// (maxSurge, maxUnavailable) resolved against `desired`; never both zero.
pub fn limits(d: &Deployment) -> (i32, i32) {
    let ru = d.spec.strategy.rolling_update.clone().unwrap_or_default();
    let desired = d.spec.replicas.max(0);
    let surge = ru.max_surge.resolve(desired, true).unwrap_or(1).max(0);
    let unavailable = ru.max_unavailable.resolve(desired, false).unwrap_or(0).max(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.available_replicas)
}

/// Available replicas to plan with, never more than can be true now. An old set's status
/// right after a scale-down still counts the pods being removed: cap it at the set's size.
/// The new set's status is only trusted once it describes the set's current generation: a
/// set scaled up again (a rollback) still reports the pods it had in its previous life.
fn plannable(rs: &ReplicaSet, is_new: bool) -> i32 {
    let fresh = rs
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation == rs.metadata.generation);
    if is_new && !fresh {
        return 0;
    }
    available(rs).min(rs.spec.replicas)
}

/// The replica counts to set this round: `new` and each old (oldest first), given what is
/// available now. Pure, so the rolling arithmetic is unit-tested.
pub fn plan(
    desired: i32,
    surge: i32,
    unavailable: i32,
    new: (i32, i32),
    olds: &[(i32, i32)],
) -> (i32, Vec<i32>) {
    // (spec replicas, available) per ReplicaSet.
    let total: i32 = new.0 + olds.iter().map(|o| o.0).sum::<i32>();
    let mut new_replicas = new.0;
    if new.0 < desired {
        let room = (desired + surge - total).max(0);
        new_replicas = (new.0 + room).min(desired);
    } else if new.0 > desired {
        new_replicas = desired;
    }
    let all_available: i32 = new.1 + olds.iter().map(|o| o.1).sum::<i32>();
    let min_available = desired - unavailable;
    let mut can_remove = (all_available - min_available).max(0);
    // Replicas of old sets that are not available can always go: they serve nothing.
    let mut old_replicas = Vec::with_capacity(olds.len());
    for &(spec, avail) in olds {
        let unhealthy = (spec - avail).max(0);
        let healthy_cut = can_remove.min(spec - unhealthy);
        can_remove -= healthy_cut;
        old_replicas.push(spec - unhealthy - healthy_cut);
    }
    (new_replicas, old_replicas)
}

/// Sets `rs` to `replicas` (and `revision`), with the Deployment's `minReadySeconds`.
/// `waking`: every ReplicaSet of `d` is at zero (a cold start, not a rollout).
async fn scale(
    ctx: &Context,
    d: &Deployment,
    waking: bool,
    rs: &ReplicaSet,
    replicas: i32,
    revision: Option<i64>,
) -> Result<(), Error> {
    let rev_matches = revision.is_none_or(|r| revision_of(rs) == r);
    let min_ready = d.spec.min_ready_seconds;
    if rs.spec.replicas == replicas && rev_matches && rs.spec.min_ready_seconds == min_ready {
        return Ok(());
    }
    let mut next = rs.clone();
    next.spec.replicas = replicas;
    next.spec.min_ready_seconds = min_ready;
    if let Some(r) = revision {
        next.metadata.annotations.insert(REVISION.into(), r.to_string());
    }
    // The Deployment waking from zero carries its cold-start trace on to the ReplicaSet's
    // pods; a scale to zero ends it.
    let incoming = d.metadata.annotations.get(wisp_api::TRACEPARENT_ANNOTATION);
    let span = if waking && incoming.is_some() && rs.spec.replicas == 0 && replicas > 0 {
        let span = tracing::info_span!(
            target: wisp_telemetry::TARGET,
            "deployment.scale",
            wisp.namespace = rs.metadata.namespace.as_deref().unwrap_or_default(),
            wisp.replicaset = %rs.metadata.name,
            wisp.replicas = replicas,
        );
        match wisp_telemetry::carried(&span, incoming.map(String::as_str)) {
            Some(tp) => next
                .metadata
                .annotations
                .insert(wisp_api::TRACEPARENT_ANNOTATION.into(), tp),
            None => next.metadata.annotations.remove(wisp_api::TRACEPARENT_ANNOTATION),
        };
        span
    } else {
        if replicas == 0 {
            next.metadata.annotations.remove(wisp_api::TRACEPARENT_ANNOTATION);
        }
        tracing::Span::none()
    };
    let api = ctx.client.api::<ReplicaSet>(rs.metadata.namespace.as_deref());
    match tracing::Instrument::instrument(api.replace(&next), span).await {
        Ok(_) => {
            if rs.spec.replicas != replicas {
                let dir = if replicas > rs.spec.replicas { "up" } else { "down" };
                ctx.events.normal(
                    wisp_api::ObjectReference::to(d),
                    REASON_SCALING,
                    format!(
                        "scaled {dir} replica set {} from {} to {replicas}",
                        rs.metadata.name, rs.spec.replicas
                    ),
                );
            }
            Ok(())
        }
        Err(ClientError::Api(s)) if s.code == 409 => Ok(()), // newer version: its event requeues
        Err(e) => Err(e.into()),
    }
}

pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut sets = owned(&ctx, &d);
    sets.sort_by_key(|rs| (revision_of(rs), rs.metadata.name.clone()));
    let hash = template_hash(&d);
    // Every set at zero, in spec and in fact: a wake-up, not a rollout between sets.
    let waking = sets
        .iter()
        .all(|rs| rs.spec.replicas == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0));
    let max_revision = sets.iter().map(|rs| revision_of(rs)).max().unwrap_or(0);
    let desired = d.spec.replicas.max(0);
    let rs_api = ctx.client.api::<ReplicaSet>(d.metadata.namespace.as_deref());
    let current = sets
        .iter()
        .find(|rs| rs.metadata.labels.get(TEMPLATE_HASH) == Some(&hash))
        .cloned();
    let new = match current {
        Some(rs) => {
            // A template seen before (rollback): it becomes the newest revision again.
            if revision_of(&rs) != max_revision {
                scale(&ctx, &d, waking, &rs, rs.spec.replicas, Some(max_revision + 1)).await?;
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            rs
        }
        None if d.spec.paused => return Ok(Action::await_change()),
        None => {
            let first = if sets.is_empty() { desired } else { 0 };
            match rs_api
                .create(&new_replicaset(&d, &hash, max_revision + 1, first))
                .await
            {
                Ok(rs) => ctx.events.normal(
                    wisp_api::ObjectReference::to(d.as_ref()),
                    REASON_SCALING,
                    format!("scaled up replica set {} to {first}", rs.metadata.name),
                ),
                Err(ClientError::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
    };
    let olds: Vec<Arc<ReplicaSet>> = sets
        .iter()
        .filter(|rs| rs.metadata.name != new.metadata.name)
        .cloned()
        .collect();
    if !d.spec.paused {
        match d.spec.strategy.type_ {
            DeploymentStrategyType::Recreate => {
                let old_running: i32 = olds
                    .iter()
                    .map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas))
                    .sum();
                for rs in &olds {
                    scale(&ctx, &d, waking, rs, 0, None).await?;
                }
                if old_running == 0 {
                    scale(&ctx, &d, waking, &new, desired, None).await?;
                }
            }
            DeploymentStrategyType::RollingUpdate => {
                let (surge, unavailable) = limits(&d);
                let old_counts: Vec<(i32, i32)> = olds
                    .iter()
                    .map(|rs| (rs.spec.replicas, plannable(rs, false)))
                    .collect();
                let (new_replicas, old_replicas) = plan(
                    desired,
                    surge,
                    unavailable,
                    (new.spec.replicas, plannable(&new, true)),
                    &old_counts,
                );
                scale(&ctx, &d, waking, &new, new_replicas, None).await?;
                for (rs, n) in olds.iter().zip(old_replicas) {
                    scale(&ctx, &d, waking, rs, n, None).await?;
                }
            }
        }
    }
    // Revision history: drop the oldest empty ReplicaSets beyond the limit.
    let limit = usize::try_from(d.spec.revision_history_limit.max(0)).unwrap_or(0);
    let empty: Vec<&Arc<ReplicaSet>> = olds
        .iter()
        .filter(|rs| rs.spec.replicas == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    for rs in empty.iter().take(empty.len().saturating_sub(limit)) {
        match rs_api.delete(&rs.metadata.name).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let status_wait = update_status(&ctx, &d, &new, &sets).await?;
    let settled = new.spec.replicas == desired
        && olds.iter().all(|rs| rs.spec.replicas == 0)
        && available(&new) >= desired;
    Ok(crate::sooner(
        if settled {
            Action::await_change()
        } else {
            Action::requeue(Duration::from_millis(500))
        },
        status_wait,
    ))
}

/// Writes the status when it changed and has waited [`crate::STATUS_COALESCE`]; else says
/// how long until it may be written.
async fn update_status(
    ctx: &Context,
    d: &Deployment,
    new: &ReplicaSet,
    sets: &[Arc<ReplicaSet>],
) -> Result<Option<Duration>, Error> {
    let sum = |f: fn(&ReplicaSet) -> i32| sets.iter().map(|rs| f(rs)).sum::<i32>();
    let replicas = sum(|rs| rs.status.as_ref().map_or(0, |s| s.replicas));
    let ready = sum(|rs| rs.status.as_ref().map_or(0, |s| s.ready_replicas));
    let avail = sum(available);
    let desired = d.spec.replicas.max(0);
    let (_, unavailable) = limits(d);
    let mut conditions = d
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let ok = avail >= desired - unavailable;
    set_condition(
        &mut conditions,
        "Available",
        ok,
        if ok {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
    );
    let done = new
        .status
        .as_ref()
        .is_some_and(|s| s.available_replicas >= desired)
        && replicas == desired;
    set_condition(
        &mut conditions,
        "Progressing",
        true,
        if done {
            "NewReplicaSetAvailable"
        } else {
            "ReplicaSetUpdated"
        },
    );
    let status = DeploymentStatus {
        replicas,
        updated_replicas: new.status.as_ref().map_or(0, |s| s.replicas),
        ready_replicas: ready,
        available_replicas: avail,
        unavailable_replicas: (desired - avail).max(0),
        observed_generation: d.metadata.generation,
        conditions,
    };
    let key = format!(
        "{}/{}",
        d.metadata.namespace.as_deref().unwrap_or_default(),
        d.metadata.name
    );
    if d.status.as_ref() == Some(&status) {
        ctx.status.settled(&key);
        return Ok(None);
    }
    if let Err(wait) = ctx.status.write_now(&key) {
        return Ok(Some(wait));
    }
    let api = ctx.client.api::<Deployment>(d.metadata.namespace.as_deref());
    let mut next = d.clone();
    next.status = Some(status);
    match api.replace_status(&next).await {
        Ok(_) => Ok(None),
        Err(ClientError::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn set_condition(conditions: &mut Vec<Condition>, type_: &str, ok: bool, reason: &str) {
    let status = if ok { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status && c.reason.as_deref() == Some(reason) => {}
        Some(c) => {
            c.status = status.into();
            c.reason = Some(reason.into());
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            ..Condition::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_api::RollingUpdateDeployment;

    #[test]
    fn surge_one_at_a_time_without_losing_availability() {
        // 3 desired, surge 1, unavailable 0; old has 3 available, new nothing yet.
        assert_eq!(
            plan(3, 1, 0, (0, 0), &[(3, 3)]),
            (1, vec![3]),
            "surge first, keep all old"
        );
        // The new pod is available: one old may go.
        assert_eq!(plan(3, 1, 0, (1, 1), &[(3, 3)]), (1, vec![2]));
        assert_eq!(
            plan(3, 1, 0, (1, 1), &[(2, 2)]),
            (2, vec![2]),
            "room for the next surge"
        );
        assert_eq!(plan(3, 1, 0, (3, 3), &[(1, 1)]), (3, vec![0]));
    }

    #[test]
    fn unavailable_old_replicas_go_first_and_budget_is_respected() {
        // Old set has 3 replicas but only 1 available: the 2 broken ones can go at once.
        assert_eq!(plan(3, 1, 0, (0, 0), &[(3, 1)]), (1, vec![1]));
        // maxUnavailable 1 allows one healthy old replica to go before anything new is ready.
        assert_eq!(plan(4, 0, 1, (0, 0), &[(4, 4)]), (0, vec![3]));
        assert_eq!(plan(4, 0, 1, (0, 0), &[(3, 3)]), (1, vec![3]));
    }

    #[test]
    fn hash_is_stable_and_follows_the_template() {
        let mut d = Deployment::new(ObjectMeta::namespaced("default", "web"));
        let a = template_hash(&d);
        assert_eq!(a, template_hash(&d));
        d.spec.replicas = 7;
        assert_eq!(a, template_hash(&d), "replicas are not part of the template");
        d.spec.template.metadata.labels.insert("v".into(), "2".into());
        assert_ne!(a, template_hash(&d));
    }

    #[test]
    fn limits_never_both_zero() {
        let mut d = Deployment::new(ObjectMeta::namespaced("default", "web"));
        d.spec.replicas = 3;
        assert_eq!(limits(&d), (1, 0), "25% of 3: surge rounds up, unavailable down");
        d.spec.replicas = 1;
        d.spec.strategy.rolling_update = Some(RollingUpdateDeployment {
            max_surge: wisp_api::IntOrString::Int(0),
            max_unavailable: wisp_api::IntOrString::Int(0),
        });
        assert_eq!(limits(&d), (0, 1));
    }
}
