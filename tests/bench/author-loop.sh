#!/usr/bin/env bash
# The function author's loop, timed on `wisp up` (release build), in one run on one machine:
#   1. `wisp new` → `wisp deploy --wait` → first 200 from the printed URL, for http-rust and
#      http-python, from a fresh project (cargo's registry and componentize-py installed, i.e.
#      excluding the first toolchain download; the project's own target/ starts empty);
#   2. `wisp dev`: an edit of src/main.rs → the new code answering at the URL, 5 edits;
#   3. the floor both pay: the same edit's incremental `cargo build` alone, in the same run.
#
#   tests/bench/author-loop.sh      # WISP_BIN=target/release/wisp, WISP_BENCH_ROUNDS=3
#
# Needs the wasm32-wasip2 target, curl, and componentize-py on PATH (for the Python row;
# tests/run.sh installs it under the target directory). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
wisp="${WISP_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/wisp}"
rounds="${WISP_BENCH_ROUNDS:-3}"
[ -x "$wisp" ] || { echo "no wisp at $wisp: cargo build --release -p wisp (or set WISP_BIN)" >&2; exit 2; }
work="$(mktemp -d)"
export WISP_CONFIG="$work/config"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api="$(free_port)"; ingress="$(free_port)"
"$wisp" up --listen "127.0.0.1:$api" --ingress-listen "127.0.0.1:$ingress" --data-dir "$work/data" \
  --docker false --node-name bench >"$work/up.log" 2>&1 &
up_pid=$!
dev_pid=""
cleanup() {
  [ -z "$dev_pid" ] || kill -INT "$dev_pid" 2>/dev/null || true
  kill "$up_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$WISP_CONFIG" ] && break; sleep 0.1; done
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
# GET until `want` is in the body (200); the time it took, in ms, from $1.
until_body() { # start_ms url want
  local start="$1" url="$2" want="$3"
  for _ in $(seq 6000); do
    if curl -sf --max-time 10 "$url" 2>/dev/null | grep -qF "$want"; then
      echo $(( $(now_ms) - start )); return 0
    fi
    sleep 0.01
  done
  echo "timed out waiting for $want at $url" >&2; return 1
}

new_to_200() { # template name want
  local template="$1" name="$2" want="$3" start url
  rm -rf "$work/$name"
  start="$(now_ms)"
  (cd "$work" && "$wisp" new "$name" --template "$template" >/dev/null)
  url="$(cd "$work/$name" && "$wisp" deploy --wait 2>"$work/deploy.err" | sed -n 's/^url: //p')"
  [ -n "$url" ] || { cat "$work/deploy.err" >&2; return 1; }
  until_body "$start" "$url" "$want"
  "$wisp" delete function "$name" >/dev/null
}

rust_new=(); py_new=()
for _ in $(seq "$rounds"); do
  rust_new+=("$(new_to_200 http-rust hello-rs 'Hello from hello-rs')")
done
if command -v componentize-py >/dev/null; then
  for _ in $(seq "$rounds"); do
    py_new+=("$(new_to_200 http-python hello-py 'Hello from hello-py')")
  done
fi

# wisp dev: edits → new code answering.
(cd "$work" && "$wisp" new devfn --template http-rust >/dev/null)
(cd "$work/devfn" && exec "$wisp" dev >"$work/dev.log" 2>&1) &
dev_pid=$!
for _ in $(seq 3000); do grep -q '^watching' "$work/dev.log" 2>/dev/null && break; sleep 0.1; done
url="$(sed -n 's/^url: //p' "$work/dev.log" | head -1)"
dev_edit=(); floor=()
src="$work/devfn/src/main.rs"
for n in $(seq 5); do
  sleep 1
  start="$(now_ms)"
  sed -i "s/{greeting} [a-z0-9 ]*from devfn/{greeting} edit$n from devfn/" "$src"
  dev_edit+=("$(until_body "$start" "$url" "Hello edit$n from devfn")")
done
kill -INT "$dev_pid"; wait "$dev_pid" 2>/dev/null || true; dev_pid=""
# The floor: the same kind of edit, cargo alone.
for n in $(seq 5); do
  sed -i "s/{greeting} [a-z0-9 ]*from devfn/{greeting} floor$n from devfn/" "$src"
  start="$(now_ms)"
  (cd "$work/devfn" && cargo build --release --target wasm32-wasip2 --target-dir target -q 2>/dev/null)
  floor+=($(( $(now_ms) - start )))
done

row() { # label values...
  local label="$1"; shift
  [ "$#" -gt 0 ] || { echo "| $label | (not run) | |"; return; }
  printf '| %s | %s ms | %s |\n' "$label" "$(printf '%s\n' "$@" | median)" "$(echo "$@" | tr ' ' '/')"
}
echo
echo "| Step ($(nproc) cores, $(date -u +%F)) | Median | Runs (ms) |"
echo "| --- | ---: | --- |"
row "http-rust: wisp new → deploy → first 200" "${rust_new[@]}"
row "http-python: wisp new → deploy → first 200" "${py_new[@]}"
row "wisp dev: edit → new code answering (Rust)" "${dev_edit[@]}"
row "floor: the edit's incremental cargo build alone" "${floor[@]}"
