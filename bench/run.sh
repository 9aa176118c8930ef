#!/usr/bin/env bash
# warden's benchmark: release build, a temp data dir, the default `--sync full`, and wrk.
#
#   bash bench/run.sh            # each target for 10 s: wrk -t1 -c64 -d10s --latency
#   DURATION=30s bash bench/run.sh
#
# Measures, in one run, the machine's ceiling (bench/noop.rs: an axum route that does
# nothing), admin GET /healthz, POST /hash with `password=angryMonkey`, registry heartbeats
# (small JSON bodies over 10 000 instances in 100 groups) and GET /{group} of 100 instances;
# prints req/s, p99, warden's peak RSS and each rate as a ratio of the no-op's. Then, on
# data dirs seeded with sqlite3: GET / over 100 000 live instances in 1 000 groups, and
# heartbeats while the purge deletes 100 000 expired rows (their worst latency).
# Then the job runner (bench/jobs_bench.py): 1 000 `true` jobs through the API against
# `xargs -P`, and one job writing 1 GiB with 4 followers (MB/s, warden's RSS growth). Then
# the cost of security (bench/mtls_load.rs): GET /jobs on keep-alive connections over mutual
# TLS against plain HTTP, and new mutual-TLS connections per second. Then the cost of
# metrics and request ids (issue 14): POST /hash and heartbeats, interleaved rounds
# (bench/ab.sh) of this build against BASELINE, a release build of the commit before them,
# and the instructions each spends per request (bench/instructions.sh, under callgrind;
# BASELINE=none skips both; the baseline's build is kept in target/baseline/). Last, the cost
# of containing jobs (issue 13, bench/jobs_containment.sh): 1 000 `true` jobs against the raw
# spawn rate, interleaved rounds of JOBS_BEFORE (default c69bcb2, main before jobs were
# contained; its build is kept in target/baseline-jobs/), this build with a cgroup per job and
# every limit on, and this build with --job-cgroups off (JOBS_BEFORE=none skips it;
# CONTAINMENT_ROUNDS, default 3, sets its rounds).
# Targets: POST /hash >= 0.5x no-op, p99 <= 5 ms, peak RSS <= 64 MB (issue 3);
# heartbeats >= 0.4x no-op, p99 <= 5 ms; GET / <= 20 ms; no heartbeat blocked > 50 ms by the
# purge (issue 4); jobs >= 0.3x the raw spawn rate; output >= 150 MB/s with all 4 followers
# keeping up; follower RSS growth <= 32 MB (issue 5); keep-alive mTLS >= 0.8x plain (issue 6);
# metrics and request ids cost <= 5 % of POST /hash and heartbeats (issue 14); containment
# costs <= 20 % of the jobs rate (issue 13).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
NOOP_ADDR=127.0.0.1:18000
HASHES_ADDR=127.0.0.1:18080
ADMIN_ADDR=127.0.0.1:19090
REGISTRY_ADDR=127.0.0.1:18081
JOBS_ADDR=127.0.0.1:18443

source bench/common.sh
require wrk curl sqlite3
cargo build --release --locked --quiet --bin warden --example noop --example mtls_load

target/release/examples/noop "$NOOP_ADDR" &
pids+=($!)
target/release/warden serve --data-dir "$work/data" --sync full \
  --hashes-addr "$HASHES_ADDR" --admin-addr "$ADMIN_ADDR" \
  --registry-addr "$REGISTRY_ADDR" --jobs-addr "$JOBS_ADDR" --jobs-tls off 2>"$work/warden.log" &
warden_pid=$!
pids+=($warden_pid)
write_loads
wait_for "http://$NOOP_ADDR/"
wait_for "http://$ADMIN_ADDR/healthz"

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
run heartbeat "http://$REGISTRY_ADDR/" -s "$work/heartbeat.lua"
instances=$(curl -s "http://$REGISTRY_ADDR/group-7" | grep -o '"id"' | wc -l)
run get_group "http://$REGISTRY_ADDR/group-7"
echo "  (GET /group-7 lists $instances instances)"

awk '/^VmHWM:/ {printf "warden peak RSS: %.1f MB\n", $2 / 1024}' "/proc/$warden_pid/status"
for name in post_hash heartbeat get_group; do
  awk -v name="$name" -v rate="${rate[$name]}" -v noop="${rate[noop]}" \
    'BEGIN {printf "%s / no-op: %.2fx\n", name, rate / noop}'
done
echo "hashes stored: $(curl -s "http://$HASHES_ADDR/stats")"

# seed DIR N UPDATED_MS: N instances, 1 000 groups, last heartbeat at UPDATED_MS, written
# straight into a migrated database (warden must not be running on DIR).
seed() {
  target/release/warden migrate --data-dir "$1" 2>/dev/null
  sqlite3 "$1/warden.db" "
    WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $2)
    INSERT INTO instances (group_name, id, created_at_ms, updated_at_ms, meta)
    SELECT 'group-' || (i % 1000), 'instance-' || i, $3, $3, '{\"zone\":\"a\"}' FROM n;"
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# serve_seeded DIR REGISTRY_ADDR ADMIN_ADDR [FLAGS]: a second warden on a seeded dir.
serve_seeded() {
  local dir=$1 registry=$2 admin=$3
  shift 3
  target/release/warden serve --data-dir "$dir" --no-hashes --registry-addr "$registry" \
    --admin-addr "$admin" --jobs-addr 127.0.0.1:0 --log-format json "$@" 2>>"$work/seeded.log" &
  pids+=($!)
  seeded+=($!)
  wait_for "http://$admin/healthz"
}
seeded=()

