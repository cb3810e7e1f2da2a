//! Traffic: Service (a stable name over selected pods), Endpoints (their ready addresses)
//! and Route (host + path prefix → weighted Services).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Protocol;
use crate::meta::{Condition, ObjectMeta};
use crate::validation::{
    FieldError, child, index, validate_dns1123_label, validate_dns1123_subdomain, validate_labels,
};

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServiceSpec {
    /// Pods whose labels contain all of these back the Service. Empty: Endpoints are
    /// managed by hand.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// At least one; names required and unique when there are several.
    pub ports: Vec<ServicePort>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServicePort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// Container port traffic goes to; defaults to `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    pub protocol: Protocol,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServiceStatus {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Service {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let mut errs = validate_labels(&self.spec.selector, "spec.selector");
        let ports = &self.spec.ports;
        if ports.is_empty() {
            errs.push(FieldError::new("spec.ports", "required: at least one port"));
        }
        let mut names = BTreeSet::new();
        for (i, p) in ports.iter().enumerate() {
            let pp = index("spec.ports", i);
            match &p.name {
                Some(n) => {
                    errs.extend(validate_dns1123_label(n, &child(&pp, "name")));
                    if !names.insert(n) {
                        errs.push(FieldError::new(
                            child(&pp, "name"),
                            format!("duplicate port name {n:?}"),
                        ));
                    }
                }
                None if ports.len() > 1 => {
                    errs.push(FieldError::new(
                        child(&pp, "name"),
                        "required when there are several ports",
                    ));
                }
                None => {}
            }
            if p.port == 0 {
                errs.push(FieldError::new(child(&pp, "port"), "must be between 1 and 65535"));
            }
            if p.protocol == Protocol::Udp {
                errs.push(FieldError::not_supported(
                    child(&pp, "protocol"),
                    "the ingress routes HTTP over TCP only",
                ));
            }
            if p.target_port == Some(0) {
                errs.push(FieldError::new(
                    child(&pp, "targetPort"),
                    "must be between 1 and 65535",
                ));
            }
        }
        errs
    }
}

