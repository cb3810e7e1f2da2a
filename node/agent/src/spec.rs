//! From a pod to what its sandboxes need: the component or image, exactly the declared
//! environment (ConfigMap and Secret values resolved through the API), volumes written under
//! the pod's directory and mounted where the containers ask, limits and labels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use wisp_api::{ConfigMap, Container, EnvVar, Pod, RESOURCE_CPU, RESOURCE_MEMORY, RESOURCE_PIDS, Secret};
use wisp_client::Client;
use wisp_sandbox::{
    Kind, LABEL_CONTAINER, LABEL_NAMESPACE, LABEL_POD, LABEL_POD_UID, Limits, Mount, SandboxId, SandboxSpec,
    Source,
};

/// Why a pod cannot be prepared: a container waiting reason and a message naming what is
/// wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct PrepareError {
    pub reason: &'static str,
    pub message: String,
}

pub const REASON_CONFIG: &str = "CreateContainerConfigError";

fn config_error(message: String) -> PrepareError {
    PrepareError {
        reason: REASON_CONFIG,
        message,
    }
}

/// The sandbox id of a pod's container.
pub fn sandbox_id(pod: &Pod, container: &str) -> SandboxId {
    SandboxId::new(pod.metadata.uid.as_deref().unwrap_or_default(), container)
}

/// The credentials for the registry of `reference` among the pod's `imagePullSecrets`
/// (Secrets of type `registry` whose `server` is that registry); none: anonymous.
async fn registry_credentials(
    client: &Client,
    ns: &str,
    pod: &Pod,
    reference: &str,
    lookups: &mut Lookups,
) -> Result<Option<wisp_oci::Credentials>, PrepareError> {
    let registry = reference.split('/').next().unwrap_or_default();
    for r in &pod.spec.image_pull_secrets {
        let Some(secret) = lookups.secret(client, ns, &r.name).await? else {
            return Err(config_error(format!(
                "imagePullSecrets: Secret {ns}/{} does not exist",
                r.name
            )));
        };
        if secret.type_ != wisp_api::SECRET_TYPE_REGISTRY {
            continue;
        }
        let values = secret_values(secret)?;
        let text = |k: &str| {
            values
                .get(k)
                .map(|v| String::from_utf8_lossy(v).trim().to_owned())
        };
        if text("server").as_deref() == Some(registry) {
            return Ok(Some(wisp_oci::Credentials {
                username: text("username").unwrap_or_default(),
                password: text("password").unwrap_or_default(),
            }));
        }
    }
    Ok(None)
}

/// Where a container's code comes from.
pub fn source_of(c: &Container) -> Result<Source, PrepareError> {
    if let Some(wasm) = c.wasm.as_deref().filter(|w| !w.is_empty()) {
        // Only a digest of a blob uploaded to the API: never a path on this node's disk (the
        // API refuses anything else; this holds also for a pod written before it did).
        if wasm.starts_with("sha256:") {
            return Ok(Source::WasmDigest(wasm.to_owned()));
        }
        return Err(config_error(format!(
            "container {:?}: wasm {wasm:?} is not a blob digest (sha256:…); components are uploaded \
             to the API and named by digest, never by a path on the node",
            c.name
        )));
    }
    match c.image.as_deref().filter(|i| !i.is_empty()) {
        Some(image) => Ok(Source::Image(image.to_owned())),
        None => Err(config_error(format!(
            "container {:?}: neither wasm nor image is set",
            c.name
        ))),
    }
}

