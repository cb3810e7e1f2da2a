#!/usr/bin/env bash
# Runs every check and test of Wisp on a fresh Debian machine (cgroup v1 or v2): installs what
# is missing (etcd-server for the etcd store tests, protobuf-compiler and libprotobuf-dev for
# the etcd client, docker-registry for the image pull tests, chromium and chromium-driver for
# the dashboard's browser test, schemathesis from PyPI in a venv
# for the API fuzz test and componentize-py for the Python template, in venvs; cargo-deny and
# cargo-machete under the target directory), builds the
# guest components and the example container image, then: wasmtime resolves to the vendored,
# fixed copy; rustfmt; cargo-deny (licenses, bans, sources); cargo-machete (unused
# dependencies); clippy (the workspace and examples/); rustdoc with warnings denied; and the
# whole test suite (unit, conformance on embedded + real etcd, the Docker sandbox on the real
# engine, end-to-end against the real `wisp` binary), everything with `--locked`. The Docker
# engine itself must be running: with CI set (this script sets it) a Docker test fails, naming
# the reason, when the engine does not answer.
#
# Usage: tests/run.sh [--privileged-tests]
#   --privileged-tests  also run the tests that change the host and need root (a swapfile,
#                       moving the test process into a memory cgroup: see README.md, "Test
#                       it"); sets WISP_PRIVILEGED_TESTS=1. .ci/run passes it.
set -euo pipefail
cd "$(dirname "$0")/.."

for arg in "$@"; do
  case "$arg" in
    --privileged-tests) export WISP_PRIVILEGED_TESTS=1 ;;
    -h | --help) sed -n '14,17p' "$0"; exit 0 ;;
    *) echo "tests/run.sh: unknown argument $arg (usage: tests/run.sh [--privileged-tests])" >&2; exit 2 ;;
  esac
done

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
# The dashboard's browser test: Chromium, driven over WebDriver by chromedriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
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

# cargo-deny and cargo-machete, built once into the target directory (kept between CI runs on
# one machine with the rest of it: .ci/run keeps CARGO_TARGET_DIR outside the clone).
tools="$(mkdir -p "${CARGO_TARGET_DIR:-target}/tools" && cd "${CARGO_TARGET_DIR:-target}/tools" && pwd)"
export PATH="$tools/bin:$PATH"
install_tool() { # crate, version
  if ! "$1" --version 2>/dev/null | grep -qF "$2"; then
    echo "installing $1 $2 into $tools"
    # Built in a temporary directory of its own, not the workspace's target directory.
    env -u CARGO_TARGET_DIR cargo install --quiet --locked --root "$tools" "$1@$2"
  fi
}
install_tool cargo-deny 0.20.2
install_tool cargo-machete 0.9.2

echo "== wasmtime resolves to the vendored, fixed copy (sandboxes/wasm/vendor/README.md)"
vendored="$(pwd -P)/sandboxes/wasm/vendor/wasmtime"  # cargo prints the physical path
# stdout only: on a fresh machine cargo's stderr also says what it downloads first.
resolved="$(cargo tree --locked --workspace --all-features -i wasmtime --depth 0)" || resolved="cargo tree failed (its error above)"
if [[ "$resolved" != "wasmtime v48.0.8 ($vendored)" ]]; then
  echo "ERROR: wasmtime must resolve to the vendored copy with the pool-reset fix, $vendored," >&2
  echo "but \`cargo tree -i wasmtime\` says:" >&2
  echo "$resolved" >&2
  echo "Keep the wasmtime family pinned at =48.0.8 in Cargo.toml and its [patch.crates-io] entry." >&2
  exit 1
fi
echo "$resolved"

echo "== rustfmt"
cargo fmt --all --check
cargo fmt --manifest-path examples/Cargo.toml --all --check
cargo fmt --manifest-path examples/container-echo/Cargo.toml --all --check
echo "== cargo deny (licenses, bans, sources; deny.toml says why not advisories)"
cargo deny --locked check --hide-inclusion-graph --show-stats bans licenses sources
echo "== cargo machete (unused dependencies)"
# Each manifest named, not the whole tree: the vendored wasmtime is upstream's manifest.
cargo machete --skip-target-dir Cargo.toml sdk/*/Cargo.toml control-plane/*/Cargo.toml \
  sandboxes/*/Cargo.toml node/*/Cargo.toml tests/*/Cargo.toml examples

echo "== guest components (wasm32-wasip2)"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
bash tests/build-guests.sh
echo "== example container image (static musl binary, FROM scratch)"
bash examples/container-echo/build-image.sh

echo "== clippy"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
# examples/: the guests for their target, in the directory tests/build-guests.sh builds them
# in; the container example for the host, in the one its build-image.sh uses.
CARGO_TARGET_DIR="${WISP_GUESTS_TARGET_DIR:-$PWD/examples/target}" \
  cargo clippy --locked --manifest-path examples/Cargo.toml --workspace --all-targets --target wasm32-wasip2 -- -D warnings
CARGO_TARGET_DIR="${WISP_ECHO_TARGET_DIR:-$PWD/examples/target}" \
  cargo clippy --locked --manifest-path examples/container-echo/Cargo.toml --all-targets -- -D warnings
echo "== rustdoc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --all-features --no-deps
echo "== build (the e2e tests run the real wisp binary; they refuse one older than the sources)"
cargo build --locked --workspace --all-features --bins
echo "== schemathesis (the API fuzz test, tests/fuzz)"
fuzz_venv="${CARGO_TARGET_DIR:-target}/fuzz-venv"
if ! "$fuzz_venv/bin/st" --version 2>/dev/null | grep -qF 'version 4.32.5'; then
  python3 -m venv "$fuzz_venv"
  "$fuzz_venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi
WISP_SCHEMATHESIS="$(cd "$fuzz_venv" && pwd)/bin/st"
export WISP_SCHEMATHESIS
echo "== componentize-py (the http-python template's build: tests/e2e/tests/authors.rs)"
cpy_venv="${CARGO_TARGET_DIR:-target}/componentize-venv"
if ! "$cpy_venv/bin/componentize-py" --version 2>/dev/null | grep -qF '0.25.1'; then
  python3 -m venv "$cpy_venv"
  "$cpy_venv/bin/pip" install --quiet --disable-pip-version-check 'componentize-py==0.25.1'
fi
WISP_COMPONENTIZE_PY="$(cd "$cpy_venv" && pwd)/bin"
export WISP_COMPONENTIZE_PY
echo "== tests${WISP_PRIVILEGED_TESTS:+ (with the privileged tests)}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --all-features --no-fail-fast
else
  cargo test --locked --workspace --all-features --no-fail-fast
fi