/// Ready (and not-ready) addresses behind a Service of the same name.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoints {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EndpointSubset {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<EndpointAddress>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ready_addresses: Vec<EndpointAddress>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EndpointAddress {
    /// An IPv4 or IPv6 address.
    pub ip: String,
    /// Overrides the subset's port for this address (pods on a shared host get their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ObjectReference {
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl ObjectReference {
    /// A reference to `obj` (its kind, namespace, name and uid).
    pub fn to<T: crate::Resource>(obj: &T) -> Self {
        let m = obj.metadata();
        Self {
            kind: T::KIND.to_owned(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EndpointPort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl Endpoints {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, s) in self.subsets.iter().enumerate() {
            let sp = index("subsets", i);
            for (field, list) in [
                ("addresses", &s.addresses),
                ("notReadyAddresses", &s.not_ready_addresses),
            ] {
                for (j, a) in list.iter().enumerate() {
                    let ap = index(&child(&sp, field), j);
                    if a.ip.parse::<IpAddr>().is_err() {
                        errs.push(FieldError::new(
                            child(&ap, "ip"),
                            format!("invalid IP address {:?}", a.ip),
                        ));
                    }
                    if a.port == Some(0) {
                        errs.push(FieldError::new(child(&ap, "port"), "must be between 1 and 65535"));
                    }
                    if let Some(n) = &a.node_name {
                        errs.extend(validate_dns1123_subdomain(n, &child(&ap, "nodeName")));
                    }
                }
            }
            for (j, p) in s.ports.iter().enumerate() {
                let pp = index(&child(&sp, "ports"), j);
                if p.port == 0 {
                    errs.push(FieldError::new(child(&pp, "port"), "must be between 1 and 65535"));
                }
                if p.protocol == Protocol::Udp {
                    errs.push(FieldError::not_supported(
                        child(&pp, "protocol"),
                        "the ingress routes HTTP over TCP only",
                    ));
                }
                if let Some(n) = &p.name {
                    errs.extend(validate_dns1123_label(n, &child(&pp, "name")));
                }
            }
        }
        errs
    }
}

/// Services one Route may split traffic between.
pub const MAX_ROUTE_BACKENDS: usize = 16;
/// The longest a Route may let a request take.
pub const MAX_ROUTE_TIMEOUT_SECONDS: u32 = 3600;

fn default_path_prefix() -> String {
    "/".into()
}

/// Ingress rule: requests for `host` (any host when unset) whose path starts with
/// `pathPrefix` go to the backends, split by weight. The longest matching prefix wins.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RouteSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RouteSpec {
    /// A DNS name, optionally with a leading `*.` wildcard; required. A namespace may claim
    /// hosts under `<namespace>.<cluster domain>` and under the domains the admin granted it
    /// (`Namespace.spec.routeDomains`), and none another namespace holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Default `/`; must start with `/`.
    pub path_prefix: String,
    /// At least one.
    pub backends: Vec<RouteBackend>,
    /// Time allowed for a request, including a cold start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// HTTPS for the host on the nodes' TLS listeners (`--ingress-tls-listen`): the
    /// certificate comes from a Secret of type `tls` in the Route's namespace, picked by SNI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
}

impl Default for RouteSpec {
    fn default() -> Self {
        Self {
            host: None,
            path_prefix: default_path_prefix(),
            backends: Vec::new(),
            timeout_seconds: None,
            tls: None,
        }
    }
}

/// Where a Route's certificate comes from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RouteTls {
    /// A Secret of type `tls` in the Route's namespace: `tls.crt` (the PEM chain, the
    /// host's certificate first) and `tls.key` (its PEM private key). Required.
    pub secret_name: String,
    /// `cluster`: the cluster CA issues a certificate for the Route's host into that Secret
    /// (and again when the host changes); without it the Secret is the namespace's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// The one `RouteTls::issuer` there is: the cluster CA.
pub const ISSUER_CLUSTER: &str = "cluster";

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RouteBackend {
    /// Name of a Service in the Route's namespace.
    pub service: String,
    /// Service port; defaults to the Service's first port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Relative share of traffic; default 100.
    pub weight: u32,
}

impl Default for RouteBackend {
    fn default() -> Self {
        Self {
            service: String::new(),
            port: None,
            weight: 100,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RouteStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Checks a route host (`example.com`, `*.example.com`) and path prefix at `path`.
pub fn validate_host_and_prefix(host: Option<&String>, prefix: &str, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(h) = host {
        let hp = child(path, "host");
        let bare = h.strip_prefix("*.").unwrap_or(h);
        errs.extend(validate_dns1123_subdomain(bare, &hp).into_iter().map(|mut e| {
            e.message = format!("invalid host {h:?}: must be a DNS name, optionally starting with \"*.\"");
            e
        }));
        if h.ends_with(".svc") || h == "svc" {
            errs.push(FieldError::new(
                hp,
                format!("invalid host {h:?}: names under .svc are the cluster's Service names"),
            ));
        }
    }
    if !prefix.starts_with('/') {
        errs.push(FieldError::new(
            child(path, "pathPrefix"),
            "must start with \"/\"",
        ));
    } else if prefix.contains(char::is_whitespace) || prefix.contains(['?', '#']) {
        errs.push(FieldError::new(
            child(path, "pathPrefix"),
            "must not contain whitespace, '?' or '#'",
        ));
    }
    errs
}

impl Route {
    pub(crate) fn validate_fields(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = validate_host_and_prefix(s.host.as_ref(), &s.path_prefix, "spec");
        if s.host.as_deref().is_none_or(str::is_empty) {
            errs.push(FieldError::new(
                "spec.host",
                "required: a Route claims one host (<name>.<namespace>.<cluster domain>, or a domain the \
                 admin granted the namespace); a Route without one would catch every other host",
            ));
        }
        if s.backends.len() > MAX_ROUTE_BACKENDS {
            errs.push(FieldError::new(
                "spec.backends",
                format!("at most {MAX_ROUTE_BACKENDS} backends"),
            ));
        }
        if s.backends.is_empty() {
            errs.push(FieldError::new("spec.backends", "required: at least one backend"));
        } else if s.backends.iter().all(|b| b.weight == 0) {
            errs.push(FieldError::new(
                "spec.backends",
                "at least one backend must have a non-zero weight",
            ));
        }
        for (i, b) in s.backends.iter().enumerate() {
            let bp = index("spec.backends", i);
            errs.extend(validate_dns1123_label(&b.service, &child(&bp, "service")));
            if b.port == Some(0) {
                errs.push(FieldError::new(child(&bp, "port"), "must be between 1 and 65535"));
            }
        }
        if let Some(tls) = &s.tls {
            errs.extend(validate_dns1123_label(&tls.secret_name, "spec.tls.secretName"));
            if let Some(issuer) = tls.issuer.as_deref().filter(|i| *i != ISSUER_CLUSTER) {
                errs.push(FieldError::new(
                    "spec.tls.issuer",
                    format!(
                        "unknown issuer {issuer:?}: the one issuer is \"{ISSUER_CLUSTER}\" (the cluster CA)"
                    ),
                ));
            }
        }
        if s.timeout_seconds == Some(0) {
            errs.push(FieldError::new("spec.timeoutSeconds", "must be greater than 0"));
        } else if s.timeout_seconds.is_some_and(|t| t > MAX_ROUTE_TIMEOUT_SECONDS) {
            errs.push(FieldError::new(
                "spec.timeoutSeconds",
                format!("must be at most {MAX_ROUTE_TIMEOUT_SECONDS}"),
            ));
        }
        errs
    }
}
