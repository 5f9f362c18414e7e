#!/usr/bin/env bash
# End-to-end throughput of `orchestrator serve` against the mock provider's
# own, measured side by side in one run with wrk (Debian's package), so the
# ratio means something on a shared machine whose absolute figures drift.
#
#   scripts/throughput.sh [--duration 10s] [--connections 64] [--threads 2] [--log info]
#
# Builds both binaries in release, starts `gauntlet mock-llm` and
# `orchestrator serve` (SQLite, base.yaml, the rate limit and the budget out
# of the way, the log at `--log`, the service's default `info`, into a file) on
# loopback ports, then runs wrk against the mock's chat
# completions and against `POST /v1/tasks`, and prints both rates, their
# latency percentiles, the errors each saw and the ratio. Exits 2 when wrk is
# missing or a process does not come up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

duration=10s
connections=64
threads=2
log=info
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift ;;
    --connections) connections="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    --log) log="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "throughput.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
command -v wrk >/dev/null || { echo "throughput.sh: wrk is not installed (apt-get install -y wrk)" >&2; exit 2; }

cargo build --release --quiet --locked -p gauntlet --bin gauntlet -p orchestrator --bin orchestrator
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Waits (at most 20 s) for a process's `listening on http://ADDR` line and
# prints ADDR.
address_of() {
  local out="$1" pid="$2"
  for _ in $(seq 1 200); do
    if addr=$(sed -n 's/^listening on http:\/\///p' "$out" | head -n 1) && [ -n "$addr" ]; then
      echo "$addr"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "throughput.sh: $out never said where it listens:" >&2
  cat "$out" "${out%.out}.err" >&2
  exit 2
}

"$bin/gauntlet" mock-llm --listen 127.0.0.1:0 --seed 1 >"$work/mock.out" 2>"$work/mock.err" &
pids+=($!)
mock=$(address_of "$work/mock.out" "$!")

# Everything but the service's own work out of the way: no rate limit and a
# budget no run spends. The log goes to a file, as a deployment's would.
env \
  ORCHESTRATOR__LLM__PROVIDERS__0__BASE_URL="http://$mock/v1" \
  ORCHESTRATOR__STORAGE__SQLITE__PATH="$work/orchestrator.db" \
  ORCHESTRATOR__SECURITY__RATE_LIMITS__ADMIN__REQUESTS_PER_SECOND=100000 \
  ORCHESTRATOR__SECURITY__RATE_LIMITS__ADMIN__BURST=100000 \
  ORCHESTRATOR__BUDGET__DEFAULT_LIMIT_TOKENS=1000000000000 \
  RUST_LOG="$log" \
  "$bin/orchestrator" serve --config fixtures/configs/base.yaml --listen 127.0.0.1:0 \
  >"$work/orchestrator.out" 2>"$work/orchestrator.err" &
pids+=($!)
service=$(address_of "$work/orchestrator.out" "$!")

cat >"$work/provider.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"gauntlet-mock","messages":[{"role":"user","content":"plan a trip"}],"max_tokens":100}'
LUA
cat >"$work/tasks.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer gauntlet-dev-key"
wrk.body = '{"prompt":"plan a trip","max_tokens":100}'
LUA

# One wrk run; prints "RATE P50 P99 ERRORS" (ms for latencies).
measure() {
  local url="$1" script="$2" out="$work/wrk.$3"
  wrk --latency -t "$threads" -c "$connections" -d "$duration" -s "$script" "$url" >"$out"
  python3 - "$out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(label):
    m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
errors += sum(int(n) for n in re.findall(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)[0]) if "Socket errors" in text else 0
print(f"{rate:.0f} {ms('50%'):.2f} {ms('99%'):.2f} {errors}")
PY
}

echo "wrk: $threads threads, $connections connections, $duration each, on loopback; service log at $log"
read -r p_rate p_p50 p_p99 p_err < <(measure "http://$mock/v1/chat/completions" "$work/provider.lua" provider)
read -r t_rate t_p50 t_p99 t_err < <(measure "http://$service/v1/tasks" "$work/tasks.lua" tasks)
printf '%-28s %12s %9s %9s %8s\n' "target" "requests/s" "p50 ms" "p99 ms" "errors"
printf '%-28s %12s %9s %9s %8s\n' "mock provider alone" "$p_rate" "$p_p50" "$p_p99" "$p_err"
printf '%-28s %12s %9s %9s %8s\n' "orchestrator POST /v1/tasks" "$t_rate" "$t_p50" "$t_p99" "$t_err"
python3 -c "import sys; t, p = float(sys.argv[1]), float(sys.argv[2]); print(f'ratio: the orchestrator at {t / p:.3f} of its provider\'s rate')" "$t_rate" "$p_rate"
if [ "$t_err" != "0" ]; then
  echo "throughput.sh: the orchestrator answered $t_err requests with an error; see the rates above with care" >&2
fi
