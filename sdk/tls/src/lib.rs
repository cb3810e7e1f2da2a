//! wisp-tls owns the cluster's TLS material and how it is used: the cluster CA made on first
//! start (ECDSA P-256, by rcgen), the serving certificates it issues, rustls server and client
//! configurations (ring, TLS 1.2 and 1.3), the CA's fingerprint that pins it at join, and the
//! private files and directories the keys live in (0600 and 0700 whatever the umask).
//!
//! It must not open sockets or know what a server serves: wisp-http terminates TLS with the
//! configurations built here, and wisp-client connects with them.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

pub use rustls;

/// Every failure, naming the file or the name at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what}")]
    Pem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
}

pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// The cluster CA's subject (it vouches for the API server). The issuer of every certificate
/// is rebuilt from a CA's subject and key (rcgen reads no certificates), so it never changes.
pub const CLUSTER_CA: &str = "wisp cluster CA";
/// The subject of the CA that issues Routes' certificates (`tls.issuer: cluster`): another
/// CA, so that a tenant's certificate is never one the CLI and nodes trust for the API.
pub const ROUTES_CA: &str = "wisp routes CA";
/// The subject of the CA each node makes for itself at start (kept in memory only), which
/// signs the certificate its agent serves with: the node publishes it in its Node's
/// `status.agentCa`, written with its own credential, and whoever reaches that agent (the API
/// server, another node, the autoscaler) trusts it for that node only.
pub const NODE_CA: &str = "wisp node CA";
/// The CA's lifetime, and a serving certificate's.
const CA_YEARS: i16 = 10;
const LEAF_DAYS: i64 = 365;
/// A serving certificate this close to its end is issued again at start.
const RENEW_DAYS: i64 = 60;

/// A certificate chain and its private key, PEM.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA: its certificate and key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    name: &'static str,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "wisp");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Valid from `from` to `to`, days from today (UTC).
fn validity(p: &mut CertificateParams, from: i64, to: i64) {
    let ymd = |days| {
        let d = jiff_day(days);
        rcgen::date_time_ymd(
            i32::from(d.year()),
            u8::try_from(d.month()).unwrap_or(1),
            u8::try_from(d.day()).unwrap_or(1),
        )
    };
    p.not_before = ymd(from);
    p.not_after = ymd(to);
}

fn jiff_day(days: i64) -> jiff::civil::Date {
    let today = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    today.checked_add(jiff::Span::new().days(days)).unwrap_or(today)
}

fn cert_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> TlsError {
    let what = what.into();
    move |source| TlsError::Certificate { what, source }
}

impl Ca {
    /// A new cluster CA, valid from yesterday (clocks differ) for ten years.
    pub fn create() -> Result<Self> {
        Self::create_named(CLUSTER_CA)
    }

    /// A new CA with subject `name` ([`CLUSTER_CA`] or [`ROUTES_CA`]).
    pub fn create_named(name: &'static str) -> Result<Self> {
        let key = KeyPair::generate().map_err(cert_error("cannot generate the CA's key"))?;
        let mut p = ca_params(name);
        validity(&mut p, -1, i64::from(CA_YEARS) * 365);
        let cert = p.self_signed(&key).map_err(cert_error("cannot sign the CA"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
            name,
        })
    }

    /// The CA with subject `name` in `dir` (`ca.crt`, `ca.key`; made 0700), made there on
    /// first use.
    pub fn in_dir(dir: &Path, name: &'static str) -> Result<Self> {
        private_dir(dir)?;
        if !dir.join("ca.key").exists() {
            let ca = Self::create_named(name)?;
            ca.save(dir)?;
            return Ok(ca);
        }
        let cert_pem = read(&dir.join("ca.crt"))?;
        let key_path = dir.join("ca.key");
        let key = KeyPair::from_pem(&read(&key_path)?)
            .map_err(cert_error(format!("{} is not a private key", key_path.display())))?;
        Ok(Self { cert_pem, key, name })
    }

