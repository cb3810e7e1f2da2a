//! What a node lets a container do, checked before Docker sees it: the capabilities it may
//! add back, whether it would run as root when the spec forbids it, and the error of an
//! image that is absent under `imagePullPolicy: Never`. Pure functions with unit tests.

use wisp_sandbox::{LABEL_CONTAINER, SandboxError, SandboxSpec};

/// The capabilities a container may add back by default: Docker's default set minus those
/// that let a tenant's process act beyond its own files and sockets (`NET_RAW`, `MKNOD`,
/// `SETUID`, `SETGID`, `DAC_OVERRIDE` are opt-in, through
/// [`DockerConfig::allowed_capabilities`](crate::DockerConfig::allowed_capabilities)); the
/// same list the API admits.
pub use wisp_api::DEFAULT_CAPABILITIES as DEFAULT_ALLOWED_CAPABILITIES;

pub(crate) use wisp_api::normalize_capability;

/// The container's name for messages: its `wisp.dev/container` label, else the sandbox
/// id's last segment.
fn container_of(spec: &SandboxSpec) -> &str {
    spec.labels
        .get(LABEL_CONTAINER)
        .map(String::as_str)
        .or_else(|| spec.id.0.rsplit('/').next())
        .unwrap_or(&spec.id.0)
}

/// The spec's capabilities, normalised, or `InvalidSpec` naming the first one `allowed`
/// does not hold and how the node's admin allows it.
pub(crate) fn check_capabilities(
    spec: &SandboxSpec,
    allowed: &[String],
) -> Result<Vec<String>, SandboxError> {
    let allowed: Vec<String> = allowed.iter().map(|a| normalize_capability(a)).collect();
    let mut out = Vec::with_capacity(spec.capabilities.len());
    for cap in &spec.capabilities {
        let cap = normalize_capability(cap);
        if !allowed.contains(&cap) {
            return Err(SandboxError::InvalidSpec(format!(
                "container {:?} adds capability {cap}, which this node does not allow (allowed: {}); \
                 the node's admin allows it by adding {cap} to the Docker runtime's allowed \
                 capabilities (--allow-capabilities {cap})",
                container_of(spec),
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                },
            )));
        }
        if !out.contains(&cap) {
            out.push(cap);
        }
    }
    Ok(out)
}

/// Who a Docker `User` value (`""`, `"root"`, `"0"`, `"1000:0"`, `"app"`) runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ImageUser {
    /// uid 0: no user, `root`, or `0` (any group).
    Root,
    /// A numeric uid other than 0.
    NonRoot,
    /// A user name other than `root`: which uid it is depends on the image's `/etc/passwd`,
    /// so it cannot be verified.
    Named(String),
}

impl ImageUser {
    pub(crate) fn parse(user: &str) -> Self {
        // `user[:group]`: only the user decides; a root group is not root.
        let name = user.split(':').next().unwrap_or_default().trim();
        if name.is_empty() || name == "root" {
            return Self::Root;
        }
        match name.parse::<u32>() {
            Ok(0) => Self::Root,
            Ok(_) => Self::NonRoot,
            Err(_) => Self::Named(name.to_owned()),
        }
    }
}

/// Whether [`check_non_root`] needs the image's configured user: the spec forbids root and
/// names no user of its own.
pub(crate) fn needs_image_user(spec: &SandboxSpec) -> bool {
    spec.run_as_non_root && spec.user.is_none()
}

/// With `run_as_non_root`, refuses a container that would run as uid 0: its `user` if the
/// spec sets one, else `image_user` (the image's configured `User`, read only when
/// [`needs_image_user`]). Kubernetes' rule: a user name other than `root` cannot be
/// verified, so it is refused too.
pub(crate) fn check_non_root(spec: &SandboxSpec, image: &str, image_user: &str) -> Result<(), SandboxError> {
    if !spec.run_as_non_root {
        return Ok(());
    }
    let container = container_of(spec);
    let user = match spec.user {
        Some(0) => {
            return Err(SandboxError::InvalidSpec(format!(
                "container {container:?} would run as root: its runAsUser is 0 and runAsNonRoot is set"
            )));
        }
        Some(_) => return Ok(()),
        None => image_user,
    };
    let fix = "set securityContext.runAsUser to a non-zero uid, or use an image whose USER is a \
               non-zero numeric uid";
    match ImageUser::parse(user) {
        ImageUser::NonRoot => Ok(()),
        ImageUser::Root if user.trim().is_empty() => Err(SandboxError::InvalidSpec(format!(
            "container {container:?} would run as root: runAsNonRoot is set, and image {image} \
             sets no USER (uid 0); {fix}"
        ))),
        ImageUser::Root => Err(SandboxError::InvalidSpec(format!(
            "container {container:?} would run as root: runAsNonRoot is set, and image {image} \
             runs as user {user:?}; {fix}"
        ))),
        ImageUser::Named(name) => Err(SandboxError::InvalidSpec(format!(
            "container {container:?} might run as root: runAsNonRoot is set, and image {image} runs \
             as user {name:?}, a name whose uid cannot be verified to be non-root; {fix}"
        ))),
    }
}

