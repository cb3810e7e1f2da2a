//! The function author's loop against a real `wisp up`: `docs/getting-started.md` run command
//! by command (read from the file), the `http-python` and `job-rust` templates end to end, and
//! the author's bad input (a broken wisp.toml, a core module, an unreachable server).
//!
//! The templates are built for real (`cargo build --target wasm32-wasip2`, componentize-py):
//! these tests need the wasm32-wasip2 target, crates.io (or a warm cargo cache) and, for
//! Python, componentize-py (`tests/run.sh` installs it; `WISP_COMPONENTIZE_PY` names its
//! directory).

#![allow(clippy::print_stderr)] // the tests report what they ran and measured

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wisp_e2e::{Options, Wisp};

fn up() -> Wisp {
    let mut args = wisp_e2e::fast_autoscaler();
    args.extend(["--wasm-namespace-slots".into(), "50".into()]);
    Wisp::start(Options {
        command: Some("up".into()),
        args,
        ..Options::default()
    })
    .expect("start wisp up")
}

fn run(w: &Wisp, dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = w.cli_in(dir, args).expect("run wisp");
    assert!(
        ok,
        "wisp {}: failed\nstdout:\n{out}\nstderr:\n{err}",
        args.join(" ")
    );
    out
}

/// The `url: …` line `wisp deploy` prints.
fn printed_url(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("url: "))
        .unwrap_or_else(|| panic!("wisp deploy printed no url:\n{out}"))
        .trim()
        .to_owned()
}

/// A GET of `url` as a browser or curl would make it (`*.localhost` is loopback): status,
/// headers, body.
async fn get(url: &str) -> anyhow::Result<(u16, http::HeaderMap, String)> {
    use http_body_util::BodyExt;
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().context("no host")?.clone();
    let host = authority.host();
    let connect = if host == "localhost" || host.ends_with(".localhost") {
        "127.0.0.1"
    } else {
        host
    };
    let port = authority.port_u16().unwrap_or(80);
    let target = format!("http://{connect}:{port}{}", uri.path());
    let req = http::Request::get(target)
        .header(http::header::HOST, authority.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = wisp_e2e::http_client().request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// Every line of the ```sh blocks of a Markdown file (not ```sh setup ones), comments and
/// blank lines left out.
fn sh_commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in markdown.lines() {
        let t = line.trim();
        if let Some(info) = t.strip_prefix("```") {
            inside = !inside && info.trim() == "sh";
            continue;
        }
        if inside {
            let command = t.split(" #").next().unwrap_or_default().trim();
            if !command.is_empty() && !command.starts_with('#') {
                out.push(command.to_owned());
            }
        }
    }
    out
}

async fn pods_of(w: &Wisp, name: &str) -> anyhow::Result<usize> {
    let pods = w
        .client()
        .api::<wisp_api::Pod>(Some("default"))
        .list(&wisp_client::ListParams::default())
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.name.starts_with(&format!("{name}-")))
        .count())
}

