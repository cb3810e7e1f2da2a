//! What a node lets a container do, against the real engine: `imagePullPolicy` (Always pulls
//! a present image, IfNotPresent keeps it, Never never pulls — neither in `prepare` nor in
//! `create`'s repair), `runAsNonRoot`, and capabilities beyond the node's allow-list.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use wisp_sandbox::{
    Kind, LABEL_CONTAINER, LABEL_NAMESPACE, LABEL_POD_UID, PullPolicy, Sandbox, SandboxError, SandboxId,
    SandboxSpec, Source,
};
use wisp_sandbox_docker::testing::{self, ECHO_IMAGE, Registry};
use wisp_sandbox_docker::{DockerConfig, DockerSandbox, container_name};

fn spec(pod: &str, image: &str, args: &[&str]) -> SandboxSpec {
    let mut s = SandboxSpec::new(
        SandboxId::new(pod, "main"),
        Source::Image(image.into()),
        Kind::Process,
    );
    s.args = args.iter().map(|a| (*a).to_owned()).collect();
    s.labels = BTreeMap::from([
        (LABEL_NAMESPACE.to_owned(), "policies".to_owned()),
        (LABEL_POD_UID.to_owned(), pod.to_owned()),
        (LABEL_CONTAINER.to_owned(), "main".to_owned()),
    ]);
    s
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
}

