#!/usr/bin/env bash
# The CPU cost of one request, in instructions, which (unlike req/s on a shared machine) is
# the same from run to run: each warden build runs under valgrind's callgrind while
# bench/instructions.py sends FEW and then MANY requests of one kind on one keep-alive
# connection; (instructions of MANY - instructions of FEW) / (MANY - FEW) is what one request
# costs, start-up and shutdown cancelled out. fsync and other waits cost no instructions, so
# this is the CPU a request takes, not its latency.
#
#   bash bench/instructions.sh WARDEN_A WARDEN_B [MORE…]
#   FEW=1000 MANY=4000 bash bench/instructions.sh …
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash bench/instructions.sh WARDEN [MORE…]" >&2; exit 2; }
FEW=${FEW:-1000}
MANY=${MANY:-4000}
source bench/common.sh
require valgrind curl

# instructions BIN KIND N: what warden BIN executed from start to exit, N requests of KIND.
instructions() {
  local data out
  data=$(mktemp -d -p "$work")
  out="$work/callgrind.txt"
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" serve --data-dir "$data" \
    --sync full --hashes-addr 127.0.0.1:38080 --registry-addr 127.0.0.1:38081 \
    --admin-addr 127.0.0.1:39090 --no-jobs 2>"$out" &
  local pid=$!
  for _ in $(seq 600); do
    curl -s -o /dev/null http://127.0.0.1:39090/healthz && break
    sleep 0.1
  done
  local addr=127.0.0.1:38081
  [ "$2" = hash ] && addr=127.0.0.1:38080
  python3 bench/instructions.py "$addr" "$2" "$3"
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/Collected :/ {print $NF}' "$out"
}

printf '%-40s %14s %14s\n' "instructions per request" "POST /hash" "heartbeat"
for bin in "$@"; do
  row=()
  for kind in hash heartbeat; do
    few=$(instructions "$bin" "$kind" "$FEW")
    many=$(instructions "$bin" "$kind" "$MANY")
    row+=("$(( (many - few) / (MANY - FEW) ))")
  done
  printf '%-40s %14s %14s\n' "$bin" "${row[0]}" "${row[1]}"
done
