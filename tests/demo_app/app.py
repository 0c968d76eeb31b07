#!/usr/bin/env python3
"""berth's demo app: the smallest app that proves a stack's wiring (PostgreSQL, Redis, health, workers).

Standard library HTTP server plus Debian's python3-psycopg2 and python3-redis. Configuration comes
from the environment, as a twelve-factor app's would:

    DATABASE_URL   postgresql://user:password@host:5432/db   (password URL-encoded)
    REDIS_URL      redis://:password@host:6379/0   (optional: without it no counter, no queue)
    APP_PORT       port to listen on (default 8000)
    APP_VERSION    the build's version (baked into the image: v1, v2, broken)
    APP_BROKEN     "1" in the deliberately broken build: /healthz always fails
    APP_MIGRATION_BROKEN  "1" in the build whose migration fails
    APP_COLOUR     blue or green (set by the compose file; shown in /version)

Modes (the first argument; one image, another command, as a real app's processes):
    (none)     the web server below
    worker     takes jobs from the Redis list berth:jobs (BLMOVE into its own processing list) and
               records each in PostgreSQL (table jobs: id, version, colour, worker, took); on SIGTERM it
               finishes the job at hand and exits
    migrate    creates the tables (exit 1 in the APP_MIGRATION_BROKEN build, nothing created)
    summary    a scheduled job: counts the processed jobs, writes a row to summaries and prints it

Endpoints:
    GET /healthz   200 "ok" when PostgreSQL (and Redis, if any) answer, 503 otherwise (always 503 when broken)
    GET /version   {"version", "colour"}
    GET /visit     writes a row to PostgreSQL and increments a Redis counter; returns both totals
    GET /stats     reads the totals without writing
    GET /enqueue?id=ID[&seconds=S]   queues a job for the workers (S: how long it takes, default 0)
    GET /jobs      {"processed": rows in jobs, "distinct": distinct ids}
    GET /          a short text page

HTTP/1.1 keep-alive is supported; SIGTERM stops accepting connections and lets in-flight requests end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import psycopg2
import redis

VERSION = os.environ.get("APP_VERSION", "dev")
COLOUR = os.environ.get("APP_COLOUR", "")
BROKEN = os.environ.get("APP_BROKEN", "0") == "1"
MIGRATION_BROKEN = os.environ.get("APP_MIGRATION_BROKEN", "0") == "1"
COUNTER = "berth:visits"
QUEUE = "berth:jobs"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS visits (id bigserial PRIMARY KEY, version text NOT NULL, at timestamptz DEFAULT now())"
)
TABLES = (
    SCHEMA,
    "CREATE TABLE IF NOT EXISTS jobs (id text NOT NULL, version text NOT NULL, colour text, worker text,"
    " took real, at timestamptz DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS summaries (jobs bigint, visits bigint, version text, at timestamptz DEFAULT now())",
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
    if "REDIS_URL" not in os.environ:
        raise redis.ConnectionError("this app has no Redis (REDIS_URL is not set)")
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
        return "REDIS_URL" not in os.environ or bool(cache().ping())
    except (psycopg2.Error, redis.RedisError, OSError):
        return False


def totals() -> dict[str, int]:
    query(SCHEMA)
    rows = query("SELECT count(*) FROM visits")[0][0]
    count = int(cache().get(COUNTER) or 0) if "REDIS_URL" in os.environ else None
    return {"db_rows": int(rows), "redis_count": count}


def visit() -> dict[str, int]:
    query(SCHEMA)
    query("INSERT INTO visits (version) VALUES (%s)", VERSION)
    if "REDIS_URL" in os.environ:
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
            elif path == "/enqueue":
                params = parse_qs(self.path.partition("?")[2])
                job = {"id": params.get("id", [""])[0], "seconds": float(params.get("seconds", ["0"])[0])}
                if not job["id"]:
                    self.reply(HTTPStatus.BAD_REQUEST, "id is required\n")
                else:
                    cache().lpush(QUEUE, json.dumps(job))
                    self.reply(HTTPStatus.OK, {"queued": job["id"], "version": VERSION})
            elif path == "/jobs":
                ensure_tables()
                rows = query("SELECT count(*), count(DISTINCT id) FROM jobs")[0]
                queued = int(cache().llen(QUEUE)) if "REDIS_URL" in os.environ else None
                self.reply(HTTPStatus.OK, {"processed": int(rows[0]), "distinct": int(rows[1]), "queued": queued})
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


def ensure_tables() -> None:
    """What the workers and the job need when no migration ran (an app without `migrate`)."""
    for sql in TABLES:
        # Two processes that create the same table at once: one of them gets IntegrityError; it exists.
        with contextlib.suppress(psycopg2.IntegrityError):
            query(sql)


def migrate() -> int:
    """Create the tables; the APP_MIGRATION_BROKEN build fails before touching anything."""
    if MIGRATION_BROKEN:
        print(f"migration of {VERSION} failed: this build's migration is broken on purpose", flush=True)
        return 1
    for sql in TABLES:
        query(sql)
    print(f"migrated to {VERSION}: tables visits, jobs, summaries", flush=True)
    return 0


def worker() -> int:
    """Process jobs until SIGTERM; the job at hand is always finished and recorded first."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    name = socket.gethostname()
    processing = f"{QUEUE}:processing:{name}"
    print(f"berth demo worker {VERSION} ({COLOUR}) on {name}", flush=True)
    while not stopping.is_set():
        try:
            ensure_tables()
            break
        except (psycopg2.Error, redis.RedisError, OSError) as exc:
            print(f"worker: waiting for the database: {type(exc).__name__}", flush=True)
            time.sleep(1)
    while not stopping.is_set():
        try:
            # A job left in this worker's own list by an error below is taken again first.
            raw = cache().lindex(processing, 0) or cache().blmove(QUEUE, processing, 1, "RIGHT", "LEFT")
            if raw is None:
                continue
            job = json.loads(raw)
            started = time.monotonic()
            time.sleep(float(job.get("seconds", 0)))
            query("INSERT INTO jobs (id, version, colour, worker, took) VALUES (%s, %s, %s, %s, %s)",
                  job["id"], VERSION, COLOUR, name, time.monotonic() - started)
            cache().lrem(processing, 1, raw)
            print(f"job {job['id']} done in {time.monotonic() - started:.2f} s", flush=True)
        except (psycopg2.Error, redis.RedisError, OSError) as exc:
            print(f"worker: {type(exc).__name__}: {exc}; retrying", flush=True)
            time.sleep(1)
    print("worker stopped (SIGTERM): no job left unfinished", flush=True)
    return 0


def summary() -> int:
    """The scheduled job: one row in summaries with the totals, printed as JSON."""
    ensure_tables()
    jobs = int(query("SELECT count(*) FROM jobs")[0][0])
    visits = int(query("SELECT count(*) FROM visits")[0][0])
    query("INSERT INTO summaries (jobs, visits, version) VALUES (%s, %s, %s)", jobs, visits, VERSION)
    print(json.dumps({"jobs": jobs, "visits": visits, "version": VERSION}), flush=True)
    return 0


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "web"
    if mode != "web":
        modes = {"worker": worker, "migrate": migrate, "summary": summary}
        if mode not in modes:
            sys.exit(f"unknown mode {mode!r}: web (no argument), {', '.join(modes)}")
        sys.exit(modes[mode]())
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
