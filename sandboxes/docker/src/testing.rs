//! Helpers for tests that need the real Docker engine (this crate's, the agent's, the
//! end-to-end suite's): reachability with the CI rule, the example image, and cleanup of
//! what a test created.
//!
//! The rule ([`wisp_testkit::required`]): with `CI` set, an unreachable engine fails the test
//! with the reason; without it (a laptop with no Docker) the test prints a notice and skips.
//! Behind the `test-util` feature: not in a release build.

use std::path::PathBuf;
use std::process::Command;

/// The example service image every Docker test runs (built from examples/container-echo).
pub const ECHO_IMAGE: &str = "wisp-examples/echo:dev";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

fn docker(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("docker").args(args).output()
}

/// Whether the engine answers; `Err` with the reason when it does not.
pub fn engine() -> Result<String, String> {
    let out = docker(&["version", "--format", "{{.Server.Version}}"])
        .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "the Docker engine does not answer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `true` when Docker tests can run: [`wisp_testkit::required`]'s rule (a failure in CI, a
/// notice and a skip elsewhere).
pub fn available(test: &str) -> bool {
    wisp_testkit::required(test, engine()).is_some()
}

/// Builds [`ECHO_IMAGE`] with examples/container-echo/build-image.sh unless the engine has
/// it from the same source. Panics with the script's output when the build fails.
pub fn ensure_echo_image() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if *done {
        return;
    }
    // The script builds only when the image is missing or older than the program's source.
    {
        let script = repo_root().join("examples/container-echo/build-image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(ECHO_IMAGE)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *done = true;
}

/// For one test on the real engine: a Docker runtime owning a unique label, with the example
/// image present, and the cleanup of what it makes; `None` when the test should skip
/// ([`available`]'s rule).
pub fn runtime(test: &str) -> Option<(crate::DockerSandbox, Cleanup)> {
    if !available(test) {
        return None;
    }
    ensure_echo_image();
    let owner = unique_owner(test);
    Some((
        crate::DockerSandbox::new(crate::DockerConfig::new(owner.clone())),
        Cleanup::new(&owner),
    ))
}

/// A unique owner label for one test's containers.
pub fn unique_owner(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Also a valid node name (a DNS subdomain).
    let test: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("test-{test}-{}-{nanos:x}", std::process::id())
}

/// Removes every container labelled with `owner` (and the networks given) when dropped.
pub struct Cleanup {
    pub owner: String,
    pub networks: Vec<String>,
}

impl Cleanup {
    pub fn new(owner: &str) -> Self {
        Self {
            owner: owner.to_owned(),
            networks: Vec::new(),
        }
    }
}

/// Removes the containers of `owner`.
pub fn remove_owned(owner: &str) {
    let filter = format!("label={}={owner}", crate::LABEL_OWNER);
    if let Ok(out) = docker(&["ps", "-aq", "--filter", &filter]) {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker(&args);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_owned(&self.owner);
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
    }
}

/// A unix socket that forwards every connection to the real daemon's socket: a daemon that
/// can be "stopped" and "started" by a test without touching the real one.
pub struct SocketProxy {
    pub path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SocketProxy {
    /// Listens on `path`, forwarding to `target` (the daemon's socket), until dropped.
    pub fn start(path: PathBuf, target: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let target = target.clone();
                        conns.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::UnixStream::connect(&target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    _ = &mut rx => break,
                }
            }
            // Dropping the set ends every open connection: the "daemon" is gone.
            conns.shutdown().await;
        });
        Ok(Self {
            path,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Stops accepting and closes every open connection before returning.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Debian's `docker-registry` (the CNCF distribution registry) on a loopback port, storing
/// into a temporary directory; stopped when dropped. The engine treats 127.0.0.0/8
/// registries as insecure (plain HTTP) by default.
pub struct Registry {
    pub addr: String,
    child: std::process::Child,
    dir: PathBuf,
}

impl Registry {
    /// Starts the registry and waits until it answers `/v2/`.
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// A registry that answers only requests with HTTP basic credentials: `htpasswd` is the
    /// file's contents (`user:<bcrypt hash>` lines).
    pub fn start_private(htpasswd: &str) -> Result<Self, String> {
        Self::start_with(Some(htpasswd))
    }

    fn start_with(htpasswd: Option<&str>) -> Result<Self, String> {
        let bin = ["/usr/bin/docker-registry", "/usr/bin/registry"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or("docker-registry is not installed (apt-get install docker-registry)")?;
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wisp-registry-{port}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        if let Some(lines) = htpasswd {
            let file = dir.join("htpasswd");
            std::fs::write(&file, lines).map_err(|e| e.to_string())?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wisp-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let registry = Self {
            addr: format!("127.0.0.1:{port}"),
            child,
            dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(&registry.addr).is_ok() {
                return Ok(registry);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(format!("the registry on {} did not start", registry.addr))
    }

    /// Pushes the local image `source` as `<registry>/<name>` and removes that tag locally,
    /// so only the registry has it. Returns the pushed reference.
    pub fn push(&self, source: &str, name: &str) -> Result<String, String> {
        let target = format!("{}/{name}", self.addr);
        for args in [
            vec!["tag", source, target.as_str()],
            vec!["push", target.as_str()],
            vec!["rmi", target.as_str()],
        ] {
            let out = docker(&args).map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "docker {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(target)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
