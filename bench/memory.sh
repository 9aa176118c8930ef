#!/usr/bin/env bash
# warden's memory benchmark: peak RSS while many clients read large answers at once.
#
#   bash bench/memory.sh                              # release build, 10 s per run
#   DURATION=30s bash bench/memory.sh
#   WARDEN_BIN=/path/to/other/warden bash bench/memory.sh   # measure another build instead
#
# 1. The registry: 1 000 live instances in one group, each with a meta of 8 KiB (the most a
#    heartbeat may store), written straight into a migrated database with sqlite3; then
#    16 clients read GET /{group} (about 8 MB each time) for DURATION (wrk -t2 -c16).
#    Prints warden's peak RSS (VmHWM) and req/s. Target: peak RSS <= 64 MB.
#    Then, on the same warden, GET /{group} of 100 small instances with 64 clients
#    (wrk -t1 -c64, as bench/run.sh's get_group): req/s and p99, a group that fits in one
#    page.
# 2. The job runner: 10 000 finished jobs with 60 KB arguments each, written straight into a
#    migrated database; 8 clients walk GET /jobs page by page (bench/jobs_memory.py).
#    Prints warden's peak RSS. Target: <= 64 MB.
# 3. Retention: 10 000 jobs of 100 KB output at 40 a second with --job-retention 1m
#    (bench/retention.py); prints the database file's peak size against one window's worth.
#    Target: <= 2x. RETENTION_JOBS and RETENTION_RATE change the load.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:18381}
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:19391}

source bench/common.sh
require wrk curl sqlite3
if [ -z "${WARDEN_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin warden
  WARDEN_BIN=target/release/warden
fi

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# mb NAME PID: the /proc/PID/status field NAME (VmRSS, VmHWM) in MB.
mb() { awk -v name="$1:" '$1 == name {printf "%.1f", $2 / 1024}' "/proc/$2/status"; }
# rate FILE: req/s and any errors from a wrk report.
rate() { awk '/^Requests\/sec:/ {rate = $2} /Non-2xx|Socket errors/ {errors = errors "  " $0}
  END {printf "%s req/s%s", rate, errors}' "$1"; }

# ---------------------------------------------------------------------------------------
# Section 1: the registry's listings.
# ---------------------------------------------------------------------------------------
echo "warden --sync full, $(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg)"
data="$work/registry"
"$WARDEN_BIN" migrate --data-dir "$data" 2>/dev/null
# The meta is exactly 8 192 bytes of JSON text: {"blob":"xxx…"}.
sqlite3 "$data/warden.db" "
  WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < 1000)
  INSERT INTO instances (group_name, id, created_at_ms, updated_at_ms, meta)
  SELECT 'big', printf('instance-%04d', i), $(now_ms), $(now_ms),
         printf('{\"blob\":\"%.*c\"}', 8181, 'x') FROM n;
  WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < 100)
  INSERT INTO instances (group_name, id, created_at_ms, updated_at_ms, meta)
  SELECT 'small', 'instance-' || i, $(now_ms), $(now_ms),
         '{\"zone\":\"eu-west-1a\",\"version\":\"1.4.2\"}' FROM n;"
meta=$(sqlite3 "$data/warden.db" "SELECT min(length(meta)) || '-' || max(length(meta)) FROM instances WHERE group_name = 'big'")

"$WARDEN_BIN" serve --data-dir "$data" --no-hashes --registry-addr "$REGISTRY_ADDR" \
  --admin-addr "$ADMIN_ADDR" --jobs-addr 127.0.0.1:0 --instance-ttl 1h \
  --log-format json 2>>"$work/warden.log" &
warden_pid=$!
pids+=("$warden_pid")
wait_for "http://$ADMIN_ADDR/healthz"

at_rest=$(mb VmRSS "$warden_pid")
curl -s "http://$REGISTRY_ADDR/big" >"$work/big.json"
listed=$(grep -o '"id"' "$work/big.json" | wc -l)
echo "GET /{group}: $listed instances of $meta bytes of meta, $(wc -c <"$work/big.json") bytes;" \
  "warden at rest: $at_rest MB"
