//! Field-path validation errors and the shared format checks (DNS names, label keys and
//! values, durations, base64) that every resource's `validate` builds on.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::meta::ObjectMeta;

/// One problem with one field, e.g. `spec.containers[0].image: required`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted field path with `[i]` for list items; empty for the whole object.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// `path: required`
    pub fn required(path: impl Into<String>) -> Self {
        Self::new(path, "required")
    }

    /// `path: not supported yet: <why>` — a field Wisp's types know but nothing acts on yet,
    /// refused rather than accepted and ignored.
    pub fn not_supported(path: impl Into<String>, why: impl fmt::Display) -> Self {
        Self::new(path, format!("{NOT_SUPPORTED}: {why}"))
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// What the message of a refused, not yet implemented field starts with.
pub const NOT_SUPPORTED: &str = "not supported yet";

/// Every problem found in one object; never empty when returned as an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<Vec<FieldError>> for ValidationErrors {
    fn from(v: Vec<FieldError>) -> Self {
        Self(v)
    }
}

impl From<FieldError> for ValidationErrors {
    fn from(e: FieldError) -> Self {
        Self(vec![e])
    }
}

/// `child("spec", "replicas")` → `spec.replicas`; an empty parent yields just the child.
pub fn child(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// `index("spec.containers", 2)` → `spec.containers[2]`.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const LABEL_VALUE_MAX: usize = 63;
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS1123_LABEL_MAX
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= DNS1123_SUBDOMAIN_MAX && !s.is_empty() && s.split('.').all(is_dns_label)
}

