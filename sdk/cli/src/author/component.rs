//! What a built `.wasm` file is: a component (not a core module) and the world it fits,
//! from its top-level imports and exports (wasmparser).

use wasmparser::{Encoding, Parser, Payload};

/// What `wisp build` found in a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// `wasi:http/proxy` or `wasi:cli/command`.
    pub world: &'static str,
    /// The interface that makes it that world (`wasi:http/incoming-handler@0.2.6`).
    pub entry: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComponentError {
    #[error(
        "it is a core WebAssembly module, not a component: build for the wasm32-wasip2 target \
         (`cargo build --target wasm32-wasip2`), or wrap a wasip1 module with \
         `wasm-tools component new`"
    )]
    CoreModule,
    #[error("it is not WebAssembly: {0}")]
    NotWasm(String),
    #[error(
        "it exports neither wasi:http/incoming-handler (an HTTP function) nor wasi:cli/run (a job); \
         it exports: {}", if .0.is_empty() { "nothing".to_owned() } else { .0.join(", ") }
    )]
    NoEntry(Vec<String>),
}

/// Read the top level of `bytes` (nested modules and components are skipped).
pub fn inspect(bytes: &[u8]) -> Result<ComponentInfo, ComponentError> {
    let mut depth = 0usize;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| ComponentError::NotWasm(e.to_string()))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding == Encoding::Module {
                    return Err(ComponentError::CoreModule);
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| ComponentError::NotWasm(e.to_string()))?;
                    imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| ComponentError::NotWasm(e.to_string()))?;
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    let find = |prefix: &str| {
        exports
            .iter()
            .find(|e| e.as_str() == prefix || e.starts_with(&format!("{prefix}@")))
            .cloned()
    };
    let (world, entry) = if let Some(e) = find("wasi:http/incoming-handler") {
        ("wasi:http/proxy", e)
    } else if let Some(e) = find("wasi:cli/run") {
        ("wasi:cli/command", e)
    } else {
        return Err(ComponentError::NoEntry(exports));
    };
    Ok(ComponentInfo {
        world,
        entry,
        imports,
        exports,
    })
}

/// `1.2 MiB`, `340 KiB`.
pub fn size(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_module_is_refused_with_the_reason() {
        // The smallest core module: magic, version 1.
        let module = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
        let err = inspect(&module).expect_err("a module is not a component");
        assert_eq!(err, ComponentError::CoreModule);
        assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
    }

    #[test]
    fn bytes_that_are_not_wasm_are_refused() {
        assert!(matches!(inspect(b"#!/bin/sh\n"), Err(ComponentError::NotWasm(_))));
    }

    #[test]
    fn an_empty_component_exports_no_entry_point() {
        // The smallest component: magic, version 0x0d, layer 1.
        let component = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        assert_eq!(inspect(&component), Err(ComponentError::NoEntry(Vec::new())));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
    }
}
