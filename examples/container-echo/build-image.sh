#!/usr/bin/env bash
# Builds the wisp-echo container image (FROM scratch + one static musl binary) into the local
# Docker engine as wisp-examples/echo:dev (or the tag given as $1). No registry is needed.
set -euo pipefail
cd "$(dirname "$0")"
tag="${1:-wisp-examples/echo:dev}"
# The image carries a hash of the program's source: one built from older source is rebuilt.
source_hash="$(cat src/main.rs Cargo.toml Dockerfile | sha256sum | cut -c1-16)"
if [ "$(docker image inspect -f '{{index .Config.Labels "wisp.dev/source"}}' "$tag" 2>/dev/null)" = "$source_hash" ]; then
  echo "image $tag is current"
  exit 0
fi
rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
target="${WISP_ECHO_TARGET_DIR:-$PWD/../target}"
CARGO_TARGET_DIR="$target" cargo build --release --target x86_64-unknown-linux-musl --quiet
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp Dockerfile "$ctx/"
cp "$target/x86_64-unknown-linux-musl/release/wisp-echo" "$ctx/"
# The legacy builder warns about BuildKit on stderr; show its output only on failure.
docker build --quiet --label "wisp.dev/source=$source_hash" -t "$tag" "$ctx" >"$ctx/log" 2>&1 || { cat "$ctx/log" >&2; exit 1; }
echo "built image $tag"
