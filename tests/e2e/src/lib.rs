//! The end-to-end harness: starts the real `wisp` binary (and, when asked, a real etcd) on
//! free loopback ports with a temporary data directory, and stops them after.
//!
//! The binary is `$WISP_BIN`, else `target/<profile>/wisp` next to the test executable.
//! Cargo sets `CARGO_BIN_EXE_wisp` only for tests of the `wisp` package itself, and
//! `cargo test -p wisp-e2e` does not build another package's binary: `tests/run.sh` builds it
//! first (`cargo build --workspace --all-features --bins`), and [`wisp_bin`] refuses a binary
//! older than any source it is built from, so a test never runs a stale `wisp`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

pub use wisp_store::testutil::EtcdServer;

/// Path of the `wisp` binary under test: `$WISP_BIN` as given, else the one in this test's
/// target directory, which must be newer than every source of the workspace's crates (and
/// `Cargo.toml`, `Cargo.lock`) — otherwise an error that says which file and what to build.
pub fn wisp_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("WISP_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/wisp
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("wisp"))
        .context("cannot locate the target directory")?;
    let Ok(built) = std::fs::metadata(&candidate).and_then(|m| m.modified()) else {
        bail!(
            "the wisp binary is not built at {}: run `cargo build -p wisp --features etcd` \
             (tests/run.sh does) first, or set WISP_BIN",
            candidate.display()
        )
    };
    if let Some((source, changed)) = newest_source()
        && *changed > built
    {
        bail!(
            "the wisp binary at {} is older than {}: run `cargo build -p wisp --features etcd` \
             (tests/run.sh does) first, or set WISP_BIN to the binary to test",
            candidate.display(),
            source.display()
        );
    }
    Ok(candidate)
}

/// The most recently modified file the `wisp` binary is built from (the workspace's crates
/// under `sdk/`, `control-plane/`, `node/`, `sandboxes/`, and the root `Cargo.toml` and
/// `Cargo.lock`), found once per test process.
fn newest_source() -> &'static Option<(PathBuf, SystemTime)> {
    static NEWEST: OnceLock<Option<(PathBuf, SystemTime)>> = OnceLock::new();
    NEWEST.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut newest: Option<(PathBuf, SystemTime)> = None;
        let mut visit = |path: PathBuf| {
            if let Ok(t) = std::fs::metadata(&path).and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(_, n)| t > *n)
            {
                newest = Some((path, t));
            }
        };
        visit(root.join("Cargo.toml"));
        visit(root.join("Cargo.lock"));
        let mut dirs: Vec<PathBuf> = ["sdk", "control-plane", "node", "sandboxes"]
            .iter()
            .map(|d| root.join(d))
            .collect();
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                // Build output and editor or VCS state are not sources.
                if name == "target" || name.to_string_lossy().starts_with('.') {
                    continue;
                }
                match entry.file_type() {
                    Ok(t) if t.is_dir() => dirs.push(entry.path()),
                    Ok(t) if t.is_file() => visit(entry.path()),
                    _ => {}
                }
            }
        }
        newest
    })
}

/// Options of one `wisp server` (or `wisp up`) process.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `server` (default: control plane only) or `up` (plus an in-process node agent).
    pub command: Option<String>,
    /// `embedded` (default) or `etcd://host:port`.
    pub store: Option<String>,
    /// Extra flags, e.g. `--store-history 10`.
    pub args: Vec<String>,
    /// Listen address (default `127.0.0.1:0`, a fresh port on every start).
    pub listen: Option<String>,
    /// `up`: the node's name (default `local`). With Docker on, it also labels the node's
    /// containers: tests sharing the daemon must use different names.
    pub node_name: Option<String>,
    /// `up`: run the Docker runtime (off by default, so tests that do not need it never
    /// touch each other's containers).
    pub docker: bool,
}

