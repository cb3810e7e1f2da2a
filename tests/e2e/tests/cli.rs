//! The `wisp` CLI against a real server: apply (create, configure, unchanged), get in every
//! output format, describe, delete, token create, and its errors.

use wisp_e2e::{Options, Wisp};

const MANIFEST: &str = r#"
apiVersion: wisp.dev/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: hello
          wasm: sha256:0000000000000000000000000000000000000000000000000000000000000000
---
apiVersion: wisp.dev/v1
kind: ConfigMap
metadata: {name: settings, labels: {tier: config}}
data: {greeting: hi}
"#;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write manifest");
    p.display().to_string()
}

#[test]
fn apply_get_describe_delete() {
    let w = Wisp::start(Options::default()).expect("start wisp");
    let file = write(&w.dir, "app.yaml", MANIFEST);
    let (ok, out, err) = w.cli(&["apply", "-f", &file]).expect("run");
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["deployment/web created", "configmap/settings created"]
    );
    let (ok, out, _) = w.cli(&["apply", "-f", &file]).expect("run");
    assert!(ok);
    assert!(out.contains("deployment/web unchanged"), "{out}");
    let changed = MANIFEST.replace("greeting: hi", "greeting: hello");
    let file2 = write(&w.dir, "app2.yaml", &changed);
    let (ok, out, _) = w.cli(&["apply", "-f", &file2]).expect("run");
    assert!(ok && out.contains("configmap/settings configured"), "{out}");

    let (ok, out, _) = w.cli(&["get", "deploy"]).expect("run");
    assert!(ok);
    let header = out.lines().next().expect("header");
    assert!(
        header.starts_with("NAME") && header.contains("READY") && header.ends_with("AGE"),
        "{out}"
    );
    assert!(out.lines().nth(1).expect("row").starts_with("web"), "{out}");
    let (_, out, _) = w.cli(&["get", "deployments", "-o", "wide"]).expect("run");
    assert!(out.contains("app=web"), "wide shows the selector: {out}");
    let (_, out, _) = w.cli(&["get", "cm", "settings", "-o", "json"]).expect("run");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(v["data"]["greeting"], "hello");
    let (_, out, _) = w
        .cli(&["get", "configmap", "settings", "-o", "yaml"])
        .expect("run");
    assert!(
        out.contains("greeting: hello") && out.contains("resourceVersion"),
        "{out}"
    );
    let (_, out, _) = w
        .cli(&["get", "ConfigMap", "-l", "tier=config", "-o", "name"])
        .expect("run");
    assert_eq!(out.trim(), "configmap/settings");
    let (_, out, _) = w.cli(&["get", "cm", "-l", "tier=nothing"]).expect("run");
    assert!(out.trim().is_empty());
    let (_, out, _) = w.cli(&["get", "ns", "-A"]).expect("run");
    assert!(out.contains("default"), "{out}");
    let (ok, out, _) = w.cli(&["describe", "deployment", "web"]).expect("run");
    assert!(
        ok && out.contains("Name:         web") && out.contains("Spec:"),
        "{out}"
    );

    let (ok, out, _) = w.cli(&["delete", "-f", &file]).expect("run");
    assert!(ok, "{out}");
    assert!(out.contains("deployment/web deleted") && out.contains("configmap/settings deleted"));
    let (ok, _, err) = w.cli(&["get", "deploy", "web"]).expect("run");
    assert!(!ok && err.contains("not found"), "{err}");
}