/// Must show: `docs/getting-started.md`, command by command as the file has them: `wisp new`
/// → `wisp deploy` → 200 from the printed URL with `x-wisp-cold-start` → back to zero pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getting_started_runs_as_written() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/getting-started.md"))
            .expect("docs/getting-started.md");
    let commands = sh_commands(&doc);
    assert!(
        commands.iter().any(|c| c.starts_with("wisp new"))
            && commands.iter().any(|c| c.starts_with("wisp deploy"))
            && commands.iter().any(|c| c.starts_with("curl")),
        "the page lost its commands: {commands:?}"
    );
    let w = up();
    let work = tempfile::tempdir().expect("tempdir");
    let mut cwd = work.path().to_path_buf();
    let mut url = None;
    let mut cold_started = false;
    for command in &commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["cd", dir] => cwd = cwd.join(dir),
            ["wisp", "get", "pods"] => {
                // The page says: after 30 s idle, no pod of hello.
                assert!(cold_started, "the page gets pods before calling the function");
                let took = wisp_e2e::until("hello back at zero pods", 150, async || {
                    Ok(pods_of(&w, "hello").await? == 0)
                })
                .await
                .expect("hello goes back to zero");
                let out = run(&w, &cwd, &["get", "pods"]);
                assert!(!out.contains("hello-"), "{out}");
                eprintln!("back at zero {} s after the request", took.as_secs());
            }
            ["wisp", rest @ ..] => {
                let out = run(&w, &cwd, rest);
                eprintln!("$ {command}\n{out}");
                if rest.first() == Some(&"deploy") {
                    url = Some(printed_url(&out));
                }
            }
            ["curl", .., doc_url] => {
                let printed = url.clone().expect("curl before wisp deploy printed a URL");
                // The page's URL is the printed one on the page's ports.
                let doc_uri: http::Uri = doc_url.parse().expect("the page's URL");
                let printed_uri: http::Uri = printed.parse().expect("the printed URL");
                assert_eq!(doc_uri.host(), printed_uri.host(), "{doc_url} vs {printed}");
                assert_eq!(doc_uri.path(), printed_uri.path());
                assert!(
                    printed_uri.port_u16().is_some(),
                    "the URL has the ingress port: {printed}"
                );
                assert_eq!(pods_of(&w, "hello").await.expect("pods"), 0, "deployed at zero");
                let (status, headers, body) = get(&printed).await.expect("GET the printed URL");
                assert_eq!(status, 200, "{body}");
                assert_eq!(
                    headers.get("x-wisp-cold-start").and_then(|v| v.to_str().ok()),
                    Some("true"),
                    "{headers:?}"
                );
                assert!(body.contains("Hello from hello"), "{body}");
                cold_started = true;
            }
            other => panic!("the test does not know how to run {other:?} from getting-started.md"),
        }
    }
    assert!(cold_started, "the page never called the function");
}

/// Must show: the `job-rust` template end to end; the job's exit code and output through
/// `wisp logs`, for a run that succeeds and one that fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_to_completion_and_its_logs_show_output_and_exit_code() {
    let w = up();
    let work = tempfile::tempdir().expect("tempdir");
    run(&w, work.path(), &["new", "nightly", "--template", "job-rust"]);
    let dir = work.path().join("nightly");
    let out = run(&w, &dir, &["deploy", "--wait", "--timeout", "120"]);
    assert!(out.contains("Succeeded, exit code 0"), "{out}");
    let logs = run(&w, &dir, &["logs", "nightly"]);
    assert!(
        logs.contains("Hello from nightly: 2 argument(s): first second"),
        "{logs}"
    );
    assert!(logs.contains("the sum of 1..=100 is 5050"), "{logs}");
    assert!(logs.contains("exited with code 0"), "{logs}");

    // A run that fails: its exit code, from deploy and from logs.
    let manifest = dir.join("wisp.toml");
    let text = std::fs::read_to_string(&manifest).expect("wisp.toml");
    std::fs::write(
        &manifest,
        text.replace("args = [\"first\", \"second\"]", "args = [\"--fail\"]"),
    )
    .expect("write wisp.toml");
    let (ok, out, err) = w
        .cli_in(&dir, &["deploy", "--wait", "--timeout", "120"])
        .expect("run");
    assert!(!ok, "a failing job fails the deploy: {out}");
    assert!(
        out.contains("Failed, exit code 1") && err.contains("failed with exit code 1"),
        "{out}\n{err}"
    );
    // The same component: no build, no upload.
    assert!(!err.contains("building") && !out.contains("building"), "{out}");
    assert!(out.contains("upload skipped"), "{out}");
    let logs = run(&w, &dir, &["logs", "nightly"]);
    assert!(
        logs.contains("failing on purpose") && logs.contains("exited with code 1"),
        "{logs}"
    );
    assert!(
        logs.contains("exited with code 0"),
        "the earlier run is kept: {logs}"
    );
}

