#!/usr/bin/env bash
# The cost of containing jobs (issue 13): 1 000 `true` jobs through the API (part (a) of
# bench/jobs_bench.py, `--rate`) on three wardens, each against the raw `xargs -P` spawn
# rate measured just before it:
#   before   a release build of BEFORE (default c69bcb2, main just before containment: jobs
#            ran as warden's own account, without cgroups), kept in target/baseline-jobs/;
#   after    this build with a cgroup per job and every limit on (LIMITS);
#   off      this build with --job-cgroups off (marker containment; --job-timeout only,
#            as the other limits need cgroups), for information.
#
#   bash bench/jobs_containment.sh                # 3 rounds
#   ROUNDS=5 PORT_BASE=24000 bash bench/jobs_containment.sh   # ports PORT_BASE…+21
#
# Each warden serves only jobs (--jobs-tls off) on a fresh data dir and ports of its own, with
# `nproc` workers and an admin token from `warden token issue`. The rounds alternate their
# order (this 2-core VM is noisy); the end prints each configuration's median jobs/s and
# median ratio to the raw rate, and the cost `1 - after/before` of the medians.
# Target: containment costs <= 20 % of the jobs rate.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
BEFORE=${BEFORE:-c69bcb2}
LIMITS=${LIMITS:---job-memory 256MiB --job-cpu 1 --job-pids 64 --job-timeout 1m}
# Below the ephemeral range: the bench's own client sockets never hold a listener's port.
base=${PORT_BASE:-24000}
workers=$(nproc)
source bench/common.sh
require curl python3

cargo build --release --locked --quiet --bin warden
target=${CARGO_TARGET_DIR:-target}
now_bin=$target/release/warden
# The baseline's source stays in one place: its next build finds it fresh and does nothing.
baseline_dir=$PWD/target/baseline-jobs
baseline_src=$baseline_dir/src-$BEFORE
if [ ! -d "$baseline_src" ]; then
  mkdir -p "$baseline_dir"
  unpacked=$(mktemp -d -p "$baseline_dir")
  git archive "$BEFORE" | tar -x -C "$unpacked"
  mv "$unpacked" "$baseline_src"
fi
CARGO_TARGET_DIR=$baseline_dir SQLX_OFFLINE=true cargo build --release --locked --quiet \
  --bin warden --manifest-path "$baseline_src/Cargo.toml"
before_bin=$baseline_dir/release/warden

# measure ROUND NAME INDEX BIN [FLAGS…]: one warden and its jobs; appends `ROUND NAME API RAW
# SUCCEEDED` to $work/rounds.txt and prints it.
measure() {
  local round=$1 name=$2 index=$3 bin=$4
  shift 4
  local jobs=127.0.0.1:$((base + 10 * index)) admin=127.0.0.1:$((base + 10 * index + 1))
  local data
  data=$(mktemp -d -p "$work")
  "$bin" serve --data-dir "$data" --no-hashes --no-registry --jobs-addr "$jobs" \
    --admin-addr "$admin" --jobs-tls off --job-workers "$workers" "$@" 2>"$data.log" &
  local pid=$!
  pids+=($pid)
  wait_for "http://$admin/healthz"
  if [ "$round" = 1 ]; then
    # What the warden says of its jobs' isolation (the baseline says nothing).
    local isolation
    isolation=$(curl -s "http://$admin/healthz" | python3 -c '
import json, sys
jobs = json.load(sys.stdin).get("jobs")
print("jobs as {user}, {containment}, limits by {limits}".format(**jobs)
      if jobs else "no isolation reported")')
    echo "  $name: $bin ${*:-(no job flags)}: $isolation"
  fi
  local token rates
  token=$("$bin" token issue --user bench --role admin --data-dir "$data")
  rates=$(python3 bench/jobs_bench.py --rate "http://$jobs" "$token" "$workers" | tail -n 1)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo "$round $name $rates" >>"$work/rounds.txt"
  echo "$round $name $rates" | awk '{printf "  round %s %-6s %6.0f jobs/s, raw %5.0f/s: %.2fx (%d of 1000 succeeded)\n",
    $1, $2, $3, $4, $3 / $4, $5}'
}

echo "cost of containment: 1 000 \`true\` jobs, $workers workers, $ROUNDS rounds, alternating order:"
for round in $(seq "$ROUNDS"); do
  order=(before after off)
  if [ $((round % 2)) = 0 ]; then order=(off after before); fi
  for name in "${order[@]}"; do
    case $name in
      before) measure "$round" before 0 "$before_bin" ;;
      # shellcheck disable=SC2086 # LIMITS is a list of flags
      after) measure "$round" after 1 "$now_bin" $LIMITS ;;
      off) measure "$round" off 2 "$now_bin" --job-cgroups off --job-timeout 1m ;;
    esac
  done
done

python3 - "$work/rounds.txt" "$BEFORE" <<'PY'
import statistics
import sys

rows = [line.split() for line in open(sys.argv[1])]
runs = {}
for _, name, api, raw, succeeded in rows:
    runs.setdefault(name, []).append((float(api), float(raw), int(succeeded)))
median = {name: statistics.median(api for api, _, _ in got) for name, got in runs.items()}
raw = {name: statistics.median(raw for _, raw, _ in got) for name, got in runs.items()}
ratio = {name: statistics.median(api / raw for api, raw, _ in got) for name, got in runs.items()}
labels = {"before": f"before ({sys.argv[2]})", "after": "after (cgroup + limits)",
          "off": "after, --job-cgroups off"}
print(f"medians over {len(runs['before'])} rounds:")
for name in ("before", "after", "off"):
    unsucceeded = sum(1000 - succeeded for _, _, succeeded in runs[name])
    warning = f"  ({unsucceeded} jobs did not succeed: not a valid rate)" if unsucceeded else ""
    print(f"  {labels[name]:26} {median[name]:5.0f} jobs/s, {ratio[name]:.2f}x the raw spawn rate "
          f"(raw {raw[name]:.0f}/s){warning}")
# The cost in the ratios too: each ratio is to the raw rate of its own moment, which the
# machine's noise moves along with the jobs rate.
for name in ("after", "off"):
    cost = 1 - median[name] / median["before"]
    by_ratio = 1 - ratio[name] / ratio["before"]
    verdict = " (target <= 20 %: " + ("met)" if cost <= 0.20 else "MISSED)") if name == "after" else ""
    print(f"  cost of {labels[name]}: {cost:.1%} of the jobs rate, {by_ratio:.1%} of the ratio"
          f"{verdict}")
PY
