"""warden job runner benchmark (standard library only); bench/run.sh calls it.

  python3 bench/jobs_bench.py URL TOKEN WORKERS WARDEN_PID
  python3 bench/jobs_bench.py --rate URL TOKEN WORKERS    # (a) alone; bench/jobs_containment.sh

(a) 1 000 jobs of `true` through the API, first submit to last finished, against the same
    1 000 `/bin/true` runs by `xargs -P WORKERS` (the raw spawn rate);
(b) one job writing 1 GiB (`head -c 1073741824 /dev/zero`) with 4 followers (curl) attached:
    MB/s captured (job start to job end) and followed (to each follower's end), and warden's
    RSS growth while they run.

With --rate, only (a) runs, and its last line is for a script to read: `API RAW SUCCEEDED`,
the two rates in jobs/s and how many of the 1 000 jobs succeeded (a job that cannot start
ends fast, so a rate counts only when all did).
"""

import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.parse

RATE_ONLY = sys.argv[1:2] == ["--rate"]
ARGS = sys.argv[2:] if RATE_ONLY else sys.argv[1:]
if len(ARGS) != (3 if RATE_ONLY else 4):
    raise SystemExit(__doc__)
URL, TOKEN, WORKERS = ARGS[0], ARGS[1], int(ARGS[2])
WARDEN_PID = None if RATE_ONLY else int(ARGS[3])
HOST = urllib.parse.urlparse(URL).netloc
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
JOBS = 1000
GIB = 1 << 30


def call(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=HEADERS)
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {data[:200]!r}")
    return json.loads(data)


def rss_kb(field="VmRSS"):
    with open(f"/proc/{WARDEN_PID}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def unfinished(conn):
    return sum(len(call(conn, "GET", f"/jobs?status={s}")) for s in ("queued", "running"))


# (a) spawn rate
started = time.perf_counter()
subprocess.run(["xargs", "-P", str(WORKERS), "-n", "1", "/bin/true"],
               input="\n".join(["x"] * JOBS).encode(), check=True)
raw = JOBS / (time.perf_counter() - started)

def submit(count):
    conn = http.client.HTTPConnection(HOST)
    for _ in range(count):
        call(conn, "POST", "/jobs", {"command": "true"})

started = time.perf_counter()
threads = [threading.Thread(target=submit, args=(JOBS // 8,)) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
poll = http.client.HTTPConnection(HOST)
while unfinished(poll):
    time.sleep(0.005)
api = JOBS / (time.perf_counter() - started)
print(f"jobs of `true`: {api:8.0f} jobs/s through the API vs {raw:8.0f}/s by xargs -P {WORKERS}: "
      f"{api / raw:.2f}x")
if RATE_ONLY:
    succeeded = len(call(poll, "GET", f"/jobs?status=succeeded&limit={JOBS}"))
    print(f"{api:.1f} {raw:.1f} {succeeded}")
    raise SystemExit(0)

# (b) 1 GiB of output, 4 followers
rss_before = rss_kb()
conn = http.client.HTTPConnection(HOST)
job = call(conn, "POST", "/jobs", {"command": "head", "args": ["-c", str(GIB), "/dev/zero"]})
job_started = time.perf_counter()
followers = [
    subprocess.Popen(["curl", "-sN", "-o", "/dev/null", "-w", "%{size_download}",
                      "-H", f"Authorization: Bearer {TOKEN}",
                      f"{URL}/jobs/{job['id']}/output?follow=true"], stdout=subprocess.PIPE)
    for _ in range(4)
]
peak = rss_before
done = threading.Event()

def sample():
    global peak
    while not done.is_set():
        peak = max(peak, rss_kb())
        time.sleep(0.05)

sampler = threading.Thread(target=sample)
sampler.start()
job_ended = None
while True:
    state = call(conn, "GET", f"/jobs/{job['id']}")
    if state["status"] not in ("queued", "running"):
        job_ended = time.perf_counter()
        break
    time.sleep(0.02)
received = []
for follower in followers:
    out, _ = follower.communicate()
    received.append((int(out or b"0"), time.perf_counter()))
done.set()
sampler.join()
captured = state["outputBytes"] / (job_ended - job_started) / 1e6
followed = min(size / (at - job_started) / 1e6 for size, at in received)
complete = all(size == GIB for size, _ in received)
print(f"1 GiB job ({state['status']}, {state['outputBytes']} bytes): captured {captured:.0f} MB/s; "
      f"4 followers {'all complete' if complete else 'INCOMPLETE'}, slowest {followed:.0f} MB/s")
print(f"warden RSS while following: {rss_before / 1024:.1f} MB before, {peak / 1024:.1f} MB peak "
      f"(+{(peak - rss_before) / 1024:.1f} MB)")
