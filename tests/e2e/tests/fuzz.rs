//! Schema-driven fuzzing of the API with schemathesis (tests/fuzz/README.md): against the real
//! `wisp up`, one time-bounded run with the admin token and one with a token of namespace
//! team-a, each generating requests from `GET /openapi/v3`. Every response must pass
//! schemathesis' `not_a_server_error` and `ignored_auth` (every operation answers 401 without
//! a token or with a wrong one) and the checks of tests/fuzz/hooks.py: every 4xx is a
//! `Status` whose `code` is the HTTP status, and the team-a token never gets a 2xx outside
//! team-a (other namespaces, cluster-scoped kinds, tokens, status and controller- or
//! admin-owned writes, blobs it did not upload) nor an object of another namespace.
//!
//! `WISP_SCHEMATHESIS` is the `st` executable (tests/run.sh installs schemathesis in a venv).
//! Without it the test fails under `CI` and is skipped elsewhere. `WISP_FUZZ_SEED` replays a
//! run's seed; `WISP_FUZZ_SECONDS` sets each run's time budget (default 75).

#![allow(clippy::print_stderr)] // the test reports its seed and schemathesis' summary

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use serde_json::json;
use wisp_client::Client;
use wisp_e2e::{Options, Wisp};

/// The schemathesis release the hooks are written against (tests/run.sh pins it).
const SCHEMATHESIS_MAJOR: &str = "4.";
const CHECKS: &str = "not_a_server_error,ignored_auth,wisp_status_body,wisp_tenancy";
/// Objects of this name exist in every namespace the runs aim at.
const PROBE: &str = "fuzz-probe";

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The `st` executable, or `None` (after a notice) when the test is to be skipped.
fn schemathesis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WISP_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    let how = "set WISP_SCHEMATHESIS to the `st` of schemathesis 4.x, e.g. \
               `python3 -m venv target/fuzz-venv && target/fuzz-venv/bin/pip install schemathesis==4.32.5 && \
               export WISP_SCHEMATHESIS=$PWD/target/fuzz-venv/bin/st` (tests/run.sh does this)";
    wisp_testkit::required("fuzz", Err(format!("WISP_SCHEMATHESIS is not set: {how}")))
}

/// `wisp up` flags lifting the per-token request rate, when this binary has them: at the
/// default 50/s most of the tenant run would be 429s.
fn rate_args() -> anyhow::Result<Vec<String>> {
    let help = Command::new(wisp_e2e::wisp_bin()?)
        .args(["up", "--help"])
        .output()?;
    if String::from_utf8_lossy(&help.stdout).contains("--tenant-qps") {
        Ok(["--tenant-qps", "100000", "--tenant-burst", "100000"]
            .map(str::to_owned)
            .to_vec())
    } else {
        Ok(Vec::new())
    }
}

async fn post(c: &Client, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
    c.raw(Method::POST, path, Some(Bytes::from(body.to_string())))
        .await
        .with_context(|| format!("POST {path}"))?;
    Ok(())
}

/// A token confined to `ns`, from the bare API (only `token` read from the answer).
async fn mint(admin: &Client, ns: &str) -> anyhow::Result<String> {
    let body = json!({ "namespace": ns }).to_string();
    let resp = admin
        .raw(Method::POST, "/apis/wisp.dev/v1/tokens", Some(Bytes::from(body)))
        .await
        .context("POST /apis/wisp.dev/v1/tokens")?;
    let bytes = resp.into_body().collect().await?.to_bytes();
    let issued: serde_json::Value = serde_json::from_slice(&bytes)?;
    issued["token"]
        .as_str()
        .map(str::to_owned)
        .context("no token in the answer to POST /apis/wisp.dev/v1/tokens")
}

