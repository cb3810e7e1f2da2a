//! `wisp.toml`, the function manifest: how a function is built and how it runs. Versioned
//! (`version = 1`); an unknown key or a bad value is an error naming the key and its line.
//! The keys are documented in `docs/wisp-toml.md` (a test checks the two agree).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use wisp_api::{
    ConfigMapVolumeSource, Container, EnvVar, EnvVarSource, Function, FunctionRoute, KeySelector, ObjectMeta,
    Pod, PodSpec, Quantity, Resource, RestartPolicy, ScalingSpec, SecretVolumeSource, Volume, VolumeMount,
};

/// The schema version this CLI reads.
pub const VERSION: u32 = 1;
/// The file `wisp build` / `deploy` look for.
pub const FILE: &str = "wisp.toml";

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    pub version: Spanned<u32>,
    pub function: FunctionSection,
    pub build: BuildSection,
    #[serde(default)]
    pub route: Option<RouteSection>,
    #[serde(default)]
    pub scaling: Option<ScalingSection>,
    #[serde(default)]
    pub job: Option<JobSection>,
    #[serde(default)]
    pub resources: ResourcesSection,
    /// `NAME = "value"`, or `NAME = { config-map = "settings", key = "k" }` / `{ secret = … }`.
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    pub files: Vec<Spanned<FileMount>>,
    /// Hosts the component may call over outbound HTTP (`api.example.com`, `*.example.com`).
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<Spanned<String>>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `wasi:http/proxy`: a Function (route, scale to zero).
    #[default]
    Http,
    /// `wasi:cli/run`: a pod that runs once to completion.
    Job,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FunctionSection {
    pub name: Spanned<String>,
    #[serde(default)]
    pub namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub kind: Kind,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BuildSection {
    /// Run by `sh -c` in the project directory.
    pub command: Spanned<String>,
    /// The component the command makes, relative to the project directory.
    pub component: Spanned<String>,
    /// Files and directories whose changes make the component stale (default: everything in
    /// the project but the component and `target/`).
    #[serde(default)]
    pub watch: Vec<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouteSection {
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    #[serde(default = "root")]
    pub path: Spanned<String>,
}

fn root() -> Spanned<String> {
    Spanned::new(0..0, "/".to_owned())
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScalingSection {
    #[serde(default)]
    pub min: Option<Spanned<u32>>,
    #[serde(default)]
    pub max: Option<Spanned<u32>>,
    #[serde(default)]
    pub target_concurrency: Option<Spanned<u32>>,
    #[serde(default)]
    pub scale_to_zero_after: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobSection {
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub restart: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ResourcesSection {
    /// A memory limit (`128Mi`).
    #[serde(default)]
    pub memory: Option<Spanned<String>>,
    /// A CPU limit (`500m`, `1`).
    #[serde(default)]
    pub cpu: Option<Spanned<String>>,
    /// Wall-clock limit per request (`30s`), HTTP functions only.
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

/// `NAME = { config-map = "settings", key = "k" }` or `{ secret = "creds", key = "k" }`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct EnvRef {
    #[serde(default)]
    config_map: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    key: String,
    #[serde(default)]
    optional: bool,
}

/// `[[files]] path = "/config", config-map = "settings"` (or `secret = "creds"`): the object's
/// keys as read-only files under `path`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileMount {
    pub path: String,
    #[serde(default)]
    pub config_map: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
}

/// What is wrong with a `wisp.toml`: each problem with its line and key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ManifestError {
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based; 0 when the problem has no place in the file (a missing key).
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.key.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.file, self.message),
            (0, false) => write!(f, "{}: `{}`: {}", self.file, self.key, self.message),
            (l, true) => write!(f, "{}:{l}: {}", self.file, self.message),
            (l, false) => write!(f, "{}:{l}: `{}`: {}", self.file, self.key, self.message),
        }
    }
}

/// A parsed and checked `wisp.toml` with the directory it is in.
#[derive(Debug)]
pub struct Project {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

struct Checker<'a> {
    file: String,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn line(&self, span: &std::ops::Range<usize>) -> usize {
        if span.is_empty() && span.start == 0 {
            return 0;
        }
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|b| *b == b'\n').count() + 1
    }

    fn problem(&mut self, span: &std::ops::Range<usize>, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line: self.line(span),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn quantity(&mut self, value: &Option<Spanned<String>>, key: &str) -> Option<Quantity> {
        let v = value.as_ref()?;
        match Quantity::parse(v.get_ref()) {
            Ok(q) if q.is_negative() || q.is_zero() => {
                self.problem(
                    &v.span(),
                    key,
                    format!("{:?} must be more than zero", v.get_ref()),
                );
                None
            }
            Ok(q) => Some(q),
            Err(e) => {
                self.problem(
                    &v.span(),
                    key,
                    format!("{:?} is not a quantity: {e}", v.get_ref()),
                );
                None
            }
        }
    }

    fn duration(&mut self, value: &Option<Spanned<String>>, key: &str) -> Option<std::time::Duration> {
        let v = value.as_ref()?;
        match wisp_api::validation::parse_duration(v.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(&v.span(), key, e);
                None
            }
        }
    }

    fn field_errors(&mut self, span: &std::ops::Range<usize>, key: &str, errs: Vec<wisp_api::FieldError>) {
        for e in errs {
            self.problem(span, key, e.message);
        }
    }
}

