"""The database file under a steady load of jobs with a retention window (standard library
only); bench/memory.sh calls it.

  python3 bench/retention.py URL TOKEN DATA_DIR JOBS RATE WINDOW_S

Submits JOBS jobs of `head -c 100000 /dev/zero` at RATE a second (warden runs with
`--job-retention WINDOW_S`), samples the size of warden.db plus its WAL every second, waits
for the last jobs to end and the purge to catch up, and prints the peak and final size
against one window's worth of output (RATE x WINDOW_S x 100 KB).
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

URL, TOKEN, DATA_DIR = sys.argv[1], sys.argv[2], sys.argv[3]
JOBS, RATE, WINDOW_S = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
HOST = urllib.parse.urlparse(URL).netloc
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
OUTPUT = 100_000
MB = 1_000_000


def size():
    total = 0
    for name in ("warden.db", "warden.db-wal"):
        try:
            total += os.path.getsize(os.path.join(DATA_DIR, name))
        except FileNotFoundError:
            pass
    return total


samples = []
done = threading.Event()


def sample():
    while not done.is_set():
        samples.append(size())
        time.sleep(1)


sampler = threading.Thread(target=sample)
sampler.start()
conn = http.client.HTTPConnection(HOST, timeout=60)
body = json.dumps({"command": "head", "args": ["-c", str(OUTPUT), "/dev/zero"]})
started = time.perf_counter()
for n in range(JOBS):
    delay = started + n / RATE - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    conn.request("POST", "/jobs", body=body, headers=HEADERS)
    response = conn.getresponse()
    data = response.read()
    if response.status != 201:
        raise SystemExit(f"POST /jobs: {response.status} {data[:200]!r}")
submitted = time.perf_counter() - started
# Let the last window expire and the purge remove it.
time.sleep(WINDOW_S + 15)
done.set()
sampler.join()
window = RATE * WINDOW_S * OUTPUT
print(f"  {JOBS} jobs of 100 KB in {submitted:.0f} s ({JOBS / submitted:.0f}/s), "
      f"retention {WINDOW_S:.0f} s: one window's worth of output is {window / MB:.0f} MB")
print(f"  database + WAL: peak {max(samples) / MB:.0f} MB = {max(samples) / window:.2f}x a window "
      f"(target <= 2x); after the last window expired {samples[-1] / MB:.0f} MB")
