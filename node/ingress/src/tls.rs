//! HTTPS for Routes: the node's TLS listener picks each connection's certificate by SNI from
//! the Secrets (type `tls`) that Routes name in `spec.tls.secretName`. The certificates are
//! read through the API with the node's credential (which may read a Secret only when a
//! Route of its namespace names it) and read again every [`REFRESH`], so a changed Secret is
//! served within seconds. A name no Route serves over HTTPS fails the handshake (rustls
//! answers with an alert), it never gets another host's certificate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wisp_api::{Route, Secret};
use wisp_http::rustls::server::{ClientHello, ResolvesServerCert};
use wisp_http::rustls::sign::CertifiedKey;

use crate::Ingress;

/// How often the certificates Routes name are read again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Certificates by host (`*.example.com` for a wildcard), swapped in whole.
#[derive(Default)]
pub struct Certificates {
    current: ArcSwap<ByHost>,
}

/// One snapshot of [`Certificates`].
#[derive(Default)]
struct ByHost {
    certs: HashMap<String, Arc<CertifiedKey>>,
    /// Every exact host some Route claims: a name here never falls back to a wildcard's
    /// certificate (another Route, maybe another namespace's, serves it).
    exact: HashSet<String>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("hosts", &self.current.load().certs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Certificates {
    /// The certificate for `name`: its own host's, else — when no Route claims the name
    /// itself — a wildcard one level up.
    pub fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let map = self.current.load();
        if let Some(k) = map.certs.get(&name) {
            return Some(k.clone());
        }
        if map.exact.contains(&name) {
            return None;
        }
        let (_, parent) = name.split_once('.')?;
        map.certs.get(&format!("*.{parent}")).cloned()
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

/// For each host some Route claims: the Secret that serves it over HTTPS, if any. A host
/// belongs to the namespace whose Route claimed it first, as in the route table (`table.rs`);
/// among that namespace's Routes for the host, the first created with `tls` names the Secret.
/// A Secret by namespace and name.
type SecretId = (String, String);

fn wanted(routes: &[Arc<Route>]) -> (HashMap<String, Option<SecretId>>, HashSet<String>) {
    let mut sorted: Vec<&Arc<Route>> = routes.iter().collect();
    let claim = |r: &Route| {
        (
            r.metadata.creation_timestamp.clone().unwrap_or_default(),
            r.metadata.namespace.clone().unwrap_or_default(),
            r.metadata.name.clone(),
        )
    };
    sorted.sort_by_key(|r| claim(r));
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut secret: HashMap<String, Option<SecretId>> = HashMap::new();
    for r in sorted {
        let (Some(host), Some(ns)) = (r.spec.host.as_ref(), r.metadata.namespace.as_ref()) else {
            continue;
        };
        let host = host.to_ascii_lowercase();
        if owner.entry(host.clone()).or_insert_with(|| ns.clone()) != ns {
            continue;
        }
        let entry = secret.entry(host).or_insert(None);
        if entry.is_none()
            && let Some(tls) = &r.spec.tls
        {
            *entry = Some((ns.clone(), tls.secret_name.clone()));
        }
    }
    let exact = secret.keys().filter(|h| !h.starts_with("*.")).cloned().collect();
    (secret, exact)
}

/// Reads the certificates the Routes name into `certs`, every [`REFRESH`], until `shutdown`.
/// Each Secret is read once per round however many Routes name it; one that cannot be read
/// this round (the API busy or restarting) keeps serving what was read before.
async fn refresh(ingress: Ingress, certs: Arc<Certificates>, shutdown: CancellationToken) {
    let mut loaded: HashMap<SecretId, Loaded> = HashMap::new();
    loop {
        let (by_host, exact) = wanted(&ingress.inner.caches.routes.list());
        let secrets: HashSet<SecretId> = by_host.values().flatten().cloned().collect();
        for id in &secrets {
            let (ns, name) = id;
            match ingress.inner.client.api::<Secret>(Some(ns)).get_opt(name).await {
                Ok(Some(secret)) => {
                    let version = secret.metadata.resource_version.clone().unwrap_or_default();
                    if loaded.get(id).is_none_or(|l| l.version != version) {
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
                }
                Ok(None) => {
                    loaded.remove(id);
                }
                Err(e) => {
                    tracing::debug!(namespace = %ns, secret = %name, error = %e, "cannot read a Route's certificate: keeping the last one read");
                }
            }
        }
        loaded.retain(|id, _| secrets.contains(id));
        let certs_now = by_host
            .into_iter()
            .filter_map(|(host, id)| Some((host, loaded.get(&id?)?.key.clone()?)))
            .collect();
        certs.current.store(Arc::new(ByHost {
            certs: certs_now,
            exact,
        }));
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

#[cfg(test)]
mod tests {
    use wisp_api::{ObjectMeta, Resource, RouteTls};

    use super::*;

    fn route(ns: &str, name: &str, created: &str, host: &str, secret: Option<&str>) -> Arc<Route> {
        let mut r = Route::new(ObjectMeta::namespaced(ns, name));
        r.metadata.creation_timestamp = Some(created.into());
        r.spec.host = Some(host.into());
        r.spec.tls = secret.map(|s| RouteTls {
            secret_name: s.into(),
            issuer: None,
        });
        Arc::new(r)
    }

    #[test]
    fn a_host_gets_the_certificate_of_the_namespace_that_claimed_it_first() {
        let (by_host, exact) = wanted(&[
            route(
                "late",
                "r",
                "2026-01-02T00:00:00Z",
                "app.example.com",
                Some("theirs"),
            ),
            route(
                "first",
                "r",
                "2026-01-01T00:00:00Z",
                "app.example.com",
                Some("ours"),
            ),
            route(
                "first",
                "plain",
                "2026-01-01T00:00:00Z",
                "other.example.com",
                None,
            ),
            route("wild", "r", "2026-01-01T00:00:00Z", "*.example.com", Some("wild")),
        ]);
        assert_eq!(
            by_host["app.example.com"],
            Some(("first".to_owned(), "ours".to_owned())),
            "the later claim of another namespace gets nothing"
        );
        assert_eq!(by_host["other.example.com"], None, "claimed without tls");
        assert!(exact.contains("other.example.com") && !exact.contains("*.example.com"));

        let ca = wisp_tls::Ca::create().expect("ca");
        let key = |h: &str| {
            wisp_tls::certified_key(&ca.issue(&[h.to_owned()], true).expect("issue"), h).expect("key")
        };
        let certs = Certificates::default();
        certs.current.store(Arc::new(ByHost {
            certs: [("*.example.com".to_owned(), key("*.example.com"))].into(),
            exact,
        }));
        assert!(
            certs.lookup("new.example.com").is_some(),
            "the wildcard covers an unclaimed name"
        );
        assert!(
            certs.lookup("other.example.com").is_none(),
            "never the wildcard's certificate for a host another Route claims"
        );
        assert!(certs.lookup("a.b.example.com").is_none(), "one level only");
        assert!(certs.lookup("example.org").is_none());
    }
}
