#!/usr/bin/env bash
# Interleaved A/B of POST /hash and heartbeats between warden builds: on a noisy machine a
# single run of bench/run.sh swings by a fifth, so each round runs every build in turn.
#
#   bash bench/ab.sh OLD_WARDEN NEW_WARDEN [MORE…]     # e.g. a release build of another commit
#   ROUNDS=5 DURATION=10s bash bench/ab.sh …
#   PORT_BASE=28000 bash bench/ab.sh …                 # ports of its own (default 18000)
#
# Prints, per round, the no-op ceiling (bench/noop.rs) and each build's req/s and p99 for
# POST /hash (`password=angryMonkey`) and heartbeats over 10 000 instances, wrk -t1 -c64, on
# a fresh data dir with --sync full; then each build's mean over the rounds, and its ratio to
# the first build's.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash bench/ab.sh WARDEN_A WARDEN_B [MORE…]" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
base=${PORT_BASE:-18000}
noop=127.0.0.1:$base hashes=127.0.0.1:$((base + 80)) registry=127.0.0.1:$((base + 81))
admin=127.0.0.1:$((base + 1090))
source bench/common.sh
require wrk curl
cargo build --release --locked --quiet --example noop
write_loads
"${CARGO_TARGET_DIR:-target}/release/examples/noop" "$noop" &
pids+=($!)
rate() { awk '/^Requests\/sec:/ {r = $2} $1 == "99%" {p = $2} END {printf "%s %s", r, p}' "$1"; }
for round in $(seq "$ROUNDS"); do
  wrk -t1 -c64 -d"$DURATION" --latency "http://$noop/" >"$work/noop.txt"
  echo "round $round noop $(rate "$work/noop.txt")"
  for bin in "$@"; do
    data=$(mktemp -d -p "$work")
    "$bin" serve --data-dir "$data" --sync full --hashes-addr "$hashes" \
      --registry-addr "$registry" --admin-addr "$admin" --no-jobs 2>/dev/null &
    pid=$!
    wait_for "http://$admin/healthz"
    wrk -t1 -c64 -d"$DURATION" --latency -s "$work/post_hash.lua" "http://$hashes/hash" >"$work/h.txt"
    wrk -t1 -c64 -d"$DURATION" --latency -s "$work/heartbeat.lua" "http://$registry/" >"$work/b.txt"
    echo "round $round $bin post_hash $(rate "$work/h.txt") heartbeat $(rate "$work/b.txt")"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done | tee "$work/rounds.txt"
echo "means over $ROUNDS rounds (req/s):"
awk -v first="$1" '$3 != "noop" {h[$3] += $5; b[$3] += $8; n[$3]++; if (!($3 in seen)) {seen[$3]; order[++k] = $3}}
  END {
    for (i = 1; i <= k; i++) {
      bin = order[i]
      printf "  %s: POST /hash %.0f (%.3fx), heartbeats %.0f (%.3fx)\n", bin, h[bin] / n[bin],
        (h[bin] / n[bin]) / (h[first] / n[first]), b[bin] / n[bin], (b[bin] / n[bin]) / (b[first] / n[first])
    }
  }' "$work/rounds.txt"