#[test]
fn errors_name_what_is_wrong() {
    let w = Wisp::start(Options::default()).expect("start wisp");
    // Malformed YAML: the file is named, nothing is sent.
    let bad = write(
        &w.dir,
        "bad.yaml",
        "kind: ConfigMap\nmetadata: {name: [unclosed\n",
    );
    let (ok, _, err) = w.cli(&["apply", "-f", &bad]).expect("run");
    assert!(!ok);
    assert!(err.contains("bad.yaml") && err.contains("invalid YAML"), "{err}");
    assert!(err.contains("line"), "YAML errors carry a line: {err}");
    // Malformed JSON.
    let bad = write(&w.dir, "bad.json", "{\"kind\": ");
    let (ok, _, err) = w.cli(&["apply", "-f", &bad]).expect("run");
    assert!(
        !ok && err.contains("bad.json") && err.contains("invalid JSON"),
        "{err}"
    );
    // Unknown kind, unknown field, invalid name: each says what and where.
    let doc = write(
        &w.dir,
        "kinds.yaml",
        "apiVersion: wisp.dev/v1\nkind: Frob\nmetadata: {name: x}\n",
    );
    let (ok, _, err) = w.cli(&["apply", "-f", &doc]).expect("run");
    assert!(
        !ok && err.contains("unknown kind \"Frob\"") && err.contains("document 1"),
        "{err}"
    );
    let doc = write(
        &w.dir,
        "field.yaml",
        "apiVersion: wisp.dev/v1\nkind: ConfigMap\nmetadata: {name: ok}\ndata: {a: b}\n---\napiVersion: wisp.dev/v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\ndatta: {}\n",
    );
    let (ok, out, err) = w.cli(&["apply", "-f", &doc]).expect("run");
    assert!(!ok, "one failed document fails the command");
    assert!(
        out.contains("configmap/ok created"),
        "the good document is still applied: {out}"
    );
    assert!(err.contains("document 2") && err.contains("datta"), "{err}");
    let (ok, _, err) = w.cli(&["get", "frobs"]).expect("run");
    assert!(!ok && err.contains("unknown kind"), "{err}");
    // A namespace token cannot leave its namespace.
    let (ok, token, _) = w
        .cli(&["token", "create", "--namespace", "default"])
        .expect("run");
    assert!(ok && token.trim().starts_with("wisp_"));
    let (ok, _, err) = w.cli(&["--token", token.trim(), "get", "nodes"]).expect("run");
    assert!(!ok && err.contains("confined to namespace"), "{err}");
    // Tokens are listed (never shown again) and revoked by id; one may expire.
    let (ok, _, err) = w
        .cli(&["token", "create", "--namespace", "default", "--ttl", "bogus"])
        .expect("run");
    assert!(!ok && err.contains("--ttl"), "{err}");
    let (ok, out, _) = w.cli(&["token", "list"]).expect("run");
    assert!(
        ok && out.contains("ID") && out.contains("namespace") && out.contains("admin"),
        "{out}"
    );
    assert!(!out.contains(token.trim()), "the list never shows a token");
    let id = out
        .lines()
        .find(|l| l.contains("namespace") && l.contains("default"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the namespace token's id")
        .to_owned();
    let (ok, out, err) = w.cli(&["token", "revoke", &id]).expect("run");
    assert!(ok && out.contains("revoked"), "{out}{err}");
    let (ok, _, err) = w.cli(&["--token", token.trim(), "get", "pods"]).expect("run");
    assert!(
        !ok && err.contains("invalid bearer token"),
        "a revoked token: {err}"
    );
    // `wisp node` acts with a node credential only, never the admin's.
    let (ok, _, err) = w
        .cli(&["node", "--node-name", "n1", "--docker", "false"])
        .expect("run");
    assert!(!ok && err.contains("node credential"), "{err}");
    // Lists are read in pages: a page smaller than the list still shows all of it.
    for i in 0..5 {
        let doc = write(
            &w.dir,
            &format!("page-{i}.yaml"),
            &format!("apiVersion: wisp.dev/v1\nkind: ConfigMap\nmetadata: {{name: page-{i}}}\n"),
        );
        assert!(w.cli(&["apply", "-f", &doc]).expect("run").0);
    }
    let (ok, out, _) = w
        .cli(&["get", "configmaps", "--chunk-size", "2", "-o", "name"])
        .expect("run");
    assert!(ok && (0..5).all(|i| out.contains(&format!("page-{i}"))), "{out}");
    // No config at all: a clear pointer to `wisp up`.
    let out = std::process::Command::new(wisp_e2e::wisp_bin().expect("bin"))
        .args(["get", "pods"])
        .env("WISP_CONFIG", w.dir.join("missing-config"))
        .env_remove("WISP_SERVER")
        .env_remove("WISP_TOKEN")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wisp up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_survives_restarts_and_a_lost_config_is_recovered() {
    let mut w = Wisp::start(Options::default()).expect("start wisp");
    let first = w.token.clone();
    w.restart().expect("restart");
    assert_eq!(w.token, first, "a restart keeps the admin token");
    let kinds = wisp_api::kind_by_plural("namespaces").expect("kind");
    w.client()
        .get_dyn(kinds, None, "default")
        .await
        .expect("old token still works");
    // Regression: losing ~/.wisp/config after the first start locked the admin out for good.
    std::fs::remove_file(w.config_path()).expect("remove config");
    w.restart().expect("restart without a config");
    assert_ne!(w.token, first, "a new admin token was issued");
    w.client()
        .get_dyn(kinds, None, "default")
        .await
        .expect("the new token works");
}

/// `wisp server` runs the controllers: an applied Deployment gets its ReplicaSet and pods,
/// and `wisp rollout history|undo|status` work on it. (Pods stay Pending: no scheduler and
/// node agent run yet, so `rollout status` times out, which is checked too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_and_undo_through_the_cli() {
    let w = Wisp::start(Options::default()).expect("start wisp");
    let file = write(&w.dir, "app.yaml", MANIFEST);
    assert!(w.cli(&["apply", "-f", &file]).expect("run").0);
    let c = w.client();
    let rss = c.api::<wisp_api::ReplicaSet>(Some("default"));
    let pods = c.api::<wisp_api::Pod>(Some("default"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pods.list(&Default::default()).await.expect("list").items.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the controllers created the pods"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (ok, out, _) = w.cli(&["rollout", "history", "deployment/web"]).expect("run");
    assert!(ok && out.lines().count() == 2, "one revision: {out}");
    // A new template: a second ReplicaSet (revision 2).
    let v2 = MANIFEST.replace(&"0".repeat(64), &"1".repeat(64));
    assert!(
        w.cli(&["apply", "-f", &write(&w.dir, "v2.yaml", &v2)])
            .expect("run")
            .0
    );
    while rss.list(&Default::default()).await.expect("list").items.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "a second ReplicaSet for the new template"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (ok, out, err) = w.cli(&["rollout", "undo", "deployment", "web"]).expect("run");
    assert!(ok, "{err}");
    assert!(out.contains("rolled back to revision 1"), "{out}");
    // The first ReplicaSet is reused and becomes revision 3.
    let mut reused = false;
    while std::time::Instant::now() < deadline {
        let sets = rss.list(&Default::default()).await.expect("list").items;
        if sets.len() == 2
            && sets.iter().any(|rs| {
                rs.metadata
                    .annotations
                    .get("deployment.wisp.dev/revision")
                    .map(String::as_str)
                    == Some("3")
                    && rs.spec.template.spec.containers[0]
                        .wasm
                        .as_deref()
                        .is_some_and(|w| w.ends_with(&"0".repeat(64)))
            })
        {
            reused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reused, "undo reused the first ReplicaSet as revision 3");
    let (ok, out, err) = w
        .cli(&["rollout", "status", "deployment/web", "--timeout", "1"])
        .expect("run");
    assert!(
        !ok && err.contains("did not finish"),
        "pods cannot become ready yet: {out} {err}"
    );
    let (ok, _, err) = w.cli(&["rollout", "undo", "configmap/settings"]).expect("run");
    assert!(!ok && err.contains("deployments"), "{err}");
}

/// `wisp context list|use|set` over the config file `wisp` reads, and `wisp completion`.
#[test]
fn contexts_switch_servers_and_completion_scripts_print() {
    let w = Wisp::start(Options::default()).expect("start wisp");
    // Without WISP_SERVER, so that the config file's current context decides.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(wisp_e2e::wisp_bin().expect("wisp"))
            .args(args)
            .env("WISP_CONFIG", w.config_path())
            .env_remove("WISP_SERVER")
            .env_remove("WISP_TOKEN")
            .output()
            .expect("run wisp");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["context", "list"]);
    assert!(
        ok && out.starts_with("* local") && out.contains(&w.url),
        "{out}{err}"
    );
    // A new context needs its own token: it never inherits another cluster's.
    let (ok, _, err) = cli(&[
        "context",
        "set",
        "elsewhere",
        "--context-server",
        "http://127.0.0.1:9",
    ]);
    assert!(!ok && err.contains("needs --context-token"), "{err}");
    let (ok, _, err) = cli(&[
        "context",
        "set",
        "elsewhere",
        "--context-server",
        "http://127.0.0.1:9",
        "--context-token",
        "t",
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&["context", "use", "elsewhere"]);
    assert!(ok && out.contains("current context: elsewhere"), "{out}");
    let (ok, _, err) = cli(&["get", "pods"]);
    assert!(
        !ok && err.contains("http://127.0.0.1:9"),
        "the current context's server: {err}"
    );
    let (ok, _, err) = cli(&["context", "use", "nope"]);
    assert!(!ok && err.contains("elsewhere, local"), "{err}");
    let (ok, _, err) = cli(&["context", "use", "local"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["get", "pods"]);
    assert!(ok, "back on the local cluster: {err}");

    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = cli(&["completion", shell]);
        assert!(
            ok && out.contains("deploy") && out.contains("rollout"),
            "{shell}: {err}"
        );
    }
}

/// `--log-format json`: every line `wisp up` logs is one JSON object with its timestamp,
/// level, target and message, for a log pipeline; `text` stays the default.
#[test]
fn log_lines_are_json_objects_with_log_format_json() -> anyhow::Result<()> {
    use std::io::{BufRead, Read};
    let tmp = tempfile::tempdir()?;
    let mut child = std::process::Command::new(wisp_e2e::wisp_bin()?)
        .args(["up", "--log-format", "json", "--docker", "false"])
        .args(["--listen", "127.0.0.1:0", "--ingress-listen", "127.0.0.1:0"])
        .args(["--ingress-tls-listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("WISP_CONFIG", tmp.path().join("config"))
        .env("WISP_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Up once it prints where it listens; the reader then goes away (`wisp up | head -1`),
    // which must not stop it; a second later it is stopped.
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first)?;
    assert!(first.contains("https://"), "{first:?}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        child.try_wait()?.is_none(),
        "wisp up stopped when its stdout's reader went away"
    );
    let _ = child.kill();
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr)?;
    let _ = child.wait();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "wisp up logged nothing at info");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not JSON ({e}): {line}"))?;
        for key in ["timestamp", "level", "target"] {
            assert!(v.get(key).is_some_and(|k| k.is_string()), "no {key}: {line}");
        }
        assert!(v["fields"].is_object(), "no fields: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("admin token written")),
        "the first start's message is among them: {stderr}"
    );
    Ok(())
}
