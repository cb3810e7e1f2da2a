//! Garbage collection through `ownerReferences`: a `C` whose every owner of kind `O` is gone
//! is deleted. The caches say when to look; a live read of the owner decides, so an owner
//! that is merely not in the cache yet never costs its children.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wisp_api::Resource;
use wisp_client::{Client, WatchParams};
use wisp_runtime::{Action, Controller, ObjectRef, Writer, reflector, watcher_stream};

use crate::Error;

struct Ctx {
    client: Client,
}

async fn reconcile<C: Resource, O: Resource>(child: Arc<C>, ctx: Arc<Ctx>) -> Result<Action, Error> {
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
pub async fn run<C: Resource, O: Resource>(client: Client, shutdown: CancellationToken) {
    let owner_writer = Writer::<O>::new();
    let owner_events = reflector(
        owner_writer,
        watcher_stream(client.api::<O>(None).watcher(WatchParams::default())),
    );
    let controller = Controller::new(client.api::<C>(None), WatchParams::default());
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
    let ctx = Arc::new(Ctx { client });
    controller
        .run(
            reconcile::<C, O>,
            |_c: Arc<C>, _e: &Error, _ctx: Arc<Ctx>| Action::await_change(),
            ctx,
            shutdown,
        )
        .await;
}
