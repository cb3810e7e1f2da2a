//! Test and benchmark helpers: start a real `etcd` (Debian package `etcd-server`) on free
//! loopback ports with a temporary data directory, stopped when the guard drops.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running single-member etcd; killed (and its data removed) on drop.
pub struct EtcdServer {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

/// A free loopback TCP port (bound then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the etcd binary is: `$WISP_ETCD_BIN`, else `etcd` on `PATH`.
pub fn etcd_binary() -> String {
    std::env::var("WISP_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned())
}

impl EtcdServer {
    /// Start etcd and wait until it answers on its client port.
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let client = free_port().map_err(|e| e.to_string())?;
        let peer = free_port().map_err(|e| e.to_string())?;
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(etcd_binary())
            .args(["--name", "wisp-test"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("wisp-test={peer_url}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            // Room for the API's 3 MiB objects (etcd's default request limit is 1.5 MiB).
            .args(["--max-request-bytes", "4194304"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start `{}` ({e}); install Debian's etcd-server or set WISP_ETCD_BIN",
                    etcd_binary()
                )
            })?;
        let mut server = Self {
            child,
            _dir: dir,
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("etcd exited early with {status}"));
            }
            if std::net::TcpStream::connect(("127.0.0.1", client)).is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let _ = server.child.kill();
                return Err("etcd did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
