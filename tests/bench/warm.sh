#!/usr/bin/env bash
# Warm throughput of the hello component, in one run on one machine: through `wisp up`'s
# ingress (a Function kept at one pod, called in process) and through `wasmtime serve -S cli=y
# -O pooling-allocator` (wasmtime-cli 48.0.8), both driven by the same wrk command.
#
#   tests/bench/warm.sh            # WISP_BENCH_SECONDS=10 WISP_BENCH_CONNECTIONS="1 16 64"
#                                  # WISP_BENCH_ROUNDS=3 (alternating rounds; the median ratio)
#   WISP_WASM_PAGEMAP_RESET=false tests/bench/warm.sh  # wisp up resetting pool slots by memset
#   WISP_BENCH_BASELINE=/path/to/an/older/wisp tests/bench/warm.sh
#                                  # also that build's `wisp up`, in the same rounds: new ÷ old
#   WISP_BENCH_SERVE=false ...     # without wasmtime serve (with a baseline: new ÷ old only)
#   WISP_BENCH_ARGS / WISP_BENCH_BASELINE_ARGS: more `wisp up` flags for the new build / the
#                                  baseline; an A/B of one flag on one binary, e.g. busy polling:
#   WISP_BENCH_BASELINE=target/release/wisp WISP_BENCH_BASELINE_ARGS="--ingress-busy-poll-us 0" \
#     WISP_BENCH_SERVE=false tests/bench/warm.sh
#   WISP_BENCH_VARIANT_ARGS="..."  # also the new build with these flags, in the same rounds
#                                  # (variant ÷ baseline, or ÷ the new build without a baseline);
#                                  # `{otlp}` in them is the URL of an OTLP/HTTP sink this script
#                                  # starts (tests/bench/otlp-sink.py), e.g. traces exported:
#   WISP_BENCH_BASELINE=/old/wisp WISP_BENCH_VARIANT_ARGS="--otlp-endpoint {otlp}" \
#     WISP_BENCH_SERVE=false tests/bench/warm.sh
#
# Needs wrk (apt) and wasmtime-cli (installed with cargo when missing). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${WISP_BENCH_SECONDS:-10}"
conns="${WISP_BENCH_CONNECTIONS:-1 16 64}"
rounds="${WISP_BENCH_ROUNDS:-3}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
baseline="${WISP_BENCH_BASELINE:-}"
serve="${WISP_BENCH_SERVE:-true}"
variant="${WISP_BENCH_VARIANT_ARGS:-}"
[ "$serve" = true ] || [ -n "$baseline" ] || { echo "WISP_BENCH_SERVE=false needs WISP_BENCH_BASELINE" >&2; exit 2; }

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
[ "$serve" != true ] || command -v wasmtime >/dev/null || cargo install wasmtime-cli --version 48.0.8 --locked
bash tests/build-guests.sh >/dev/null
cargo build --release -q -p wisp
hello="$PWD/examples/target/wasm32-wasip2/release/hello.wasm"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# `wisp up` of binary $1 in $tmp/$2 with more flags $3, a Function at minScale 1; prints its
# ingress port.
start_wisp() {
  local bin="$1" dir="$tmp/$2" extra="${3:-}" port
  port="$(free_port)"
  mkdir -p "$dir"
  WISP_CONFIG="$dir/config" WISP_LOG=warn "$bin" up --listen 127.0.0.1:0 --data-dir "$dir/data" \
    --node-name "bench-$2" --ingress-listen "127.0.0.1:$port" --ingress-tls-listen 127.0.0.1:0 --docker false $extra >"$dir/wisp.out" 2>"$dir/wisp.err" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$dir/config" ] && break; sleep 0.1; done
  sed -e 's/minScale: 0/minScale: 1/' -e "s|wasm: .*|wasm: $hello|" examples/hello/function.yaml >"$dir/function.yaml"
  WISP_CONFIG="$dir/config" "$bin" apply -f "$dir/function.yaml" >/dev/null
  local code=""
  for _ in $(seq 300); do
    code="$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: hello.default.localhost' "http://127.0.0.1:$port/" || true)"
    [ "$code" = 200 ] && break
    sleep 0.1
  done
  [ "$code" = 200 ] || { echo "$bin: the ingress never answered 200 (last: $code)" >&2; cat "$dir/wisp.err" >&2; exit 1; }
  echo "$port"
}

ingress_port="$(start_wisp "$target/release/wisp" new "${WISP_BENCH_ARGS:-}")"
base_port=""
[ -n "$baseline" ] && base_port="$(start_wisp "$baseline" base "${WISP_BENCH_BASELINE_ARGS:-}")"
var_port=""
if [ -n "$variant" ]; then
  if [[ "$variant" == *"{otlp}"* ]]; then
    sink_port="$(free_port)"
    python3 tests/bench/otlp-sink.py "$sink_port" >"$tmp/sink.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do curl -s -o /dev/null -X POST "http://127.0.0.1:$sink_port/v1/traces" && break; sleep 0.1; done
    variant="${variant//\{otlp\}/http://127.0.0.1:$sink_port}"
  fi
  var_port="$(start_wisp "$target/release/wisp" var "${WISP_BENCH_ARGS:-} $variant")"
fi

# wasmtime serve.
serve_port=""
if [ "$serve" = true ]; then
  serve_port="$(free_port)"
  wasmtime serve -S cli=y -O pooling-allocator --addr "127.0.0.1:$serve_port" "$hello" >"$tmp/serve.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$serve_port/" && break; sleep 0.1; done
fi