fn componentize_py() -> Result<PathBuf, String> {
    let dir = std::env::var_os("WISP_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .ok_or("WISP_COMPONENTIZE_PY (the directory of componentize-py) is not set; tests/run.sh sets it")?;
    if dir.join("componentize-py").is_file() {
        Ok(dir)
    } else {
        Err(format!("no componentize-py in {}", dir.display()))
    }
}

/// Must show: the `http-python` template end to end: a Python function answering from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_function_deploys_and_answers_from_zero() {
    let Some(bin) = wisp_testkit::required(
        "a_python_function_deploys_and_answers_from_zero",
        componentize_py(),
    ) else {
        return;
    };
    let w = up();
    let work = tempfile::tempdir().expect("tempdir");
    run(&w, work.path(), &["new", "hello-py", "--template", "http-python"]);
    let dir = work.path().join("hello-py");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = std::process::Command::new(wisp_e2e::wisp_bin().expect("wisp"))
        .current_dir(&dir)
        .args(["deploy", "--wait", "--timeout", "240"])
        .env("PATH", path)
        .env("WISP_CONFIG", w.config_path())
        .env("WISP_SERVER", &w.url)
        .env_remove("WISP_TOKEN")
        .output()
        .expect("wisp deploy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("wasi:http/proxy"), "{stdout}");
    let url = printed_url(&stdout);
    // The first start compiles an 18 MB component: give the ingress's hold time to it.
    let started = Instant::now();
    let (status, headers, body) = loop {
        match get(&url).await {
            Ok((503 | 504, _, _)) if started.elapsed() < Duration::from_secs(120) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other.expect("GET"),
        }
    };
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("x-wisp-cold-start"), "{headers:?}");
    assert_eq!(body, "Hello from hello-py (Python) at /\n");
}

/// Must show (bad input): a broken wisp.toml names the key and line, a core module is refused
/// with the reason, and a deploy to an unreachable server fails fast with the address tried.
#[test]
fn bad_input_is_named() {
    let w = Wisp::start(Options::default()).expect("start wisp");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let manifest = |body: &str| {
        std::fs::write(
            dir.join("wisp.toml"),
            format!(
                "version = 1\n[function]\nname = \"f\"\n[build]\ncommand = \"true\"\ncomponent = \"f.wasm\"\n{body}"
            ),
        )
        .expect("write");
    };
    for (body, wanted) in [
        ("[scaling]\nmaximum = 3\n", "wisp.toml:8: `scaling"),
        (
            "[route]\npath = \"no-slash\"\n",
            "wisp.toml:8: `route.path`: must start with \"/\"",
        ),
        (
            "[resources]\nmemory = \"12 apples\"\n",
            "wisp.toml:8: `resources.memory`: \"12 apples\" is not a quantity",
        ),
    ] {
        manifest(body);
        let (ok, out, err) = w.cli_in(dir, &["deploy"]).expect("run");
        assert!(!ok, "{out}");
        assert!(err.contains(wanted), "wanted {wanted:?} in:\n{err}");
    }
    // A core module where a component should be.
    manifest("");
    std::fs::write(
        dir.join("f.wasm"),
        [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    )
    .expect("write");
    let (ok, _, err) = w.cli_in(dir, &["build"]).expect("run");
    assert!(
        !ok && err.contains("core WebAssembly module, not a component"),
        "{err}"
    );
    // A server that is not there: refused at once, with the address.
    let started = Instant::now();
    let (ok, _, err) = w
        .cli_in(dir, &["--server", "http://127.0.0.1:9", "deploy"])
        .expect("run");
    assert!(!ok);
    assert!(err.contains("http://127.0.0.1:9"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // An unknown template and a taken directory.
    let (ok, _, err) = w.cli_in(dir, &["new", "x", "--template", "cobol"]).expect("run");
    assert!(!ok && err.contains("http-rust, http-python, job-rust"), "{err}");
    let (ok, out, _) = w.cli_in(dir, &["new", "--list"]).expect("run");
    assert!(
        ok && out.contains("http-python") && out.contains("job-rust"),
        "{out}"
    );
    if let Err(e) = check_unreachable_address_is_named(&w, dir) {
        panic!("{e:#}");
    }
}

/// `--server` pointing at an address that drops packets: the connect timeout ends it.
fn check_unreachable_address_is_named(w: &Wisp, dir: &Path) -> anyhow::Result<()> {
    // 192.0.2.0/24 is TEST-NET-1: never routed. Without a route the connect fails at once;
    // with one it times out after the client's 5 s.
    let started = Instant::now();
    let (ok, _, err) = w.cli_in(dir, &["--server", "http://192.0.2.1:7700", "deploy"])?;
    if ok {
        bail!("a deploy to 192.0.2.1 succeeded");
    }
    if !err.contains("http://192.0.2.1:7700") {
        bail!("the address is not named: {err}");
    }
    if started.elapsed() > Duration::from_secs(15) {
        bail!("took {:?}", started.elapsed());
    }
    Ok(())
}

/// `wisp dev`: deploys, redeploys when a source changes (the new code answers), and Ctrl-C
/// leaves the cluster as it was (the Function it made is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wisp_dev_redeploys_on_change_and_cleans_up_on_ctrl_c() {
    use std::io::BufRead;
    let w = up();
    let work = tempfile::tempdir().expect("tempdir");
    run(&w, work.path(), &["new", "devfn", "--template", "http-rust"]);
    let dir = work.path().join("devfn");
    let mut child = std::process::Command::new(wisp_e2e::wisp_bin().expect("wisp"))
        .current_dir(&dir)
        .arg("dev")
        .env("WISP_CONFIG", w.config_path())
        .env("WISP_SERVER", &w.url)
        .env_remove("WISP_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wisp dev");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |want: &str, secs: u64| -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(want) => return line,
                Ok(line) => eprintln!("dev: {line}"),
                Err(_) => break,
            }
        }
        panic!("wisp dev did not print {want:?} within {secs} s");
    };
    let url = wait_line("url: ", 300)
        .trim_start_matches("url: ")
        .trim()
        .to_owned();
    wait_line("watching", 30);
    let (status, _, body) = get(&url).await.expect("GET");
    assert_eq!((status, body.as_str()), (200, "Hello from devfn at /\n"));

    // An edit: the new code answers.
    let main = dir.join("src/main.rs");
    let source = std::fs::read_to_string(&main).expect("main.rs");
    let edited = Instant::now();
    std::fs::write(
        &main,
        source.replace("{greeting} from devfn", "{greeting} again from devfn"),
    )
    .expect("edit");
    wait_line("redeployed in", 300);
    wisp_e2e::until("the new code answering", 30, async || {
        Ok(get(&url).await?.2 == "Hello again from devfn at /\n")
    })
    .await
    .expect("the edit is live");
    eprintln!("edit → new code answering: {} ms", edited.elapsed().as_millis());

    // Ctrl-C: the Function wisp dev made is gone.
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    wait_line("function/devfn deleted", 30);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let left = w
        .client()
        .api::<wisp_api::Function>(Some("default"))
        .get_opt("devfn")
        .await
        .expect("get");
    assert!(left.is_none(), "wisp dev cleaned up");
}

