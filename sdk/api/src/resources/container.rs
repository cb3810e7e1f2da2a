//! Containers: what to run (an OCI image or a Wasm component), its environment, ports,
//! resources, probes and sandbox limits.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Protocol;
use crate::quantity::Quantity;
use crate::validation::{
    FieldError, child, index, validate_config_key, validate_dns1123_label, validate_dns1123_subdomain,
    validate_env_var_name,
};

/// Resource names accepted in `resources.requests` / `resources.limits`.
pub const KNOWN_RESOURCES: &[&str] = &[RESOURCE_CPU, RESOURCE_MEMORY, RESOURCE_PIDS];
pub const RESOURCE_CPU: &str = "cpu";
pub const RESOURCE_MEMORY: &str = "memory";
pub const RESOURCE_PIDS: &str = "pids";

/// One process of a pod: exactly one of `image` (OCI, run by Docker) or `wasm` (a component
/// run by wasmtime, named by the digest of a blob uploaded to the API: `sha256:<64 hex>`; the
/// CLI uploads local `.wasm` files and writes their digests).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Container {
    /// DNS-1123 label, unique within the pod.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    pub resources: ResourceRequirements,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Hosts a Wasm component may call over outbound HTTP (`api.example.com`, `*.example.com`,
    /// `*`). Empty means none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Wall-clock limit per request (Wasm HTTP components) in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EnvVar {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Exactly one of the references.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EnvVarSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,
}

/// A key of a ConfigMap or Secret in the pod's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KeySelector {
    pub name: String,
    pub key: String,
    /// Start the container even when the object or key is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ContainerPort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// 1..=65535.
    pub container_port: u16,
    pub protocol: Protocol,
}

/// `requests` drive scheduling; `limits` are enforced by the sandbox. Keys: `cpu`,
/// `memory`, `pids`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourceRequirements {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