run_wrk() { # url conns -> "req/s p50 p99"
  wrk -t1 -c"$2" -d"${secs}s" --latency -H 'Host: hello.default.localhost' "$1" >"$tmp/wrk.out"
  local rps p50 p99
  rps="$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out")"
  p50="$(awk '$1=="50%" {print $2}' "$tmp/wrk.out")"
  p99="$(awk '$1=="99%" {print $2}' "$tmp/wrk.out")"
  echo "$rps $p50 $p99"
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
median() { python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f'{statistics.median(v):.2f}× ({min(v):.2f}–{max(v):.2f}×)')" "$@"; }

peer="no wasmtime serve"
[ "$serve" = true ] && peer="$(wasmtime --version)"
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); cpus: $(nproc); wrk -t1 -d${secs}s; $peer; wisp up --wasm-pagemap-reset=${WISP_WASM_PAGEMAP_RESET:-true}${WISP_BENCH_ARGS:+ $WISP_BENCH_ARGS}${baseline:+; baseline: $baseline ${WISP_BENCH_BASELINE_ARGS:-}}${variant:+; variant: $variant}"
echo
if [ -n "$variant" ]; then
  # The variant's own table: new, variant (and baseline), rotating who goes first.
  ref_name=wisp
  [ -n "$baseline" ] && ref_name=baseline
  echo "| connections | round | wisp req/s | variant req/s | p50 | p99 |${baseline:+ baseline req/s |} wisp ÷ $ref_name | variant ÷ $ref_name |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: |${baseline:+ ---: |} ---: | ---: |"
  summary=()
  for c in $conns; do
    a=(); b=()
    for r in $(seq "$rounds"); do
      order=(new var)
      [ -n "$baseline" ] && order+=(base)
      shift_by=$(((r - 1) % ${#order[@]}))
      order=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
      for who in "${order[@]}"; do
        case "$who" in
          new) read -r w_rps w_p50 w_p99 <<<"$(run_wrk "http://127.0.0.1:$ingress_port/" "$c")" ;;
          var) read -r v_rps v_p50 v_p99 <<<"$(run_wrk "http://127.0.0.1:$var_port/" "$c")" ;;
          base) read -r b_rps b_p50 b_p99 <<<"$(run_wrk "http://127.0.0.1:$base_port/" "$c")" ;;
        esac
      done
      ref="${b_rps:-$w_rps}"
      a+=("$(ratio "$w_rps" "$ref")"); b+=("$(ratio "$v_rps" "$ref")")
      echo "| $c | $r | $w_rps | $v_rps | $v_p50 | $v_p99 |${baseline:+ $b_rps |} ${a[-1]}× | ${b[-1]}× |"
    done
    summary+=("| $c | $(median "${a[@]}") | $(median "${b[@]}") |")
  done
  echo
  echo "| connections | wisp ÷ $ref_name, median of $rounds rounds (range) | variant ÷ $ref_name |"
  echo "| ---: | ---: | ---: |"
  printf '%s\n' "${summary[@]}"
  exit 0
fi
if [ -n "$baseline" ]; then
  echo "| connections | round | wisp req/s | p50 | p99 | baseline req/s | p50 | p99 | wasmtime serve req/s | wisp ÷ wasmtime | wisp ÷ baseline |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
else
  echo "| connections | round | wisp ingress req/s | p50 | p99 | wasmtime serve req/s | p50 | p99 | wisp ÷ wasmtime |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
fi
summary=()
for c in $conns; do
  ratios=()
  vs_base=()
  for r in $(seq "$rounds"); do
    # Rotate which server goes first: the machine's drift then falls on all of them.
    order=(new)
    [ -n "$baseline" ] && order+=(base)
    [ "$serve" = true ] && order+=(serve)
    shift_by=$(((r - 1) % ${#order[@]}))
    order=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
    for who in "${order[@]}"; do
      case "$who" in
        new) read -r w_rps w_p50 w_p99 <<<"$(run_wrk "http://127.0.0.1:$ingress_port/" "$c")" ;;
        base) read -r b_rps b_p50 b_p99 <<<"$(run_wrk "http://127.0.0.1:$base_port/" "$c")" ;;
        serve) read -r s_rps s_p50 s_p99 <<<"$(run_wrk "http://127.0.0.1:$serve_port/" "$c")" ;;
      esac
    done
    if [ "$serve" = true ]; then ratios+=("$(ratio "$w_rps" "$s_rps")"); else s_rps="-"; ratios+=(0); fi
    if [ -n "$baseline" ]; then
      vs_base+=("$(ratio "$w_rps" "$b_rps")")
      echo "| $c | $r | $w_rps | $w_p50 | $w_p99 | $b_rps | $b_p50 | $b_p99 | $s_rps | $([ "$serve" = true ] && echo "${ratios[-1]}×" || echo -) | ${vs_base[-1]}× |"
    else
      echo "| $c | $r | $w_rps | $w_p50 | $w_p99 | $s_rps | $s_p50 | $s_p99 | ${ratios[-1]}× |"
    fi
  done
  line="$c -"
  [ "$serve" = true ] && line="$c $(median "${ratios[@]}")"
  [ -n "$baseline" ] && line="$line|$(median "${vs_base[@]}")"
  summary+=("$line")
done
echo
if [ -n "$baseline" ]; then
  echo "| connections | wisp ÷ wasmtime, median of $rounds rounds (range) | wisp ÷ baseline |"
  echo "| ---: | ---: | ---: |"
  for line in "${summary[@]}"; do rest="${line#* }"; echo "| ${line%% *} | ${rest%%|*} | ${rest#*|} |"; done
else
  echo "| connections | wisp ÷ wasmtime, median of $rounds rounds (range) |"
  echo "| ---: | ---: |"
  for line in "${summary[@]}"; do echo "| ${line%% *} | ${line#* } |"; done
fi