wrk -t2 -c16 -d"$DURATION" "http://$REGISTRY_ADDR/big" >"$work/big.txt"
echo "  wrk -t2 -c16 -d$DURATION: $(rate "$work/big.txt")"
echo "  warden peak RSS: $(mb VmHWM "$warden_pid") MB (target <= 64 MB)"

echo "GET /{group} of $(curl -s "http://$REGISTRY_ADDR/small" | grep -o '"id"' | wc -l) small instances:"
wrk -t1 -c64 -d"$DURATION" --latency "http://$REGISTRY_ADDR/small" >"$work/small.txt"
echo "  wrk -t1 -c64 -d$DURATION: $(rate "$work/small.txt"), p99 $(awk '$1 == "99%" {print $2}' "$work/small.txt")"
kill "$warden_pid" 2>/dev/null || true

# ---------------------------------------------------------------------------------------
# Section 2: paging through 10 000 jobs with 8 clients.
# ---------------------------------------------------------------------------------------
# 10 000 finished jobs, each with one argument of 60 000 bytes (a POST /jobs body is at most
# 64 KiB), written straight into a migrated database; 8 clients walk GET /jobs page by page.
data="$work/jobs"
"$WARDEN_BIN" migrate --data-dir "$data" 2>/dev/null
sqlite3 "$data/warden.db" "
  WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < 10000)
  INSERT INTO jobs (id, command, args, owner, status, exit_code, created_at_ms,
                    started_at_ms, finished_at_ms)
  SELECT printf('%08x-0000-4000-8000-%012x', i, i), 'echo',
         '[\"' || printf('%.*c', 60000, 'a') || '\"]', 'bench', 'succeeded', 0,
         $(now_ms), $(now_ms), $(now_ms) FROM n;"
jobs_addr=127.0.0.1:18543
"$WARDEN_BIN" serve --data-dir "$data" --no-hashes --no-registry --jobs-addr "$jobs_addr" \
  --jobs-tls off --admin-addr "$ADMIN_ADDR" --job-retention off \
  --log-format json 2>>"$work/warden.log" &
warden_pid=$!
pids+=("$warden_pid")
wait_for "http://$ADMIN_ADDR/healthz"
token=$("$WARDEN_BIN" token issue --user bench --role admin --data-dir "$data")
echo "GET /jobs over 10 000 jobs of 60 KB arguments, 8 clients each walking every page" \
  "(warden at rest: $(mb VmRSS "$warden_pid") MB):"
python3 bench/jobs_memory.py "http://$jobs_addr" "$token" "$warden_pid" 8
kill "$warden_pid" 2>/dev/null || true
wait "$warden_pid" 2>/dev/null || true

# ---------------------------------------------------------------------------------------
# Section 3: the database file under a steady load of jobs with a 1-minute retention.
# ---------------------------------------------------------------------------------------
# RETENTION_JOBS jobs of 100 KB of output at RETENTION_RATE a second (by default 10 000 at
# 40/s: over four minutes, four windows); the file must stay within 2x one window's worth.
data="$work/retention"
"$WARDEN_BIN" serve --data-dir "$data" --no-hashes --no-registry --jobs-addr "$jobs_addr" \
  --jobs-tls off --admin-addr "$ADMIN_ADDR" --job-retention 1m --purge-every 1s \
  --log-format json 2>>"$work/warden.log" &
warden_pid=$!
pids+=("$warden_pid")
wait_for "http://$ADMIN_ADDR/healthz"
token=$("$WARDEN_BIN" token issue --user bench --role admin --data-dir "$data")
echo "${RETENTION_JOBS:-10000} jobs of 100 KB output at ${RETENTION_RATE:-40}/s, --job-retention 1m:"
python3 bench/retention.py "http://$jobs_addr" "$token" "$data" "${RETENTION_JOBS:-10000}" \
  "${RETENTION_RATE:-40}" 60
