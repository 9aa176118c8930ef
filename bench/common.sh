# What warden's benchmark scripts share; each sources it from the repository root:
#   source bench/common.sh
# It installs missing tools (`require wrk curl …`), makes a temp dir `$work` whose processes in
# `pids` are stopped and which is removed on exit, waits for a listener (`wait_for URL`), and
# writes the wrk scripts of the hash and heartbeat loads (`write_loads`: $work/post_hash.lua,
# $work/heartbeat.lua).

# require TOOL…: installs, from Debian's packages, whichever of TOOL is missing.
require() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    local sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# wait_for URL: until anything answers there over HTTP (any status), for up to 10 s.
wait_for() {
  for _ in $(seq 100); do
    if curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null | grep -q '^[1-5]'; then
      return 0
    fi
    sleep 0.1
  done
  echo "nothing answered at $1" >&2
  exit 1
}

# write_loads: the wrk scripts of POST /hash (`password=angryMonkey`) and of heartbeats
# spread over 10 000 instances (100 groups of 100, a small JSON meta).
write_loads() {
  cat >"$work/post_hash.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "password=angryMonkey"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
LUA
  cat >"$work/heartbeat.lua" <<'LUA'
local body = '{"zone":"eu-west-1a","version":"1.4.2"}'
local headers = { ["Content-Type"] = "application/json" }
request = function()
  local path = string.format("/group-%d/instance-%d", math.random(0, 99), math.random(0, 99))
  return wrk.format("POST", path, headers, body)
end
LUA
}