    /// Its certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn save(&self, dir: &Path) -> Result<()> {
        write_private(&dir.join("ca.key"), self.key.serialize_pem().as_bytes())?;
        write_private(&dir.join("ca.crt"), self.cert_pem.as_bytes())
    }

    /// A certificate for `names` (DNS names or IP addresses) valid for a year: for serving
    /// (`server`) or for a client's identity. The chain is the certificate, then the CA.
    pub fn issue(&self, names: &[String], server: bool) -> Result<CertifiedKey> {
        let key = KeyPair::generate().map_err(cert_error("cannot generate a key"))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().map_or("wisp", String::as_str));
        p.distinguished_name = dn;
        for name in names {
            p.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(cert_error(format!("{name:?} is not a DNS name")))?,
                ),
            });
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, -1, LEAF_DAYS);
        let issuer = Issuer::new(ca_params(self.name), &self.key);
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(cert_error(format!("cannot issue a certificate for {names:?}")))?;
        Ok(CertifiedKey {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Whether `pem` is one certificate of a node's own CA (subject [`NODE_CA`], as
/// [`node`] makes it): what others trust for a node's port. The cluster's and the Routes' CAs
/// and public roots are not, so a node cannot have a caller trust one of those for it.
pub fn is_node_ca(pem: &str) -> bool {
    let Ok(certs) = certs(pem, "the node's CA") else {
        return false;
    };
    // rcgen writes the common name as a UTF8String: tag 0x0c, its length, the bytes.
    let mut name = vec![0x0c, u8::try_from(NODE_CA.len()).unwrap_or(0)];
    name.extend_from_slice(NODE_CA.as_bytes());
    matches!(certs.as_slice(), [ca] if ca.as_ref().windows(name.len()).any(|w| w == name.as_slice()))
}

/// A node's serving TLS: its own CA (published in its Node) and what its agent serves with.
pub struct NodeTls {
    /// The node CA's certificate, PEM (`Node.status.agentCa`).
    pub ca_pem: String,
    /// A certificate for `address` from that CA, HTTP/1.1.
    pub server: Arc<rustls::ServerConfig>,
}

/// A fresh node CA and a serving certificate for the node's `address` (an IP address or DNS
/// name), both in memory: a restarted node makes new ones and publishes the new CA when it
/// registers, before it serves.
pub fn node(address: &str) -> Result<NodeTls> {
    let ca = Ca::create_named(NODE_CA)?;
    let serving = ca.issue(&[address.to_owned()], true)?;
    Ok(NodeTls {
        server: server_config(&serving, &[b"http/1.1"])?,
        ca_pem: ca.cert_pem,
    })
}

/// The cluster's TLS as a server finds it in its data directory.
pub struct ClusterTls {
    /// The CA's certificate, PEM: what clients trust.
    pub ca_pem: String,
    /// The serving certificate (chain) and key.
    pub serving: CertifiedKey,
    /// The CA, to issue more certificates.
    pub ca: Ca,
}

/// The cluster CA and a serving certificate for `names` in `dir` (made 0700): the CA is made
/// on first start; the serving certificate is issued again when the names change or it nears
/// its end. Keys are written 0600.
pub fn cluster(dir: &Path, names: &[String]) -> Result<ClusterTls> {
    let ca = Ca::in_dir(dir, CLUSTER_CA)?;
    // What the serving certificate was issued for, and until when (rcgen reads no
    // certificates back).
    let meta_path = dir.join("server.names");
    let wanted = names.join("\n");
    let current = std::fs::read_to_string(&meta_path).ok().and_then(|m| {
        let (until, issued_for) = m.split_once('\n')?;
        let until: jiff::civil::Date = until.parse().ok()?;
        (issued_for == wanted && until > jiff_day(RENEW_DAYS)).then_some(())
    });
    let serving = match (
        current,
        read(&dir.join("server.crt")),
        read(&dir.join("server.key")),
    ) {
        (Some(()), Ok(cert_pem), Ok(key_pem)) => CertifiedKey { cert_pem, key_pem },
        _ => {
            let issued = ca.issue(names, true)?;
            write_private(&dir.join("server.key"), issued.key_pem.as_bytes())?;
            write_private(&dir.join("server.crt"), issued.cert_pem.as_bytes())?;
            write_private(
                &meta_path,
                format!("{}\n{wanted}", jiff_day(LEAF_DAYS)).as_bytes(),
            )?;
            issued
        }
    };
    Ok(ClusterTls {
        ca_pem: ca.cert_pem.clone(),
        serving,
        ca,
    })
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        what: "cannot read",
        path: path.to_owned(),
        source,
    })
}