fn must(args: &[&str]) {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The local image id of `reference`, if the engine has it.
fn image_id(reference: &str) -> Option<String> {
    let out = docker(&["image", "inspect", "--format", "{{.Id}}", reference]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Builds `tag` from a Dockerfile given as text (no context).
fn build(tag: &str, dockerfile: &str) {
    use std::io::Write;
    let mut child = Command::new("docker")
        .args(["build", "--quiet", "-t", tag, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker build");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dockerfile.as_bytes())
        .expect("write the Dockerfile");
    let out = child.wait_with_output().expect("docker build");
    assert!(
        out.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes the images (tags or ids) a test made when dropped.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

fn container_exists(id: &SandboxId) -> bool {
    docker(&["inspect", &container_name(id)]).status.success()
}

async fn runs_to_exit_0(s: &DockerSandbox, spec: &SandboxSpec) {
    s.create(spec).await.expect("create");
    s.start(&spec.id).await.expect("start");
    let exit = s.wait(&spec.id).await.expect("wait");
    assert_eq!(exit.exit_code, 0, "{exit:?}");
}

fn invalid(r: wisp_sandbox::Result<()>) -> String {
    match r {
        Err(SandboxError::InvalidSpec(m)) => m,
        other => panic!("InvalidSpec, not {other:?}"),
    }
}

fn never_pulled(r: wisp_sandbox::Result<()>, image: &str) {
    match r {
        Err(SandboxError::Fetch { what, source }) => {
            let reason = source.to_string();
            assert!(what.contains(image), "{what}");
            assert!(
                reason.contains(&format!(
                    "image {image} is not present on this node and imagePullPolicy is Never"
                )),
                "{reason}"
            );
        }
        other => panic!("a fetch error saying the policy is Never, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policy_always_follows_the_registry_and_if_not_present_keeps_the_local_image() {
    let Some((s, _cleanup)) = testing::runtime("pull_always") else {
        return;
    };
    let registry = Registry::start().expect("registry");
    let image = registry
        .push(ECHO_IMAGE, &format!("wisp/policy:always-{}", std::process::id()))
        .expect("push");
    let pushed = image_id(ECHO_IMAGE).expect("the echo image's id");
    // Locally, a different image under the same reference.
    build(
        &image,
        &format!("FROM {ECHO_IMAGE}\nLABEL wisp.test=local-{image}\n"),
    );
    let local = image_id(&image).expect("the local image");
    let _images = Images(vec![image.clone(), local.clone()]);
    assert_ne!(local, pushed, "two different images");

    let mut spec = spec("uid-always", &image, &["exit", "0", "pulled"]);
    spec.pull_policy = PullPolicy::IfNotPresent;
    s.prepare(&spec).await.expect("prepare IfNotPresent");
    assert_eq!(
        image_id(&image).as_deref(),
        Some(local.as_str()),
        "IfNotPresent keeps the local image"
    );
    spec.pull_policy = PullPolicy::Always;
    s.prepare(&spec).await.expect("prepare Always");
    assert_eq!(
        image_id(&image).as_deref(),
        Some(pushed.as_str()),
        "Always pulls the registry's image over the local one"
    );
    runs_to_exit_0(&s, &spec).await;

    // Always does not fall back on a present image when the registry cannot be reached.
    let unreachable = format!("127.0.0.1:9/wisp/policy:present-{}", std::process::id());
    must(&["tag", ECHO_IMAGE, &unreachable]);
    let _tag = Images(vec![unreachable.clone()]);
    let mut spec = spec.clone();
    spec.source = Source::Image(unreachable.clone());
    spec.pull_policy = PullPolicy::Always;
    match s.prepare(&spec).await {
        Err(SandboxError::Fetch { what, .. }) => assert!(what.contains(&unreachable), "{what}"),
        other => panic!("Always pulls, and the pull fails: {other:?}"),
    }
    spec.pull_policy = PullPolicy::IfNotPresent;
    s.prepare(&spec)
        .await
        .expect("IfNotPresent uses the present image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policy_never_does_not_pull_in_prepare_nor_in_create() {
    let Some((s, _cleanup)) = testing::runtime("pull_never") else {
        return;
    };
    let registry = Registry::start().expect("registry");
    let image = registry
        .push(ECHO_IMAGE, &format!("wisp/policy:never-{}", std::process::id()))
        .expect("push");
    let _images = Images(vec![image.clone()]);
    assert_eq!(image_id(&image), None, "only the registry has {image}");

    let mut spec = spec("uid-never", &image, &["exit", "0", "local"]);
    spec.pull_policy = PullPolicy::Never;
    never_pulled(s.prepare(&spec).await, &image);
    assert_eq!(image_id(&image), None, "Never did not pull");
    // The image could be pulled: IfNotPresent does; then Never uses it.
    spec.pull_policy = PullPolicy::IfNotPresent;
    s.prepare(&spec).await.expect("prepare IfNotPresent");
    assert!(image_id(&image).is_some(), "pulled");
    spec.pull_policy = PullPolicy::Never;
    s.prepare(&spec).await.expect("Never uses a present image");

    // The image is removed between prepare and create: create's repair does not pull it.
    must(&["rmi", &image]);
    never_pulled(s.create(&spec).await, &image);
    assert_eq!(image_id(&image), None, "create's repair did not pull under Never");
    assert!(!container_exists(&spec.id));
    // Under IfNotPresent it does.
    spec.pull_policy = PullPolicy::IfNotPresent;
    runs_to_exit_0(&s, &spec).await;
    assert!(image_id(&image).is_some(), "create pulled the image again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_non_root_refuses_root_and_runs_non_root_users() {
    let Some((s, _cleanup)) = testing::runtime("non_root") else {
        return;
    };
    // The echo image is FROM scratch with no USER: root.
    let mut spec = spec("uid-nonroot", ECHO_IMAGE, &["exit", "0", "not root"]);
    spec.run_as_non_root = true;
    s.prepare(&spec).await.expect("prepare");
    let m = invalid(s.create(&spec).await);
    assert!(m.contains("\"main\"") && m.contains("would run as root"), "{m}");
    assert!(!container_exists(&spec.id), "nothing was created");
    spec.user = Some(0);
    let m = invalid(s.create(&spec).await);
    assert!(m.contains("\"main\"") && m.contains("would run as root"), "{m}");
    // A non-zero uid in the spec: it runs, as that user.
    spec.user = Some(1000);
    runs_to_exit_0(&s, &spec).await;
    let user = docker(&[
        "inspect",
        "--format",
        "{{.Config.User}}",
        &container_name(&spec.id),
    ]);
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "1000");

    // The image's own USER decides when the spec sets none: numeric non-zero runs, a name
    // cannot be verified.
    let pid = std::process::id();
    let (numeric, named) = (
        format!("wisp-test/non-root:uid-{pid}"),
        format!("wisp-test/non-root:named-{pid}"),
    );
    build(&numeric, &format!("FROM {ECHO_IMAGE}\nUSER 1000:0\n"));
    build(&named, &format!("FROM {ECHO_IMAGE}\nUSER nobody\n"));
    let _images = Images(vec![numeric.clone(), named.clone()]);
    let mut by_image = spec.clone();
    by_image.id = SandboxId::new("uid-nonroot-image", "main");
    by_image.user = None;
    by_image.source = Source::Image(numeric);
    runs_to_exit_0(&s, &by_image).await;
    let mut by_name = by_image.clone();
    by_name.id = SandboxId::new("uid-nonroot-named", "main");
    by_name.source = Source::Image(named);
    let m = invalid(s.create(&by_name).await);
    assert!(
        m.contains("\"nobody\"") && m.contains("cannot be verified"),
        "{m}"
    );
    // Without runAsNonRoot, root is fine.
    let mut root = spec.clone();
    root.id = SandboxId::new("uid-root", "main");
    root.run_as_non_root = false;
    root.user = None;
    runs_to_exit_0(&s, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_in_capabilities_need_the_node_admin() {
    let Some((s, cleanup)) = testing::runtime("capabilities") else {
        return;
    };
    let mut spec = spec("uid-caps", ECHO_IMAGE, &["exit", "0", "raw"]);
    spec.capabilities = vec!["NET_RAW".into()];
    s.prepare(&spec).await.expect("prepare");
    let m = invalid(s.create(&spec).await);
    assert!(
        m.contains("\"main\"")
            && m.contains("capability NET_RAW")
            && m.contains("--allow-capabilities NET_RAW"),
        "{m}"
    );
    assert!(!container_exists(&spec.id), "nothing was created");
    // The node's admin allows it.
    let mut config = DockerConfig::new(cleanup.owner.clone());
    config.allowed_capabilities.push("NET_RAW".into());
    let allowed = DockerSandbox::new(config);
    spec.capabilities = vec!["CAP_NET_RAW".into(), "NET_BIND_SERVICE".into()];
    runs_to_exit_0(&allowed, &spec).await;
    let caps = docker(&[
        "inspect",
        "--format",
        "{{json .HostConfig.CapAdd}}",
        &container_name(&spec.id),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&caps.stdout).trim(),
        r#"["NET_RAW","NET_BIND_SERVICE"]"#
    );
}
