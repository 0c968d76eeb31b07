"""tests/load/keepalive.py's judge of an answer, against a real HTTP server on loopback: a 2xx is an
answer (its version from --version-field), a 503 with Retry-After is one only with --maintenance-ok, and
anything else, or no answer, is a failure. --address connects there while Host stays the site's name."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("keepalive", Path(__file__).parent / "load" / "keepalive.py")
assert _spec and _spec.loader
keepalive = importlib.util.module_from_spec(_spec)
sys.modules["keepalive"] = keepalive  # (its dataclass looks itself up there)
_spec.loader.exec_module(keepalive)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status, headers = {
            "/ok": (200, {}),
            "/page": (503, {"Retry-After": "300"}),
            "/bare503": (503, {}),
            "/502": (502, {}),
        }[self.path]
        body = json.dumps({"app": "shop", "version": "1.0", "host": self.headers["Host"],
                           "proto": self.headers.get("X-Forwarded-Proto")}).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def ask(port: int, path: str, **options: object) -> tuple[str | None, str | None, str | None]:
    conn = keepalive.connection("shop.test", "127.0.0.1", plain=True, port=port)
    try:
        return keepalive.ask(conn, path, keepalive.Options(**options))
    finally:
        conn.close()


def test_a_2xx_is_an_answer_with_its_version_field(port: int) -> None:
    assert ask(port, "/ok") == ("1.0", None, None)
    assert ask(port, "/ok", version_field="app") == ("shop", None, None)
    # Connected to 127.0.0.1, the Host header is still the site's name; the extra headers are sent.
    assert ask(port, "/ok", version_field="host")[0] == f"shop.test:{port}"
    assert ask(port, "/ok", version_field="proto", headers={"X-Forwarded-Proto": "https"})[0] == "https"


def test_the_maintenance_page_counts_only_when_allowed_and_only_with_retry_after(port: int) -> None:
    assert ask(port, "/page") == (None, "HTTP 503", None)
    assert ask(port, "/page", maintenance_ok=True) == ("maintenance", None, None)
    assert ask(port, "/bare503", maintenance_ok=True) == (None, "HTTP 503", None)
    assert ask(port, "/502", maintenance_ok=True) == (None, "HTTP 502", None)


def test_no_answer_is_a_failure() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused.
    assert ask(1, "/ok", maintenance_ok=True) == (None, "ConnectionRefusedError", None)