echo
echo "GET / over 100 000 live instances in 1 000 groups (wrk -t1 -c1 -d$DURATION):"
seed "$work/listing" 100000 "$(now_ms)"
serve_seeded "$work/listing" 127.0.0.1:18181 127.0.0.1:19191 --instance-ttl 1h
groups=$(curl -s http://127.0.0.1:18181/ | grep -o '"group"' | wc -l)
wrk -t1 -c1 -d"$DURATION" --latency http://127.0.0.1:18181/ >"$work/list.txt"
awk -v groups="$groups" '/^    Latency/ {printf "  %d groups listed; mean %s, max %s", groups, $2, $4}
  $1 == "99%" {printf ", p99 %s\n", $2}' "$work/list.txt"

echo "heartbeats while the purge deletes 100 000 expired rows (wrk -t1 -c$CONNECTIONS -d5s):"
seed "$work/purge" 100000 $(( $(now_ms) - 3600000 ))
serve_seeded "$work/purge" 127.0.0.1:18281 127.0.0.1:19291 --purge-every 1s
wrk -t1 -c"$CONNECTIONS" -d5s --latency -s "$work/heartbeat.lua" http://127.0.0.1:18281/ >"$work/purge.txt"
left=$(sqlite3 "$work/purge/warden.db" "SELECT count(*) FROM instances WHERE updated_at_ms < $(( $(now_ms) - 600000 ))")
awk '/^Requests\/sec:/ {rate = $2} /^    Latency/ {max = $4} $1 == "99%" {p99 = $2}
  END {printf "  %s heartbeats/s, p99 %s, worst %s\n", rate, p99, max}' "$work/purge.txt"
grep -o '"purged":[0-9]*' "$work/seeded.log" | awk -F: '{sum += $2} END {printf "  purged %d expired rows during the run", sum}'
echo "; $left still to purge"
# The seeded wardens' purges would otherwise run on through the measurements below.
kill "${seeded[@]}" 2>/dev/null || true

echo
echo "job runner ($(nproc) workers):"
token=$(target/release/warden token issue --user bench --role admin --data-dir "$work/data")
python3 bench/jobs_bench.py "http://$JOBS_ADDR" "$token" "$(nproc)" "$warden_pid"

echo
echo "cost of security: GET /jobs, 16 connections, ${DURATION%s} s each (bench/mtls_load.rs):"
serve_jobs() { # DIR ADDR ADMIN TLS
  target/release/warden serve --data-dir "$1" --no-hashes --no-registry --jobs-addr "$2" \
    --admin-addr "$3" --jobs-tls "$4" 2>>"$work/seeded.log" &
  pids+=($!)
  wait_for "http://$3/healthz"
}
serve_jobs "$work/mtls" 127.0.0.1:18643 127.0.0.1:19491 on
serve_jobs "$work/plain" 127.0.0.1:18743 127.0.0.1:19591 off
seconds=${DURATION%s}
plain_token=$(target/release/warden token issue --user bench --role admin --data-dir "$work/plain")
export WARDEN_CA="$work/mtls/pki/ca.pem" WARDEN_CERT="$work/mtls/pki/clients/admin.pem" \
  WARDEN_KEY="$work/mtls/pki/clients/admin.key"
tls_rate=$(target/release/examples/mtls_load https://127.0.0.1:18643 keepalive "$seconds" 16)
plain_rate=$(WARDEN_TOKEN=$plain_token target/release/examples/mtls_load http://127.0.0.1:18743 keepalive "$seconds" 16)
handshakes=$(target/release/examples/mtls_load https://127.0.0.1:18643 new "$seconds" 16)
awk -v tls="$tls_rate" -v plain="$plain_rate" -v new="$handshakes" 'BEGIN {
  printf "  keep-alive: %d req/s over mutual TLS, %d req/s plain: %.2fx\n", tls, plain, tls / plain
  printf "  new mutual-TLS connections (one request each): %d/s\n", new }'

# c33d95a: main just before request ids and metrics (issue 14).
baseline=${BASELINE:-c33d95a}
if [ "$baseline" != none ]; then
  echo
  echo "cost of metrics and request ids: this build against $baseline (bench/ab.sh):"
  kill "${pids[@]}" 2>/dev/null || true
  mkdir -p "$work/baseline"
  git archive "$baseline" | tar -x -C "$work/baseline"
  CARGO_TARGET_DIR="$PWD/target/baseline" SQLX_OFFLINE=true cargo build --release --locked \
    --quiet --bin warden --manifest-path "$work/baseline/Cargo.toml"
  cp target/baseline/release/warden "$work/warden-$baseline"
  PORT_BASE=28000 ROUNDS=${AB_ROUNDS:-5} bash bench/ab.sh "$work/warden-$baseline" target/release/warden
  # The same comparison in instructions per request, which the machine's noise cannot move.
  bash bench/instructions.sh "$work/warden-$baseline" target/release/warden
fi

# c69bcb2: main just before jobs were contained (issue 13).
jobs_before=${JOBS_BEFORE:-c69bcb2}
if [ "$jobs_before" != none ]; then
  echo
  kill "${pids[@]}" 2>/dev/null || true
  BEFORE=$jobs_before PORT_BASE=24000 ROUNDS=${CONTAINMENT_ROUNDS:-3} bash bench/jobs_containment.sh
fi