/// When to pull a container's image: as its `imagePullPolicy` says, else as Kubernetes does
/// (`Always` for `:latest` or an untagged image, `IfNotPresent` otherwise).
pub fn pull_policy(c: &Container) -> wisp_sandbox::PullPolicy {
    use wisp_api::PullPolicy as P;
    match c.image_pull_policy {
        Some(P::Always) => wisp_sandbox::PullPolicy::Always,
        Some(P::Never) => wisp_sandbox::PullPolicy::Never,
        Some(P::IfNotPresent) => wisp_sandbox::PullPolicy::IfNotPresent,
        None => {
            let image = c.image.as_deref().unwrap_or_default();
            let name = image.rsplit('/').next().unwrap_or(image);
            let pinned = image.contains('@');
            let tag = name.split_once(':').map(|(_, t)| t);
            if !pinned && tag.is_none_or(|t| t == "latest") {
                wisp_sandbox::PullPolicy::Always
            } else {
                wisp_sandbox::PullPolicy::IfNotPresent
            }
        }
    }
}

/// ConfigMaps and Secrets read once per preparation.
#[derive(Default)]
struct Lookups {
    config_maps: BTreeMap<String, Option<ConfigMap>>,
    secrets: BTreeMap<String, Option<Secret>>,
}

impl Lookups {
    async fn config_map(
        &mut self,
        client: &Client,
        ns: &str,
        name: &str,
    ) -> Result<Option<&ConfigMap>, PrepareError> {
        if !self.config_maps.contains_key(name) {
            let got = client
                .api::<ConfigMap>(Some(ns))
                .get_opt(name)
                .await
                .map_err(|e| config_error(format!("cannot read ConfigMap {ns}/{name}: {e}")))?;
            self.config_maps.insert(name.to_owned(), got);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    async fn secret(
        &mut self,
        client: &Client,
        ns: &str,
        name: &str,
    ) -> Result<Option<&Secret>, PrepareError> {
        if !self.secrets.contains_key(name) {
            let got = client
                .api::<Secret>(Some(ns))
                .get_opt(name)
                .await
                .map_err(|e| config_error(format!("cannot read Secret {ns}/{name}: {e}")))?;
            self.secrets.insert(name.to_owned(), got);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }
}

/// A Secret's values, decoded (`data` is base64; `stringData` plain).
fn secret_values(s: &Secret) -> Result<BTreeMap<String, Vec<u8>>, PrepareError> {
    let mut out = BTreeMap::new();
    for (k, v) in &s.data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|e| config_error(format!("Secret {}: data.{k} is not base64: {e}", s.metadata.name)))?;
        out.insert(k.clone(), bytes);
    }
    for (k, v) in &s.string_data {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    Ok(out)
}

/// A ConfigMap's files: `data` as UTF-8 text, `binaryData` decoded from base64 (the API
/// keeps their keys apart).
fn config_map_files(cm: &ConfigMap) -> Result<BTreeMap<String, Vec<u8>>, PrepareError> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in &cm.binary_data {
        let bytes = base64::engine::general_purpose::STANDARD.decode(v).map_err(|e| {
            config_error(format!(
                "ConfigMap {}: binaryData.{k} is not base64: {e}",
                cm.metadata.name
            ))
        })?;
        out.insert(k.clone(), bytes);
    }
    Ok(out)
}

async fn env_value(
    client: &Client,
    ns: &str,
    container: &str,
    var: &EnvVar,
    lookups: &mut Lookups,
) -> Result<Option<String>, PrepareError> {
    if let Some(v) = &var.value {
        return Ok(Some(v.clone()));
    }
    let Some(from) = &var.value_from else {
        return Ok(Some(String::new()));
    };
    let what = |kind: &str, name: &str, key: &str| {
        format!(
            "container {container:?} env {}: {kind} {ns}/{name} has no key {key:?}",
            var.name
        )
    };
    if let Some(r) = &from.config_map_key_ref {
        let value = lookups
            .config_map(client, ns, &r.name)
            .await?
            .and_then(|cm| cm.data.get(&r.key).cloned());
        return match value {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => Err(config_error(what("ConfigMap", &r.name, &r.key))),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let value = match lookups.secret(client, ns, &r.name).await? {
            Some(s) => secret_values(s)?.remove(&r.key),
            None => None,
        };
        return match value {
            Some(v) => String::from_utf8(v).map(Some).map_err(|_| {
                config_error(format!(
                    "container {container:?} env {}: Secret {ns}/{} key {:?} is not UTF-8",
                    var.name, r.name, r.key
                ))
            }),
            None if r.optional == Some(true) => Ok(None),
            None => Err(config_error(what("Secret", &r.name, &r.key))),
        };
    }
    Ok(Some(String::new()))
}

fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<(), PrepareError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let io = |e: std::io::Error| config_error(format!("cannot write volume {}: {e}", dir.display()));
    // Only the agent's user may read what Secrets and ConfigMaps put on disk.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    for (name, data) in files {
        // Keys are validated by the API (no `/`, no `..`).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(name))
            .map_err(io)?;
        f.write_all(data).map_err(io)?;
    }
    Ok(())
}

