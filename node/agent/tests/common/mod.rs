//! What the agent's integration tests share.

use std::time::Duration;

use anyhow::bail;
use wisp_api::Pod;
use wisp_client::Client;

/// Polls pod `default/<name>` every 20 ms until `check` holds; fails after `secs` with the
/// pod's last status.
pub async fn wait_pod(
    client: &Client,
    name: &str,
    secs: u64,
    check: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    let api = client.api::<Pod>(Some("default"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let pod = api.get(name).await?;
        if check(&pod) {
            return Ok(pod);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "pod {name} did not reach the expected state in {secs} s; last status: {:#?}",
                pod.status
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
