//! The sandbox conformance suite of `wisp-sandbox`, run against the wasm runtime with the
//! `cli-fixture` guest (build it with `tests/build-guests.sh`).

mod common;

use std::sync::Arc;

use wisp_sandbox::conformance::Fixtures;
use wisp_sandbox::{Kind, Sandbox, SandboxId, SandboxSpec, Source};

struct CliFixtures {
    program: std::path::PathBuf,
    broken: std::path::PathBuf,
}

impl Fixtures for CliFixtures {
    fn exits(&self, id: SandboxId, code: i32, line: &str) -> SandboxSpec {
        let code = code.to_string();
        let mut s = common::spec(
            "x",
            Source::WasmFile(self.program.clone()),
            Kind::Process,
            &["exit", &code, line],
        );
        s.id = id;
        s
    }

    fn runs_until_stopped(&self, id: SandboxId, line: &str) -> SandboxSpec {
        let mut s = common::spec(
            "x",
            Source::WasmFile(self.program.clone()),
            Kind::Process,
            &["sleep", line],
        );
        s.id = id;
        s
    }

    fn broken(&self, id: SandboxId) -> SandboxSpec {
        let mut s = common::spec("x", Source::WasmFile(self.broken.clone()), Kind::Process, &[]);
        s.id = id;
        s
    }
}

async fn make() -> Option<(Arc<dyn Sandbox>, Arc<dyn Fixtures>, tempfile::TempDir)> {
    let program = common::guest("cli-fixture");
    let (sandbox, dir) = common::runtime(None);
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm not really a component").expect("write");
    Some((Arc::new(sandbox), Arc::new(CliFixtures { program, broken }), dir))
}

wisp_sandbox::sandbox_conformance!(make());
