//! Wasm components as OCI artifacts, in the layout Spin, wkg and the CNCF Wasm working group
//! use: a manifest whose config has media type `application/vnd.wasm.config.v0+json` and whose
//! one layer is the component (`application/wasm`). [`push`] publishes one, [`pull`] fetches
//! one and verifies it: the manifest against a pinned digest, the layer against the digest the
//! manifest names. This crate owns the registry protocol (through `oci-client`) and nothing
//! else: who may pull what, where it is cached and which addresses may be reached are the
//! caller's.

use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest as _;
use wisp_api::OciRef;

/// The component layer's media type.
pub const WASM_LAYER: &str = "application/wasm";
/// The artifact's config media type.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Components larger than this are not pulled (a registry that streams forever ends there).
pub const MAX_COMPONENT_BYTES: i64 = 512 * 1024 * 1024;

/// Registry credentials (HTTP basic, or exchanged for a bearer token when the registry asks).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{reference}: not found in the registry (no such repository, tag or digest)")]
    NotFound { reference: String },
    #[error("{reference}: the registry refused the credentials{}", if *.anonymous { " (none were given: name a Secret of type registry in imagePullSecrets)" } else { "" })]
    Unauthorized { reference: String, anonymous: bool },
    #[error("{reference}: the manifest's digest is {got}, not the {expected} the reference pins")]
    ManifestDigest {
        reference: String,
        expected: String,
        got: String,
    },
    #[error("{reference}: not a Wasm component artifact: {why}")]
    NotAComponent { reference: String, why: String },
    #[error("{reference}: {what}")]
    Registry {
        reference: String,
        what: &'static str,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
}

/// A pulled component: its bytes and the digests it was checked against.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest's digest (`sha256:…`): what a tag pointed at.
    pub manifest_digest: String,
    /// The component's digest (`sha256:…`), as the manifest names it and the bytes hash to.
    pub component_digest: String,
    /// `None` when `cached` had the component (only the manifest was fetched).
    pub bytes: Option<Bytes>,
}

/// Whether `registry` (`host[:port]`) is spoken to in plain HTTP: on loopback, as Docker does.
pub fn plain_http(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn client(reference: &OciRef) -> Client {
    // reqwest is built with rustls and no default crypto provider: ring, as wasmtime-wasi-http
    // uses (installing twice is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // As Docker: registries on loopback speak plain HTTP, all others HTTPS.
    let protocol = if plain_http(&reference.registry) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(5)),
        read_timeout: Some(std::time::Duration::from_secs(30)),
        ..ClientConfig::default()
    })
}

fn oci_reference(r: &OciRef) -> Reference {
    match (&r.tag, &r.digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(r.registry.clone(), r.repository.clone(), t.clone(), d.clone())
        }
        (_, Some(d)) => Reference::with_digest(r.registry.clone(), r.repository.clone(), d.clone()),
        (Some(t), None) => Reference::with_tag(r.registry.clone(), r.repository.clone(), t.clone()),
        (None, None) => Reference::with_tag(r.registry.clone(), r.repository.clone(), "latest".into()),
    }
}

fn auth(creds: Option<&Credentials>) -> RegistryAuth {
    creds.map_or(RegistryAuth::Anonymous, |c| {
        RegistryAuth::Basic(c.username.clone(), c.password.clone())
    })
}

fn registry_error(
    reference: &OciRef,
    what: &'static str,
    anonymous: bool,
    e: oci_client::errors::OciDistributionError,
) -> OciError {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let codes: Vec<&C> = match &e {
        E::RegistryError { envelope, .. } => envelope.errors.iter().map(|x| &x.code).collect(),
        _ => Vec::new(),
    };
    let status = match &e {
        E::ServerError { code, .. } => Some(*code),
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => Some(401),
        E::ImageManifestNotFoundError(_) => Some(404),
        _ => None,
    };
    let not_found = status == Some(404)
        || codes.iter().any(|c| {
            matches!(
                c,
                C::ManifestUnknown | C::NameUnknown | C::BlobUnknown | C::NotFound | C::ManifestBlobUnknown
            )
        });
    let refused =
        matches!(status, Some(401 | 403)) || codes.iter().any(|c| matches!(c, C::Unauthorized | C::Denied));
    if not_found {
        OciError::NotFound {
            reference: reference.to_string(),
        }
    } else if refused {
        OciError::Unauthorized {
            reference: reference.to_string(),
            anonymous,
        }
    } else {
        OciError::Registry {
            reference: reference.to_string(),
            what,
            source: e,
        }
    }
}

/// A buffer that refuses to grow past `limit` bytes.
struct Limited {
    bytes: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for Limited {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len() + buf.len() > self.limit {
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "the registry sent more than the {} bytes the manifest declares",
                self.limit
            ))));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The longest message a registry's answer may put in a pod's status.
const MAX_MESSAGE: usize = 300;

/// `e` and its causes on one line (`a: b: c`), for a pod's condition message.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    // A registry's error body is the registry's text: kept short in a pod's status.
    if out.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Publish `component` at `reference` (a tag); returns the manifest's digest (the bytes pushed
