#!/usr/bin/python3
"""Test stand-in of an app on an app host (roles/db_host/molecule/default; not part of berth).

    standin_app.py APP PORT REDIS_PORT DB_HOST

Answers GET /healthz on 127.0.0.1:PORT with 200 when the app's database on the db host answers (and its
Redis instance, REDIS_PORT > 0) and 503 otherwise, as berth's demo app (tests/demo_app) does: it keeps one
PostgreSQL session and opens a new one when the old one fails (OperationalError: e.g. a restore ended it).
GET /stats: {"connects": sessions opened so far}. It reads the app's passwords as app_stack gives them to
the app (here copies of the db host's files /etc/berth/db/APP/, which the tests put on the app host) and
connects to the db host's address DB_HOST, PostgreSQL over TLS.
"""

from __future__ import annotations

import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import psycopg2

APP, PORT, REDIS_PORT, DB_HOST = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
SECRETS = Path("/etc/berth/db") / APP
STATE: dict = {"conn": None, "connects": 0}


def session() -> psycopg2.extensions.connection:
    if STATE["conn"] is None or STATE["conn"].closed:
        STATE["conn"] = psycopg2.connect(
            host=DB_HOST, port=5432, dbname=APP.replace("-", "_"), user=APP.replace("-", "_"),
            password=(SECRETS / "postgres-password").read_text().strip(), sslmode="require", connect_timeout=3)
        STATE["conn"].autocommit = True
        STATE["connects"] += 1
    return STATE["conn"]


def database_answers() -> bool:
    for _attempt in range(2):
        try:
            with session().cursor() as cursor:
                cursor.execute("SELECT 1")
                return cursor.fetchone() == (1,)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            STATE["conn"] = None
    return False


def redis_answers() -> bool:
    if not REDIS_PORT:
        return True
    password = (SECRETS / "redis-password").read_text().strip()
    try:
        with socket.create_connection((DB_HOST, REDIS_PORT), timeout=3) as conn:
            conn.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                reply += chunk
            return reply == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            ok = database_answers() and redis_answers()
            self.answer(200 if ok else 503, b"ok" if ok else b"unavailable")
        elif self.path == "/stats":
            self.answer(200, json.dumps({"connects": STATE["connects"]}).encode())
        else:
            self.answer(404, b"not found")

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
