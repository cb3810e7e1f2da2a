use super::*;

const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

const GOOD: &str = r#"version = 1
allowed-outbound-hosts = ["api.example.com", "*.example.org"]

[function]
name = "hello"

[build]
command = "cargo build --release --target wasm32-wasip2"
component = "target/wasm32-wasip2/release/hello.wasm"

[route]
path = "/api"

[scaling]
min = 0
max = 4
target-concurrency = 8
scale-to-zero-after = "1m"

[resources]
memory = "64Mi"
cpu = "250m"
timeout = "5s"

[env]
GREETING = "hi"
TOKEN = { secret = "creds", key = "token" }
MODE = { config-map = "settings", key = "mode", optional = true }

[[files]]
path = "/config"
config-map = "settings"
"#;

fn problems(text: &str) -> Vec<Problem> {
    parse("wisp.toml", text).expect_err("must be refused").problems
}

fn one(text: &str) -> Problem {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    p.into_iter().next().expect("one")
}

#[test]
fn a_full_manifest_becomes_the_function_it_describes() {
    let manifest = parse("wisp.toml", GOOD).expect("parses");
    let project = Project {
        dir: PathBuf::from("/p"),
        manifest,
    };
    let f = project.function("team-a", DIGEST);
    assert_eq!(f.metadata.namespace.as_deref(), Some("team-a"));
    assert_eq!(f.spec.scaling.max_scale, 4);
    assert_eq!(f.spec.scaling.target_concurrency, Some(8));
    assert_eq!(f.spec.scaling.scale_to_zero_after, "1m");
    assert_eq!(
        f.spec.route.as_ref().map(|r| r.path_prefix.as_str()),
        Some("/api")
    );
    let c = &f.spec.template.spec.containers[0];
    assert_eq!(c.wasm.as_deref(), Some(DIGEST));
    assert_eq!(c.timeout_ms, Some(5000));
    assert_eq!(c.resources.limits["memory"], Quantity::parse("64Mi").expect("q"));
    assert_eq!(c.allowed_outbound_hosts, ["api.example.com", "*.example.org"]);
    let env: Vec<&str> = c.env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(env, ["GREETING", "MODE", "TOKEN"]);
    let token = c.env.iter().find(|e| e.name == "TOKEN").expect("TOKEN");
    assert_eq!(
        token
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|s| s.name.as_str()),
        Some("creds")
    );
    assert_eq!(c.volume_mounts[0].mount_path, "/config");
    assert_eq!(
        f.spec.template.spec.volumes[0]
            .config_map
            .as_ref()
            .map(|c| c.name.as_str()),
        Some("settings")
    );
    // What the CLI makes, the API accepts.
    assert_eq!(f.validate(), Vec::new());
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let text = GOOD.replace("max = 4", "max = 4\nmaximum = 9");
    let p = one(&text);
    assert_eq!(p.line, 17, "{p}");
    assert!(p.key.starts_with("scaling"), "{p}");
    assert!(p.message.contains("unknown field `maximum`"), "{p}");
    assert!(p.to_string().starts_with("wisp.toml:17: `scaling"), "{p}");
    // A misspelt section too.
    let p = one(&GOOD.replace("[route]", "[routes]"));
    assert_eq!(p.line, 11, "{p}");
    assert!(p.message.contains("unknown field `routes`"), "{p}");
}

#[test]
fn a_bad_route_a_bad_quantity_and_a_bad_duration_are_each_named() {
    let text = GOOD
        .replace("path = \"/api\"", "path = \"api\"")
        .replace("memory = \"64Mi\"", "memory = \"lots\"")
        .replace("scale-to-zero-after = \"1m\"", "scale-to-zero-after = \"soon\"");
    let p = problems(&text);
    let keys: Vec<(&str, usize)> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(
        keys,
        [
            ("route.path", 12),
            ("scaling.scale-to-zero-after", 18),
            ("resources.memory", 21)
        ],
        "{p:?}"
    );
    assert!(p[0].message.contains("must start with \"/\""), "{}", p[0]);
    assert!(p[2].message.contains("\"lots\" is not a quantity"), "{}", p[2]);
}

#[test]
fn wrong_types_missing_keys_and_other_versions_are_refused() {
    let p = one(&GOOD.replace("max = 4", "max = \"four\""));
    assert_eq!((p.key.as_str(), p.line), ("scaling.max", 16), "{p}");
    let p = one(&GOOD.replace("version = 1", "version = 2"));
    assert_eq!((p.key.as_str(), p.line), ("version", 1), "{p}");
    assert!(p.message.contains("reads version 1"), "{p}");
    let p = one(&GOOD.replace("component = \"target/wasm32-wasip2/release/hello.wasm\"\n", ""));
    assert!(p.message.contains("missing field `component`"), "{p}");
    let p = one(&GOOD.replace("name = \"hello\"", "name = \"Hello_World\""));
    assert_eq!((p.key.as_str(), p.line), ("function.name", 5), "{p}");
    let p = one(&GOOD.replace("GREETING = \"hi\"", "GREETING = 3"));
    assert_eq!((p.key.as_str(), p.line), ("env.GREETING", 26), "{p}");
    let p = one(&GOOD.replace("[build]", "[build]\nbuild = 1"));
    assert!(p.message.contains("unknown field `build`"), "{p}");
    assert!(
        matches!(one("version = [1\n").line, 1),
        "a syntax error has its line"
    );
}

#[test]
fn a_job_has_arguments_and_a_restart_policy_but_no_route() {
    let text = "version = 1\n[function]\nname = \"nightly\"\nkind = \"job\"\n[build]\ncommand = \"make\"\ncomponent = \"job.wasm\"\n[job]\nargs = [\"a\", \"b\"]\nrestart = \"on-failure\"\n";
    let project = Project {
        dir: PathBuf::from("."),
        manifest: parse("wisp.toml", text).expect("parses"),
    };
    let pod = project.job_pod("default", "nightly-abc12", DIGEST);
    assert_eq!(pod.spec.restart_policy, RestartPolicy::OnFailure);
    assert_eq!(pod.spec.containers[0].args, ["a", "b"]);
    assert_eq!(pod.metadata.labels[JOB_LABEL], "nightly");
    assert_eq!(pod.validate(), Vec::new());
    let p = one(&format!("{text}[route]\npath = \"/\"\n"));
    assert_eq!(p.key, "route", "{p}");
    let p = one(&text.replace("on-failure", "always"));
    assert_eq!((p.key.as_str(), p.line), ("job.restart", 10), "{p}");
}

/// Each template's wisp.toml, as `wisp new` writes it, is a valid manifest.
#[test]
fn every_template_makes_a_valid_manifest() {
    for t in wisp_templates::TEMPLATES {
        let files = t.render("my-fn");
        let (_, text) = files.iter().find(|(p, _)| p == "wisp.toml").expect("wisp.toml");
        let m = parse("wisp.toml", text).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        assert_eq!(m.function.name.get_ref(), "my-fn");
    }
}

/// The examples' wisp.toml files are valid manifests (their components build in
/// tests/build-guests.sh and clippy's run over examples/).
#[test]
fn every_example_manifest_is_valid() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&examples).expect("examples/") {
        let file = entry.expect("entry").path().join(FILE);
        if let Ok(text) = std::fs::read_to_string(&file) {
            parse(&file.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
            seen.push(file);
        }
    }
    assert!(seen.len() >= 4, "{seen:?}");
}
