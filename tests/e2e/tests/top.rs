//! `wisp top` against what the OS says, through `wisp up` with Docker: a container that keeps
//! a core busy shows the CPU the kernel charges its control group, and a Wasm Function under
//! requests that allocate and hold memory shows its memory rise by what the server process's
//! resident memory rose (`/proc/<pid>/status`), each within 25 %. `top nodes` and
//! `top functions` show the node and the Function.

#![allow(clippy::print_stderr)] // the test reports what it compares

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wisp_api::{Container, Function, Node, ObjectMeta, Pod, Resource};
use wisp_e2e::{Options, Wisp, until};
use wisp_sandbox_docker::testing::{self, Cleanup};

/// CPU time, in nanoseconds, the kernel has charged to the control group of process `pid`
/// (a container's: its init and its program alike): `cpuacct.usage` on cgroup v1,
/// `usage_usec` of `cpu.stat` on v2.
fn cgroup_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if controllers.split(',').any(|c| c == "cpuacct") {
            for dir in ["cpu,cpuacct", "cpuacct"] {
                let file = format!("/sys/fs/cgroup/{dir}{path}/cpuacct.usage");
                if let Ok(text) = std::fs::read_to_string(&file) {
                    return Ok(text.trim().parse()?);
                }
            }
        }
    }
    let path = groups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cpuacct or unified cgroup")?;
    let stat = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.stat"))?;
    let usec: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .context("usage_usec")?
        .trim()
        .parse()?;
    Ok(usec * 1000)
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS kB")?
        .parse::<u64>()?
        * 1024)
}

/// `123m` → 123; `64Mi` → bytes.
fn quantity(s: &str) -> anyhow::Result<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = n.parse().with_context(|| format!("{s:?}"))?;
    let scale = match unit {
        "m" | "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        other => anyhow::bail!("unit {other:?} in {s:?}"),
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((n * scale) as u64)
}

/// (CPU millicores, memory bytes) of pod `name` in `wisp top pods` (namespace default).
fn top_pod(w: &Wisp, name: &str) -> anyhow::Result<(u64, u64, String)> {
    let (ok, out, err) = w.cli(&["top", "pods"])?;
    anyhow::ensure!(ok, "wisp top pods: {err}");
    let row = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))
        .with_context(|| format!("pod {name} in `wisp top pods`:\n{out}"))?;
    Ok((quantity(row[1])?, quantity(row[2])?, out))
}

