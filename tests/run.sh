#!/usr/bin/env bash
# Runs every check and test of Wisp on a fresh Debian machine: installs what is missing
# (etcd-server for the etcd store tests, protobuf-compiler and libprotobuf-dev for the etcd
# client, docker-registry for the image pull tests, schemathesis from PyPI in a venv for the
# API fuzz test), builds the guest components and the
# example container image, then rustfmt, clippy, and the whole test suite (unit, conformance
# on embedded + real etcd, the Docker sandbox on the real engine, end-to-end against the
# real `wisp` binary). The Docker engine itself must be running: with CI set (this script
# sets it) a Docker test fails, naming the reason, when the engine does not answer.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto) come from libprotobuf-dev, only a
# "Recommends" of protobuf-compiler: without them etcd-client's build script fails.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
# The CNCF distribution registry, started by the image pull tests on a loopback port.
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
# The API fuzz test's schemathesis lives in a venv: python3 -m venv needs ensurepip (python3-venv).
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's etcd-server starts a system etcd on 2379 (and docker-registry one on 5000); the
# tests start their own on free ports.
command -v etcd >/dev/null || { echo "etcd is still missing after install" >&2; exit 1; }
# Docker tests must run here, not skip.
export CI="${CI:-true}"
docker version --format 'Docker engine {{.Server.Version}}' || echo "WARNING: the Docker engine does not answer: the Docker tests will fail" >&2

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

echo "== guest components (wasm32-wasip2)"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
bash tests/build-guests.sh
echo "== example container image (static musl binary, FROM scratch)"
bash examples/container-echo/build-image.sh

echo "== rustfmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== build (the e2e tests run the real wisp binary)"
cargo build --workspace --all-features --bins
echo "== schemathesis (the API fuzz test, tests/fuzz)"
fuzz_venv="${CARGO_TARGET_DIR:-target}/fuzz-venv"
if ! "$fuzz_venv/bin/st" --version 2>/dev/null | grep -qF 'version 4.32.5'; then
  python3 -m venv "$fuzz_venv"
  "$fuzz_venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi
WISP_SCHEMATHESIS="$(cd "$fuzz_venv" && pwd)/bin/st"
export WISP_SCHEMATHESIS
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast
else
  cargo test --workspace --all-features --no-fail-fast
fi
