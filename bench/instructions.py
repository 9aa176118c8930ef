"""Sends N requests of one kind, one after another on one keep-alive connection.

    python3 bench/instructions.py ADDR KIND N     # KIND: hash (POST /hash) or heartbeat

The client of bench/instructions.sh, which counts the instructions warden spends on them.
"""

import http.client
import sys


def main() -> None:
    addr, kind, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    host, port = addr.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    for i in range(count):
        if kind == "hash":
            connection.request(
                "POST",
                "/hash",
                body="password=angryMonkey",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        else:
            connection.request(
                "POST",
                f"/group-{i % 100}/instance-{i // 100 % 100}",
                body='{"zone":"eu-west-1a","version":"1.4.2"}',
                headers={"Content-Type": "application/json"},
            )
        response = connection.getresponse()
        response.read()
        if response.status not in (200, 201):
            sys.exit(f"{kind} {i}: {response.status}")


if __name__ == "__main__":
    main()
