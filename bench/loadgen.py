"""A bounded HTTP load that counts every failed request (stdlib only).

Runs on a test host, against the app's real bind, while a deploy activates a
change. Half the clients keep connections alive, half open one per request;
every client alternates GET / and POST /items. It stops when --stop-file
appears or after --max-seconds, whichever comes first, and prints JSON:

    {"requests": N, "failed": F, "errors": {"kind": count}, "releases": {...},
     "by_mode": {"keepalive": {...}, "close": {...}}, "seconds": S}

A failed request is anything but a complete 2xx response: a refused or reset
connection, an EOF before the response, a timeout, or a non-2xx status.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from collections import Counter

POST_BODY = json.dumps({"name": "widget", "quantity": 2}).encode()


class Client(threading.Thread):
    def __init__(self, host: str, port: int, keepalive: bool, until: float, stop_file: str,
                 timeout: float):
        super().__init__(daemon=True)
        self.host, self.port, self.keepalive = host, port, keepalive
        self.until, self.stop_file, self.timeout = until, stop_file, timeout
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.releases: Counter[str] = Counter()

    def stopped(self) -> bool:
        return time.monotonic() >= self.until or os.path.exists(self.stop_file)

    def run(self) -> None:
        connection = None
        while not self.stopped():
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            post = self.requests % 2 == 1
            headers = {} if self.keepalive else {"Connection": "close"}
            self.requests += 1
            try:
                if post:
                    headers["Content-Type"] = "application/json"
                    connection.request("POST", "/items", body=POST_BODY, headers=headers)
                else:
                    connection.request("GET", "/", headers=headers)
                response = connection.getresponse()
                body = response.read()
                if not 200 <= response.status < 300:
                    self.errors[f"status {response.status}"] += 1
                else:
                    self.releases[json.loads(body).get("release", "?")] += 1
                if not self.keepalive or response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException, ValueError) as error:
                self.errors[type(error).__name__] += 1
                connection.close()
                connection = None
        if connection is not None:
            connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--clients", type=int, default=8, help="per mode (keep-alive, close)")
    parser.add_argument("--max-seconds", type=float, default=120)
    parser.add_argument("--stop-file", default="/tmp/loadgen.stop")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--output", help="write the JSON here as well as to stdout")
    args = parser.parse_args()

    start = time.monotonic()
    until = start + args.max_seconds
    clients = [Client(args.host, args.port, keepalive, until, args.stop_file, args.timeout)
               for keepalive in (True, False) for _ in range(args.clients)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(args.max_seconds + args.timeout + 5)

    def total(group):
        errors = sum((c.errors for c in group), Counter())
        return {"requests": sum(c.requests for c in group), "failed": sum(errors.values()),
                "errors": dict(errors)}

    result = total(clients)
    result["releases"] = dict(sum((c.releases for c in clients), Counter()))
    result["by_mode"] = {"keepalive": total([c for c in clients if c.keepalive]),
                         "close": total([c for c in clients if not c.keepalive])}
    result["seconds"] = round(time.monotonic() - start, 2)
    print(json.dumps(result))
    if args.output:
        with open(args.output + ".tmp", "w") as out:
            json.dump(result, out)
        os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
    main()