impl ResourceRequirements {
    /// The request for `name`, falling back to the limit (as Kubernetes does).
    pub fn effective_request(&self, name: &str) -> Option<Quantity> {
        self.requests.get(name).or_else(|| self.limits.get(name)).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VolumeMount {
    /// Name of a volume in `spec.volumes`.
    pub name: String,
    /// Absolute path inside the container (a WASI preopen for Wasm components).
    pub mount_path: String,
    pub read_only: bool,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Probe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    pub initial_delay_seconds: i32,
    pub period_seconds: i32,
    pub timeout_seconds: i32,
    pub success_threshold: i32,
    pub failure_threshold: i32,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            http_get: None,
            tcp_socket: None,
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpGetAction {
    pub path: String,
    /// Container port; for Wasm HTTP components it may be omitted (the request goes in-process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Default for HttpGetAction {
    fn default() -> Self {
        Self {
            path: "/".into(),
            port: None,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TcpSocketAction {
    pub port: u16,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SecurityContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    /// Refuse to start the container if it would run as root (uid 0): its `runAsUser`, or
    /// else the image's user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// Accepted only as `false`: Wisp never runs a privileged container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// Docker containers start with every Linux capability dropped; `add` gives some back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Capabilities {
    /// Capability names (`NET_BIND_SERVICE` or `CAP_NET_BIND_SERVICE`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
}

/// The capabilities any container may add back (Docker's default set minus those that let
/// a tenant's process act beyond its files and sockets).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "AUDIT_WRITE",
    "SETFCAP",
];

/// Capabilities of Docker's default set that a container may add only where the cluster
/// admin allows them (`wisp up|server --allow-capabilities`; `wisp node` checks its own):
/// raw sockets (spoofing on the namespace's network), device nodes, changing users, and
/// bypassing file permissions.
pub const OPT_IN_CAPABILITIES: &[&str] = &["NET_RAW", "MKNOD", "SETUID", "SETGID", "DAC_OVERRIDE"];

/// A capability name as Docker and the allow-lists compare it: upper case, no `CAP_`.
pub fn normalize_capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    match upper.strip_prefix("CAP_") {
        Some(bare) => bare.to_owned(),
        None => upper,
    }
}

impl SecurityContext {
    /// The capabilities to add, normalised ([`normalize_capability`]).
    pub fn added_capabilities(&self) -> Vec<String> {
        self.capabilities.as_ref().map_or_else(Vec::new, |c| {
            c.add.iter().map(|n| normalize_capability(n)).collect()
        })
    }

    fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.privileged == Some(true) {
            errs.push(FieldError::new(
                child(path, "privileged"),
                "privileged containers are not allowed",
            ));
        }
        for (i, cap) in self.added_capabilities().iter().enumerate() {
            if !DEFAULT_CAPABILITIES.contains(&cap.as_str()) && !OPT_IN_CAPABILITIES.contains(&cap.as_str()) {
                errs.push(FieldError::new(
                    index(&child(&child(path, "capabilities"), "add"), i),
                    format!(
                        "capability {cap:?} cannot be added (allowed: {}; where the admin allows them: {})",
                        DEFAULT_CAPABILITIES.join(", "),
                        OPT_IN_CAPABILITIES.join(", ")
                    ),
                ));
            }
        }
        errs
    }
}

/// `wasm:` names a component by the digest of a blob uploaded to the API server, or by an OCI
/// reference the node pulls (`oci://host[:port]/repo:tag` or `…@sha256:<hex>`): never a path
/// on a node's disk.
fn validate_wasm_ref(w: &str, path: &str) -> Vec<FieldError> {
    if let Some(reference) = w.strip_prefix("oci://") {
        return match OciRef::parse(reference) {
            Ok(_) => Vec::new(),
            Err(why) => vec![FieldError::new(path, format!("{w:?}: {why}"))],
        };
    }
    let Some(hex) = w.strip_prefix("sha256:") else {
        return vec![FieldError::new(
            path,
            format!(
                "{w:?} is not a component reference: wasm takes sha256:<64 hex digits> of a component \
                 uploaded to /blobs (wisp apply uploads the .wasm files a manifest names) or \
                 oci://registry/repository:tag, never a path on a node"
            ),
        )];
    };
    if !is_hex64(hex) {
        return vec![FieldError::new(
            path,
            format!("{w:?}: a digest is sha256: followed by 64 lowercase hex digits"),
        )];
    }
    Vec::new()
}

fn is_hex64(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A component in an OCI registry: `host[:port]/repository[:tag][@sha256:<hex>]` (the part of
/// a `wasm: oci://…` reference after the scheme).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciRef {
    /// `registry.example.com`, `127.0.0.1:5000`.
    pub registry: String,
    /// `team/hello`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>` of the manifest.
    pub digest: Option<String>,
}

impl OciRef {
    pub fn parse(reference: &str) -> Result<Self, String> {
        let (rest, digest) = match reference.split_once('@') {
            Some((r, d)) => {
                if !d.strip_prefix("sha256:").is_some_and(is_hex64) {
                    return Err(format!(
                        "the digest {d:?} must be sha256: followed by 64 lowercase hex digits"
                    ));
                }
                (r, Some(d.to_owned()))
            }
            None => (reference, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .ok_or("an OCI reference names its registry: oci://host[:port]/repository:tag")?;
        let host = registry.rsplit_once(':').map_or(registry, |(h, port)| {
            if port.parse::<u16>().is_ok() { h } else { registry }
        });
        if host.is_empty()
            || !(host.contains('.') || host == "localhost" || host.parse::<std::net::IpAddr>().is_ok())
        {
            return Err(format!(
                "{registry:?} is not a registry host (a DNS name with a dot, localhost or an IP address, with an optional port)"
            ));
        }
        // The tag follows the last ':' after the last '/'.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_owned())),
            _ => (path, None),
        };
        let component = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component) {
            return Err(format!(
                "repository {repository:?}: lowercase letters, digits, '.', '_', '-' and '/' separators"
            ));
        }
        if let Some(t) = &tag {
            let ok = t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && t.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(format!(
                    "tag {t:?}: letters, digits, '.', '_' and '-', at most 128"
                ));
            }
        }
        if tag.is_none() && digest.is_none() {
            return Err(
                "name a tag (:v1) or a digest (@sha256:…): a moving default tag is not pulled".into(),
            );
        }
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

pub(crate) fn is_set(s: Option<&String>) -> bool {
    s.is_some_and(|s| !s.trim().is_empty())
}

impl Container {
    /// `"wasm"` or `"docker"`: the node runtime this container needs.
    pub fn runtime(&self) -> &'static str {
        if is_set(self.wasm.as_ref()) {
            super::RUNTIME_WASM
        } else {
            super::RUNTIME_DOCKER
        }
    }

    /// Field errors of this container at `path` (`spec.containers[0]`). Volume references
    /// are checked by the pod.
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errs = validate_dns1123_label(&self.name, &child(path, "name"));
        if is_set(self.image.as_ref()) == is_set(self.wasm.as_ref()) {
            errs.push(FieldError::new(path, "exactly one of image or wasm must be set"));
        } else if let Some(w) = self.wasm.as_deref().filter(|w| !w.trim().is_empty()) {
            errs.extend(validate_wasm_ref(w, &child(path, "wasm")));
        }
        for (i, e) in self.env.iter().enumerate() {
            errs.extend(validate_env(e, &index(&child(path, "env"), i)));
        }
        let mut port_names = Vec::new();
        for (i, p) in self.ports.iter().enumerate() {
            let pp = index(&child(path, "ports"), i);
            if p.protocol == Protocol::Udp {
                errs.push(FieldError::not_supported(
                    child(&pp, "protocol"),
                    "only TCP ports are served (UDP is neither published nor routed)",
                ));
            }
            if p.container_port == 0 {
                errs.push(FieldError::new(
                    child(&pp, "containerPort"),
                    "must be between 1 and 65535",
                ));
            }
            if let Some(n) = &p.name {
                errs.extend(validate_dns1123_label(n, &child(&pp, "name")));
                if port_names.contains(&n) {
                    errs.push(FieldError::new(
                        child(&pp, "name"),
                        format!("duplicate port name {n:?}"),
                    ));
                }
                port_names.push(n);
            }
        }
        errs.extend(validate_resources(&self.resources, &child(path, "resources")));
        for (i, m) in self.volume_mounts.iter().enumerate() {
            let mp = index(&child(path, "volumeMounts"), i);
            if !m.mount_path.starts_with('/') {
                errs.push(FieldError::new(
                    child(&mp, "mountPath"),
                    "must be an absolute path",
                ));
            }
        }
        if let Some(p) = &self.readiness_probe {
            let pp = child(path, "readinessProbe");
            errs.extend(validate_probe(p, &pp));
            // The agent probes where the container serves: its first port.
            let served = self.ports.first().map(|p| p.container_port);
            if let Some(port) = p.http_get.as_ref().and_then(|h| h.port)
                && port != 0
                && Some(port) != served
            {
                errs.push(FieldError::not_supported(
                    child(&child(&pp, "httpGet"), "port"),
                    match served {
                        Some(s) => format!(
                            "the agent probes the port the container serves on (ports[0], {s}); omit port or use {s}"
                        ),
                        None => "the agent probes the port the container serves on, and this container \
                                 declares none; omit port"
                            .to_owned(),
                    },
                ));
            }
            if let Some(t) = &p.tcp_socket
                && t.port != 0
            {
                let at = child(&child(&pp, "tcpSocket"), "port");
                if self.runtime() == super::RUNTIME_WASM {
                    errs.push(FieldError::not_supported(
                        at,
                        "a Wasm component listens on no TCP port; probe it with httpGet",
                    ));
                } else if Some(t.port) != served {
                    errs.push(FieldError::not_supported(
                        at,
                        match served {
                            Some(s) => format!(
                                "the agent connects to the port the container serves on (ports[0], {s}); use {s}"
                            ),
                            None => "the agent connects to the port the container serves on, and this \
                                     container declares none; declare it in ports"
                                .to_owned(),
                        },
                    ));
                }
            }
        }
        if self.liveness_probe.is_some() {
            errs.push(FieldError::not_supported(
                child(path, "livenessProbe"),
                "no node agent restarts a container on a failing liveness probe; remove it \
                 (readinessProbe with httpGet or tcpSocket is supported)",
            ));
        }
        for (i, h) in self.allowed_outbound_hosts.iter().enumerate() {
            if h.is_empty() || h.contains(char::is_whitespace) {
                errs.push(FieldError::new(
                    index(&child(path, "allowedOutboundHosts"), i),
                    format!("invalid host {h:?}"),
                ));
            }
        }
        if let Some(sc) = &self.security_context {
            errs.extend(sc.validate(&child(path, "securityContext")));
        }
        if self.timeout_ms == Some(0) {
            errs.push(FieldError::new(
                child(path, "timeoutMs"),
                "must be greater than 0",
            ));
        }
        errs
    }
}

fn validate_env(e: &EnvVar, path: &str) -> Vec<FieldError> {
    let mut errs = validate_env_var_name(&e.name, &child(path, "name"));
    if let Some(from) = &e.value_from {
        let fp = child(path, "valueFrom");
        if e.value.is_some() {
            errs.push(FieldError::new(
                path,
                "value and valueFrom are mutually exclusive",
            ));
        }
        let refs = [
            ("configMapKeyRef", &from.config_map_key_ref),
            ("secretKeyRef", &from.secret_key_ref),
        ];
        if refs.iter().filter(|(_, r)| r.is_some()).count() != 1 {
            errs.push(FieldError::new(
                &fp,
                "exactly one of configMapKeyRef or secretKeyRef must be set",
            ));
        }
        for (field, r) in refs {
            if let Some(r) = r {
                let rp = child(&fp, field);
                errs.extend(validate_dns1123_subdomain(&r.name, &child(&rp, "name")));
                errs.extend(validate_config_key(&r.key, &child(&rp, "key")));
            }
        }
    }
    errs
}

fn validate_resources(r: &ResourceRequirements, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (field, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (name, q) in map {
            let p = child(&child(path, field), name);
            if !KNOWN_RESOURCES.contains(&name.as_str()) {
                errs.push(FieldError::new(
                    p,
                    format!("unsupported resource {name:?} (expected cpu, memory or pids)"),
                ));
            } else if q.is_negative() {
                errs.push(FieldError::new(p, "must be non-negative"));
            } else if name == RESOURCE_PIDS && q.value() < 1 {
                errs.push(FieldError::new(p, "must be at least 1"));
            }
        }
    }
    for (name, req) in &r.requests {
        if let Some(limit) = r.limits.get(name)
            && req > limit
        {
            errs.push(FieldError::new(
                child(&child(path, "requests"), name),
                format!("must be less than or equal to the {name} limit ({limit})"),
            ));
        }
    }
    errs
}

fn validate_probe(p: &Probe, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if p.http_get.is_some() == p.tcp_socket.is_some() {
        errs.push(FieldError::new(
            path,
            "exactly one of httpGet or tcpSocket must be set",
        ));
    }
    if let Some(h) = &p.http_get {
        if !h.path.starts_with('/') {
            errs.push(FieldError::new(
                child(&child(path, "httpGet"), "path"),
                "must start with \"/\"",
            ));
        }
        if h.port == Some(0) {
            errs.push(FieldError::new(
                child(&child(path, "httpGet"), "port"),
                "must be between 1 and 65535",
            ));
        }
    }
    if p.tcp_socket.as_ref().is_some_and(|t| t.port == 0) {
        errs.push(FieldError::new(
            child(&child(path, "tcpSocket"), "port"),
            "must be between 1 and 65535",
        ));
    }
    for (field, v, min) in [
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
        ("periodSeconds", p.period_seconds, 1),
        ("timeoutSeconds", p.timeout_seconds, 1),
        ("successThreshold", p.success_threshold, 1),
        ("failureThreshold", p.failure_threshold, 1),
    ] {
        if v < min {
            errs.push(FieldError::new(
                child(path, field),
                format!("must be greater than or equal to {min}"),
            ));
        }
    }
    errs
}
