"""A bounded HTTP load that counts every failed request (stdlib only).

Runs on a test host, against the app's real bind, while a deploy activates a
change. Half the clients keep connections alive, half open one per request;
every client alternates GET / and POST /items. It stops when --stop-file
appears or after --max-seconds, whichever comes first, and prints JSON:

    {"requests": N, "failed": F, "errors": {"kind": count}, "releases": {...},
     "by_mode": {"keepalive": {...}, "close": {...}}, "seconds": S}

--get PATH sends only GET PATH (the async doctor's tests load one endpoint).
--mode keepalive (or close) runs every client in that mode (bench/peers.py
counts the two apart); "by_method" counts GET and POST apart.
Options for latency work (all off by default, so the output above is unchanged):
--rate R paces every client to R requests per second (an open schedule: a
client that falls behind sends at once, it never bursts to catch up);
--records FILE writes one CSV line per request, `start,latency_ms,ok,mode`
(start = wall-clock epoch seconds when the request was sent, ok = 1 for a
complete 2xx response, mode = k(eep-alive) or c(lose)); --buckets adds
"per_second": [{"t": epoch second, "requests", "failed", "p50_ms", "p99_ms"}].

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

MODES = {True: "keepalive", False: "close"}
POST_BODY = json.dumps({"name": "widget", "quantity": 2}).encode()


class Client(threading.Thread):
    def __init__(self, host: str, port: int, keepalive: bool, until: float, stop_file: str,
                 timeout: float, rate: float = 0.0, record: bool = False, get: str | None = None):
        super().__init__(daemon=True)
        self.get = get  # only GET this path, instead of alternating GET / and POST /items
        self.host, self.port, self.keepalive = host, port, keepalive
        self.until, self.stop_file, self.timeout = until, stop_file, timeout
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.record = record
        self.samples: list[tuple[float, float, int]] = []  # (start epoch, latency s, ok)
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.by_method = {"GET": Counter(), "POST": Counter()}  # "requests", "failed"
        self.releases: Counter[str] = Counter()

    def stopped(self) -> bool:
        return time.monotonic() >= self.until or os.path.exists(self.stop_file)

    def run(self) -> None:
        connection = None
        next_at = time.monotonic()
        while not self.stopped():
            if self.interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at = max(next_at + self.interval, time.monotonic())
                if self.stopped():
                    break
            sent_wall, sent = time.time(), time.perf_counter()
            ok = 0
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            post = self.get is None and self.requests % 2 == 1
            headers = {} if self.keepalive else {"Connection": "close"}
            self.requests += 1
            try:
                if post:
                    headers["Content-Type"] = "application/json"
                    connection.request("POST", "/items", body=POST_BODY, headers=headers)
                else:
                    connection.request("GET", self.get or "/", headers=headers)
                response = connection.getresponse()
                body = response.read()
                if not 200 <= response.status < 300:
                    self.errors[f"status {response.status}"] += 1
                else:
                    self.releases[json.loads(body).get("release", "?")] += 1
                    ok = 1
                if not self.keepalive or response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException, ValueError) as error:
                self.errors[type(error).__name__] += 1
                connection.close()
                connection = None
            method = self.by_method["POST" if post else "GET"]
            method["requests"] += 1
            method["failed"] += 1 - ok
            if self.record:
                self.samples.append((sent_wall, time.perf_counter() - sent, ok))
        if connection is not None:
            connection.close()


class WebSocketSession(threading.Thread):
    """One WebSocket to the example app's echo: a message every 0.2 s, each
    echo checked, until the server closes it (`code`, `closed_at`), or
    `talk_seconds` pass and the client closes it; never past `deadline`
    (time.time()). Needs the `websockets` package, on the controller only."""

    def __init__(self, url: str, deadline: float, talk_seconds: float | None = None):
        super().__init__(daemon=True)
        self.url, self.deadline, self.talk_seconds = url, deadline, talk_seconds
        self.host = self.code = self.closed_at = self.error = None
        self.echoes = 0

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        try:
            with connect(self.url, open_timeout=10, close_timeout=5) as ws:
                opened = time.time()
                while time.time() < self.deadline:
                    if self.talk_seconds and time.time() - opened > self.talk_seconds:
                        ws.close()
                        self.code = ws.close_code
                        break
                    try:
                        ws.send(f"m{self.echoes}")
                        _, self.host, text = ws.recv(timeout=10).split(" ", 2)
                    except ConnectionClosed as closed:
                        self.code = closed.rcvd.code if closed.rcvd else 1006  # 1006: no close frame
                        self.closed_at = time.time()
                        break
                    if text != f"m{self.echoes}":
                        raise ValueError(f"echo {text!r} for m{self.echoes}")
                    self.echoes += 1
                    time.sleep(0.2)
        except Exception as error:  # noqa: BLE001 - reported by the caller
            self.error = repr(error)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * q // 100)))
    return sorted_values[int(rank) - 1]


def per_second(samples: list[tuple[float, float, int]]) -> list[dict]:
    seconds: dict[int, list] = {}
    for start, latency, ok in samples:
        seconds.setdefault(int(start), []).append((latency, ok))
    out = []
    for second in sorted(seconds):
        items = seconds[second]
        good = sorted(latency * 1000 for latency, ok in items if ok)
        p50, p99 = percentile(good, 50), percentile(good, 99)
        out.append({"t": second, "requests": len(items),
                    "failed": sum(1 for _, ok in items if not ok),
                    "p50_ms": None if p50 is None else round(p50, 2),
                    "p99_ms": None if p99 is None else round(p99, 2)})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--clients", type=int, default=8, help="per mode (keep-alive, close)")
    parser.add_argument("--mode", choices=("both", "keepalive", "close"), default="both",
                        help="which modes run (default: both, --clients each)")
    parser.add_argument("--max-seconds", type=float, default=120)
    parser.add_argument("--stop-file", default="/tmp/loadgen.stop")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--output", help="write the JSON here as well as to stdout")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests per second per client (0: as fast as possible)")
    parser.add_argument("--get", metavar="PATH", help="only GET PATH (default: GET / and POST /items)")
    parser.add_argument("--records", help="write one CSV line per request here")
    parser.add_argument("--buckets", action="store_true", help="add per-second buckets")
    args = parser.parse_args(argv)
    record = bool(args.records or args.buckets)

    start = time.monotonic()
    until = start + args.max_seconds
    clients = [Client(args.host, args.port, keepalive, until, args.stop_file, args.timeout,
                      args.rate, record, args.get)
               for keepalive in (True, False) if args.mode in ("both", MODES[keepalive])
               for _ in range(args.clients)]
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
    result["by_method"] = {method: dict(sum((c.by_method[method] for c in clients), Counter()))
                           for method in ("GET", "POST")}
    result["seconds"] = round(time.monotonic() - start, 2)
    if args.records:
        with open(args.records + ".tmp", "w") as out:
            for client in clients:
                mode = "k" if client.keepalive else "c"
                out.writelines(f"{s:.4f},{lat * 1000:.3f},{ok},{mode}\n"
                               for s, lat, ok in client.samples)
        os.replace(args.records + ".tmp", args.records)
    if args.buckets:
        result["per_second"] = per_second([s for c in clients for s in c.samples])
    print(json.dumps(result))
    if args.output:
        with open(args.output + ".tmp", "w") as out:
            json.dump(result, out)
        os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
    main()
