#!/usr/bin/env bash
# Runs every check and test of Wisp on a fresh Debian machine: installs what is missing
# (etcd-server for the etcd store tests, protobuf-compiler and libprotobuf-dev for the etcd client), then
# rustfmt, clippy, and the whole test suite (unit, conformance on embedded + real etcd,
# end-to-end against the real `wisp` binary).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto) come from libprotobuf-dev, only a
# "Recommends" of protobuf-compiler: without them etcd-client's build script fails.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's etcd-server starts a system etcd on 2379; the tests start their own on free ports.
command -v etcd >/dev/null || { echo "etcd is still missing after install" >&2; exit 1; }

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

echo "== guest components (wasm32-wasip2)"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
bash tests/build-guests.sh

echo "== rustfmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== build (the e2e tests run the real wisp binary)"
cargo build --workspace --all-features --bins
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast
else
  cargo test --workspace --all-features --no-fail-fast
fi
