//! What the agent's integration tests share.

use std::time::Duration;

use anyhow::bail;
use wisp_api::Pod;
use wisp_client::Client;

/// Polls pod `default/<name>` until `check` holds; fails after `secs` with the pod's last
/// status.
pub async fn wait_pod(
    client: &Client,
    name: &str,
    secs: u64,
    check: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    let api = client.api::<Pod>(Some("default"));
    let mut last = None;
    let waited = wisp_testkit::wait(format!("pod {name} to reach the expected state"))
        .within(Duration::from_secs(secs))
        .until(async || -> anyhow::Result<Option<Pod>> {
            let pod = api.get(name).await?;
            if check(&pod) {
                return Ok(Some(pod));
            }
            last = pod.status;
            Ok(None)
        })
        .await;
    match waited {
        Ok((pod, _)) => Ok(pod),
        Err(e) => bail!("{e}; last status: {last:#?}"),
    }
}
