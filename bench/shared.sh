#!/usr/bin/env bash
# The cost of the shared database (`--database postgres://…`): heartbeats and POST /hash on
# (a) one node on SQLite (`--sync full`), (b) one node on Postgres and (c) two nodes on the
# same Postgres with the load split across them; release build, wrk, a throwaway Postgres.
#
#   env -u DATABASE_URL bash bench/shared.sh     # each target for 10 s: wrk -t1 -c64 --latency
#   DURATION=30s CONNECTIONS=128 bash bench/shared.sh
#   WARMUP=2s bash bench/shared.sh               # a discarded wrk run before each measured one
#                                                # (default none, as bench/run.sh)
#
# Postgres: the highest version under /usr/lib/postgresql/*/bin, else initdb on PATH, else
# Debian's `postgresql` package; a cluster of its own in $work (initdb -U warden --auth=trust,
# as the `postgres` user when root), durable as SQLite's side is: fsync and synchronous_commit
# on (the defaults), max_connections=200, shared_buffers=256MB, on 127.0.0.1 and a free port.
# (b) and (c) each get a fresh database, so (c) does not start on (b)'s rows. Every node runs
# with --no-jobs (the job runner is out of the measurement) and a data dir of its own.
# In (c) two wrk run at once, each with half the connections, one per node (each seeding its
# heartbeats apart): their req/s are summed and the worse p99 is reported. Prints req/s, p99, non-2xx and socket errors (a run
# with any is flagged), each node's peak RSS (VmHWM), the ratios Postgres / SQLite and
# 2 nodes / 1 node, and the warnings and errors in the nodes' and Postgres's logs.
# Target: heartbeats on one node on Postgres >= 0.5x the same node on SQLite. On 2 cores two
# nodes cannot show scale-up: the point is the cost of the network engine.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-}
# (a) and (b) use node 1's listeners, (c) nodes 1 and 2.
HASHES_ADDR=(127.0.0.1:38080 127.0.0.1:38180)
REGISTRY_ADDR=(127.0.0.1:38081 127.0.0.1:38181)
ADMIN_ADDR=(127.0.0.1:39090 127.0.0.1:39190)
# The SQLite node must not pick up a shared database from the environment.
unset WARDEN_DATABASE_URL

source bench/common.sh
require wrk curl python3

# Postgres's server binaries: the highest version installed, else whatever PATH has.
find_pgbin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
    echo "$dir"
  elif command -v initdb >/dev/null; then
    dirname "$(readlink -f "$(command -v initdb)")"
  fi
}
pgbin=$(find_pgbin)
if [ -z "$pgbin" ]; then
  require postgresql
  pgbin=$(find_pgbin)
fi
[ -n "$pgbin" ] || { echo "no Postgres server binaries (initdb) found" >&2; exit 1; }
# pgtool NAME: a client tool, from the server's directory if it has one.
pgtool() { if [ -x "$pgbin/$1" ]; then echo "$pgbin/$1"; else command -v "$1"; fi; }

cargo build --release --locked --quiet --bin warden

# initdb and postgres refuse to run as root: then they run as the `postgres` user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then (cd "$pg" && runuser -u postgres -- "$@"); else "$@"; fi
}
pg=$work/pg
mkdir -p "$pg"
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "running as root, but no postgres user" >&2; exit 1; }
  chmod 711 "$work" # mktemp's 700 would keep the postgres user out of its own cluster
  chown postgres: "$pg"
fi
pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$pgbin/initdb" -D "$pg/data" -U warden --auth=trust --no-locale -E UTF8 >"$work/initdb.log"
as_pg "$pgbin/pg_ctl" -D "$pg/data" -l "$pg/postgres.log" -w -s start -o \
  "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg -c max_connections=200 -c shared_buffers=256MB"
pg_running=1
# common.sh's cleanup only kills pids: the wardens go first, then the cluster, then $work.
shared_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${pg_running:-}" ]; then
    as_pg "$pgbin/pg_ctl" -D "$pg/data" -m fast -w -s stop || true
  fi
  cleanup
}
trap shared_cleanup EXIT
psql() { "$(pgtool psql)" -X -q -h 127.0.0.1 -p "$pg_port" -U warden "$@"; }
createdb() { "$(pgtool createdb)" -h 127.0.0.1 -p "$pg_port" -U warden "$@"; }
pg_url() { echo "postgres://warden@127.0.0.1:$pg_port/$1"; }

write_loads