/// Parse `text` (the contents of `file`) and check every value.
pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
    let mut c = Checker {
        file: file.to_owned(),
        text,
        problems: Vec::new(),
    };
    // The version first: a file for another version is that, not a list of unknown keys.
    if let Ok(table) = text.parse::<toml::Table>()
        && let Some(v) = table.get("version").and_then(toml::Value::as_integer)
        && v != i64::from(VERSION)
    {
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with("version"))
            .map_or(0, |i| i + 1);
        return Err(ManifestError {
            problems: vec![Problem {
                file: file.to_owned(),
                line,
                key: "version".into(),
                message: format!(
                    "this wisp reads version {VERSION} of wisp.toml, not {v} (a newer wisp may read it)"
                ),
            }],
        });
    }
    let manifest: Manifest = match toml::Deserializer::parse(text)
        .map_err(|e| (String::new(), e))
        .and_then(|d| serde_path_to_error::deserialize(d).map_err(|e| (e.path().to_string(), e.into_inner())))
    {
        Ok(m) => m,
        Err((path, e)) => {
            // `Spanned` fields show up in the path as serde_spanned's private wrapper.
            let key = if path == "." {
                String::new()
            } else {
                path.replace(".$__serde_spanned_private_value", "")
            };
            let span = e.span().unwrap_or(0..0);
            let line = if span == (0..0) { 0 } else { c.line(&span) };
            return Err(ManifestError {
                problems: vec![Problem {
                    file: file.to_owned(),
                    line,
                    key,
                    message: e.message().trim_end().to_owned(),
                }],
            });
        }
    };
    check(&mut c, &manifest);
    if c.problems.is_empty() {
        Ok(manifest)
    } else {
        Err(ManifestError { problems: c.problems })
    }
}