/// Writes the pod's volumes under `pod_dir/volumes/<name>`; returns their host paths.
async fn volumes(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
    lookups: &mut Lookups,
) -> Result<BTreeMap<String, (PathBuf, bool)>, PrepareError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = BTreeMap::new();
    for v in &pod.spec.volumes {
        let dir = pod_dir.join("volumes").join(&v.name);
        if let Some(src) = &v.config_map {
            match lookups.config_map(client, ns, &src.name).await? {
                Some(cm) => write_files(&dir, &config_map_files(cm)?)?,
                None if src.optional == Some(true) => write_files(&dir, &BTreeMap::new())?,
                None => {
                    return Err(config_error(format!(
                        "volume {:?}: ConfigMap {ns}/{} not found",
                        v.name, src.name
                    )));
                }
            }
            out.insert(v.name.clone(), (dir, true));
        } else if let Some(src) = &v.secret {
            match lookups.secret(client, ns, &src.secret_name).await? {
                Some(s) => write_files(&dir, &secret_values(s)?)?,
                None if src.optional == Some(true) => write_files(&dir, &BTreeMap::new())?,
                None => {
                    return Err(config_error(format!(
                        "volume {:?}: Secret {ns}/{} not found",
                        v.name, src.secret_name
                    )));
                }
            }
            out.insert(v.name.clone(), (dir, true));
        } else {
            write_files(&dir, &BTreeMap::new())?;
            out.insert(v.name.clone(), (dir, false));
        }
    }
    Ok(out)
}

/// A container's sandbox spec, minus its kind (decided by the runtime from the code).
pub struct Draft {
    pub runtime: &'static str,
    pub spec: SandboxSpec,
}

