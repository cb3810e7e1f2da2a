//! The Namespace controller: a Namespace being deleted (`Terminating`, its
//! `deletionTimestamp` set by the API server's first DELETE) has everything in it deleted —
//! Functions, Deployments, pods (whose node agents stop their sandboxes), Services, Routes,
//! Secrets, every namespaced kind — and is then deleted for good with a second DELETE, which
//! the API server grants once the namespace is empty (it also drops the namespace's tokens
//! and blob records then). Nothing new can be created in a Terminating namespace, so this
//! converges; anything created in the moment before is found on the next pass.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wisp_api::{KINDS, Namespace};
use wisp_client::{Client, ListParams};
use wisp_runtime::{Action, Controller, Informers};

use crate::Error;

pub struct Context {
    pub client: Client,
}

/// Kinds deleted first: the owners that would otherwise replace what is deleted after them
/// (they cannot create anything in a Terminating namespace, but their pods go sooner).
const FIRST: &[&str] = &["functions", "deployments", "replicasets", "jobs"];

pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.as_str();
    let kinds = FIRST.iter().filter_map(|p| wisp_api::kind_by_plural(p)).chain(
        KINDS
            .iter()
            .filter(|k| k.namespaced && !FIRST.contains(&k.plural)),
    );
    let mut deleted = 0;
    for kind in kinds {
        let list = ctx
            .client
            .list_dyn(kind, Some(name), &ListParams::default())
            .await?;
        for obj in list.items {
            match ctx.client.delete_dyn(kind, Some(name), &obj.metadata.name).await {
                Ok(_) => deleted += 1,
                Err(e) if e.code() == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    // Gone once empty; otherwise (something created at the last moment) look again.
    let api = ctx.client.api::<Namespace>(None);
    match api.delete(name).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(404) => {}
        Err(e) => return Err(e.into()),
    }
    match api.get_opt(name).await? {
        Some(n) if n.metadata.uid == ns.metadata.uid => Ok(Action::requeue(Duration::from_millis(200))),
        _ => {
            tracing::info!(namespace = name, deleted, "namespace deleted");
            Ok(Action::await_change())
        }
    }
}

/// Run the Namespace controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let ctx = Arc::new(Context {
        client: informers.client().clone(),
    });
    Controller::<Namespace>::shared(&informers)
        .run(
            reconcile,
            |_n: Arc<Namespace>, _e: &Error, _c: Arc<Context>| Action::requeue(Duration::from_secs(1)),
            ctx,
            shutdown,
        )
        .await;
}
