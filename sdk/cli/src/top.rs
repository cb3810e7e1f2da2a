//! `wisp top pods|nodes|functions`: what the metrics API says is used now — CPU in
//! millicores (averaged over a second or a few) and memory — as tables, sorted.

use std::collections::BTreeMap;

use anyhow::anyhow;
use wisp_api::usage::{PodUsage, Unreachable};
use wisp_api::{Function, Pod};

use crate::cli::{Global, TopArgs, TopCommand, TopSort};
use crate::output::{printable, table};
use crate::resources::{client, describe_error, say};

/// `1.5Gi`, `12Mi`, `900Ki`.
fn bytes(n: u64) -> String {
    const KI: u64 = 1024;
    match n {
        n if n >= KI * KI * KI => format!("{:.1}Gi", n as f64 / (KI * KI * KI) as f64),
        n if n >= KI * KI => format!("{}Mi", n / (KI * KI)),
        n => format!("{}Ki", n.div_ceil(KI)),
    }
}

fn cpu(m: u64) -> String {
    format!("{m}m")
}

fn warn_unreachable(unreachable: &[Unreachable]) {
    for u in unreachable {
        #[allow(clippy::print_stderr)]
        {
            if u.node.is_empty() {
                eprintln!("warning: {}; its pods are left out", printable(&u.reason));
            } else {
                eprintln!(
                    "warning: node {} left out: {}",
                    printable(&u.node),
                    printable(&u.reason)
                );
            }
        }
    }
}

/// The pods' usage (of `namespace`, or all), saying which nodes were left out.
async fn pod_usage(client: &wisp_client::Client, namespace: Option<&str>) -> anyhow::Result<Vec<PodUsage>> {
    let list = client
        .pod_usage(namespace)
        .await
        .map_err(|e| anyhow!(describe_error(&e)))?;
    warn_unreachable(&list.unreachable);
    Ok(list.items)
}

/// Sorts rows of (name, cpu millicores, memory bytes, …).
fn sort<T>(rows: &mut [(String, u64, u64, T)], by: TopSort) {
    match by {
        TopSort::Cpu => rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))),
        TopSort::Memory => rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0))),
        TopSort::Name => rows.sort_by(|a, b| a.0.cmp(&b.0)),
    }
}

fn namespace(args: &TopArgs) -> Option<String> {
    (!args.all_namespaces).then(|| args.namespace.clone().unwrap_or_else(|| "default".into()))
}

pub async fn run(global: &Global, command: TopCommand) -> anyhow::Result<()> {
    let client = client(global)?;
    match command {
        TopCommand::Nodes(args) => {
            let list = client
                .node_usage()
                .await
                .map_err(|e| anyhow!(describe_error(&e)))?;
            warn_unreachable(&list.unreachable);
            let mut rows: Vec<(String, u64, u64, (u64, u64))> = list
                .items
                .iter()
                .map(|n| {
                    (
                        n.name.clone(),
                        n.cpu_millicores,
                        n.memory_bytes,
                        (n.cpu_capacity_millicores, n.memory_capacity_bytes),
                    )
                })
                .collect();
            sort(&mut rows, args.sort_by);
            let pct = |a: u64, b: u64| a.saturating_mul(100).checked_div(b).unwrap_or(0);
            let rows = rows
                .into_iter()
                .map(|(name, c, m, (cc, mc))| {
                    vec![
                        name,
                        cpu(c),
                        format!("{}%", pct(c, cc)),
                        bytes(m),
                        format!("{}%", pct(m, mc)),
                    ]
                })
                .collect();
            say(&table(&["NAME", "CPU", "CPU%", "MEMORY", "MEMORY%"], rows));
        }
        TopCommand::Pods(args) => {
            let ns = namespace(&args);
            let list = pod_usage(&client, ns.as_deref()).await?;
            if list.is_empty() {
                say("No pod is running.");
                return Ok(());
            }
            let with_ns = ns.is_none();
            let mut headers = Vec::new();
            if with_ns {
                headers.push("NAMESPACE");
            }
            headers.push("NAME");
            if args.containers {
                headers.push("CONTAINER");
            }
            headers.extend(["CPU", "MEMORY", "NODE"]);
            let mut rows: Vec<(String, u64, u64, Vec<String>)> = Vec::new();
            for p in &list {
                let lines: Vec<(Option<String>, u64, u64)> = if args.containers {
                    p.containers
                        .iter()
                        .map(|c| (Some(printable(&c.name)), c.cpu_millicores, c.memory_bytes))
                        .collect()
                } else {
                    vec![(None, p.cpu_millicores(), p.memory_bytes())]
                };
                for (container, c, m) in lines {
                    let mut cells = Vec::new();
                    if with_ns {
                        cells.push(p.namespace.clone());
                    }
                    cells.push(p.name.clone());
                    if let Some(container) = container {
                        cells.push(container);
                    }
                    cells.extend([cpu(c), bytes(m), p.node.clone()]);
                    rows.push((format!("{}/{}", p.namespace, p.name), c, m, cells));
                }
            }
            sort(&mut rows, args.sort_by);
            say(&table(&headers, rows.into_iter().map(|r| r.3).collect()));
        }
        TopCommand::Functions(args) => {
            let ns = namespace(&args);
            let list = pod_usage(&client, ns.as_deref()).await?;
            let pods = client
                .api::<Pod>(ns.as_deref())
                .list(&wisp_client::ListParams {
                    label_selector: Some(wisp_api::FUNCTION_LABEL.to_owned()),
                    field_selector: None,
                })
                .await
                .map_err(|e| anyhow!(describe_error(&e)))?;
            let functions = client
                .api::<Function>(ns.as_deref())
                .list(&wisp_client::ListParams::default())
                .await
                .map_err(|e| anyhow!(describe_error(&e)))?;
            let rows = function_rows(&functions.items, &pods.items, &list);
            let mut rows: Vec<(String, u64, u64, Vec<String>)> = rows
                .into_iter()
                .map(|((fns, name), (c, m, n))| {
                    let mut cells = Vec::new();
                    if ns.is_none() {
                        cells.push(fns.clone());
                    }
                    cells.extend([name.clone(), n.to_string(), cpu(c), bytes(m)]);
                    (format!("{fns}/{name}"), c, m, cells)
                })
                .collect();
            if rows.is_empty() {
                say("No Function found.");
                return Ok(());
            }
            sort(&mut rows, args.sort_by);
            let mut headers = Vec::new();
            if ns.is_none() {
                headers.push("NAMESPACE");
            }
            headers.extend(["NAME", "PODS", "CPU", "MEMORY"]);
            say(&table(&headers, rows.into_iter().map(|r| r.3).collect()));
        }
    }
    Ok(())
}