/// Resolves everything a pod's containers need, in container order.
pub async fn drafts(
    client: &Client,
    oci: &crate::oci::OciCache,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<Vec<Draft>, PrepareError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut lookups = Lookups::default();
    let vols = volumes(client, pod, pod_dir, &mut lookups).await?;
    let mut out = Vec::new();
    for c in &pod.spec.containers {
        let source = match c.wasm.as_deref().and_then(|w| w.strip_prefix("oci://")) {
            Some(reference) => {
                let creds = registry_credentials(client, ns, pod, reference, &mut lookups).await?;
                Source::WasmDigest(oci.resolve(ns, reference, creds.as_ref()).await?)
            }
            None => source_of(c)?,
        };
        let mut env = Vec::new();
        for var in &c.env {
            if let Some(v) = env_value(client, ns, &c.name, var, &mut lookups).await? {
                env.push((var.name.clone(), v));
            }
        }
        let mounts = c
            .volume_mounts
            .iter()
            .filter_map(|m| {
                vols.get(&m.name).map(|(dir, forced_ro)| Mount {
                    host_path: dir.clone(),
                    guest_path: m.mount_path.clone(),
                    read_only: m.read_only || *forced_ro,
                })
            })
            .collect();
        let limit = |name: &str| c.resources.limits.get(name);
        let limits = Limits {
            memory_bytes: limit(RESOURCE_MEMORY).and_then(|q| u64::try_from(q.value()).ok()),
            cpu_millis: limit(RESOURCE_CPU).and_then(|q| u64::try_from(q.millis()).ok()),
            pids: limit(RESOURCE_PIDS).map(|q| q.value()),
            request_timeout: c.timeout_ms.map(Duration::from_millis),
        };
        let labels = BTreeMap::from([
            (
                LABEL_POD_UID.to_owned(),
                pod.metadata.uid.clone().unwrap_or_default(),
            ),
            (LABEL_NAMESPACE.to_owned(), ns.to_owned()),
            (LABEL_POD.to_owned(), pod.metadata.name.clone()),
            (LABEL_CONTAINER.to_owned(), c.name.clone()),
        ]);
        let kind = if c.ports.is_empty() {
            Kind::Process
        } else {
            Kind::Http
        };
        out.push(Draft {
            runtime: c.runtime(),
            spec: SandboxSpec {
                id: sandbox_id(pod, &c.name),
                source,
                kind,
                command: c.command.clone(),
                args: c.args.clone(),
                env,
                mounts,
                ports: c.ports.iter().map(|p| p.container_port).collect(),
                limits,
                allowed_outbound_hosts: c.allowed_outbound_hosts.clone(),
                read_only_root: c
                    .security_context
                    .as_ref()
                    .and_then(|s| s.read_only_root_filesystem)
                    .unwrap_or(false),
                capabilities: c
                    .security_context
                    .as_ref()
                    .map(wisp_api::SecurityContext::added_capabilities)
                    .unwrap_or_default(),
                user: c.security_context.as_ref().and_then(|s| s.run_as_user),
                run_as_non_root: c
                    .security_context
                    .as_ref()
                    .and_then(|s| s.run_as_non_root)
                    .unwrap_or(false),
                pull_policy: pull_policy(c),
                labels,
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_api::Resource as _;

    #[test]
    fn sources() {
        let c = |wasm: Option<&str>, image: Option<&str>| Container {
            name: "c".into(),
            wasm: wasm.map(Into::into),
            image: image.map(Into::into),
            ..Container::default()
        };
        assert_eq!(
            source_of(&c(Some("sha256:ab"), None)),
            Ok(Source::WasmDigest("sha256:ab".into()))
        );
        for path in ["/srv/hello.wasm", "/etc/passwd", "/dev/zero", "./x.wasm"] {
            let err = source_of(&c(Some(path), None)).expect_err("a path on the node");
            assert_eq!(err.reason, REASON_CONFIG, "{path}");
        }
        assert_eq!(
            source_of(&c(None, Some("busybox:1"))),
            Ok(Source::Image("busybox:1".into()))
        );
        let err = source_of(&c(Some("ghcr.io/x/y:1"), None)).expect_err("oci");
        assert_eq!(err.reason, REASON_CONFIG);
        assert!(err.message.contains("not a blob digest"), "{err}");
    }

    #[test]
    fn pull_policies_follow_kubernetes_defaults() {
        use wisp_sandbox::PullPolicy as P;
        let c = |image: &str, policy: Option<wisp_api::PullPolicy>| Container {
            name: "c".into(),
            image: Some(image.into()),
            image_pull_policy: policy,
            ..Container::default()
        };
        assert_eq!(pull_policy(&c("busybox", None)), P::Always);
        assert_eq!(pull_policy(&c("busybox:latest", None)), P::Always);
        assert_eq!(pull_policy(&c("localhost:5000/busybox", None)), P::Always);
        assert_eq!(pull_policy(&c("localhost:5000/busybox:1", None)), P::IfNotPresent);
        assert_eq!(pull_policy(&c("busybox@sha256:ab", None)), P::IfNotPresent);
        assert_eq!(
            pull_policy(&c("busybox:1", Some(wisp_api::PullPolicy::Always))),
            P::Always
        );
        assert_eq!(
            pull_policy(&c("busybox", Some(wisp_api::PullPolicy::Never))),
            P::Never
        );
    }

    #[test]
    fn config_map_files_hold_data_and_decoded_binary_data() {
        let mut cm = ConfigMap::default();
        cm.metadata.name = "cm".into();
        cm.data.insert("text".into(), "plain".into());
        // 0x00 0xff 0x10: not UTF-8, so only binaryData can carry it.
        cm.binary_data.insert("blob".into(), "AP8Q".into());
        let files = config_map_files(&cm).expect("decode");
        assert_eq!(files["text"], b"plain");
        assert_eq!(files["blob"], [0x00, 0xff, 0x10]);
        cm.binary_data.insert("bad".into(), "!!".into());
        let err = config_map_files(&cm).expect_err("bad base64");
        assert!(err.message.contains("binaryData.bad"), "{err}");
    }

    #[tokio::test]
    async fn config_map_volume_mounts_binary_data_as_bytes() {
        let server = wisp_apiserver::testutil::TestServer::start()
            .await
            .expect("server");
        let client = wisp_client::Client::new(&server.url, &server.token);
        let mut cm = ConfigMap::new(wisp_api::ObjectMeta::namespaced("default", "files"));
        cm.data.insert("greeting".into(), "hello".into());
        cm.binary_data.insert("logo.bin".into(), "AP8Q".into());
        client
            .api::<ConfigMap>(Some("default"))
            .create(&cm)
            .await
            .expect("create the ConfigMap");
        let mut pod = Pod::new(wisp_api::ObjectMeta::namespaced("default", "p"));
        pod.spec.volumes.push(wisp_api::Volume {
            name: "cfg".into(),
            config_map: Some(wisp_api::ConfigMapVolumeSource {
                name: "files".into(),
                optional: None,
            }),
            ..wisp_api::Volume::default()
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let vols = volumes(&client, &pod, dir.path(), &mut Lookups::default())
            .await
            .expect("volumes");
        let (path, read_only) = &vols["cfg"];
        assert!(read_only, "ConfigMap volumes are read-only");
        assert_eq!(std::fs::read(path.join("greeting")).expect("data file"), b"hello");
        assert_eq!(
            std::fs::read(path.join("logo.bin")).expect("binaryData file"),
            [0x00, 0xff, 0x10]
        );
    }

    /// What a container asks for reaches its sandbox spec: command and args, ports, limits,
    /// the request timeout, the security context, and each volume (Secret, optional
    /// ConfigMap, emptyDir) mounted where asked, Secret and ConfigMap files read-only.
    #[tokio::test]
    async fn drafts_carry_what_the_container_asks_for() {
        use wisp_api::{
            Capabilities, ConfigMapVolumeSource, ContainerPort, EmptyDirVolumeSource, ObjectMeta, Quantity,
            SecretVolumeSource, SecurityContext, Volume, VolumeMount,
        };
        let server = wisp_apiserver::testutil::TestServer::start()
            .await
            .expect("server");
        let client = wisp_client::Client::new(&server.url, &server.token);
        let mut secret = Secret::new(ObjectMeta::namespaced("default", "creds"));
        secret.data.insert("token".into(), "aGk=".into());
        client
            .api::<Secret>(Some("default"))
            .create(&secret)
            .await
            .expect("create the Secret");
        let mut pod = Pod::new(ObjectMeta::namespaced("default", "p"));
        pod.metadata.uid = Some("uid-1".into());
        pod.spec.volumes = vec![
            Volume {
                name: "creds".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: "creds".into(),
                    optional: None,
                }),
                ..Volume::default()
            },
            Volume {
                name: "gone".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: "missing".into(),
                    optional: Some(true),
                }),
                ..Volume::default()
            },
            Volume {
                name: "cfg".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "missing".into(),
                    optional: Some(true),
                }),
                ..Volume::default()
            },
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource { size_limit: None }),
                ..Volume::default()
            },
        ];
        let q = |s: &str| Quantity::parse(s).expect("quantity");
        let mount = |name: &str, path: &str| VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            read_only: false,
        };
        let mut c = Container {
            name: "main".into(),
            image: Some("busybox:1".into()),
            command: vec!["/bin/serve".into()],
            args: vec!["--port".into(), "8080".into()],
            ports: vec![ContainerPort {
                container_port: 8080,
                ..ContainerPort::default()
            }],
            timeout_ms: Some(1500),
            volume_mounts: vec![
                mount("creds", "/etc/creds"),
                mount("cfg", "/etc/cfg"),
                mount("scratch", "/scratch"),
            ],
            security_context: Some(SecurityContext {
                read_only_root_filesystem: Some(true),
                run_as_user: Some(1000),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    add: vec!["cap_net_bind_service".into()],
                }),
                ..SecurityContext::default()
            }),
            ..Container::default()
        };
        c.resources.limits.insert(RESOURCE_MEMORY.into(), q("64Mi"));
        c.resources.limits.insert(RESOURCE_CPU.into(), q("500m"));
        c.resources.limits.insert(RESOURCE_PIDS.into(), q("32"));
        pod.spec.containers.push(c);
        let dir = tempfile::tempdir().expect("tempdir");
        let oci = crate::oci::OciCache::new(dir.path().join("oci"), wisp_sandbox::EgressPolicy::default());
        let drafts = drafts(&client, &oci, &pod, dir.path()).await.expect("drafts");
        assert_eq!(drafts.len(), 1);
        let spec = &drafts[0].spec;
        assert_eq!(drafts[0].runtime, wisp_api::RUNTIME_DOCKER);
        assert_eq!(spec.command, ["/bin/serve"]);
        assert_eq!(spec.args, ["--port", "8080"]);
        assert_eq!(spec.ports, [8080]);
        assert_eq!(spec.kind, Kind::Http, "a container with ports serves HTTP");
        assert_eq!(spec.limits.memory_bytes, Some(64 * 1024 * 1024));
        assert_eq!(spec.limits.cpu_millis, Some(500));
        assert_eq!(spec.limits.pids, Some(32));
        assert_eq!(spec.limits.request_timeout, Some(Duration::from_millis(1500)));
        assert!(spec.read_only_root);
        assert_eq!(spec.user, Some(1000));
        assert!(spec.run_as_non_root);
        assert_eq!(spec.capabilities, ["NET_BIND_SERVICE"]);
        let at = |guest: &str| {
            spec.mounts
                .iter()
                .find(|m| m.guest_path == guest)
                .unwrap_or_else(|| panic!("no mount at {guest}: {:?}", spec.mounts))
        };
        let creds = at("/etc/creds");
        assert!(creds.read_only, "Secret files are read-only");
        assert_eq!(
            std::fs::read(creds.host_path.join("token")).expect("secret file"),
            b"hi"
        );
        let cfg = at("/etc/cfg");
        assert!(cfg.read_only);
        assert_eq!(
            std::fs::read_dir(&cfg.host_path)
                .expect("an optional missing ConfigMap mounts empty")
                .count(),
            0
        );
        let scratch = at("/scratch");
        assert!(!scratch.read_only, "an emptyDir is writable");
        assert!(scratch.host_path.is_dir());
        assert_eq!(spec.mounts.len(), 3, "only the mounts the container asks for");
    }

    #[test]
    fn secret_values_decode_data_and_take_string_data() {
        let mut s = Secret::default();
        s.metadata.name = "s".into();
        s.data.insert("a".into(), "aGk=".into());
        s.string_data.insert("b".into(), "plain".into());
        let v = secret_values(&s).expect("decode");
        assert_eq!(v["a"], b"hi");
        assert_eq!(v["b"], b"plain");
        s.data.insert("bad".into(), "!!".into());
        let err = secret_values(&s).expect_err("bad base64");
        assert!(err.message.contains("data.bad"), "{err}");
    }
}
