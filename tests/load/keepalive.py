#!/usr/bin/env python3
"""A steady HTTPS load that never retries: berth's judge of "zero failed requests".

Runs on the test host (standard library only). Each connection is one HTTP/1.1 keep-alive connection
that sends GET requests at a fixed rate, like a plain client that does not retry (as `requests` does
not): a reset, a timeout or a non-2xx answer counts as a failure, and the next request opens a new
connection. Every answer's "version" (the demo app's /version) is recorded with its time.

    keepalive.py --host release.test --path /version --connections 4 --rate 40 --duration 120 --out F
    keepalive.py --host shop.test --path '/enqueue?id=deploy-{n}' --connections 1 --rate 10 --out F
    keepalive.py --host shop.test --record-header X-Served-By --out F    # who answered each request

A "{n}" in --path is replaced by a number unique to each request (0, 1, 2, … over all connections), so
each request can name its own job; "ok" then counts the jobs the app accepted.

Stops after --duration seconds or on SIGINT/SIGTERM, then writes a JSON summary to --out:
{"sent", "ok", "failed", "errors": {kind: n}, "versions": {v: n}, "first_seen": {v: epoch},
 "connections": [[[epoch, version], ...] per version change, ...]}, and with --record-header NAME
"answered": [[epoch, value of NAME or null, ok], ...] for every request (behind a load balancer that names
the server it chose, which host answered when).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import signal
import ssl
import threading
import time
from collections import Counter
from pathlib import Path

STOP = threading.Event()


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.first_seen: dict[str, float] = {}
        self.answered: list[tuple[float, str | None, bool]] = []

    def record(self, version: str | None, error: str | None, header: str | None = None) -> None:
        now = time.time()
        with self.lock:
            self.sent += 1
            self.answered.append((now, header, error is None))
            if error:
                self.errors[error] += 1
                return
            self.ok += 1
            self.versions[version or "?"] += 1
            self.first_seen.setdefault(version or "?", now)


def ask(conn: http.client.HTTPSConnection, path: str, header: str = "") -> tuple[str | None, str | None, str | None]:
    """One request; returns (version, None, header) or (None, error kind, header). Never retried."""
    try:
        conn.request("GET", path, headers={"Connection": "keep-alive"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return None, type(exc).__name__, None
    value = response.getheader(header) if header else None
    if not 200 <= response.status < 300:
        return None, f"HTTP {response.status}", value
    try:
        return str(json.loads(body).get("version")), None, value
    except ValueError:
        return "", None, value


NUMBERS = itertools.count()
NUMBERS_LOCK = threading.Lock()


def next_path(template: str) -> str:
    """The path of the next request: the template with "{n}" replaced by a number never used before."""
    if "{n}" not in template:
        return template
    with NUMBERS_LOCK:
        number = next(NUMBERS)
    return template.replace("{n}", str(number))


def worker(host: str, path: str, interval: float, tally: Tally, changes: list[tuple[float, str]],
           header: str = "") -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, 443, timeout=5, context=context)
    last = None
    next_at = time.monotonic()
    while not STOP.is_set():
        version, error, value = ask(conn, next_path(path), header)
        tally.record(version, error, value)
        if version is not None and version != last:
            changes.append((time.time(), version))
            last = version
        next_at += interval
        STOP.wait(max(0.0, next_at - time.monotonic()))
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--path", default="/version", help='path; "{n}" becomes a number unique per request')
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, all connections")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--record-header", default="", help="record this response header of every request")
    args = parser.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: STOP.set())
    tally = Tally()
    changes: list[list[tuple[float, str]]] = [[] for _ in range(args.connections)]
    interval = args.connections / args.rate
    threads = [
        threading.Thread(target=worker, args=(args.host, args.path, interval, tally, changes[i], args.record_header),
                         daemon=True)
        for i in range(args.connections)
    ]
    for thread in threads:
        thread.start()
    STOP.wait(args.duration)
    STOP.set()
    for thread in threads:
        thread.join(timeout=10)
    summary = {
        "sent": tally.sent,
        "ok": tally.ok,
        "failed": tally.sent - tally.ok,
        "errors": dict(tally.errors),
        "versions": dict(tally.versions),
        "first_seen": tally.first_seen,
        "connections": changes,
    }
    if args.record_header:
        summary["answered"] = tally.answered
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary))
    tmp.rename(args.out)


if __name__ == "__main__":
    main()
