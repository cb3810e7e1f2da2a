//! Garbage collection through `ownerReferences`: a `C` whose every owner of kind `O` is gone
//! is deleted. The caches say when to look: an owner in the cache with the uid the child
//! names is alive (its deletion, when it comes, reconciles the children again), and only
//! when the cache has no such owner does a live read decide, so an owner that is merely not
//! in the cache yet never costs its children — and the children's every change (a pod's
//! status, a ReplicaSet's replicas) costs no API call.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wisp_api::Resource;
use wisp_client::Client;
use wisp_runtime::{Action, Controller, Informers, ObjectRef, Store};

use crate::Error;

struct Ctx<O> {
    client: Client,
    owners: Store<O>,
}

async fn reconcile<C: Resource, O: Resource>(child: Arc<C>, ctx: Arc<Ctx<O>>) -> Result<Action, Error> {
    let meta = child.metadata();
    let refs: Vec<_> = meta
        .owner_references
        .iter()
        .filter(|r| r.kind == O::KIND)
        .collect();
    if refs.is_empty() {
        return Ok(Action::await_change());
    }
    let ns = if O::NAMESPACED {
        meta.namespace.as_deref()
    } else {
        None
    };
    let cached = |name: &str| {
        let key = ObjectRef::new(name);
        ctx.owners.get(&match ns {
            Some(ns) => key.within(ns),
            None => key,
        })
    };
    if refs
        .iter()
        .any(|r| cached(&r.name).is_some_and(|o| o.metadata().uid.as_deref() == Some(r.uid.as_str())))
    {
        return Ok(Action::await_change());
    }
    let owners = ctx.client.api::<O>(ns);
    for r in &refs {
        match owners.get_opt(&r.name).await? {
            Some(owner) if owner.metadata().uid.as_deref() == Some(r.uid.as_str()) => {
                return Ok(Action::await_change());
            }
            _ => {}
        }
    }
    tracing::info!(kind = C::KIND, object = %meta.name, owner_kind = O::KIND, "owner gone; deleting");
    let api = ctx.client.api::<C>(meta.namespace.as_deref());
    match api.delete(&meta.name).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if e.code() == Some(404) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// Run the collector for children `C` of owners `O` until `shutdown`.
pub async fn run<C: Resource, O: Resource>(informers: Informers, shutdown: CancellationToken) {
    let (owners, owner_events) = informers.cached::<O>();
    let client = informers.client().clone();
    let controller = Controller::<C>::shared(&informers);
    let children = controller.store();
    // When an owner changes or goes, look at the children that name it.
    let controller = controller.watches_events(owner_events, move |owner: &O| {
        let uid = owner.metadata().uid.clone().unwrap_or_default();
        children
            .list()
            .iter()
            .filter(|c| c.metadata().owner_references.iter().any(|r| r.uid == uid))
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect()
    });
    let ctx = Arc::new(Ctx { client, owners });
    controller
        .run(
            reconcile::<C, O>,
            |_c: Arc<C>, _e: &Error, _ctx: Arc<Ctx<O>>| Action::await_change(),
            ctx,
            shutdown,
        )
        .await;
}
