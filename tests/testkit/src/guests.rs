//! Where this repository's guest components are built (`tests/build-guests.sh` writes them
//! to `examples/target/wasm32-wasip2/release`), for tests, examples and benchmarks of every
//! crate. `$WISP_GUESTS_DIR` points elsewhere.

use std::path::PathBuf;

/// The directory holding the built guest components.
pub fn dir() -> PathBuf {
    std::env::var_os("WISP_GUESTS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/target/wasm32-wasip2/release"),
        PathBuf::from,
    )
}

/// `<dir>/<name>.wasm`, or an error that says how to build it.
pub fn path(name: &str) -> Result<PathBuf, String> {
    let path = dir().join(format!("{name}.wasm"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "guest component {} is missing: build the guests first with `tests/build-guests.sh` \
             (or point WISP_GUESTS_DIR at a directory holding {name}.wasm)",
            path.display()
        ))
    }
}
