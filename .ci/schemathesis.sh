#!/usr/bin/env bash
# Contract fuzzing: schemathesis against the OpenAPI documents that a real `warden serve`
# serves, on every listener (the jobs listener over mutual TLS with the dev PKI's admin
# certificate). Every check runs, schemathesis's default (not `--checks all`, which would
# override the per-operation settings of .ci/schemathesis.toml; README "Contract fuzzing" says
# why each deviation is there); any failure, a server error or an answer the document does
# not describe, fails the run. Bounded: a fixed seed and number of examples per operation, and a
# timeout on each listener's run.
#
# Usage: .ci/schemathesis.sh [path/to/warden]   (default: target/debug/warden, built if absent)
set -euo pipefail
cd "$(dirname "$0")/.."

warden=${1:-target/debug/warden}
[[ -x $warden ]] || cargo build --locked --bin warden
examples=${SCHEMATHESIS_EXAMPLES:-150}
seed=${SCHEMATHESIS_SEED:-20261201}

work=$(mktemp -d)
venv=${SCHEMATHESIS_VENV:-$work/venv}
if [[ ! -x $venv/bin/st ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi

# Ports of their own, so a warden already running here is left alone. PATH is empty for the
# jobs the fuzzer queues: a generated command must not find a real program to run.
hashes=127.0.0.1:18080 registry=127.0.0.1:18081 jobs=127.0.0.1:18443 admin=127.0.0.1:19090
PATH=/nonexistent "$warden" serve --data-dir "$work/data" \
  --hashes-addr $hashes --registry-addr $registry --jobs-addr $jobs --admin-addr $admin \
  --job-output-limit 1MiB --log-format json 2>"$work/warden.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
# (curl may not be on a fresh machine; python3 is.)
healthy() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "http://$admin/healthz" 2>/dev/null; }
for _ in $(seq 100); do
  healthy && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/warden.log"; exit 1; }
  sleep 0.1
done
healthy || { echo "warden did not become healthy"; cat "$work/warden.log"; exit 1; }

pki=$work/data/pki
failed=0
fuzz() {
  local listener=$1 url=$2
  shift 2
  printf '\n-- %s\n' "$listener"
  if ! timeout 600 "$venv/bin/st" --config-file .ci/schemathesis.toml run \
    "http://$admin/openapi/$listener.json" --url "$url" \
    --max-examples "$examples" --seed "$seed" --generation-database none \
    --no-color --output-truncate true "$@"; then
    failed=1
  fi
}
# /shutdown is left out: it would end the run (its tests are in tests/api/lifecycle.rs).
fuzz hashes "http://$hashes" --exclude-path /shutdown
fuzz registry "http://$registry"
# The certificate is the credential and the connection always presents it, so a request
# "without authentication" cannot be made: `ignored_auth` does not apply (README).
fuzz jobs "https://$jobs" --request-cert "$pki/clients/admin.pem" \
  --request-cert-key "$pki/clients/admin.key" --tls-verify "$pki/ca.pem" \
  --exclude-checks ignored_auth
fuzz admin "http://$admin" --exclude-path /shutdown

if grep -q '"level":"ERROR"' "$work/warden.log"; then
  echo "warden logged errors during the run:"
  grep -m 20 '"level":"ERROR"' "$work/warden.log"
  failed=1
fi
exit $failed
