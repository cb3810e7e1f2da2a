//! Test and benchmark helpers: start a real `etcd` (Debian package `etcd-server`) on free
//! loopback ports with a temporary data directory, stopped when the guard drops.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running single-member etcd; killed (and its data removed) on drop.
pub struct EtcdServer {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` (`https://` with TLS)
    pub endpoint: String,
    /// With [`EtcdServer::start_tls`]: its CA, and a client certificate it accepts.
    #[cfg(feature = "etcd")]
    pub tls: Option<crate::etcd::EtcdTls>,
    /// With [`EtcdServer::start_tls`]: the same, as files (for a `wisp server`'s flags):
    /// `ca.crt`, `client.crt`, `client.key`.
    pub tls_dir: Option<std::path::PathBuf>,
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
        Self::launch(false)
    }

    /// Start etcd serving clients over TLS only, with client certificate authentication: a
    /// CA, its serving certificate and a client certificate are made here (rcgen).
    pub fn start_tls() -> Result<Self, String> {
        Self::launch(true)
    }

    fn launch(tls: bool) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let client = free_port().map_err(|e| e.to_string())?;
        let peer = free_port().map_err(|e| e.to_string())?;
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let mut tls_args: Vec<std::ffi::OsString> = Vec::new();
        let mut tls_files = None;
        if tls {
            let pki = dir.path().join("pki");
            let ca = wisp_tls::Ca::create().map_err(|e| e.to_string())?;
            let serving = ca
                .issue(&["127.0.0.1".to_owned(), "localhost".to_owned()], true)
                .map_err(|e| e.to_string())?;
            let client_cert = ca
                .issue(&["wisp-apiserver".to_owned()], false)
                .map_err(|e| e.to_string())?;
            wisp_tls::private_dir(&pki).map_err(|e| e.to_string())?;
            for (name, text) in [
                ("ca.crt", ca.cert_pem()),
                ("server.crt", serving.cert_pem.as_str()),
                ("server.key", serving.key_pem.as_str()),
                ("client.crt", client_cert.cert_pem.as_str()),
                ("client.key", client_cert.key_pem.as_str()),
            ] {
                wisp_tls::write_private(&pki.join(name), text.as_bytes()).map_err(|e| e.to_string())?;
            }
            for (flag, file) in [
                ("--cert-file", "server.crt"),
                ("--key-file", "server.key"),
                ("--trusted-ca-file", "ca.crt"),
            ] {
                tls_args.push(flag.into());
                tls_args.push(pki.join(file).into_os_string());
            }
            tls_args.push("--client-cert-auth".into());
            tls_files = Some((pki, ca.cert_pem().to_owned(), client_cert));
        }
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
            .args(&tls_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start `{}` ({e}); install Debian's etcd-server or set WISP_ETCD_BIN",
                    etcd_binary()
                )
            })?;
        #[cfg(feature = "etcd")]
        let tls = tls_files.as_ref().map(|(_, ca_pem, c)| crate::etcd::EtcdTls {
            ca_pem: ca_pem.clone(),
            cert_pem: Some(c.cert_pem.clone()),
            key_pem: Some(c.key_pem.clone()),
        });
        let mut server = Self {
            child,
            _dir: dir,
            endpoint,
            #[cfg(feature = "etcd")]
            tls,
            tls_dir: tls_files.map(|(dir, _, _)| dir),
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