/// Per Function (namespace, name): its pods' CPU and memory together, and how many report.
fn function_rows(
    functions: &[Function],
    pods: &[Pod],
    usage: &[PodUsage],
) -> BTreeMap<(String, String), (u64, u64, usize)> {
    let mut rows: BTreeMap<(String, String), (u64, u64, usize)> = functions
        .iter()
        .map(|f| {
            (
                (
                    f.metadata.namespace.clone().unwrap_or_default(),
                    f.metadata.name.clone(),
                ),
                (0, 0, 0),
            )
        })
        .collect();
    for u in usage {
        let function = pods
            .iter()
            .find(|p| p.metadata.uid.as_deref() == Some(u.uid.as_str()))
            .and_then(|p| p.metadata.labels.get(wisp_api::FUNCTION_LABEL));
        if let Some(f) = function
            && let Some(row) = rows.get_mut(&(u.namespace.clone(), f.clone()))
        {
            row.0 = row.0.saturating_add(u.cpu_millicores());
            row.1 = row.1.saturating_add(u.memory_bytes());
            row.2 += 1;
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use wisp_api::usage::ContainerUsage;
    use wisp_api::{ObjectMeta, Resource};

    use super::*;

    #[test]
    fn sizes_read_like_kubectl_and_pods_add_up_per_function() {
        assert_eq!(bytes(512), "1Ki");
        assert_eq!(bytes(300 << 20), "300Mi");
        assert_eq!(bytes(3 << 29), "1.5Gi");
        let f = Function::new(ObjectMeta::namespaced("default", "hello"));
        let idle = Function::new(ObjectMeta::namespaced("default", "idle"));
        let pod = |name: &str, uid: &str| {
            let mut p = Pod::new(ObjectMeta::namespaced("default", name));
            p.metadata.uid = Some(uid.into());
            p.metadata
                .labels
                .insert(wisp_api::FUNCTION_LABEL.into(), "hello".into());
            p
        };
        let pods = [pod("hello-a", "u1"), pod("hello-b", "u2")];
        let usage = |uid: &str, cpu: u64, mem: u64| PodUsage {
            namespace: "default".into(),
            uid: uid.into(),
            containers: vec![ContainerUsage {
                cpu_millicores: cpu,
                memory_bytes: mem,
                ..ContainerUsage::default()
            }],
            ..PodUsage::default()
        };
        let rows = function_rows(
            &[f, idle],
            &pods,
            &[usage("u1", 100, 10), usage("u2", 50, 5), usage("other", 7, 7)],
        );
        assert_eq!(rows[&("default".into(), "hello".into())], (150, 15, 2));
        assert_eq!(
            rows[&("default".into(), "idle".into())],
            (0, 0, 0),
            "at zero: listed, nothing used"
        );
    }
}