fn check(c: &mut Checker<'_>, m: &Manifest) {
    if *m.version.get_ref() != VERSION {
        c.problem(
            &m.version.span(),
            "version",
            format!(
                "this wisp reads version {VERSION} of wisp.toml, not {} (a newer wisp may read it)",
                m.version.get_ref()
            ),
        );
    }
    let name = &m.function.name;
    let errs = wisp_api::validation::validate_dns1123_label(name.get_ref(), "function.name");
    c.field_errors(&name.span(), "function.name", errs);
    if let Some(ns) = &m.function.namespace {
        let errs = wisp_api::validation::validate_dns1123_label(ns.get_ref(), "function.namespace");
        c.field_errors(&ns.span(), "function.namespace", errs);
    }
    if m.build.command.get_ref().trim().is_empty() {
        c.problem(&m.build.command.span(), "build.command", "must not be empty");
    }
    let component = &m.build.component;
    if component.get_ref().is_empty() || Path::new(component.get_ref()).is_absolute() {
        c.problem(
            &component.span(),
            "build.component",
            "must be a path inside the project directory (relative, not empty)",
        );
    }
    match m.function.kind {
        Kind::Http => {
            if let Some(job) = &m.job {
                let span = job.restart.as_ref().map_or(0..0, Spanned::span);
                c.problem(
                    &span,
                    "job",
                    "only a function of kind \"job\" has a [job] section",
                );
            }
        }
        Kind::Job => {
            for (key, present) in [("route", m.route.is_some()), ("scaling", m.scaling.is_some())] {
                if present {
                    c.problem(
                        &(0..0),
                        key,
                        format!("a job has no [{key}] section: it runs once, without a route"),
                    );
                }
            }
            if let Some(t) = &m.resources.timeout {
                c.problem(
                    &t.span(),
                    "resources.timeout",
                    "is for HTTP functions (a per-request limit)",
                );
            }
        }
    }
    if let Some(r) = &m.route {
        let host = r.host.as_ref().map(|h| h.get_ref().clone());
        for e in wisp_api::networking::validate_host_and_prefix(host.as_ref(), r.path.get_ref(), "route") {
            let (key, span) = if e.path.ends_with("host") {
                ("route.host", r.host.as_ref().map_or(0..0, Spanned::span))
            } else {
                ("route.path", r.path.span())
            };
            c.problem(&span, key, e.message);
        }
    }
    if let Some(s) = &m.scaling {
        let (min, max) = (s.min.as_ref().map(|v| *v.get_ref()), s.max.as_ref());
        if let Some(max) = max {
            if *max.get_ref() == 0 {
                c.problem(&max.span(), "scaling.max", "must be greater than 0");
            } else if min.is_some_and(|min| min > *max.get_ref()) {
                c.problem(&max.span(), "scaling.max", "must be at least scaling.min");
            }
        }
        if let Some(t) = &s.target_concurrency
            && *t.get_ref() == 0
        {
            c.problem(&t.span(), "scaling.target-concurrency", "must be greater than 0");
        }
        c.duration(&s.scale_to_zero_after, "scaling.scale-to-zero-after");
    }
    if let Some(r) = m.job.as_ref().and_then(|j| j.restart.as_ref())
        && !matches!(r.get_ref().as_str(), "never" | "on-failure")
    {
        c.problem(
            &r.span(),
            "job.restart",
            format!("{:?}: must be \"never\" or \"on-failure\"", r.get_ref()),
        );
    }
    c.quantity(&m.resources.memory, "resources.memory");
    c.quantity(&m.resources.cpu, "resources.cpu");
    c.duration(&m.resources.timeout, "resources.timeout");
    for (name, value) in &m.env {
        let key = format!("env.{}", name.get_ref());
        let errs = wisp_api::validation::validate_env_var_name(name.get_ref(), &key);
        c.field_errors(&name.span(), &key, errs);
        if let Err(message) = env_var(name.get_ref(), value.get_ref()) {
            c.problem(&value.span(), &key, message);
        }
    }
    for (i, f) in m.files.iter().enumerate() {
        let key = format!("files[{i}]");
        let f_ref = f.get_ref();
        if !f_ref.path.starts_with('/') {
            c.problem(
                &f.span(),
                &format!("{key}.path"),
                format!("{:?} must be absolute", f_ref.path),
            );
        }
        if f_ref.config_map.is_some() == f_ref.secret.is_some() {
            c.problem(&f.span(), &key, "needs exactly one of config-map or secret");
        }
    }
    for h in &m.allowed_outbound_hosts {
        let bare = h.get_ref().strip_prefix("*.").unwrap_or(h.get_ref());
        if h.get_ref() != "*" && !wisp_api::validation::validate_dns1123_subdomain(bare, "").is_empty() {
            c.problem(
                &h.span(),
                "allowed-outbound-hosts",
                format!(
                    "{:?} is not a host name (`api.example.com`, `*.example.com` or `*`)",
                    h.get_ref()
                ),
            );
        }
    }
}

fn env_var(name: &str, value: &toml::Value) -> Result<EnvVar, String> {
    match value {
        toml::Value::String(s) => Ok(EnvVar {
            name: name.to_owned(),
            value: Some(s.clone()),
            value_from: None,
        }),
        toml::Value::Table(_) => {
            let r = EnvRef::deserialize(value.clone()).map_err(|e| e.message().trim_end().to_owned())?;
            let selector = |n: &String| KeySelector {
                name: n.clone(),
                key: r.key.clone(),
                optional: r.optional.then_some(true),
            };
            let source = match (&r.config_map, &r.secret) {
                (Some(cm), None) => EnvVarSource {
                    config_map_key_ref: Some(selector(cm)),
                    secret_key_ref: None,
                },
                (None, Some(s)) => EnvVarSource {
                    config_map_key_ref: None,
                    secret_key_ref: Some(selector(s)),
                },
                _ => return Err("needs exactly one of config-map or secret, and a key".into()),
            };
            Ok(EnvVar {
                name: name.to_owned(),
                value: None,
                value_from: Some(source),
            })
        }
        other => Err(format!(
            "must be a string or {{ config-map = \"…\", key = \"…\" }} / {{ secret = \"…\", key = \"…\" }}, not a {}",
            other.type_str()
        )),
    }
}