/// The examples deploy with `wisp deploy` as their READMEs say, and answer as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_deploy_and_answer() {
    let w = up();
    let examples = wisp_e2e::examples_dir();
    let api = examples.join("json-api");
    let url = printed_url(&run(&w, &api, &["deploy", "--wait"]));
    let (ok, out, err) = w
        .cli_in(&api, &["invoke", "json-api", "--path", "/items/2"])
        .expect("invoke");
    assert!(ok && out == r#"{"id":2,"name":"mouse"}"#, "{out}{err}");
    let (ok, out, err) = w
        .cli_in(&api, &["invoke", "json-api", "--path", "/items", "-d", "keys"])
        .expect("invoke");
    assert!(
        ok && out == r#"{"id":4,"name":"keys"}"# && err.contains("201"),
        "{out}{err}"
    );
    let (status, _, body) = get(&format!("{}/nope", url.trim_end_matches('/')))
        .await
        .expect("GET");
    assert_eq!((status, body.as_str()), (404, r#"{"error":"no route /nope"}"#));

    let cs = examples.join("config-secret");
    run(&w, &cs, &["apply", "-f", "config.yaml"]);
    let url = printed_url(&run(&w, &cs, &["deploy", "--wait"]));
    let (status, _, body) = get(&url).await.expect("GET");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "Hello from the ConfigMap\nToday's message, from a file.\nAPI_TOKEN has 12 characters; /secrets/token matches\n"
    );
}
