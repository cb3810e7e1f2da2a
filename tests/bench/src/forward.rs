//! `wisp-bench forward`: what a hop between nodes costs. One `wisp up` (node `bench`) and a
//! second node (`wisp node`, its own process, joined with a node credential and the cluster
//! CA); the hello component runs as one pod on the second node only. Warm throughput with
//! `--connections` keep-alive connections, alternating round by round: at the second node's
//! own ingress (the pod in process), and at `bench`'s ingress, which forwards each request to
//! the second node's port over TLS (its own CA, `Node.status.agentCa`) on pooled connections.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use wisp_api::{Container, ObjectMeta, Pod, Resource};
use wisp_client::Client;

use crate::fanout::Up;
use crate::https::{AlternatingArgs, alternate, expose_hello, measure, median};

/// The second node's process (stopped on drop) and its data directory.
struct NodeProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ingress address of node `name` once it is Ready.
async fn ingress_of(client: &Client, name: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        if let Ok(n) = client.api::<wisp_api::Node>(None).get(name).await
            && n.is_ready()
            && let Some(url) = n.status.and_then(|s| s.ingress_url)
        {
            return Ok(url.trim_start_matches("http://").to_owned());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("node {name} not Ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: &AlternatingArgs) -> anyhow::Result<String> {
    let up = Up::start_with(&args.wisp, "127.0.0.1:0")?;
    let client = Client::with_ca(&up.url, &up.token, up.ca.as_deref())?;
    let token = client
        .issue_token(&wisp_client::TokenRequest {
            node: Some("remote".into()),
            ..wisp_client::TokenRequest::default()
        })
        .await?
        .token;
    let dir = tempfile::tempdir()?;
    let child = Command::new(&args.wisp)
        .args([
            "node",
            "--agent-listen",
            "127.0.0.1:0",
            "--ingress-listen",
            "127.0.0.1:0",
        ])
        .args(["--docker", "false", "--data-dir"])
        .arg(dir.path().join("node"))
        .env("WISP_SERVER", &up.url)
        .env("WISP_TOKEN", &token)
        .env("WISP_CA_FILE", up.data_dir().join("pki/ca.crt"))
        .env("WISP_CONFIG", dir.path().join("no-config"))
        .env("WISP_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start wisp node")?;
    let _node = NodeProcess { child, _dir: dir };
    let local = ingress_of(&client, "remote").await?;
    let entry = ingress_of(&client, "bench").await?;

    // The hello component: one pod, on the second node only, behind a Service and a Route.
    let digest = client
        .put_blob(Bytes::from(std::fs::read(
            wisp_testkit::guests::path("hello").map_err(anyhow::Error::msg)?,
        )?))
        .await?;
    let mut pod = Pod::new(ObjectMeta::namespaced("default", "hello"));
    pod.metadata.labels.insert("app".into(), "hello".into());
    pod.spec.node_name = Some("remote".into());
    pod.spec.containers = vec![Container {
        name: "hello".into(),
        wasm: Some(digest),
        ..Container::default()
    }];
    client.api::<Pod>(Some("default")).create(&pod).await?;
    expose_hello(&client, None).await?;
    let (direct, forwarded) = alternate(
        "local vs forwarded",
        args.rounds,
        args.connections,
        args.seconds,
        async |c, s| measure(&local, None, c, s).await,
        async |c, s| measure(&entry, None, c, s).await,
    )
    .await?;
    let (d, f) = (median(direct.clone()), median(forwarded.clone()));
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    Ok(format!(
        "warm throughput to one hello pod on a second node (`wisp node`, its own process), {} \
         keep-alive connections, {} s per measurement, {} rounds alternating (median):\n\n\
         | path | req/s (median) | rounds | ÷ local |\n| --- | ---: | --- | ---: |\n\
         | the pod's node's own ingress (in process) | {d:.0} | {} | |\n\
         | another node's ingress, forwarded over TLS to the pod's node | {f:.0} | {} | {:.0} % |\n",
        args.connections,
        args.seconds,
        args.rounds,
        fmt(&direct),
        fmt(&forwarded),
        f / d * 100.0
    ))
}
