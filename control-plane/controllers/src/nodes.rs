//! The Node lifecycle controller: a node whose Lease (namespace `wisp-system`, named after
//! the node) has not been renewed for the grace period is marked `Ready=False` with reason
//! `NodeStatusUnknown`, and its pods are marked `Failed` (reason `NodeLost`) so that their
//! ReplicaSets replace them elsewhere. A node's own agent sets `Ready=True` again when it
//! comes back; this controller never does.

use std::sync::Arc;
use std::time::Duration;

use wisp_api::{Condition, Lease, Node, Pod, PodPhase, PodStatus};
use wisp_client::{Client, ListParams};
use wisp_runtime::{Action, ObjectRef, Store};

use crate::Error;

/// Where node agents keep their heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "wisp-system";

pub struct Context {
    pub client: Client,
    pub leases: Store<Lease>,
    /// How long a lease may go unrenewed before the node is lost (default 10 s).
    pub grace: Duration,
}

/// Seconds since `renew` (RFC 3339), or `None` if it cannot be read.
fn age(renew: Option<&str>, now: jiff::Timestamp) -> Option<Duration> {
    let t: jiff::Timestamp = renew?.parse().ok()?;
    let secs = now.as_millisecond() - t.as_millisecond();
    Some(Duration::from_millis(u64::try_from(secs.max(0)).unwrap_or(0)))
}

/// How long the node has been silent: since its lease's renewal, or (no lease yet) since
/// the node was created.
pub fn silence(node: &Node, lease: Option<&Lease>, now: jiff::Timestamp) -> Duration {
    let renew = lease.and_then(|l| l.spec.renew_time.clone().or_else(|| l.spec.acquire_time.clone()));
    age(
        renew.as_deref().or(node.metadata.creation_timestamp.as_deref()),
        now,
    )
    .unwrap_or(Duration::ZERO)
}

pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = node.metadata.name.clone();
    let lease = ctx
        .leases
        .get(&ObjectRef::new(name.clone()).within(LEASE_NAMESPACE));
    let now = jiff::Timestamp::now();
    let quiet = silence(&node, lease.as_deref(), now);
    if quiet < ctx.grace {
        // Look again when the lease would expire if it is not renewed.
        return Ok(Action::requeue(ctx.grace - quiet + Duration::from_millis(100)));
    }
    let stamp = now.to_string();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| wisp_api::meta::find_condition(&s.conditions, "Ready"));
    if ready.is_none_or(|c| c.status != "False") {
        tracing::warn!(node = %name, silent_for = ?quiet, "node lease expired; marking NotReady");
        let mut next = (*node).clone();
        let status = next.status.get_or_insert_with(Default::default);
        wisp_api::meta::set_condition(
            &mut status.conditions,
            Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: Some("NodeStatusUnknown".into()),
                message: Some(format!(
                    "the node's agent has not renewed its lease for {} s",
                    quiet.as_secs()
                )),
                ..Condition::default()
            },
            &stamp,
        );
        match ctx.client.api::<Node>(None).replace_status(&next).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some(409 | 404)) => {
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Fail the pods it was running so their controllers replace them.
    let params = ListParams {
        label_selector: None,
        field_selector: Some(format!("spec.nodeName={name}")),
    };
    let pods = ctx.client.api::<Pod>(None).list(&params).await?.items;
    for mut pod in pods.into_iter().filter(|p| !p.phase().is_terminal()) {
        let api = ctx.client.api::<Pod>(pod.metadata.namespace.as_deref());
        pod.status = Some(PodStatus {
            phase: PodPhase::Failed,
            reason: Some("NodeLost".into()),
            message: Some(format!("node {name} stopped renewing its lease")),
            ..pod.status.clone().unwrap_or_default()
        });
        match api.replace_status(&pod).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some(409 | 404)) => {
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(ctx.grace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_api::{ObjectMeta, Resource};

    #[test]
    fn silence_counts_from_the_lease_or_else_from_creation() {
        let now: jiff::Timestamp = "2026-11-24T00:00:30Z".parse().expect("ts");
        let mut node = Node::new(ObjectMeta {
            name: "n".into(),
            ..ObjectMeta::default()
        });
        node.metadata.creation_timestamp = Some("2026-11-24T00:00:00Z".into());
        assert_eq!(silence(&node, None, now), Duration::from_secs(30));
        let mut lease = Lease::new(ObjectMeta::namespaced(LEASE_NAMESPACE, "n"));
        lease.spec.renew_time = Some("2026-11-24T00:00:25Z".into());
        assert_eq!(silence(&node, Some(&lease), now), Duration::from_secs(5));
        lease.spec.renew_time = Some("garbage".into());
        assert_eq!(
            silence(&node, Some(&lease), now),
            Duration::ZERO,
            "unreadable: not lost"
        );
    }
}