# wait_healthy URL LOG: until /healthz answers 200, for up to 30 s (Postgres's migrations).
wait_healthy() {
  wait_for "$1"
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
    sleep 0.1
  done
  echo "$1 never answered 200: $(curl -s "$1")" >&2
  tail -n 20 "$2" >&2
  exit 1
}

# start_node NAME INDEX [FLAGS…]: a warden on $work/NAME with node INDEX's listeners.
declare -A node_pid
start_node() {
  local name=$1 i=$2
  shift 2
  target/release/warden serve --data-dir "$work/$name" --sync full \
    --hashes-addr "${HASHES_ADDR[$i]}" --registry-addr "${REGISTRY_ADDR[$i]}" \
    --admin-addr "${ADMIN_ADDR[$i]}" --jobs-addr 127.0.0.1:0 --jobs-tls off --no-jobs \
    --log-format json "$@" 2>"$work/$name.log" &
  pids+=($!)
  node_pid[$name]=$!
  wait_healthy "http://${ADMIN_ADDR[$i]}/healthz" "$work/$name.log"
}

# stop_node NAME: keeps its peak RSS (VmHWM, MB) and its log's warnings and errors, then stops it.
declare -A rss
stop_node() {
  local pid=${node_pid[$1]}
  rss[$1]=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  grep -E '"level":"(WARN|ERROR)"' "$work/$1.log" >"$work/$1.problems" || true
}

# wrk_to OUT LUA CONNECTIONS DURATION URL: one wrk, -t1.
wrk_to() { wrk -t1 -c"$3" -d"$4" --latency -s "$2" "$5" >"$1"; }

