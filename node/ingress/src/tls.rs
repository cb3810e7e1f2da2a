//! HTTPS for Routes: the node's TLS listener picks each connection's certificate by SNI from
//! the Secrets (type `tls`) that Routes name in `spec.tls.secretName`. The certificates are
//! read through the API with the node's credential (which may read a Secret only when a
//! Route of its namespace names it) and read again every [`REFRESH`], so a changed Secret is
//! served within seconds. A name no Route serves over HTTPS fails the handshake (rustls
//! answers with an alert), it never gets another host's certificate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wisp_api::Secret;
use wisp_http::rustls::server::{ClientHello, ResolvesServerCert};
use wisp_http::rustls::sign::CertifiedKey;

use crate::Ingress;

/// How often the certificates Routes name are read again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Certificates by host (`*.example.com` for a wildcard), swapped in whole.
#[derive(Default)]
pub struct Certificates {
    by_host: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("hosts", &self.by_host.load().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Certificates {
    /// The certificate for `name`: its own host's, else a wildcard one level up.
    pub fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let map = self.by_host.load();
        if let Some(k) = map.get(&name) {
            return Some(k.clone());
        }
        let (_, parent) = name.split_once('.')?;
        map.get(&format!("*.{parent}")).cloned()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name()?)
    }
}

/// A Secret's certificate, parsed, kept while its resourceVersion stays.
struct Loaded {
    version: String,
    key: Option<Arc<CertifiedKey>>,
}

/// Reads the certificates the Routes name into `certs`, every [`REFRESH`], until `shutdown`.
async fn refresh(ingress: Ingress, certs: Arc<Certificates>, shutdown: CancellationToken) {
    let mut loaded: HashMap<(String, String), Loaded> = HashMap::new();
    loop {
        let mut wanted: Vec<(String, String, String)> = Vec::new();
        for route in ingress.inner.caches.routes.list() {
            let (Some(tls), Some(host), Some(ns)) = (
                route.spec.tls.as_ref(),
                route.spec.host.as_ref(),
                route.metadata.namespace.as_ref(),
            ) else {
                continue;
            };
            wanted.push((ns.clone(), tls.secret_name.clone(), host.to_ascii_lowercase()));
        }
        let mut by_host = HashMap::new();
        for (ns, name, host) in &wanted {
            let id = (ns.clone(), name.clone());
            let secret = match ingress.inner.client.api::<Secret>(Some(ns)).get_opt(name).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(namespace = %ns, secret = %name, error = %e, "cannot read a Route's certificate");
                    continue;
                }
            };
            let Some(secret) = secret else {
                loaded.remove(&id);
                continue;
            };
            let version = secret.metadata.resource_version.clone().unwrap_or_default();
            if loaded.get(&id).is_none_or(|l| l.version != version) {
                let key = parse(&secret).map_err(|e| {
                    tracing::warn!(namespace = %ns, secret = %name, error = %e, "a Route's certificate is unusable");
                });
                loaded.insert(
                    id.clone(),
                    Loaded {
                        version,
                        key: key.ok(),
                    },
                );
            }
            if let Some(key) = loaded.get(&id).and_then(|l| l.key.clone()) {
                by_host.insert(host.clone(), key);
            }
        }
        loaded.retain(|id, _| wanted.iter().any(|(ns, n, _)| (ns, n) == (&id.0, &id.1)));
        certs.by_host.store(Arc::new(by_host));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
}

/// The certificate and key of a Secret of type `tls`.
fn parse(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    if secret.type_ != wisp_api::SECRET_TYPE_TLS {
        return Err(format!("type {:?}, not tls", secret.type_));
    }
    let value = |k: &str| -> Result<String, String> {
        let v = secret.data.get(k).ok_or_else(|| format!("no {k}"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|e| format!("{k}: {e}"))?;
        String::from_utf8(bytes).map_err(|e| format!("{k}: {e}"))
    };
    let pair = wisp_tls::CertifiedKey {
        cert_pem: value("tls.crt")?,
        key_pem: value("tls.key")?,
    };
    wisp_tls::certified_key(&pair, "tls.crt/tls.key").map_err(|e| format!("{e:#}"))
}

/// Serves the ingress over TLS on `listener` (HTTP/2 and HTTP/1.1 by ALPN), each connection
/// with the certificate of the Route its SNI names, until `shutdown`.
pub async fn serve_tls(
    ingress: Ingress,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), wisp_tls::TlsError> {
    let certs = Arc::new(Certificates::default());
    let config = wisp_tls::server_config_resolving(certs.clone(), &[b"h2", b"http/1.1"])?;
    tokio::join!(
        refresh(ingress.clone(), certs, shutdown.clone()),
        crate::proxy::serve_with_tls(ingress, listener, config, shutdown),
    );
    Ok(())
}
