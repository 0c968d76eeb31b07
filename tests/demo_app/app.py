#!/usr/bin/env python3
"""berth's demo app: the smallest web app that proves a stack's wiring (PostgreSQL, Redis, health).

Standard library HTTP server plus Debian's python3-psycopg2 and python3-redis. Configuration comes
from the environment, as a twelve-factor app's would:

    DATABASE_URL   postgresql://user:password@host:5432/db   (password URL-encoded)
    REDIS_URL      redis://:password@host:6379/0
    APP_PORT       port to listen on (default 8000)
    APP_VERSION    the build's version (baked into the image: v1, v2, broken)
    APP_BROKEN     "1" in the deliberately broken build: /healthz always fails
    APP_COLOUR     blue or green (set by the compose file; shown in /version)

Endpoints:
    GET /healthz   200 "ok" when PostgreSQL and Redis answer, 503 otherwise (always 503 when broken)
    GET /version   {"version", "colour"}
    GET /visit     writes a row to PostgreSQL and increments a Redis counter; returns both totals
    GET /stats     reads the totals without writing
    GET /          a short text page

HTTP/1.1 keep-alive is supported; SIGTERM stops accepting connections and lets in-flight requests end.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg2
import redis

VERSION = os.environ.get("APP_VERSION", "dev")
COLOUR = os.environ.get("APP_COLOUR", "")
BROKEN = os.environ.get("APP_BROKEN", "0") == "1"
COUNTER = "berth:visits"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS visits (id bigserial PRIMARY KEY, version text NOT NULL, at timestamptz DEFAULT now())"
)

_local = threading.local()


def database() -> Any:
    """A PostgreSQL connection per thread, reopened when it broke."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg2.connect(os.environ["DATABASE_URL"], connect_timeout=3)
        conn.autocommit = True
        _local.conn = conn
    return conn


def cache() -> redis.Redis:
    client = getattr(_local, "redis", None)
    if client is None:
        client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=3, socket_connect_timeout=3)
        _local.redis = client
    return client


def query(sql: str, *args: object) -> list[tuple[Any, ...]]:
    try:
        with database().cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    except psycopg2.OperationalError:
        _local.conn = None
        raise


def healthy() -> bool:
    if BROKEN:
        return False
    try:
        query("SELECT 1")
        return bool(cache().ping())
    except (psycopg2.Error, redis.RedisError, OSError):
        return False


def totals() -> dict[str, int]:
    query(SCHEMA)
    rows = query("SELECT count(*) FROM visits")[0][0]
    return {"db_rows": int(rows), "redis_count": int(cache().get(COUNTER) or 0)}


def visit() -> dict[str, int]:
    query(SCHEMA)
    query("INSERT INTO visits (version) VALUES (%s)", VERSION)
    cache().incr(COUNTER)
    return totals()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "berth-demo"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                ok = healthy()
                self.reply(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "ok\n" if ok else "unhealthy\n")
            elif path == "/version":
                self.reply(HTTPStatus.OK, {"version": VERSION, "colour": COLOUR})
            elif path == "/visit":
                self.reply(HTTPStatus.OK, {"version": VERSION, "colour": COLOUR, **visit()})
            elif path == "/stats":
                self.reply(HTTPStatus.OK, {"version": VERSION, "colour": COLOUR, **totals()})
            elif path == "/":
                self.reply(HTTPStatus.OK, f"berth demo app {VERSION} ({COLOUR or 'no colour'})\n")
            else:
                self.reply(HTTPStatus.NOT_FOUND, "not found\n")
        except (psycopg2.Error, redis.RedisError, OSError) as exc:
            self.reply(HTTPStatus.SERVICE_UNAVAILABLE, f"backend error: {type(exc).__name__}\n")

    def reply(self, status: HTTPStatus, body: str | dict[str, Any]) -> None:
        text = json.dumps(body) + "\n" if isinstance(body, dict) else body
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if isinstance(body, dict) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if "/healthz" not in self.requestline:
            super().log_message(format, *args)


def main() -> None:
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("APP_PORT", "8000"))), Handler)
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"berth demo app {VERSION} listening on {server.server_address}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