/// What the runs need in place: team-a and team-b, a ConfigMap and a Secret named
/// [`PROBE`] in default, team-a and team-b (so that reads and writes aimed at other
/// namespaces find something to leak), blobs uploaded by the admin and by team-b, and one by
/// team-a that its generated pods run. Returns (team-a token, foreign digests, team-a's digest).
async fn prepare(w: &Wisp) -> anyhow::Result<(String, Vec<String>, String)> {
    let admin = w.client();
    for ns in ["team-a", "team-b"] {
        post(
            &admin,
            "/apis/wisp.dev/v1/namespaces",
            json!({"apiVersion": "wisp.dev/v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
    }
    let team_a = mint(&admin, "team-a").await?;
    let team_b = admin.with_token(&mint(&admin, "team-b").await?);
    for ns in ["default", "team-a", "team-b"] {
        post(
            &admin,
            &format!("/apis/wisp.dev/v1/namespaces/{ns}/configmaps"),
            json!({"apiVersion": "wisp.dev/v1", "kind": "ConfigMap", "metadata": {"name": PROBE}, "data": {"owner": ns}}),
        )
        .await?;
        post(
            &admin,
            &format!("/apis/wisp.dev/v1/namespaces/{ns}/secrets"),
            json!({"apiVersion": "wisp.dev/v1", "kind": "Secret", "metadata": {"name": PROBE}, "stringData": {"secret": format!("of {ns}")}}),
        )
        .await?;
    }
    let foreign = vec![
        admin
            .put_blob(Bytes::from_static(b"wisp-fuzz: uploaded by the admin\n"))
            .await?,
        team_b
            .put_blob(Bytes::from_static(b"wisp-fuzz: uploaded by team-b\n"))
            .await?,
    ];
    let own = admin
        .with_token(&team_a)
        .put_blob(Bytes::from_static(b"wisp-fuzz: uploaded by team-a\n"))
        .await?;
    Ok((team_a, foreign, own))
}

/// One schemathesis run.
struct Run<'a> {
    label: &'a str,
    token: &'a str,
    /// `Some(ns)`: the token is confined to `ns`.
    namespace: Option<&'a str>,
    digests: Vec<String>,
    uploaded: Vec<String>,
}

/// Runs `st`; `Err` carries what to print.
fn fuzz(st: &Path, w: &Wisp, run: &Run<'_>, seed: u64, seconds: u64) -> anyhow::Result<()> {
    let url = &w.url;
    let dir = tempfile::Builder::new()
        .prefix(&format!("wisp-fuzz-{}-", run.label))
        .tempdir()?;
    let out_path = dir.path().join("st.out");
    let out = File::create(&out_path)?;
    let mut cmd = Command::new(st);
    cmd.arg("--config-file")
        .arg(fuzz_dir().join("schemathesis.toml"))
        .args(["run", &format!("{url}/openapi/v3")])
        .args(["--checks", CHECKS])
        .args(["--max-time", &seconds.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--workers", "2", "--no-color"])
        .args(["--report", "junit,ndjson", "--report-dir"])
        .arg(dir.path().join("report"))
        // schemathesis and hypothesis keep state in the working directory: not in the repo.
        .current_dir(dir.path())
        .env("SCHEMATHESIS_HOOKS", fuzz_dir().join("hooks.py"))
        .env("WISP_FUZZ_TOKEN", run.token)
        .env("WISP_FUZZ_NAMESPACES", "default,team-a,team-b")
        .env("WISP_FUZZ_NAMES", PROBE)
        .env("WISP_FUZZ_DIGESTS", run.digests.join(","))
        .env("WISP_FUZZ_UPLOADED", run.uploaded.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out));
    match run.namespace {
        Some(ns) => cmd.env("WISP_FUZZ_NAMESPACE", ns),
        None => cmd.env_remove("WISP_FUZZ_NAMESPACE"),
    };
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", st.display()))?;
    // --max-time bounds generation; this bounds everything else (schema load, a stuck request).
    let deadline = Duration::from_secs(seconds + 90);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let summary = text
        .rfind("SUMMARY")
        .map_or(text.as_str(), |i| &text[text[..i].rfind('\n').unwrap_or(i)..]);
    // Without its "Reports:" block: the directory goes unless the run fails.
    let mut shown = String::new();
    let mut in_reports = false;
    for line in summary.trim().lines() {
        in_reports = if in_reports {
            !line.trim().is_empty()
        } else {
            line.starts_with("Reports:")
        };
        if !in_reports {
            shown.push_str(line);
            shown.push('\n');
        }
    }
    eprintln!(
        "== schemathesis, {} run ({:.0} s):\n{shown}",
        run.label,
        started.elapsed().as_secs_f64()
    );
    match status {
        Some(s) if s.success() => Ok(()),
        other => {
            // Keep the reports (JUnit, NDJSON with every request and response) for a look.
            let kept = dir.keep();
            let why = match other {
                Some(s) => format!("exited with {s}"),
                None => format!("did not finish within {} s and was killed", deadline.as_secs()),
            };
            bail!(
                "schemathesis {} run {why}; seed {seed} (WISP_FUZZ_SEED={seed} replays it); reports in {}\n{text}",
                run.label,
                kept.display()
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_admin_and_tenant() -> anyhow::Result<()> {
    let Some(st) = schemathesis() else {
        return Ok(());
    };
    let version = Command::new(&st)
        .arg("--version")
        .output()
        .with_context(|| format!("WISP_SCHEMATHESIS={} does not run", st.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    if !version.contains(&format!("version {SCHEMATHESIS_MAJOR}")) {
        bail!("tests/fuzz/hooks.py is written for schemathesis 4.x, WISP_SCHEMATHESIS is {version:?}");
    }
    let seed = match std::env::var("WISP_FUZZ_SEED") {
        Ok(s) => s.parse().context("WISP_FUZZ_SEED")?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    };
    let seconds = match std::env::var("WISP_FUZZ_SECONDS") {
        Ok(s) => s.parse().context("WISP_FUZZ_SECONDS")?,
        Err(_) => 75,
    };
    eprintln!("fuzz: {version}, seed {seed} (WISP_FUZZ_SEED={seed} replays it), {seconds} s a run");

    // Over plain HTTP: this test is about what the API does with any input; transport is
    // `transport.rs`'s. Over TLS, one run saw one request of ~8,500 end in Python's "EOF
    // occurred in violation of protocol" (a PUT the tenant may not make, answered before its
    // body was read), not yet explained: docs/security.md, "Not defended yet".
    let mut args = rate_args()?;
    args.push("--insecure-http".into());
    let mut w = Wisp::start(Options {
        command: Some("up".into()),
        args,
        ..Default::default()
    })?;
    let (team_a, foreign, own) = prepare(&w).await?;
    // The tenant first: the admin run may delete team-a, which revokes team-a's token.
    let tenant = Run {
        label: "team-a",
        token: &team_a,
        namespace: Some("team-a"),
        digests: foreign.clone(),
        uploaded: vec![own.clone()],
    };
    let admin = Run {
        label: "admin",
        token: &w.token,
        namespace: None,
        uploaded: foreign[..1].to_vec(),
        digests: foreign.into_iter().chain([own]).collect(),
    };
    let mut failures = Vec::new();
    for run in [&tenant, &admin] {
        if let Err(e) = fuzz(&st, &w, run, seed, seconds) {
            failures.push(format!("{e:#}"));
        }
    }
    if !w.alive() {
        failures.push("the wisp server died during the fuzz runs".into());
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n\n"));
    }
    Ok(())
}
