//! `docker-cold-start`: scale-from-zero of a Docker-backed Function through the whole chain
//! (ingress → activator → controllers → scheduler → agent → `docker create/start` on the real
//! engine → first HTTP answer → Endpoints → ingress releases the request), against the peer:
//! `docker run -d -p 127.0.0.1:PORT:8080` of the same image (the CLI, as a user runs it)
//! until the port answers HTTP 200. Both in the same run, interleaved one by one so the
//! machine's noise falls on both alike.
//!
//! The image is examples/container-echo's (`wisp-examples/echo:dev`, built if missing).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use wisp_api::{Container, ContainerPort, Function, ObjectMeta, Resource};
use wisp_sandbox_docker::testing;

use crate::cluster::Cluster;
use crate::progress;
use crate::report::Latencies;

#[derive(clap::Args, Debug)]
pub struct DockerColdStartArgs {
    /// Cold starts of each kind (Wisp Functions, raw `docker run`).
    #[arg(long, env = "WISP_BENCH_STARTS", default_value_t = 20)]
    pub starts: usize,
}

fn function(name: &str) -> Function {
    let mut f = Function::new(ObjectMeta::namespaced("default", name));
    f.spec.scaling.min_scale = 0;
    f.spec.scaling.max_scale = 1;
    f.spec.scaling.scale_to_zero_after = "10m".into();
    f.spec.template.spec.containers = vec![Container {
        name: "echo".into(),
        image: Some(testing::ECHO_IMAGE.into()),
        ports: vec![ContainerPort {
            container_port: 8080,
            ..ContainerPort::default()
        }],
        ..Container::default()
    }];
    f
}

/// What Wisp asks of Docker for every container, as `docker run` flags (the bench's own
/// network stands for the namespace's bridge).
const ISOLATED: &[&str] = &[
    "--network",
    "wisp-bench-isolated",
    "--init",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--pids-limit",
    "1024",
];

/// `docker run` of the image (with `flags`) until its published port answers 200; the
/// container is removed after.
async fn raw_docker_run(http: &crate::cluster::Http, flags: &[&str]) -> anyhow::Result<Duration> {
    let port = testing::free_port();
    let name = format!("wisp-bench-raw-{port}");
    let t = Instant::now();
    let out = tokio::process::Command::new("docker")
        .args(["run", "-d", "--rm", "--name", &name, "-p"])
        .arg(format!("127.0.0.1:{port}:8080"))
        .args(flags)
        .arg(testing::ECHO_IMAGE)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = t + Duration::from_secs(60);
    let took = loop {
        let req = http::Request::get(format!("http://127.0.0.1:{port}/"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        if let Ok(resp) = http.request(req).await
            && resp.status() == 200
        {
            break t.elapsed();
        }
        anyhow::ensure!(Instant::now() < deadline, "{name} did not answer in 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = tokio::process::Command::new("docker")
        .args(["rm", "-f", &name])
        .output()
        .await;
    Ok(took)
}

pub async fn run(args: &DockerColdStartArgs) -> anyhow::Result<String> {
    testing::engine().map_err(anyhow::Error::msg)?;
    testing::ensure_echo_image();
    let node = format!("bench-docker-{}", std::process::id());
    let cluster = Cluster::start(&node, Some(wisp_sandbox_docker::DockerConfig::new(node.clone()))).await?;
    let result = measure(&cluster, args).await;
    cluster.stop().await;
    testing::remove_owned(&node);
    result
}

async fn measure(cluster: &Cluster, args: &DockerColdStartArgs) -> anyhow::Result<String> {
    let functions = cluster.client.api::<Function>(Some("default"));
    let host = |name: &str| format!("{name}.default.localhost");
    progress("warm-up: one Function and one raw container (first container start, network)");
    functions.create(&function("warmup")).await?;
    cluster.wait_routed("warmup").await?;
    let (code, _, first) = cluster.get(&host("warmup")).await?;
    anyhow::ensure!(code == 200, "warm-up answered {code}");
    let _ = tokio::process::Command::new("docker")
        .args(["network", "create", "wisp-bench-isolated"])
        .output()
        .await;
    let raw_first = raw_docker_run(&cluster.http, &[]).await?;
    raw_docker_run(&cluster.http, ISOLATED).await?;

    progress(&format!("{} Functions at zero", args.starts));
    for i in 0..args.starts {
        functions.create(&function(&format!("fn-{i}"))).await?;
    }
    for i in 0..args.starts {
        cluster.wait_routed(&format!("fn-{i}")).await?;
    }
    progress("interleaved: one Function cold start, one raw docker run, one isolated docker run");
    let (mut wisp, mut raw, mut isolated) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.starts {
        let name = format!("fn-{i}");
        let (code, cold, t) = cluster.get(&host(&name)).await?;
        anyhow::ensure!(code == 200 && cold, "{name}: answered {code}, cold {cold}");
        wisp.push(t);
        raw.push(raw_docker_run(&cluster.http, &[]).await?);
        isolated.push(raw_docker_run(&cluster.http, ISOLATED).await?);
    }
    let _ = tokio::process::Command::new("docker")
        .args(["network", "rm", "wisp-bench-isolated"])
        .output()
        .await;

    let (wisp, raw, isolated) = (
        Latencies::new(wisp),
        Latencies::new(raw),
        Latencies::new(isolated),
    );
    let ms =
        |d: Option<Duration>| d.map_or_else(|| "—".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "warm-up (untimed in the table): Function {:.0} ms, raw docker run {:.0} ms\n",
        first.as_secs_f64() * 1000.0,
        raw_first.as_secs_f64() * 1000.0
    );
    let _ = writeln!(out, "| what | n | p50 | p90 | max |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    for (what, l) in [
        (
            "Wisp: request → first byte, Docker Function at zero, through the ingress",
            &wisp,
        ),
        ("raw `docker run -d -p` → port answers 200", &raw),
        (
            "raw `docker run -d -p` with Wisp's isolation (own bridge network, --init, --cap-drop ALL, no-new-privileges, --pids-limit)",
            &isolated,
        ),
    ] {
        let _ = writeln!(out, "| {what} | {} |", l.cells(&[50.0, 90.0], true, &ms));
    }
    if let (Some(a), Some(b)) = (wisp.percentile(50.0), raw.percentile(50.0)) {
        let _ = writeln!(
            out,
            "\nratio of medians, Wisp / raw docker run: {:.2}× (goal ≤ 1.2×)",
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
    if let (Some(a), Some(b)) = (wisp.percentile(50.0), isolated.percentile(50.0)) {
        let _ = writeln!(
            out,
            "ratio of medians, Wisp / docker run with the same isolation: {:.2}×",
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
    Ok(out)
}
