//! The pods bound to this node (a watch with `fieldSelector=spec.nodeName=<node>`), one
//! [`Worker`] each. On the first listing, sandboxes the runtimes already hold are handed
//! to their pods' workers (adopted, never started twice) and those of pods that no longer
//! exist are stopped and removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wisp_api::Pod;
use wisp_client::{ListParams, WatchParams, WatcherEvent};
use wisp_sandbox::{LABEL_POD_UID, SandboxStatus};

use crate::worker::{Ctx, Worker};

struct Dispatcher {
    ctx: Arc<Ctx>,
    workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    /// Sandboxes found at start, by pod uid, until their pod's worker takes them.
    found: HashMap<String, Vec<SandboxStatus>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Dispatcher {
    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let pod = Arc::new(pod);
        if let Some(tx) = self.workers.get(&uid) {
            tx.send_replace(Some(pod));
            return;
        }
        let adopted = self.found.remove(&uid).unwrap_or_default();
        if pod.phase().is_terminal() && adopted.is_empty() {
            // Ended before this agent saw it, and nothing of it runs here.
            return;
        }
        let (tx, rx) = watch::channel(Some(pod.clone()));
        self.workers.insert(uid, tx);
        let worker = Worker::new(self.ctx.clone(), pod, adopted);
        self.tasks.spawn(worker.run(rx, self.shutdown.clone()));
    }

    fn delete(&mut self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid
            && let Some(tx) = self.workers.remove(uid)
        {
            tx.send_replace(None);
        }
    }

    /// A full listing: apply every pod, end the workers of pods that are gone.
    async fn relist(&mut self, pods: Vec<Pod>, first: bool) {
        let live: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|u| !live.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(tx) = self.workers.remove(&uid) {
                tx.send_replace(None);
            }
        }
        for pod in pods {
            self.apply(pod);
        }
        if first {
            self.remove_orphans().await;
            self.remove_stale_pod_dirs(&live).await;
        }
    }

    /// Volume directories of pods that are gone (deleted while no agent ran).
    async fn remove_stale_pod_dirs(&self, live: &HashSet<String>) {
        let Ok(mut entries) = tokio::fs::read_dir(&self.ctx.pods_dir).await else {
            return;
        };
        while let Ok(Some(e)) = entries.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                tracing::info!(pod_uid = %name, "removing the directory of a pod that is gone");
                let _ = tokio::fs::remove_dir_all(e.path()).await;
            }
        }
    }

    /// Sandboxes whose pod is not bound here any more: stop and remove them.
    async fn remove_orphans(&mut self) {
        for (uid, sandboxes) in std::mem::take(&mut self.found) {
            for s in sandboxes {
                let Some(runtime) = self.ctx.runtimes.get(runtime_label(&s)) else {
                    continue;
                };
                tracing::info!(pod_uid = %uid, sandbox = %s.id, "removing an orphaned sandbox");
                // Its pod was deleted while no agent ran: the grace period is long over.
                let _ = runtime.stop(&s.id, Duration::from_secs(2)).await;
                let _ = runtime.delete(&s.id).await;
            }
        }
    }
}

fn runtime_label(s: &SandboxStatus) -> &str {
    s.labels.get(crate::LABEL_RUNTIME).map_or("", String::as_str)
}

/// Sandboxes every runtime holds now, by pod uid (each tagged with its runtime).
async fn inventory(ctx: &Ctx) -> HashMap<String, Vec<SandboxStatus>> {
    let mut found: HashMap<String, Vec<SandboxStatus>> = HashMap::new();
    for runtime in ctx.runtimes.all() {
        match runtime.list().await {
            Ok(list) => {
                for mut s in list {
                    let Some(uid) = s.labels.get(LABEL_POD_UID).cloned() else {
                        continue;
                    };
                    s.labels
                        .insert(crate::LABEL_RUNTIME.into(), runtime.runtime().into());
                    found.entry(uid).or_default().push(s);
                }
            }
            Err(e) => tracing::warn!(runtime = runtime.runtime(), error = %e, "cannot list sandboxes"),
        }
    }
    found
}

/// Watches this node's pods and runs a worker per pod until `shutdown`.
pub async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let found = inventory(&ctx).await;
    if !found.is_empty() {
        tracing::info!(pods = found.len(), "found sandboxes from an earlier run");
    }
    let mut d = Dispatcher {
        ctx: ctx.clone(),
        workers: HashMap::new(),
        found,
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    };
    let mut events = match &ctx.informers {
        // A shared cache holds every node's pods: this agent takes only its own.
        Some(informers) => informers.subscribe::<Pod>(),
        None => {
            let params = WatchParams {
                list: ListParams {
                    label_selector: None,
                    field_selector: Some(format!("spec.nodeName={}", ctx.node)),
                },
                ..WatchParams::default()
            };
            wisp_runtime::watcher_stream(ctx.client.api::<Pod>(None).watcher(params)).boxed()
        }
    };
    let mine = |p: &Pod| p.spec.node_name.as_deref() == Some(ctx.node.as_str());
    let mut first = true;
    loop {
        let event = tokio::select! {
            e = events.next() => match e {
                Some(e) => e,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        match event {
            Ok(WatcherEvent::Restarted(pods)) => {
                d.relist(pods.into_iter().filter(|p| mine(p)).collect(), first)
                    .await;
                first = false;
            }
            Ok(WatcherEvent::Applied(pod)) if mine(&pod) => d.apply(pod),
            Ok(WatcherEvent::Deleted(pod)) if mine(&pod) => d.delete(&pod),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "the pod watch failed; retrying in 5 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    d.tasks.close();
    d.tasks.wait().await;
}