impl Project {
    /// Read `wisp.toml` from `dir` (or the file itself when `dir` names one).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let (dir, file) = if dir.is_file() {
            (
                dir.parent().unwrap_or(Path::new(".")).to_path_buf(),
                dir.to_path_buf(),
            )
        } else {
            (dir.to_path_buf(), dir.join(FILE))
        };
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "cannot read {} (make a project with `wisp new NAME --template http-rust`)",
                file.display()
            )
        })?;
        let manifest = parse(&file.display().to_string(), &text)?;
        Ok(Self { dir, manifest })
    }

    pub fn name(&self) -> &str {
        self.manifest.function.name.get_ref()
    }

    pub fn kind(&self) -> Kind {
        self.manifest.function.kind
    }

    pub fn namespace<'a>(&'a self, flag: Option<&'a str>) -> &'a str {
        flag.or(self
            .manifest
            .function
            .namespace
            .as_ref()
            .map(|n| n.get_ref().as_str()))
            .unwrap_or("default")
    }

    pub fn component_path(&self) -> PathBuf {
        self.dir.join(self.manifest.build.component.get_ref())
    }

    /// The container running `wasm` (a `sha256:` digest) as the manifest says.
    fn container(&self, wasm: &str) -> Container {
        let m = &self.manifest;
        let mut c = Container {
            name: self.name().to_owned(),
            wasm: Some(wasm.to_owned()),
            ..Container::default()
        };
        // Checked by `parse`: these parse.
        let q = |v: &Option<Spanned<String>>| v.as_ref().and_then(|s| Quantity::parse(s.get_ref()).ok());
        if let Some(mem) = q(&m.resources.memory) {
            c.resources.limits.insert(wisp_api::RESOURCE_MEMORY.into(), mem);
        }
        if let Some(cpu) = q(&m.resources.cpu) {
            c.resources.limits.insert(wisp_api::RESOURCE_CPU.into(), cpu);
        }
        c.timeout_ms = m
            .resources
            .timeout
            .as_ref()
            .and_then(|t| wisp_api::validation::parse_duration(t.get_ref()).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        c.env = m
            .env
            .iter()
            .filter_map(|(k, v)| env_var(k.get_ref(), v.get_ref()).ok())
            .collect();
        c.allowed_outbound_hosts = m
            .allowed_outbound_hosts
            .iter()
            .map(|h| h.get_ref().clone())
            .collect();
        if let Some(job) = &m.job {
            c.args.clone_from(&job.args);
        }
        c
    }

    fn pod_spec(&self, wasm: &str) -> PodSpec {
        let mut container = self.container(wasm);
        let mut volumes = Vec::new();
        for (i, f) in self.manifest.files.iter().enumerate() {
            let f = f.get_ref();
            let name = format!("files-{i}");
            volumes.push(Volume {
                name: name.clone(),
                config_map: f.config_map.as_ref().map(|n| ConfigMapVolumeSource {
                    name: n.clone(),
                    optional: None,
                }),
                secret: f.secret.as_ref().map(|n| SecretVolumeSource {
                    secret_name: n.clone(),
                    optional: None,
                }),
                empty_dir: None,
            });
            container.volume_mounts.push(VolumeMount {
                name,
                mount_path: f.path.clone(),
                read_only: true,
            });
        }
        PodSpec {
            containers: vec![container],
            volumes,
            ..PodSpec::default()
        }
    }

    /// The Function an `http` project deploys as, running component `wasm`.
    pub fn function(&self, namespace: &str, wasm: &str) -> Function {
        let m = &self.manifest;
        let mut f = Function {
            api_version: wisp_api::API_VERSION.into(),
            kind: Function::KIND.into(),
            metadata: ObjectMeta::namespaced(namespace, self.name()),
            ..Function::default()
        };
        f.spec.template.spec = self.pod_spec(wasm);
        let defaults = ScalingSpec::default();
        if let Some(s) = &m.scaling {
            f.spec.scaling = ScalingSpec {
                min_scale: s.min.as_ref().map_or(defaults.min_scale, |v| *v.get_ref()),
                max_scale: s.max.as_ref().map_or(defaults.max_scale, |v| *v.get_ref()),
                target_concurrency: s.target_concurrency.as_ref().map(|v| *v.get_ref()),
                scale_to_zero_after: s
                    .scale_to_zero_after
                    .as_ref()
                    .map_or(defaults.scale_to_zero_after, |v| v.get_ref().clone()),
            };
        }
        if let Some(r) = &m.route {
            f.spec.route = Some(FunctionRoute {
                host: r.host.as_ref().map(|h| h.get_ref().clone()),
                path_prefix: r.path.get_ref().clone(),
            });
        }
        f
    }

    /// The pod a `job` project runs as: `pod_name`, labelled with the job's name.
    pub fn job_pod(&self, namespace: &str, pod_name: &str, wasm: &str) -> Pod {
        let mut p = Pod {
            api_version: wisp_api::API_VERSION.into(),
            kind: Pod::KIND.into(),
            metadata: ObjectMeta::namespaced(namespace, pod_name),
            ..Pod::default()
        };
        p.metadata.labels.insert(JOB_LABEL.into(), self.name().to_owned());
        p.spec = self.pod_spec(wasm);
        p.spec.restart_policy = match self.manifest.job.as_ref().and_then(|j| j.restart.as_ref()) {
            Some(r) if r.get_ref() == "on-failure" => RestartPolicy::OnFailure,
            _ => RestartPolicy::Never,
        };
        p
    }
}

/// Label on the pods of a job deployed from a `wisp.toml`.
pub const JOB_LABEL: &str = "wisp.dev/job";

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "manifest_docs.rs"]
mod docs;
