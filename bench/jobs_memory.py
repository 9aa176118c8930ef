"""Peak memory of warden while clients page through a long job list (standard library only);
bench/memory.sh calls it.

  python3 bench/jobs_memory.py URL TOKEN WARDEN_PID CLIENTS

Each of CLIENTS threads walks `GET /jobs` from the first page to the last along
`Link: rel="next"`, on a keep-alive connection of its own. Prints the jobs each client saw,
the pages per second, and warden's peak RSS (VmHWM) after the walk.
"""

import http.client
import re
import sys
import threading
import time
import urllib.parse

URL, TOKEN, WARDEN_PID, CLIENTS = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
HOST = urllib.parse.urlparse(URL).netloc
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


def vmhwm_mb():
    with open(f"/proc/{WARDEN_PID}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


seen = [0] * CLIENTS
pages = [0] * CLIENTS


def walk(client):
    conn = http.client.HTTPConnection(HOST, timeout=120)
    path = "/jobs?limit=100"
    while path:
        conn.request("GET", path, headers=HEADERS)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
        seen[client] += body.count(b'"id":')
        pages[client] += 1
        link = NEXT.search(response.getheader("Link") or "")
        path = link.group(1) if link else None


started = time.perf_counter()
threads = [threading.Thread(target=walk, args=(n,)) for n in range(CLIENTS)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
elapsed = time.perf_counter() - started
print(f"  {CLIENTS} clients each listed {min(seen)}..{max(seen)} jobs in {sum(pages)} pages "
      f"({sum(pages) / elapsed:.0f} pages/s, {elapsed:.1f} s)")
print(f"  warden peak RSS: {vmhwm_mb():.1f} MB (target <= 64 MB)")