/// From now on this process creates files 0600 and directories 0700 at most (umask 077),
/// whatever umask it was started with: a server's store, WAL, blobs and keys.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `dir` (and its parents) and makes it 0700, whatever the umask or its mode was.
pub fn private_dir(dir: &Path) -> Result<()> {
    let io = |source| TlsError::Io {
        what: "cannot create the private directory",
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `bytes` to `path` as a new file of mode 0600 (written beside it, then renamed over
/// it: a reader never sees half a key).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| TlsError::Io {
        what: "cannot write",
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The certificates in `pem`.
pub fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: format!("{what}: not a PEM certificate"),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: format!("{what}: no certificate in it"),
            source: rustls::pki_types::pem::Error::NoItemsFound,
        });
    }
    Ok(certs)
}

fn key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| TlsError::Pem {
        what: format!("{what}: not a PEM private key"),
        source,
    })
}

/// `sha256:<hex>` of the first certificate in `pem` (its DER): what pins a CA at join.
pub fn fingerprint(pem: &str) -> Result<String> {
    let cert = certs(pem, "the CA")?.remove(0);
    Ok(der_fingerprint(&cert))
}

/// A certificate's fingerprint (`sha256:<hex>` of its DER), as [`fingerprint`] gives it.
pub fn der_fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(cert.as_ref())))
}