/// The error of an image that is not on this node when the spec says never to pull it.
pub(crate) fn never_pulled(image: &str) -> SandboxError {
    SandboxError::fetch(
        format!("image {image}"),
        format!(
            "image {image} is not present on this node and imagePullPolicy is Never \
             (load it onto the node, or use IfNotPresent or Always)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wisp_sandbox::{Kind, SandboxId, Source};

    use super::*;

    fn spec(caps: &[&str]) -> SandboxSpec {
        let mut s = SandboxSpec::new(
            SandboxId::new("uid-1", "web"),
            Source::Image("x".into()),
            Kind::Process,
        );
        s.capabilities = caps.iter().map(|c| (*c).to_owned()).collect();
        s
    }

    fn defaults() -> Vec<String> {
        DEFAULT_ALLOWED_CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect()
    }

    fn message(r: Result<impl std::fmt::Debug, SandboxError>) -> String {
        match r {
            Err(SandboxError::InvalidSpec(m)) => m,
            other => panic!("InvalidSpec, not {other:?}"),
        }
    }

    #[test]
    fn capabilities_outside_the_allow_list_are_refused() {
        assert_eq!(
            check_capabilities(&spec(&["cap_net_bind_service", "CHOWN", "CHOWN"]), &defaults())
                .expect("allowed"),
            vec!["NET_BIND_SERVICE".to_owned(), "CHOWN".to_owned()]
        );
        for opt_in in [
            "NET_RAW",
            "MKNOD",
            "SETUID",
            "SETGID",
            "DAC_OVERRIDE",
            "SYS_ADMIN",
            "ALL",
        ] {
            let m = message(check_capabilities(&spec(&["KILL", opt_in]), &defaults()));
            assert!(m.contains(&format!("capability {opt_in}")), "{m}");
            assert!(m.contains("\"web\""), "names the container: {m}");
            assert!(
                m.contains(&format!("--allow-capabilities {opt_in}")),
                "says how: {m}"
            );
        }
        let mut allowed = defaults();
        allowed.push("cap_net_raw".into());
        assert_eq!(
            check_capabilities(&spec(&["CAP_NET_RAW"]), &allowed).expect("allowed by the admin"),
            vec!["NET_RAW".to_owned()]
        );
        assert!(message(check_capabilities(&spec(&["KILL"]), &[])).contains("allowed: none"));
    }

    #[test]
    fn image_users() {
        use ImageUser::*;
        for root in ["", " ", "root", "0", "0:0", "0:1000", "root:root", "00"] {
            assert_eq!(ImageUser::parse(root), Root, "{root:?}");
        }
        for user in ["1000", "1000:0", "65534:65534"] {
            assert_eq!(ImageUser::parse(user), NonRoot, "{user:?}");
        }
        assert_eq!(ImageUser::parse("nobody:nogroup"), Named("nobody".into()));
        assert_eq!(ImageUser::parse("-1"), Named("-1".into()));
    }

    #[test]
    fn run_as_non_root_refuses_root_and_unverifiable_users() {
        let mut s = spec(&[]);
        s.labels = BTreeMap::from([(LABEL_CONTAINER.to_owned(), "api".to_owned())]);
        // Not asked: anything goes.
        assert!(!needs_image_user(&s));
        check_non_root(&s, "img", "").expect("not asked");
        s.run_as_non_root = true;
        assert!(needs_image_user(&s));
        for u in ["", "root", "0:0"] {
            let m = message(check_non_root(&s, "img", u));
            assert!(m.contains("\"api\"") && m.contains("would run as root"), "{m}");
        }
        let m = message(check_non_root(&s, "img", "nobody"));
        assert!(
            m.contains("\"nobody\"") && m.contains("cannot be verified"),
            "{m}"
        );
        check_non_root(&s, "img", "1000:0").expect("numeric non-root");
        // The spec's user wins over the image's, which is then not needed.
        s.user = Some(1000);
        assert!(!needs_image_user(&s));
        check_non_root(&s, "img", "root").expect("uid 1000");
        s.user = Some(0);
        let m = message(check_non_root(&s, "img", ""));
        assert!(m.contains("runAsUser is 0"), "{m}");
    }

    #[test]
    fn never_pulled_names_the_image_and_the_policy() {
        let e = never_pulled("r.io/x:1").to_string();
        assert!(
            e.contains("image r.io/x:1 is not present on this node and imagePullPolicy is Never"),
            "{e}"
        );
    }
}