/// are the bytes hashed, so the digest pins exactly what was pushed).
pub async fn push(
    reference: &OciRef,
    component: Bytes,
    creds: Option<&Credentials>,
) -> Result<String, OciError> {
    let client = client(reference);
    let image = oci_reference(reference);
    let anonymous = creds.is_none();
    let fail = |what| move |e| registry_error(reference, what, anonymous, e);
    let layers = [ImageLayer::new(component.clone(), WASM_LAYER.to_owned(), None)];
    let config = Config::new(Bytes::from_static(b"{}"), WASM_CONFIG.to_owned(), None);
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    manifest.artifact_type = Some(WASM_CONFIG.to_owned());
    manifest.media_type = Some(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_owned());
    let body = serde_json::to_vec(&manifest).map_err(|e| OciError::NotAComponent {
        reference: reference.to_string(),
        why: format!("cannot encode the manifest: {e}"),
    })?;
    client
        .store_auth_if_needed(image.resolve_registry(), &auth(creds))
        .await;
    client
        .push_blob(&image, component, &manifest.layers[0].digest)
        .await
        .map_err(fail("cannot push the component"))?;
    client
        .push_blob(&image, config.data.clone(), &manifest.config.digest)
        .await
        .map_err(fail("cannot push the config"))?;
    client
        .push_manifest_raw(
            &image,
            Bytes::from(body.clone()),
            http::HeaderValue::from_static(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE),
        )
        .await
        .map_err(fail("cannot push the manifest"))?;
    Ok(digest_of(&body))
}

/// Fetch the component at `reference` with `creds`: the manifest always (so access is checked
/// with these credentials every time), the component only when `cached` does not have its
/// digest. A pinned manifest digest and the component's digest are verified.
pub async fn pull(
    reference: &OciRef,
    creds: Option<&Credentials>,
    cached: impl Fn(&str) -> bool,
) -> Result<Pulled, OciError> {
    let client = client(reference);
    let image = oci_reference(reference);
    let anonymous = creds.is_none();
    let (raw, _) = client
        .pull_manifest_raw(
            &image,
            &auth(creds),
            &[
                oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
                oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
            ],
        )
        .await
        .map_err(|e| registry_error(reference, "cannot read the manifest", anonymous, e))?;
    let manifest_digest = digest_of(&raw);
    if let Some(expected) = &reference.digest
        && *expected != manifest_digest
    {
        return Err(OciError::ManifestDigest {
            reference: reference.to_string(),
            expected: expected.clone(),
            got: manifest_digest,
        });
    }
    let not_component = |why: String| OciError::NotAComponent {
        reference: reference.to_string(),
        why,
    };
    let manifest: OciManifest = serde_json::from_slice(&raw)
        .map_err(|e| not_component(format!("its manifest does not parse: {e}")))?;
    let OciManifest::Image(manifest) = manifest else {
        return Err(not_component("it is an image index, not one manifest".into()));
    };
    let layers: Vec<_> = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == WASM_LAYER)
        .collect();
    let [layer] = layers.as_slice() else {
        let types: Vec<&str> = manifest.layers.iter().map(|l| l.media_type.as_str()).collect();
        return Err(not_component(format!(
            "it needs exactly one layer of type {WASM_LAYER}; its layers are [{}]",
            types.join(", ")
        )));
    };
    if layer.size > MAX_COMPONENT_BYTES {
        return Err(not_component(format!(
            "its component is {} bytes, more than {MAX_COMPONENT_BYTES}",
            layer.size
        )));
    }
    let component_digest = layer.digest.clone();
    if !component_digest.starts_with("sha256:") {
        return Err(not_component(format!(
            "its component's digest {component_digest} is not sha256"
        )));
    }
    if cached(&component_digest) {
        return Ok(Pulled {
            manifest_digest,
            component_digest,
            bytes: None,
        });
    }
    // No more than the manifest said: a registry that sends more is cut off, not buffered.
    let mut out = Limited {
        bytes: Vec::with_capacity(usize::try_from(layer.size).unwrap_or(0).min(64 << 20)),
        limit: usize::try_from(layer.size).unwrap_or(0),
    };
    client
        .pull_blob(&image, *layer, &mut out)
        .await
        .map_err(|e| registry_error(reference, "cannot read the component", anonymous, e))?;
    let out = out.bytes;
    // pull_blob checks the digest as it reads; checked again here on what is returned.
    if digest_of(&out) != component_digest {
        return Err(not_component(format!(
            "the component's bytes hash to {}, not the {component_digest} its manifest names",
            digest_of(&out)
        )));
    }
    Ok(Pulled {
        manifest_digest,
        component_digest,
        bytes: Some(Bytes::from(out)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_map_to_the_registry_protocol() {
        let r = OciRef::parse("127.0.0.1:5000/team/hello:v1").expect("parses");
        let image = oci_reference(&r);
        assert_eq!(image.registry(), "127.0.0.1:5000");
        assert_eq!(image.repository(), "team/hello");
        assert_eq!(image.tag(), Some("v1"));
        let pinned = OciRef::parse(&format!("ghcr.io/x/y@sha256:{}", "0".repeat(64))).expect("parses");
        assert_eq!(oci_reference(&pinned).digest(), pinned.digest.as_deref());
        assert_eq!(
            format!(
                "{:?}",
                Credentials {
                    username: "u".into(),
                    password: "p".into()
                }
            ),
            "Credentials(u, <password>)"
        );
    }
}