/// A certificate as PEM.
pub fn der_to_pem(cert: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The certificate of `chain` (as a server showed it in its handshake) whose fingerprint is
/// `hash`, as PEM: the CA a node pins at join (`wisp node --ca-cert-hash`). `None` when the
/// chain holds no such certificate.
pub fn pinned_in_chain(chain: &[CertificateDer<'_>], hash: &str) -> Option<String> {
    let hash = hash.trim().to_ascii_lowercase();
    chain
        .iter()
        .find(|c| der_fingerprint(c) == hash)
        .map(|c| der_to_pem(c))
}

/// Reads a server's certificate chain without trusting it, for [`pinned_in_chain`]; the
/// connection that follows verifies the server against the CA found there. It still checks
/// the handshake's signatures: the server holds the key of the certificate it shows.
#[derive(Debug)]
struct ChainReader(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for ChainReader {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration that reads a server's chain without trusting it (see
/// [`pinned_in_chain`]): never for a connection that sends anything.
pub fn chain_reading_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring offers the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainReader(provider())))
        .with_no_client_auth()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn rustls_error(what: impl Into<String>) -> impl FnOnce(rustls::Error) -> TlsError {
    let what = what.into();
    move |source| TlsError::Rustls { what, source }
}

/// A server configuration with one certificate: the chain and key in PEM, ALPN `alpn`
/// (e.g. `h2`, `http/1.1`, in order of preference).
pub fn server_config(serving: &CertifiedKey, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error("TLS versions"))?
        .with_no_client_auth()
        .with_single_cert(
            certs(&serving.cert_pem, "the serving certificate")?,
            key(&serving.key_pem, "the serving key")?,
        )
        .map_err(rustls_error("the serving certificate does not match its key"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A server configuration that picks the certificate by SNI through `resolver`.
pub fn server_config_resolving(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error("TLS versions"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A rustls certified key (for a resolver) from PEM.
pub fn certified_key(serving: &CertifiedKey, what: &str) -> Result<Arc<rustls::sign::CertifiedKey>> {
    let certs = certs(&serving.cert_pem, what)?;
    let key = key(&serving.key_pem, what)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(rustls_error(format!("{what}: the key cannot sign")))?;
    let ck = rustls::sign::CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(rustls_error(format!(
        "{what}: the certificate does not match its key"
    )))?;
    Ok(Arc::new(ck))
}

/// A client configuration trusting the public web's roots.
pub fn web_client_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring offers the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client configuration trusting the CA(s) in `ca_pem` only, or, without one, the public
/// web's roots (an operator's certificate from a public CA).
pub fn client_config(ca_pem: Option<&str>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in certs(pem, "the CA")? {
                roots
                    .add(cert)
                    .map_err(rustls_error("the CA certificate is not usable"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error("TLS versions"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    #[test]
    fn the_cluster_ca_is_made_once_and_its_files_are_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("data/pki");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = cluster(&dir, &names).expect("first start");
        let again = cluster(&dir, &names).expect("second start");
        assert_eq!(first.ca_pem, again.ca_pem, "the CA is kept");
        assert_eq!(
            first.serving.cert_pem, again.serving.cert_pem,
            "so is the serving certificate"
        );
        assert_eq!(std::fs::metadata(&dir).expect("dir").mode() & 0o777, 0o700);
        for f in ["ca.key", "ca.crt", "server.key", "server.crt"] {
            let mode = std::fs::metadata(dir.join(f)).expect(f).mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}: {mode:o}");
        }
        let other = cluster(&dir, &["localhost".to_owned(), "10.0.0.7".to_owned()]).expect("names");
        assert_eq!(other.ca_pem, first.ca_pem);
        assert_ne!(
            other.serving.cert_pem, first.serving.cert_pem,
            "new names, new certificate"
        );
        assert!(fingerprint(&first.ca_pem).expect("fp").starts_with("sha256:"));
    }

    #[test]
    fn only_a_node_ca_is_one() {
        let node_ca = Ca::create_named(NODE_CA).expect("node ca");
        assert!(is_node_ca(node_ca.cert_pem()));
        assert!(is_node_ca(&node("127.0.0.1").expect("node").ca_pem));
        for (pem, why) in [
            (Ca::create().expect("ca").cert_pem().to_owned(), "the cluster CA"),
            (
                Ca::create_named(ROUTES_CA).expect("ca").cert_pem().to_owned(),
                "the routes CA",
            ),
            (format!("{0}{0}", node_ca.cert_pem()), "two certificates"),
            ("not a certificate".to_owned(), "no PEM"),
        ] {
            assert!(!is_node_ca(&pem), "{why}");
        }
    }

    #[test]
    fn the_ca_is_found_in_a_chain_by_its_fingerprint_only() {
        let ca = Ca::create().expect("ca");
        let issued = ca.issue(&["127.0.0.1".to_owned()], true).expect("issue");
        let chain = certs(&issued.cert_pem, "chain").expect("certs");
        let hash = fingerprint(ca.cert_pem()).expect("fp");
        let found = pinned_in_chain(&chain, &hash.to_ascii_uppercase().replace("SHA256", "sha256"))
            .expect("the CA, by its fingerprint");
        assert_eq!(
            certs(&found, "found").expect("PEM")[0],
            certs(ca.cert_pem(), "ca").expect("ca")[0],
            "the PEM written is the CA's certificate"
        );
        let leaf = der_fingerprint(&chain[0]);
        assert_ne!(leaf, hash);
        assert!(pinned_in_chain(&chain, &format!("sha256:{}", "0".repeat(64))).is_none());
        assert!(
            pinned_in_chain(&chain[..1], &hash).is_none(),
            "a chain without the CA"
        );
    }

    #[test]
    fn a_certificate_is_verified_against_its_ca_for_its_names_only() {
        let ca = Ca::create().expect("ca");
        let issued = ca
            .issue(&["api.example.test".to_owned(), "127.0.0.1".to_owned()], true)
            .expect("issue");
        let chain = certs(&issued.cert_pem, "chain").expect("certs");
        assert_eq!(chain.len(), 2, "the certificate, then the CA");
        client_config(Some(ca.cert_pem())).expect("a client trusting the CA");
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(certs(ca.cert_pem(), "ca").expect("ca")[0].clone())
                .expect("root");
            Arc::new(r)
        };
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .expect("verifier");
        let now = rustls::pki_types::UnixTime::now();
        let check = |name: &str| {
            v.verify_server_cert(
                &chain[0],
                &chain[1..],
                &rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name"),
                &[],
                now,
            )
        };
        assert!(check("api.example.test").is_ok());
        assert!(check("127.0.0.1").is_ok());
        assert!(
            check("other.example.test").is_err(),
            "a name it was not issued for"
        );
        let stranger = Ca::create().expect("another CA");
        let forged = stranger
            .issue(&["api.example.test".to_owned()], true)
            .expect("issue");
        let forged = certs(&forged.cert_pem, "forged").expect("certs");
        assert!(
            v.verify_server_cert(
                &forged[0],
                &[],
                &rustls::pki_types::ServerName::try_from("api.example.test").expect("name"),
                &[],
                now
            )
            .is_err(),
            "another CA's certificate"
        );
    }
}
