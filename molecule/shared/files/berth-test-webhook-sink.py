#!/usr/bin/python3
"""Test stand-in for a team's chat: a webhook receiver on 127.0.0.1:9099 that appends each POST body
(Alertmanager's JSON), on one line, to /var/lib/berth-test-sinks/webhook.jsonl."""

import json
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

PATH = Path("/var/lib/berth-test-sinks/webhook.jsonl")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        record = {"received": time.time(), "path": self.path, "body": json.loads(body)}
        with PATH.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        self.send_response(200)
        self.end_headers()


HTTPServer(("127.0.0.1", 9099), Handler).serve_forever()
