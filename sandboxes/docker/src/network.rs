//! The bridge network of each namespace: created on demand by `create`, removed by `delete`
//! with its last container. Creating and removing one hold a per-user file lock
//! exclusively; creating a container on one holds it shared, so a network is never removed
//! between the check that it exists and the container that uses it (Docker removes a
//! network that a created, not yet started, container names, and that container then
//! cannot start).

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListContainersOptions;
use wisp_sandbox::{LABEL_NAMESPACE, SandboxError, SandboxId};

use crate::{DockerSandbox, LABEL_NETWORK, names, network_name};

/// Takes the network lock file, exclusively or shared, off the async threads. Dropping the
/// file releases it.
pub(crate) async fn lock(exclusive: bool) -> Result<std::fs::File, SandboxError> {
    tokio::task::spawn_blocking(move || names::lock_networks(exclusive))
        .await
        .map_err(|e| SandboxError::runtime("the network lock task failed", e))?
        .map_err(|e| SandboxError::runtime("cannot lock the network lock file", e))
}

impl DockerSandbox {
    /// Creates the namespace's bridge network unless it exists. Creation is serialised
    /// across processes sharing the daemon (Docker before API 1.44 allows duplicate names).
    pub(crate) async fn ensure_network(
        &self,
        docker: &Docker,
        namespace: &str,
    ) -> Result<String, SandboxError> {
        let name = network_name(&self.inner.config.network_prefix, namespace);
        let mut known = self.inner.networks.lock().await;
        if known.contains(&name) {
            return Ok(name);
        }
        let lock = lock(true).await?;
        let none = SandboxId(name.clone());
        match docker.inspect_network(&name, None).await {
            Ok(_) => {}
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {
                let request = NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([
                        (LABEL_NETWORK.to_owned(), "true".to_owned()),
                        (LABEL_NAMESPACE.to_owned(), namespace.to_owned()),
                    ])),
                    ..NetworkCreateRequest::default()
                };
                if let Err(e) = docker.create_network(request).await {
                    return Err(self.fail(&none, e).await);
                }
                tracing::info!(network = %name, "created the namespace's bridge network");
            }
            Err(e) => return Err(self.fail(&none, e).await),
        }
        drop(lock);
        known.insert(name.clone());
        Ok(name)
    }

    /// The namespace's network, created unless it exists, with the network lock held shared:
    /// it is not removed until the lock is dropped. A network removed since this process
    /// last saw it (by another runtime sharing the daemon) is created again.
    pub(crate) async fn network_in_use(
        &self,
        docker: &Docker,
        namespace: &str,
    ) -> Result<(String, std::fs::File), SandboxError> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 0;
        loop {
            let name = self.ensure_network(docker, namespace).await?;
            let in_use = lock(false).await?;
            match docker.inspect_network(&name, None).await {
                Ok(_) => return Ok((name, in_use)),
                Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {
                    drop(in_use);
                    self.inner.networks.lock().await.remove(&name);
                    attempt += 1;
                    if attempt == ATTEMPTS {
                        return Err(SandboxError::runtime(
                            format!("creating a container on the namespace's network {name}"),
                            format!("the network was removed {ATTEMPTS} times meanwhile"),
                        ));
                    }
                    tracing::info!(network = %name, "the namespace's network is gone; creating it again");
                }
                Err(e) => return Err(self.fail(&SandboxId(name), e).await),
            }
        }
    }

    /// Removes `network` when it is a namespace network Wisp made and no container of any
    /// owner, in any state, is on it any more. Best effort: a failure is logged, and a
    /// network still in use is left.
    pub(crate) async fn release_network(&self, docker: &Docker, network: &str) {
        let mut known = self.inner.networks.lock().await;
        let _lock = match lock(true).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(network, error = %e, "cannot check whether the namespace's network is unused");
                return;
            }
        };
        let none = SandboxId(network.to_owned());
        let found = match docker.inspect_network(network, None).await {
            Ok(n) => n,
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {
                known.remove(network);
                return;
            }
            Err(e) => {
                let e = self.fail(&none, e).await;
                tracing::debug!(network, error = %e, "cannot inspect the namespace's network; left");
                return;
            }
        };
        let ours = found
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(LABEL_NETWORK));
        let attached = found.containers.as_ref().is_some_and(|c| !c.is_empty());
        if !ours || attached {
            return;
        }
        // Running containers are attached; created and exited ones only name the network.
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("network".to_owned(), vec![network.to_owned()])])),
            ..ListContainersOptions::default()
        };
        match docker.list_containers(Some(options)).await {
            Ok(on_it) if on_it.is_empty() => {}
            Ok(_) => return,
            Err(e) => {
                let e = self.fail(&none, e).await;
                tracing::debug!(network, error = %e, "cannot list the namespace network's containers; left");
                return;
            }
        }
        match docker.remove_network(network).await {
            Ok(()) => {
                known.remove(network);
                tracing::info!(
                    network,
                    "removed the namespace's bridge network with its last container"
                );
            }
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {
                known.remove(network);
            }
            Err(e) => {
                let e = self.fail(&none, e).await;
                tracing::debug!(network, error = %e, "the namespace's network is still in use; left");
            }
        }
    }
}
