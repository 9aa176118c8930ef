#!/usr/bin/env bash
# warden's benchmark: release build, a temp data dir, the default `--sync full`, and wrk.
#
#   bash bench/run.sh            # each target for 10 s: wrk -t1 -c64 -d10s --latency
#   DURATION=30s bash bench/run.sh
#
# Measures, in one run, the machine's ceiling (bench/noop.rs: an axum route that does
# nothing), admin GET /healthz, and POST /hash with `password=angryMonkey`; prints req/s, p99,
# warden's peak RSS, and the ratio POST /hash / no-op.
# Targets (issue 3): POST /hash >= 0.5x no-op, p99 <= 5 ms, peak RSS <= 64 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
NOOP_ADDR=127.0.0.1:18000
HASHES_ADDR=127.0.0.1:18080
ADMIN_ADDR=127.0.0.1:19090

missing=()
for tool in wrk curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --locked --quiet --bin warden --example noop
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # url
  for _ in $(seq 100); do
    if curl -fs -o /dev/null "$1" 2>/dev/null || curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null | grep -q '^[1-5]'; then
      return 0
    fi
    sleep 0.1
  done
  echo "nothing answered at $1" >&2
  exit 1
}

target/release/examples/noop "$NOOP_ADDR" &
pids+=($!)
target/release/warden serve --data-dir "$work/data" --sync full \
  --hashes-addr "$HASHES_ADDR" --admin-addr "$ADMIN_ADDR" \
  --registry-addr 127.0.0.1:0 --jobs-addr 127.0.0.1:0 2>"$work/warden.log" &
warden_pid=$!
pids+=($warden_pid)
wait_for "http://$NOOP_ADDR/"
wait_for "http://$ADMIN_ADDR/healthz"

cat >"$work/post_hash.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "password=angryMonkey"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
LUA

# run NAME URL [wrk args...]: prints "NAME req/s p99" and keeps the numbers.
declare -A rate p99
run() {
  local name=$1 url=$2
  shift 2
  local out="$work/$name.txt"
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >"$out"
  rate[$name]=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p99[$name]=$(awk '$1 == "99%" {print $2}' "$out")
  local errors
  errors=$(awk '/Non-2xx|Socket errors/' "$out")
  printf '%-14s %12s req/s   p99 %10s   %s\n' "$name" "${rate[$name]}" "${p99[$name]}" "$errors"
}

echo "wrk -t1 -c$CONNECTIONS -d$DURATION --latency, warden --sync full, $(nproc) cores"
run noop "http://$NOOP_ADDR/"
run healthz "http://$ADMIN_ADDR/healthz"
run post_hash "http://$HASHES_ADDR/hash" -s "$work/post_hash.lua"

awk '/^VmHWM:/ {printf "warden peak RSS: %.1f MB\n", $2 / 1024}' "/proc/$warden_pid/status"
awk -v hash="${rate[post_hash]}" -v noop="${rate[noop]}" \
  'BEGIN {printf "POST /hash / no-op: %.2fx\n", hash / noop}'
echo "hashes stored: $(curl -s "http://$HASHES_ADDR/stats")"
