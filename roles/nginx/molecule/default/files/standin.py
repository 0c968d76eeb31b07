#!/usr/bin/python3
"""Stand-in for one colour of one app on its port: says which it is, echoes what nginx passed on, answers websockets.
A request for /berth-status/<code> is answered with that HTTP status (an app that fails, for the log metrics).

    berth-standin <app> <colour> <port>
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    app = "unknown"
    colour = "unknown"

    def do_GET(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.upgrade()
            return
        self.reply()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply()

    def reply(self) -> None:
        body = json.dumps({"app": self.app, "colour": self.colour, "headers": dict(self.headers.items())}).encode()
        code = self.path.removeprefix("/berth-status/")
        self.send_response(int(code) if code.isdigit() else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def upgrade(self) -> None:
        # Enough of a websocket for a proxy test: switch protocols, then echo one line back.
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        self.wfile.write(b"echo " + self.rfile.readline())
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    Handler.app, Handler.colour, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
