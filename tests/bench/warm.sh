#!/usr/bin/env bash
# Warm throughput of the hello component, in one run on one machine: through `wisp up`'s
# ingress (a Function kept at one pod, called in process) and through `wasmtime serve -S cli=y
# -O pooling-allocator` (wasmtime-cli 48.0.8), both driven by the same wrk command.
#
#   tests/bench/warm.sh            # WISP_BENCH_SECONDS=10 WISP_BENCH_CONNECTIONS="1 16 64"
#                                  # WISP_BENCH_ROUNDS=3 (alternating pairs; the median ratio)
#   WISP_WASM_PAGEMAP_RESET=false tests/bench/warm.sh  # wisp up resetting pool slots by memset
#
# Needs wrk (apt) and wasmtime-cli (installed with cargo when missing). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${WISP_BENCH_SECONDS:-10}"
conns="${WISP_BENCH_CONNECTIONS:-1 16 64}"
rounds="${WISP_BENCH_ROUNDS:-3}"
target="${CARGO_TARGET_DIR:-$PWD/target}"

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v wasmtime >/dev/null || cargo install wasmtime-cli --version 48.0.8 --locked
bash tests/build-guests.sh >/dev/null
cargo build --release -q -p wisp
hello="$PWD/examples/target/wasm32-wasip2/release/hello.wasm"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# wisp up, a Function at minScale 1.
ingress_port="$(free_port)"
export WISP_CONFIG="$tmp/config" WISP_LOG=warn
"$target/release/wisp" up --listen 127.0.0.1:0 --data-dir "$tmp/data" --node-name bench \
  --ingress-listen "127.0.0.1:$ingress_port" >"$tmp/wisp.out" 2>"$tmp/wisp.err" &
pids+=($!)
for _ in $(seq 100); do [ -s "$WISP_CONFIG" ] && break; sleep 0.1; done
sed -e 's/minScale: 0/minScale: 1/' -e "s|wasm: .*|wasm: $hello|" examples/hello/function.yaml >"$tmp/function.yaml"
"$target/release/wisp" apply -f "$tmp/function.yaml" >/dev/null
for _ in $(seq 300); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: hello.default.localhost' "http://127.0.0.1:$ingress_port/" || true)"
  [ "$code" = 200 ] && break
  sleep 0.1
done
[ "$code" = 200 ] || { echo "wisp's ingress never answered 200 (last: $code)" >&2; cat "$tmp/wisp.err" >&2; exit 1; }

# wasmtime serve.
serve_port="$(free_port)"
wasmtime serve -S cli=y -O pooling-allocator --addr "127.0.0.1:$serve_port" "$hello" >"$tmp/serve.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$serve_port/" && break; sleep 0.1; done

run_wrk() { # url conns -> "req/s p50 p99"
  wrk -t1 -c"$2" -d"${secs}s" --latency -H 'Host: hello.default.localhost' "$1" >"$tmp/wrk.out"
  local rps p50 p99
  rps="$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out")"
  p50="$(awk '$1=="50%" {print $2}' "$tmp/wrk.out")"
  p99="$(awk '$1=="99%" {print $2}' "$tmp/wrk.out")"
  echo "$rps $p50 $p99"
}

echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); cpus: $(nproc); wrk -t1 -d${secs}s; $(wasmtime --version); wisp up --wasm-pagemap-reset=${WISP_WASM_PAGEMAP_RESET:-true}"
echo
echo "| connections | round | wisp ingress req/s | p50 | p99 | wasmtime serve req/s | p50 | p99 | wisp ÷ wasmtime |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
summary=()
for c in $conns; do
  ratios=()
  for r in $(seq "$rounds"); do
    # Alternate which server goes first: the machine's drift then falls on both.
    if ((r % 2)); then
      read -r w_rps w_p50 w_p99 <<<"$(run_wrk "http://127.0.0.1:$ingress_port/" "$c")"
      read -r s_rps s_p50 s_p99 <<<"$(run_wrk "http://127.0.0.1:$serve_port/" "$c")"
    else
      read -r s_rps s_p50 s_p99 <<<"$(run_wrk "http://127.0.0.1:$serve_port/" "$c")"
      read -r w_rps w_p50 w_p99 <<<"$(run_wrk "http://127.0.0.1:$ingress_port/" "$c")"
    fi
    ratio="$(python3 -c "print(f'{$w_rps/$s_rps:.2f}')")"
    ratios+=("$ratio")
    echo "| $c | $r | $w_rps | $w_p50 | $w_p99 | $s_rps | $s_p50 | $s_p99 | ${ratio}× |"
  done
  summary+=("$c $(python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f'{statistics.median(v):.2f}× ({min(v):.2f}–{max(v):.2f}×)')" "${ratios[@]}")")
done
echo
echo "| connections | wisp ÷ wasmtime, median of $rounds rounds (range) |"
echo "| ---: | ---: |"
for line in "${summary[@]}"; do echo "| ${line%% *} | ${line#* } |"; done