fn within(measured: u64, os: u64, share: f64) -> bool {
    #[allow(clippy::cast_precision_loss)]
    let (m, o) = (measured as f64, os as f64);
    (m - o).abs() <= o * share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_containers_cpu_and_a_wasm_pods_memory_as_the_os_does() -> anyhow::Result<()> {
    if !testing::available("e2e top") {
        return Ok(());
    }
    testing::ensure_echo_image();
    let node = testing::unique_owner("e2e-top");
    let _cleanup = Cleanup::new(&node);
    let w = Wisp::start(Options {
        command: Some("up".into()),
        node_name: Some(node.clone()),
        docker: true,
        ..Options::default()
    })?;
    let client = w.client();
    wisp_e2e::docker_node_ready(&client, &node).await?;
    let pods = client.api::<Pod>(Some("default"));

    // A container that keeps one core busy.
    let mut spin = Pod::new(ObjectMeta::namespaced("default", "spin"));
    spin.spec.containers = vec![Container {
        name: "main".into(),
        image: Some(testing::ECHO_IMAGE.into()),
        args: vec!["spin".into()],
        ..Container::default()
    }];
    pods.create(&spin).await?;
    until("the spinning container running", 60, async || {
        Ok(pods.get("spin").await?.is_ready())
    })
    .await?;
    let out = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter", "label=wisp.dev/pod=spin"])
        .args(["--filter", &format!("label=wisp.dev/owner={node}")])
        .output()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", &id])
        .output()?;
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("the pid of container {id:?}"))?;
    // The OS's figure over the span `wisp top` measures within.
    let (t0, cpu0) = (Instant::now(), cgroup_cpu_ns(pid)?);
    let (top_cpu, _, table) = top_pod(&w, "spin")?;
    let (elapsed, cpu1) = (t0.elapsed(), cgroup_cpu_ns(pid)?);
    let os_cpu = (cpu1 - cpu0) / u64::try_from(elapsed.as_micros().max(1))?;
    eprintln!("wisp top pods:\n{table}");
    eprintln!("spinning container: wisp top {top_cpu}m, the OS {os_cpu}m (its cgroup over {elapsed:?})");
    assert!(os_cpu > 300, "the container spins: {os_cpu}m");
    assert!(
        within(top_cpu, os_cpu, 0.25),
        "CPU {top_cpu}m vs the OS's {os_cpu}m"
    );
    pods.delete("spin").await?;

    // A Wasm Function whose requests allocate 32 MiB each and hold it for a few seconds.
    let digest = client
        .put_blob(Bytes::from(std::fs::read(wisp_e2e::guest("fault")?)?))
        .await?;
    let mut f = Function::new(ObjectMeta::namespaced("default", "alloc"));
    f.spec.template.spec.containers = vec![Container {
        name: "main".into(),
        wasm: Some(digest),
        ..Container::default()
    }];
    client.api::<Function>(Some("default")).create(&f).await?;
    let ingress = wisp_e2e::node_ingress(&client, &node).await?;
    let http = wisp_e2e::http_client();
    let get = |path: &str| {
        let req = http::Request::get(format!("{ingress}{path}"))
            .header(http::header::HOST, "alloc.default.localhost")
            .body(Empty::<Bytes>::new());
        let http = http.clone();
        async move {
            let resp = http.request(req?).await?;
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((code, String::from_utf8_lossy(&body).into_owned()))
        }
    };
    until("the function answering", 60, async || {
        Ok(get("/alloc?mb=1").await?.0 == 200)
    })
    .await?;
    // The ingress may answer before the pod's Ready status reaches the API.
    let mut name = String::new();
    until("the function's pod ready", 30, async || {
        let ready = pods
            .list(&wisp_client::ListParams {
                label_selector: Some("wisp.dev/function=alloc".into()),
                field_selector: None,
            })
            .await?
            .items
            .into_iter()
            .find(|p| p.is_ready());
        Ok(ready.map(|p| name = p.metadata.name).is_some())
    })
    .await?;
    let server = w.pid().context("the server's pid")?;
    // The metrics API answers from a gathering of the last 2 s: the new pod shows soon.
    let mut idle = 0;
    until("the function's pod in `wisp top pods`", 30, async || {
        Ok(top_pod(&w, &name).map(|(_, m, _)| idle = m).is_ok())
    })
    .await?;
    let before = rss(server)?;
    let load: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get("/alloc?mb=64&hold_ms=6000")))
        .collect();
    // Past the API's 2 s gathering that saw the pod idle.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = rss(server)?;
    let (_, held, _) = top_pod(&w, &name)?;
    let after = rss(server)?;
    let os_rise = (during + after) / 2 - before;
    let rise = held.saturating_sub(idle);
    eprintln!(
        "wasm pod under 4 requests holding 64 MiB: wisp top {} MiB (idle {} MiB), the server's RSS rose {} MiB",
        held >> 20,
        idle >> 20,
        os_rise >> 20
    );
    assert!(rise >= 200 << 20, "memory rose under the load: {idle} → {held}");
    assert!(
        within(rise, os_rise, 0.25),
        "memory rise {rise} vs the OS's {os_rise}"
    );
    for l in load {
        let (code, body) = l.await??;
        assert_eq!((code, body.as_str()), (200, "allocated 64 MiB"));
    }

    let (ok, nodes, err) = w.cli(&["top", "nodes"])?;
    assert!(ok && nodes.contains(&node) && nodes.contains('%'), "{nodes}{err}");
    let (ok, functions, err) = w.cli(&["top", "functions"])?;
    anyhow::ensure!(ok, "wisp top functions: {err}");
    eprintln!("wisp top nodes:\n{nodes}\nwisp top functions:\n{functions}");
    let row = functions
        .lines()
        .find(|l| l.starts_with("alloc "))
        .with_context(|| format!("alloc in:\n{functions}{err}"))?;
    assert_eq!(row.split_whitespace().nth(1), Some("1"), "one pod: {row}");
    Ok(())
}