# measure NAME LUA URL [URL]: one wrk with every connection, or with two URLs two wrk at once
# with half each; keeps and prints req/s (summed), p99 (the worse, in ms), non-2xx and socket
# errors (summed). WARMUP runs the same load first and throws it away.
declare -A rate p99 bad
measure() {
  local name=$1 lua=$2
  shift 2
  local urls=("$@") n=$# out=() waiting=() luas=() i c
  # wrk's LuaJIT seeds math.random the same in every process: two wrk would send the same
  # heartbeats in the same order, both nodes on the same rows at once. Each gets a seed.
  for i in "${!urls[@]}"; do
    if [ "$n" = 1 ]; then
      luas+=("$lua")
    else
      { echo "math.randomseed($((i + 1)))"; cat "$lua"; } >"${lua%.lua}.$i.lua"
      luas+=("${lua%.lua}.$i.lua")
    fi
  done
  if [ -n "$WARMUP" ]; then
    for i in "${!urls[@]}"; do
      c=$(( CONNECTIONS / n + (i < CONNECTIONS % n ? 1 : 0) ))
      wrk_to "$work/$name.warmup$i.txt" "${luas[$i]}" "$c" "$WARMUP" "${urls[$i]}" &
      waiting+=($!)
    done
    wait "${waiting[@]}"
    waiting=()
  fi
  for i in "${!urls[@]}"; do
    c=$(( CONNECTIONS / n + (i < CONNECTIONS % n ? 1 : 0) ))
    out+=("$work/$name.$i.txt")
    wrk_to "$work/$name.$i.txt" "${luas[$i]}" "$c" "$DURATION" "${urls[$i]}" &
    waiting+=($!)
  done
  wait "${waiting[@]}"
  local summary
  summary=$(awk '
    function us(t) {
      if (t ~ /us$/) return t + 0
      if (t ~ /ms$/) return t * 1000
      if (t ~ /m$/) return t * 60e6
      if (t ~ /s$/) return t * 1e6
      return t + 0
    }
    / requests in / {requests += $1}
    /^Requests\/sec:/ {rate += $2}
    $1 == "99%" {if (us($2) > worst) worst = us($2)}
    /Non-2xx or 3xx responses:/ {non2xx += $NF}
    /Socket errors:/ {for (i = 3; i <= NF; i++) {v = $i; gsub(/,/, "", v); if (v ~ /^[0-9]+$/) socket += v}}
    END {printf "%.2f %.2f %d %d %d\n", rate, worst / 1000, requests, non2xx, socket}' "${out[@]}")
  local requests non2xx socket
  read -r rate[$name] p99[$name] requests non2xx socket <<<"$summary"
  bad[$name]=$(( non2xx + socket ))
  local flag=
  [ "${bad[$name]}" = 0 ] || flag="  <-- FLAGGED: not every response was a 2xx"
  printf '%-22s %12s req/s   p99 %9s ms   %9d requests, %d non-2xx, %d socket errors%s\n' \
    "$name" "${rate[$name]}" "${p99[$name]}" "$requests" "$non2xx" "$socket" "$flag"
}

pg_version=$("$pgbin/postgres" --version)
durability=$(psql -d postgres -At -c 'SHOW fsync' -c 'SHOW synchronous_commit' | paste -sd/)
echo "wrk -t1 -c$CONNECTIONS -d$DURATION --latency (two nodes: two wrk at once, -c$((CONNECTIONS / 2)) each)," \
  "warmup ${WARMUP:-none}, $(nproc) cores"
echo "warden --sync full --no-jobs; $pg_version, fsync/synchronous_commit $durability," \
  "--database-pool 16 (default)"

# (a) one node on SQLite.
start_node sqlite 0
measure sqlite.post_hash "$work/post_hash.lua" "http://${HASHES_ADDR[0]}/hash"
measure sqlite.heartbeat "$work/heartbeat.lua" "http://${REGISTRY_ADDR[0]}/"
stop_node sqlite

# (b) one node on Postgres, a fresh database.
createdb bench_one
start_node pg_one 0 --database "$(pg_url bench_one)"
measure pg_1node.post_hash "$work/post_hash.lua" "http://${HASHES_ADDR[0]}/hash"
measure pg_1node.heartbeat "$work/heartbeat.lua" "http://${REGISTRY_ADDR[0]}/"
stop_node pg_one

# (c) two nodes on the same Postgres, another fresh database; node 1 migrates it first.
createdb bench_two
start_node pg_two_a 0 --database "$(pg_url bench_two)"
start_node pg_two_b 1 --database "$(pg_url bench_two)"
measure pg_2nodes.post_hash "$work/post_hash.lua" \
  "http://${HASHES_ADDR[0]}/hash" "http://${HASHES_ADDR[1]}/hash"
measure pg_2nodes.heartbeat "$work/heartbeat.lua" \
  "http://${REGISTRY_ADDR[0]}/" "http://${REGISTRY_ADDR[1]}/"
stop_node pg_two_a
stop_node pg_two_b
rows=$(psql -d bench_two -At -c 'SELECT count(*) FROM instances')

echo
echo "peak RSS (VmHWM): SQLite node ${rss[sqlite]} MB; Postgres node ${rss[pg_one]} MB;" \
  "two Postgres nodes ${rss[pg_two_a]} MB and ${rss[pg_two_b]} MB"
echo "  (the two nodes' registry holds $rows instances)"
for load in post_hash heartbeat; do
  awk -v load="$load" -v a="${rate[sqlite.$load]}" -v b="${rate[pg_1node.$load]}" \
    -v c="${rate[pg_2nodes.$load]}" 'BEGIN {
      printf "%-9s Postgres / SQLite (1 node): %.2fx   2 nodes / 1 node (Postgres): %.2fx   2 nodes on Postgres / 1 on SQLite: %.2fx\n",
        load, b / a, c / b, c / a }'
done
awk -v pg="${rate[pg_1node.heartbeat]}" -v sqlite="${rate[sqlite.heartbeat]}" 'BEGIN {
  ratio = pg / sqlite
  printf "target: heartbeats on one Postgres node >= 0.5x the same node on SQLite: %.2fx, %s\n",
    ratio, (ratio >= 0.5 ? "met" : "MISSED") }'

flagged=0
for name in "${!bad[@]}"; do [ "${bad[$name]}" = 0 ] || flagged=1; done
[ "$flagged" = 0 ] || echo "FLAGGED: some runs had non-2xx responses or socket errors (see above)"
for name in sqlite pg_one pg_two_a pg_two_b; do
  count=$(wc -l <"$work/$name.problems")
  [ "$count" = 0 ] && continue
  echo "$name's log: $count warnings or errors; the first:"
  head -n 3 "$work/$name.problems" | cut -c1-300 | sed 's/^/  /'
done
pg_problems=$(grep -cE '(ERROR|FATAL|PANIC|WARNING):' "$pg/postgres.log" || true)
if [ "$pg_problems" != 0 ]; then
  echo "Postgres's log: $pg_problems errors or warnings; the first:"
  grep -E '(ERROR|FATAL|PANIC|WARNING):' "$pg/postgres.log" | head -n 3 | sed 's/^/  /'
fi