/// A running `wisp server`; killed on drop.
pub struct Wisp {
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub url: String,
    pub token: String,
    /// The cluster CA (PEM) the server's certificate chains to (none over plain HTTP).
    pub ca: Option<String>,
    options: Options,
}

impl Wisp {
    /// Start on a fresh temporary data directory.
    pub fn start(options: Options) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut w = Self {
            child: None,
            dir,
            _tmp: Some(tmp),
            url: String::new(),
            token: String::new(),
            ca: None,
            options,
        };
        w.boot()?;
        Ok(w)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config")
    }

    fn boot(&mut self) -> anyhow::Result<()> {
        let store = self.options.store.clone().unwrap_or_else(|| "embedded".into());
        let mut cmd = Command::new(wisp_bin()?);
        match self.options.command.as_deref().unwrap_or("server") {
            "up" => cmd
                .args(["up", "--ingress-listen", "127.0.0.1:0", "--node-name"])
                .arg(self.options.node_name.as_deref().unwrap_or("local"))
                .args(["--docker", if self.options.docker { "true" } else { "false" }]),
            other => cmd.args([other, "--store", &store]),
        };
        // `wisp up`'s HTTPS ingress on a fresh port too, unless the test names one.
        if self.options.command.as_deref() == Some("up")
            && !self.options.args.iter().any(|a| a == "--ingress-tls-listen")
        {
            cmd.args(["--ingress-tls-listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args([
                "--listen",
                self.options.listen.as_deref().unwrap_or("127.0.0.1:0"),
            ])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(&self.options.args)
            .env("WISP_CONFIG", self.config_path())
            .env("WISP_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start wisp")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            bail!("wisp did not report its address within 30 s");
        };
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("https://") || w.starts_with("http://"))
            .with_context(|| format!("unexpected first line from wisp: {line:?}"))?;
        self.url = url.to_owned();
        let config = wisp_client::Config::load(&self.config_path())?;
        self.token = config.token;
        self.ca = config.ca;
        self.child = Some(child);
        Ok(())
    }

    pub fn client(&self) -> wisp_client::Client {
        self.client_as(&self.token)
    }

    /// A client of this server with `token`, trusting the cluster CA.
    pub fn client_as(&self, token: &str) -> wisp_client::Client {
        wisp_client::Client::with_ca(&self.url, token, self.ca.as_deref())
            .expect("the cluster CA is a PEM certificate")
    }

    /// The cluster CA's file, `<data>/pki/ca.crt` (what a node joining is given).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("data").join("pki").join("ca.crt")
    }

    /// The API server's `host:port`.
    pub fn api_addr(&self) -> String {
        self.url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_owned()
    }

    /// A raw HTTP client of the API server (HTTPS trusting the cluster CA, or plain HTTP).
    pub fn api_http(&self) -> ApiHttp {
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(self.api_connector())
    }

    /// [`Wisp::api_http`] for requests with a body.
    pub fn api_http_full(
        &self,
    ) -> hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    > {
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(self.api_connector())
    }

    fn api_connector(
        &self,
    ) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
        let tls = wisp_tls::client_config(self.ca.as_deref()).expect("the cluster CA is a PEM certificate");
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build()
    }

    /// A TLS connection to the API server, handshake done (for tests that write raw bytes).
    pub async fn api_tls_stream(
        &self,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tls = wisp_tls::client_config(self.ca.as_deref())?;
        let tcp = tokio::net::TcpStream::connect(self.api_addr()).await?;
        let name = wisp_tls::rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(name, tcp)
            .await?)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same data directory (new port).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.boot()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Is the process still alive?
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Run the CLI against this server; returns (exit success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        self.cli_in(Path::new("."), args)
    }

    /// [`Wisp::cli`] in directory `dir` (a function project's commands read its wisp.toml).
    pub fn cli_in(&self, dir: &Path, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let out = Command::new(wisp_bin()?)
            .current_dir(dir)
            .args(args)
            .env("WISP_CONFIG", self.config_path())
            .env_remove("WISP_SERVER")
            .env_remove("WISP_TOKEN")
            .env_remove("WISP_NAMESPACE")
            .env("WISP_SERVER", &self.url)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// A guest component built by `tests/build-guests.sh`.
pub fn guest(name: &str) -> anyhow::Result<PathBuf> {
    wisp_testkit::guests::path(name).map_err(anyhow::Error::msg)
}

/// The same component with a custom section appended: a different digest, same behaviour.
pub fn variant(component: &[u8], tag: &str) -> Vec<u8> {
    let name = b"wisp-test-variant";
    let mut payload = vec![u8::try_from(name.len()).unwrap_or(0)];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section id
    let mut len = payload.len();
    loop {
        let byte = u8::try_from(len & 0x7f).unwrap_or(0);
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A running `wisp node` against a [`Wisp`] server; killed (SIGKILL) on drop.
pub struct NodeAgent {
    child: Option<Child>,
    pub name: String,
    pub dir: PathBuf,
    server: String,
    token: String,
    ca_file: Option<PathBuf>,
    args: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl NodeAgent {
    /// Start `wisp node --node-name <name>` on a fresh data directory, with a node
    /// credential minted for it (`wisp token create --node <name>`): never the admin token.
    pub fn start(wisp: &Wisp, name: &str) -> anyhow::Result<Self> {
        Self::start_via(wisp, name, &wisp.url)
    }

    /// [`NodeAgent::start`] reaching the API server at `server` (a proxy in front of it).
    pub fn start_via(wisp: &Wisp, name: &str, server: &str) -> anyhow::Result<Self> {
        Self::start_with(wisp, name, server, Vec::new())
    }

    /// [`NodeAgent::start`] joining by the CA's fingerprint (`--ca-cert-hash`), no CA file.
    pub fn start_by_ca_hash(wisp: &Wisp, name: &str, hash: &str) -> anyhow::Result<Self> {
        Self::start_with(wisp, name, &wisp.url, vec!["--ca-cert-hash".into(), hash.into()])
    }

    /// `args` given: no CA file either (the args name how the node trusts the server).
    fn start_with(wisp: &Wisp, name: &str, server: &str, args: Vec<String>) -> anyhow::Result<Self> {
        let (ok, out, err) = wisp.cli(&["token", "create", "--node", name])?;
        if !ok {
            bail!("cannot mint a node credential for {name}: {err}");
        }
        let tmp = tempfile::tempdir()?;
        let mut n = Self {
            child: None,
            name: name.to_owned(),
            dir: tmp.path().to_path_buf(),
            server: server.to_owned(),
            token: out.trim().to_owned(),
            ca_file: (wisp.ca.is_some() && args.is_empty()).then(|| wisp.ca_file()),
            args,
            _tmp: tmp,
        };
        n.boot()?;
        Ok(n)
    }

    fn boot(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(wisp_bin()?);
        if let Some(ca) = &self.ca_file {
            cmd.env("WISP_CA_FILE", ca);
        }
        let child = cmd
            .args([
                "node",
                "--node-name",
                &self.name,
                "--agent-listen",
                "127.0.0.1:0",
                "--docker",
                "false",
            ])
            .args(["--ingress-listen", "127.0.0.1:0"])
            .args(&self.args)
            .arg("--data-dir")
            .arg(&self.dir)
            .env("WISP_SERVER", &self.server)
            .env("WISP_TOKEN", &self.token)
            .env("WISP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start wisp node")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the agent and every pod it runs in process die at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again with the same name and data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.boot()
    }

    /// This node's credential.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for Wisp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it holds; how long that took, or an error naming `what`
/// after `secs`.
pub async fn until(
    what: &str,
    secs: u64,
    check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let ((), took) = wisp_testkit::wait(what)
        .within(Duration::from_secs(secs))
        .every(Duration::from_millis(50))
        .until(check)
        .await?;
    Ok(took)
}

/// The ingress URL of node `node`, once it is Ready and reports one.
pub async fn node_ingress(client: &wisp_client::Client, node: &str) -> anyhow::Result<String> {
    let nodes = client.api::<wisp_api::Node>(None);
    until("the node's ingress", 30, async || {
        Ok(nodes
            .get_opt(node)
            .await?
            .is_some_and(|n| n.is_ready() && n.status.is_some_and(|s| s.ingress_url.is_some())))
    })
    .await?;
    nodes
        .get(node)
        .await?
        .status
        .and_then(|s| s.ingress_url)
        .context("ingressUrl")
}

/// A plain HTTP/1.1 client for requests to an ingress.
pub type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// What [`Wisp::api_http`] gives.
pub type ApiHttp = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

pub fn http_client() -> Http {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// One counter (`coldStarts`, `readyBackends`, …) of Service `name` in the ingress's
/// `/.wisp/stats` (0 when the ingress does not know the Service), read with `token` (the
/// ingress answers only the admin and nodes).
pub async fn ingress_stat(
    http: &Http,
    ingress: &str,
    token: &str,
    name: &str,
    field: &str,
) -> anyhow::Result<u64> {
    use http_body_util::BodyExt;
    let req = http::Request::get(format!("{ingress}/.wisp/stats"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::new())?;
    let body = http.request(req).await?.into_body().collect().await?.to_bytes();
    let stats: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(stats
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .and_then(|s| s[field].as_u64())
        .unwrap_or(0))
}

/// Waits until the ingress knows Service `name` (it shows in `/.wisp/stats`, read with the
/// admin's `token`): its Route is in the ingress's table. Sends it no request.
pub async fn until_ingress_knows(http: &Http, ingress: &str, token: &str, name: &str) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let want = format!("\"name\":\"{name}\"");
    until(&format!("{name} in the ingress"), 30, async || {
        let req = http::Request::get(format!("{ingress}/.wisp/stats"))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(http_body_util::Empty::new())?;
        let body = http.request(req).await?.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).contains(&want))
    })
    .await
    .map(|_| ())
}

/// Applies `examples/hello/function.yaml` through the CLI, its component the built `hello`
/// guest and its text changed by `edit` first (e.g. a shorter `scaleToZeroAfter`).
pub fn apply_hello_function(w: &Wisp, edit: impl FnOnce(String) -> String) -> anyhow::Result<()> {
    let component = guest("hello")?;
    let manifest = edit(std::fs::read_to_string(
        examples_dir().join("hello/function.yaml"),
    )?)
    .replace(
        "../target/wasm32-wasip2/release/hello.wasm",
        &component.display().to_string(),
    );
    let file = w.dir.join("function.yaml");
    std::fs::write(&file, manifest)?;
    let (ok, out, err) = w.cli(&["apply", "-f", &file.display().to_string()])?;
    anyhow::ensure!(ok, "apply failed: {out}{err}");
    Ok(())
}

/// Waits (up to 30 s) until node `node` is Ready, reports its ingress and says its Docker
/// runtime is ready (`DockerReady=True`).
pub async fn docker_node_ready(client: &wisp_client::Client, node: &str) -> anyhow::Result<()> {
    until("the node with Docker ready", 30, async || {
        Ok(client
            .api::<wisp_api::Node>(None)
            .get_opt(node)
            .await?
            .is_some_and(|n| {
                n.is_ready()
                    && n.status.is_some_and(|s| {
                        s.ingress_url.is_some()
                            && s.conditions
                                .iter()
                                .any(|c| c.type_ == wisp_api::NODE_DOCKER_READY && c.status == "True")
                    })
            }))
    })
    .await?;
    Ok(())
}

/// `wisp up` flags for short autoscaler windows (6 s stable, 2 s panic), so that scaling
/// down does not take a minute.
pub fn fast_autoscaler() -> Vec<String> {
    [
        "--autoscaler-stable-seconds",
        "6",
        "--autoscaler-panic-seconds",
        "2",
    ]
    .map(str::to_owned)
    .to_vec()
}
