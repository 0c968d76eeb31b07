#!/usr/bin/env python3
"""A steady HTTPS load that never retries: berth's judge of "zero failed requests".

Runs on the test host (standard library only). Each connection is one HTTP/1.1 keep-alive connection
that sends GET requests at a fixed rate, like a plain client that does not retry (as `requests` does
not): a reset, a timeout or a non-2xx answer counts as a failure, and the next request opens a new
connection. Every answer's "version" (the demo app's /version) is recorded with its time.

    keepalive.py --host release.test --path /version --connections 4 --rate 40 --duration 120 --out F
    keepalive.py --host shop.test --path '/enqueue?id=deploy-{n}' --connections 1 --rate 10 --out F
    keepalive.py --host shop.test --record-header X-Served-By --out F    # who answered each request
    keepalive.py --host shop.test --address 127.0.0.1 --plain --header 'X-Forwarded-Proto: https' \
        --version-field app --maintenance-ok --out F    # plain HTTP to 127.0.0.1, a 503 page counts

--address connects there instead of resolving --host (which stays the Host header and the TLS name);
--plain speaks HTTP on port 80 (as a load balancer that terminates TLS does). --version-field names the
field of the JSON answer recorded as its "version". With --maintenance-ok, a 503 that carries
Retry-After (an app's maintenance page) is an answer too, recorded as the version "maintenance"; a 503
without it is still a failure.

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
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
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


@dataclass
class Options:
    """How each request is sent and judged (the command line's options)."""

    header: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    version_field: str = "version"
    maintenance_ok: bool = False


def ask(conn: http.client.HTTPConnection, path: str, options: Options) -> tuple[str | None, str | None, str | None]:
    """One request; returns (version, None, header) or (None, error kind, header). Never retried."""
    header = options.header
    try:
        conn.request("GET", path, headers={**options.headers, "Connection": "keep-alive"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return None, type(exc).__name__, None
    value = response.getheader(header) if header else None
    if options.maintenance_ok and response.status == 503 and response.getheader("Retry-After"):
        return "maintenance", None, value
    if not 200 <= response.status < 300:
        return None, f"HTTP {response.status}", value
    try:
        return str(json.loads(body).get(options.version_field)), None, value
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


def connection(host: str, address: str = "", plain: bool = False, port: int = 0) -> http.client.HTTPConnection:
    """A keep-alive connection to host (HTTPS, certificate not checked; or plain HTTP), at address if given."""
    if plain:
        conn = http.client.HTTPConnection(host, port or 80, timeout=5)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port or 443, timeout=5, context=context)
    if address:
        # Connect to address; the Host header and the TLS name (SNI) stay host.
        conn._create_connection = lambda target, *rest: socket.create_connection((address, target[1]), *rest)  # type: ignore[attr-defined]
    return conn


def worker(host: str, path: str, interval: float, tally: Tally, changes: list[tuple[float, str]],
           options: Options, address: str = "", plain: bool = False) -> None:
    conn = connection(host, address, plain)
    last = None
    next_at = time.monotonic()
    while not STOP.is_set():
        version, error, value = ask(conn, next_path(path), options)
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
    parser.add_argument("--address", default="", help="connect to this address instead of resolving --host")
    parser.add_argument("--plain", action="store_true", help="plain HTTP on port 80 instead of HTTPS on 443")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' sent with every request")
    parser.add_argument("--version-field", default="version", help="field of the JSON answer that is its version")
    parser.add_argument("--maintenance-ok", action="store_true", help="a 503 with Retry-After is an answer")
    args = parser.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: STOP.set())
    tally = Tally()
    changes: list[list[tuple[float, str]]] = [[] for _ in range(args.connections)]
    interval = args.connections / args.rate
    options = Options(args.record_header, dict(h.split(":", 1) for h in args.header),
                      args.version_field, args.maintenance_ok)
    options.headers = {name.strip(): value.strip() for name, value in options.headers.items()}
    threads = [
        threading.Thread(target=worker, args=(args.host, args.path, interval, tally, changes[i], options,
                                              args.address, args.plain), daemon=True)
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
