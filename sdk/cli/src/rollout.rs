//! `wisp rollout status|history|undo` over Deployments and the ReplicaSets they own.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use wisp_api::{Deployment, ReplicaSet};
use wisp_client::{Api, ListParams};
use wisp_controllers::deployment::{TEMPLATE_HASH, revision_of, template_hash};

use crate::cli::{Global, RolloutArgs, UndoArgs};
use crate::resources::{client, describe_error};

fn say(line: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
}

/// The Deployment name from `deployment/web`, `deployment web`, `deploy web` or `web`.
fn name_of(target: &[String]) -> anyhow::Result<String> {
    let is_kind = |k: &str| wisp_api::kind_by_name(k).is_some_and(|k| k.kind == "Deployment");
    match target {
        [one] => match one.split_once('/') {
            Some((kind, name)) if is_kind(kind) => Ok(name.to_owned()),
            Some((kind, _)) => bail!("rollout works on deployments, not {kind:?}"),
            None => Ok(one.clone()),
        },
        [kind, name] if is_kind(kind) => Ok(name.clone()),
        [kind, _] => bail!("rollout works on deployments, not {kind:?}"),
        _ => bail!("name one deployment: `deployment/NAME`"),
    }
}

fn apis(global: &Global, args: &RolloutArgs) -> anyhow::Result<(Api<Deployment>, Api<ReplicaSet>, String)> {
    let c = client(global)?;
    let ns = args.namespace.clone().unwrap_or_else(|| "default".into());
    Ok((
        c.api::<Deployment>(Some(&ns)),
        c.api::<ReplicaSet>(Some(&ns)),
        name_of(&args.target)?,
    ))
}

async fn owned_sets(d: &Deployment, rss: &Api<ReplicaSet>) -> anyhow::Result<Vec<ReplicaSet>> {
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let mut sets: Vec<ReplicaSet> = rss
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow!(describe_error(&e)))?
        .items
        .into_iter()
        .filter(|rs| rs.metadata.owner_references.iter().any(|o| o.uid == uid))
        .collect();
    sets.sort_by_key(revision_of);
    Ok(sets)
}

pub async fn status(global: &Global, args: &RolloutArgs) -> anyhow::Result<()> {
    let (deployments, _, name) = apis(global, args)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut last = String::new();
    loop {
        let d = deployments
            .get(&name)
            .await
            .map_err(|e| anyhow!(describe_error(&e)))?;
        let want = d.spec.replicas;
        let st = d.status.clone().unwrap_or_default();
        let observed = st.observed_generation >= d.metadata.generation;
        let line = if !observed {
            "Waiting for the deployment spec update to be observed...".to_owned()
        } else if st.updated_replicas < want {
            format!(
                "Waiting for rollout to finish: {} of {want} updated replicas are available...",
                st.updated_replicas
            )
        } else if st.replicas > st.updated_replicas {
            format!(
                "Waiting for rollout to finish: {} old replicas are pending termination...",
                st.replicas - st.updated_replicas
            )
        } else if st.available_replicas < want {
            format!(
                "Waiting for rollout to finish: {} of {want} updated replicas are available...",
                st.available_replicas
            )
        } else {
            say(&format!("deployment {name:?} successfully rolled out"));
            return Ok(());
        };
        if line != last {
            say(&line);
            last = line;
        }
        if Instant::now() > deadline {
            bail!(
                "rollout of deployment {name:?} did not finish within {} s",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn history(global: &Global, args: &RolloutArgs) -> anyhow::Result<()> {
    let (deployments, rss, name) = apis(global, args)?;
    let d = deployments
        .get(&name)
        .await
        .map_err(|e| anyhow!(describe_error(&e)))?;
    say("REVISION  REPLICASET  REPLICAS");
    for rs in owned_sets(&d, &rss).await? {
        say(&format!(
            "{:<9} {}  {}",
            revision_of(&rs),
            rs.metadata.name,
            rs.spec.replicas
        ));
    }
    Ok(())
}

pub async fn undo(global: &Global, args: &UndoArgs) -> anyhow::Result<()> {
    let (deployments, rss, name) = apis(global, &args.rollout)?;
    for _ in 0..10 {
        let mut d = deployments
            .get(&name)
            .await
            .map_err(|e| anyhow!(describe_error(&e)))?;
        let sets = owned_sets(&d, &rss).await?;
        let hash = template_hash(&d);
        let current = sets
            .iter()
            .find(|rs| rs.metadata.labels.get(TEMPLATE_HASH) == Some(&hash))
            .map(revision_of);
        let target = match args.to_revision {
            Some(r) => sets.iter().find(|rs| revision_of(rs) == r).ok_or_else(|| {
                anyhow!("no revision {r} of deployment {name:?} is kept (see `wisp rollout history`)")
            })?,
            None => sets
                .iter()
                .rev()
                .find(|rs| Some(revision_of(rs)) != current)
                .ok_or_else(|| anyhow!("deployment {name:?} has no previous revision to go back to"))?,
        };
        let mut template = target.spec.template.clone();
        template.metadata.labels.remove(TEMPLATE_HASH);
        let revision = revision_of(target);
        d.spec.template = template;
        match deployments.replace(&d).await {
            Ok(_) => {
                say(&format!("deployment {name:?} rolled back to revision {revision}"));
                return Ok(());
            }
            Err(e) if e.code() == Some(409) => continue,
            Err(e) => bail!(describe_error(&e)),
        }
    }
    bail!("deployment {name:?} kept changing; try again")
}
