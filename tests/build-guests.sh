#!/usr/bin/env bash
# Builds the components in examples/ (the hello example, guests/*) for wasm32-wasip2 (the sandbox tests and the
# examples use them) into examples/target (or $WISP_GUESTS_TARGET_DIR), where the tests
# look for them. An outer CARGO_TARGET_DIR (CI sets one for the host build) is not used.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
target="${WISP_GUESTS_TARGET_DIR:-$PWD/examples/target}"
CARGO_TARGET_DIR="$target" cargo build --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml
out="$target/wasm32-wasip2/release"
echo "guest components in $out:"
ls -1 "$out"/*.wasm
