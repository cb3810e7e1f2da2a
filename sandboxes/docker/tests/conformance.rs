//! The sandbox conformance suite of `wisp-sandbox`, run against the real Docker engine with
//! the wisp-echo image (examples/container-echo). In CI an unreachable engine fails these.

use std::sync::Arc;

use wisp_sandbox::conformance::Fixtures;
use wisp_sandbox::{Kind, Sandbox, SandboxId, SandboxSpec, Source};
use wisp_sandbox_docker::testing::{self, Cleanup, ECHO_IMAGE};
use wisp_sandbox_docker::{DockerConfig, DockerSandbox};

struct EchoFixtures;

fn spec(id: SandboxId, image: &str, args: &[&str]) -> SandboxSpec {
    let mut s = SandboxSpec::new(id, Source::Image(image.into()), Kind::Process);
    s.args = args.iter().map(|a| (*a).to_owned()).collect();
    s
}

impl Fixtures for EchoFixtures {
    fn exits(&self, id: SandboxId, code: i32, line: &str) -> SandboxSpec {
        spec(id, ECHO_IMAGE, &["exit", &code.to_string(), line])
    }

    fn runs_until_stopped(&self, id: SandboxId, line: &str) -> SandboxSpec {
        spec(id, ECHO_IMAGE, &["sleep", line])
    }

    fn broken(&self, id: SandboxId) -> SandboxSpec {
        // A registry on a port nothing listens on: the pull fails at once.
        spec(id, "127.0.0.1:9/wisp/none:missing", &[])
    }
}

async fn make() -> Option<(Arc<dyn Sandbox>, Arc<dyn Fixtures>, Cleanup)> {
    if !testing::available("docker conformance") {
        return None;
    }
    testing::ensure_echo_image();
    let owner = testing::unique_owner("conf");
    let sandbox = DockerSandbox::new(DockerConfig::new(owner.clone()));
    Some((Arc::new(sandbox), Arc::new(EchoFixtures), Cleanup::new(&owner)))
}

wisp_sandbox::sandbox_conformance!(make());
