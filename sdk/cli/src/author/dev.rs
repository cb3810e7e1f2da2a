//! `wisp dev`: deploy the project, then rebuild and redeploy on every change to its sources
//! (watched with `notify`) while its logs stream; Ctrl-C puts the cluster back as it was (the
//! Function deleted if `dev` made it, its earlier spec restored if it was there before).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use notify::{RecursiveMode, Watcher};
use wisp_api::Function;

use super::manifest::{Kind, Project};
use super::{build_checked, complain, say, upload};
use crate::cli::{DeployArgs, DevArgs, Global, LogsArgs};
use crate::resources::{client, describe_error};

/// Paths whose changes are not source changes.
fn ignored(project: &Project, path: &Path) -> bool {
    let component = project.component_path();
    path == component
        || path.components().any(|c| {
            matches!(
                c.as_os_str().to_str(),
                Some("target" | ".git" | "__pycache__" | "node_modules")
            )
        })
        || path.extension().is_some_and(|e| e == "swp" || e == "tmp")
        // Written by the build itself.
        || path.file_name().is_some_and(|n| n == "Cargo.lock")
}

pub async fn dev(global: &Global, args: &DevArgs) -> anyhow::Result<()> {
    let project = Project::load(&args.path)?;
    if project.kind() != Kind::Http {
        anyhow::bail!("wisp dev runs HTTP functions; a job runs with `wisp deploy --wait`");
    }
    let ns = project.namespace(args.namespace.as_deref()).to_owned();
    let client = client(global)?;
    let name = project.name().to_owned();
    let api = client.api::<Function>(Some(&ns));
    let before = api
        .get_opt(&name)
        .await
        .map_err(|e| anyhow!("{}", describe_error(&e)))?;
    let deploy_args = DeployArgs {
        path: args.path.clone(),
        namespace: Some(ns.clone()),
        wait: true,
        timeout: 120,
        dry_run: false,
        traffic: None,
        tag: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::path::PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })
    .context("cannot watch the sources")?;
    watcher
        .watch(&project.dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", project.dir.display()))?;

    let result = async {
        tokio::select! {
            r = super::deploy(global, &deploy_args) => r?,
            _ = tokio::signal::ctrl_c() => return anyhow::Ok(()),
        }
        // What the first build wrote is not a change.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        // Its pods' logs, as they come (new pods of new revisions join).
        let logs_args = LogsArgs {
            pod: name.clone(),
            container: None,
            namespace: Some(ns.clone()),
            follow: true,
            tail: None,
        };
        let global_logs = global.clone();
        let mut logs = tokio::task::JoinSet::new();
        logs.spawn(async move { crate::resources::logs(&global_logs, logs_args).await });
        say(&format!(
            "watching {} (Ctrl-C stops and cleans up)",
            project.dir.display()
        ));
        loop {
            let changed = tokio::select! {
                p = rx.recv() => p,
                _ = tokio::signal::ctrl_c() => None,
            };
            let Some(first) = changed else { break };
            if ignored(&project, &first) {
                continue;
            }
            // Let a burst of writes (an editor's save) settle.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let started = Instant::now();
            say(&format!("changed: {}", first.display()));
            match redeploy(&client, &project, &ns).await {
                Ok(()) => say(&format!("redeployed in {} ms", started.elapsed().as_millis())),
                Err(e) => complain(&format!("error: {e:#}")),
            }
            // Nor is what this build wrote.
            while rx.try_recv().is_ok() {}
        }
        logs.abort_all();
        anyhow::Ok(())
    }
    .await;

    // Put the cluster back as it was.
    let cleanup = match before {
        None => api
            .delete(&name)
            .await
            .map(|_| format!("function/{name} deleted")),
        Some(prev) => {
            let mut restore = api
                .get(&name)
                .await
                .map_err(|e| anyhow!("{}", describe_error(&e)))?;
            restore.spec = prev.spec;
            api.replace(&restore)
                .await
                .map(|_| format!("function/{name} restored"))
        }
    };
    match cleanup {
        Ok(line) => say(&line),
        Err(e) => complain(&format!(
            "error: cannot clean up function/{name}: {}",
            describe_error(&e)
        )),
    }
    result
}

/// Build (the sources changed), upload, and point the Function at the new component.
async fn redeploy(client: &wisp_client::Client, project: &Project, ns: &str) -> anyhow::Result<()> {
    let built = build_checked(project, true).await?;
    upload(client, &built).await?;
    let api = client.api::<Function>(Some(ns));
    let want = project.function(ns, &built.digest);
    for _ in 0..8 {
        let mut f = api
            .get(project.name())
            .await
            .map_err(|e| anyhow!("{}", describe_error(&e)))?;
        let traffic = std::mem::take(&mut f.spec.traffic);
        f.spec = want.spec.clone();
        f.spec.traffic = traffic;
        match api.replace(&f).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(anyhow!("{}", describe_error(&e))),
        }
    }
    anyhow::bail!(
        "function/{}: changed by someone else 8 times in a row",
        project.name()
    )
}