/// A tenant reads its own namespace's usage only, and no node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_the_usage_of_its_namespace_only() -> anyhow::Result<()> {
    let w = Wisp::start(Options {
        command: Some("up".into()),
        ..Options::default()
    })?;
    let client = w.client();
    client
        .api::<wisp_api::Namespace>(None)
        .create(&wisp_api::Namespace::new(ObjectMeta::named("team-b")))
        .await?;
    let tenant = w.client_as(&client.create_token("team-b").await?);
    // A pod in each namespace.
    let digest = client
        .put_blob(Bytes::from(std::fs::read(wisp_e2e::guest("fault")?)?))
        .await?;
    for ns in ["team-b", "default"] {
        let mut p = Pod::new(ObjectMeta::namespaced(ns, "web"));
        p.spec.containers = vec![Container {
            name: "main".into(),
            wasm: Some(digest.clone()),
            ..Container::default()
        }];
        client.api::<Pod>(Some(ns)).create(&p).await?;
    }
    until("both pods in the usage", 30, async || {
        Ok(client.pod_usage(None).await?.items.len() == 2)
    })
    .await?;
    let own = tenant.pod_usage(Some("team-b")).await?;
    assert_eq!(
        own.items.iter().map(|p| p.namespace.as_str()).collect::<Vec<_>>(),
        ["team-b"],
        "{own:?}"
    );
    for (what, code) in [
        (
            "another namespace",
            tenant
                .pod_usage(Some("default"))
                .await
                .err()
                .and_then(|e| e.code()),
        ),
        (
            "all namespaces",
            tenant.pod_usage(None).await.err().and_then(|e| e.code()),
        ),
        (
            "the nodes",
            tenant.node_usage().await.err().and_then(|e| e.code()),
        ),
    ] {
        assert_eq!(code, Some(403), "a tenant reading the usage of {what}");
    }
    // Without a token, or with a node's credential: refused too.
    let anonymous = w.client_as("");
    assert_eq!(
        anonymous
            .pod_usage(Some("team-b"))
            .await
            .err()
            .and_then(|e| e.code()),
        Some(401),
        "no token"
    );
    let node_token = client
        .issue_token(&wisp_client::TokenRequest {
            node: Some("intruder".into()),
            ..wisp_client::TokenRequest::default()
        })
        .await?
        .token;
    let as_node = w.client_as(&node_token);
    for code in [
        as_node
            .pod_usage(Some("default"))
            .await
            .err()
            .and_then(|e| e.code()),
        as_node.pod_usage(None).await.err().and_then(|e| e.code()),
        as_node.node_usage().await.err().and_then(|e| e.code()),
    ] {
        assert_eq!(code, Some(403), "a node credential reading the metrics API");
    }
    // The node's own port answers the metrics API's ticket, never a tenant's or a node's.
    let nodes = client.node_usage().await?;
    assert_eq!(nodes.items.len(), 1, "{nodes:?}");
    let node = client.api::<Node>(None).get(&nodes.items[0].name).await?;
    let (addr, ca) = wisp_client::node_port(&node).map_err(anyhow::Error::msg)?;
    let connector = wisp_client::node_connector(ca)?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<Bytes>>(connector);
    for token in [client.create_token("team-b").await?, node_token, String::new()] {
        let req = http::Request::get(format!("https://{addr}/.wisp/usage"))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::new())?;
        let code = http.request(req).await?.status().as_u16();
        assert!(
            matches!(code, 401 | 403),
            "a node's usage to a tenant's, a node's or no token: {code}"
        );
    }
    Ok(())
}