/// Name part of a label key, or a label value when non-empty:
/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= LABEL_VALUE_MAX
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// RFC 1123 label: lowercase alphanumerics and `-`, at most 63 characters (names of
/// namespaces, containers, services, ports).
pub fn validate_dns1123_label(value: &str, path: &str) -> Vec<FieldError> {
    if value.is_empty() {
        return vec![FieldError::required(path)];
    }
    if is_dns_label(value) {
        return vec![];
    }
    vec![FieldError::new(
        path,
        format!(
            "invalid value {value:?}: a lowercase RFC 1123 label must consist of at most 63 lower case \
             alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ),
    )]
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters (object names).
pub fn validate_dns1123_subdomain(value: &str, path: &str) -> Vec<FieldError> {
    if value.is_empty() {
        return vec![FieldError::required(path)];
    }
    if is_dns_subdomain(value) {
        return vec![];
    }
    vec![FieldError::new(
        path,
        format!(
            "invalid value {value:?}: a lowercase RFC 1123 subdomain must consist of lower case \
             alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ),
    )]
}

/// Why `key` is not a valid label/annotation key (`[prefix/]name`), if it is not.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return Some(format!(
            "invalid key {key:?}: prefix part must be a lowercase RFC 1123 subdomain"
        ));
    }
    if !is_qualified_part(name) {
        return Some(format!(
            "invalid key {key:?}: name part must consist of at most 63 alphanumeric characters, \
             '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    None
}

/// Why `value` is not a valid label value, if it is not. Empty values are valid.
pub fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() || is_qualified_part(value) {
        None
    } else {
        Some(format!(
            "invalid value {value:?}: a label value must be empty or consist of at most 63 \
             alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

pub fn validate_label_key(key: &str, path: &str) -> Vec<FieldError> {
    label_key_problem(key)
        .map(|m| FieldError::new(path, m))
        .into_iter()
        .collect()
}

pub fn validate_label_value(value: &str, path: &str) -> Vec<FieldError> {
    label_value_problem(value)
        .map(|m| FieldError::new(path, m))
        .into_iter()
        .collect()
}

/// Keys are reported at `path` (`metadata.labels`), values at `path.<key>`.
pub fn validate_labels(labels: &BTreeMap<String, String>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        errs.extend(validate_label_key(k, path));
        errs.extend(validate_label_value(v, &child(path, k)));
    }
    errs
}

pub fn validate_annotations(annotations: &BTreeMap<String, String>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut total = 0usize;
    for (k, v) in annotations {
        errs.extend(validate_label_key(k, path));
        total += k.len() + v.len();
    }
    if total > ANNOTATIONS_MAX_BYTES {
        errs.push(FieldError::new(
            path,
            "annotations may not exceed 256 KiB in total",
        ));
    }
    errs
}

/// Checks name (required, DNS-1123 subdomain), namespace (DNS-1123 label when set; must be
/// absent for cluster-scoped kinds), labels, annotations and owner references.
/// `path` is usually `metadata`.
pub fn validate_object_meta(meta: &ObjectMeta, namespaced: bool, path: &str) -> Vec<FieldError> {
    let mut errs = validate_dns1123_subdomain(&meta.name, &child(path, "name"));
    errs.extend(validate_meta_common(meta, namespaced, path));
    errs
}

/// Like [`validate_object_meta`] but the name is optional (pod templates).
pub fn validate_template_meta(meta: &ObjectMeta, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if !meta.name.is_empty() {
        errs.extend(validate_dns1123_subdomain(&meta.name, &child(path, "name")));
    }
    errs.extend(validate_meta_common(meta, true, path));
    errs
}

fn validate_meta_common(meta: &ObjectMeta, namespaced: bool, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ns_path = child(path, "namespace");
    match (&meta.namespace, namespaced) {
        (Some(ns), true) => errs.extend(validate_dns1123_label(ns, &ns_path)),
        (Some(_), false) => {
            errs.push(FieldError::new(
                ns_path,
                "must not be set for a cluster-scoped kind",
            ));
        }
        (None, _) => {}
    }
    errs.extend(validate_labels(&meta.labels, &child(path, "labels")));
    errs.extend(validate_annotations(
        &meta.annotations,
        &child(path, "annotations"),
    ));
    if let Some(g) = meta.generation
        && g < 0
    {
        errs.push(FieldError::new(child(path, "generation"), "must be non-negative"));
    }
    let refs = child(path, "ownerReferences");
    let mut controllers = 0;
    for (i, r) in meta.owner_references.iter().enumerate() {
        let p = index(&refs, i);
        for (field, value) in [
            ("apiVersion", &r.api_version),
            ("kind", &r.kind),
            ("name", &r.name),
            ("uid", &r.uid),
        ] {
            if value.is_empty() {
                errs.push(FieldError::required(child(&p, field)));
            }
        }
        if r.controller == Some(true) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        errs.push(FieldError::new(
            refs,
            "only one reference can have controller set to true",
        ));
    }
    errs
}

/// Environment variable names: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn validate_env_var_name(name: &str, path: &str) -> Vec<FieldError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
        && !name.as_bytes()[0].is_ascii_digit();
    if name.is_empty() {
        vec![FieldError::required(path)]
    } else if ok {
        vec![]
    } else {
        vec![FieldError::new(
            path,
            format!(
                "invalid value {name:?}: must consist of alphabetic characters, digits, '_', '-' or '.', \
                 and must not start with a digit"
            ),
        )]
    }
}

/// ConfigMap and Secret keys: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`.
pub fn validate_config_key(key: &str, path: &str) -> Vec<FieldError> {
    let ok = !key.is_empty()
        && key.len() <= DNS1123_SUBDOMAIN_MAX
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if ok {
        vec![]
    } else {
        vec![FieldError::new(
            path,
            format!("invalid key {key:?}: must consist of alphanumeric characters, '-', '_' or '.'"),
        )]
    }
}

/// Parses a Go-style duration: one or more `<integer><unit>` with units `ms`, `s`, `m`, `h`
/// (e.g. `30s`, `5m`, `1h30m`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {s:?}: expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "" => return Err(format!("invalid duration {s:?}: missing unit (ms, s, m or h)")),
            other => return Err(format!("invalid duration {s:?}: unknown unit {other:?}")),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
    }
    Ok(total)
}

/// Whether `s` is standard, padded base64 (the encoding of Secret `data` values).
pub fn is_valid_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 {
        return false;
    }
    b[..b.len() - pad]
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(validate_dns1123_label("web-1", "n").is_empty());
        assert_eq!(validate_dns1123_label("", "n"), vec![FieldError::required("n")]);
        assert!(!validate_dns1123_label("Bad_Name", "n").is_empty());
        assert!(!validate_dns1123_label("-a", "n").is_empty());
        assert!(!validate_dns1123_label(&"a".repeat(64), "n").is_empty());
        assert!(validate_dns1123_subdomain("a.b-c.d", "n").is_empty());
        assert!(!validate_dns1123_subdomain("a..b", "n").is_empty());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key_problem("app").is_none());
        assert!(label_key_problem("wisp.dev/function").is_none());
        assert!(label_key_problem("Bad Key").is_some());
        assert!(label_key_problem("UPPER.dev/x").is_some());
        assert!(label_key_problem("/x").is_some());
        assert!(label_value_problem("").is_none());
        assert!(label_value_problem("v1.2_x").is_none());
        assert!(label_value_problem("bad value").is_some());
        assert!(label_value_problem("-x").is_some());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn base64() {
        assert!(is_valid_base64(""));
        assert!(is_valid_base64("aGVsbG8="));
        assert!(is_valid_base64("aGk="));
        assert!(!is_valid_base64("aGk"));
        assert!(!is_valid_base64("a==="));
        assert!(!is_valid_base64("aG*k"));
        assert!(!is_valid_base64("a=Gk"));
    }

    #[test]
    fn display_joins() {
        let e = ValidationErrors(vec![FieldError::required("a.b"), FieldError::new("", "bad")]);
        assert_eq!(e.to_string(), "a.b: required; bad");
    }
}
