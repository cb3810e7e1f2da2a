//! What a component is, from its exports: a `wasi:http/proxy` handler or a `wasi:cli/run`
//! command.

use wisp_sandbox::{Kind, Result, SandboxError, Source};

use crate::WasmSandbox;

impl WasmSandbox {
    /// [`Kind::Http`] when the component exports `wasi:http/incoming-handler`, else
    /// [`Kind::Process`] when it exports `wasi:cli/run`; an error names what it exports
    /// otherwise. Loads (fetches and compiles) the component if needed.
    pub async fn kind_of(&self, source: &Source) -> Result<Kind> {
        let component = self.inner.components.load(source).await?;
        let ty = component.component_type();
        let names: Vec<String> = ty
            .exports(&self.inner.engine.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let exports = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
        if exports("wasi:http/incoming-handler@") {
            Ok(Kind::Http)
        } else if exports("wasi:cli/run@") {
            Ok(Kind::Process)
        } else {
            Err(SandboxError::InvalidSpec(format!(
                "the component exports neither wasi:http/incoming-handler nor wasi:cli/run (it exports: {})",
                if names.is_empty() {
                    "nothing".to_owned()
                } else {
                    names.join(", ")
                }
            )))
        }
    }
}
