"""Shared helpers of the monitoring scenario's tests (run by Molecule's testinfra verifier)."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SERVER = "berth-mon-server"
TARGET = "berth-mon-target"
SINKS = "/var/lib/berth-test-sinks"


def get_host(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def api(server: testinfra.host.Host, path: str, port: int = 9090) -> Any:
    """The data of a Prometheus (or Alertmanager) API answer, asked on the monitoring host's loopback."""
    answer = json.loads(server.check_output(f"curl -sS --fail --max-time 5 'http://127.0.0.1:{port}/api/{path}'"))
    if isinstance(answer, dict) and "status" in answer and "data" in answer:
        assert answer["status"] == "success", answer
        return answer["data"]
    return answer


def query(server: testinfra.host.Host, expr: str) -> list[dict[str, Any]]:
    return api(server, "v1/query?query=" + urllib.parse.quote(expr))["result"]


def records(server: testinfra.host.Host, name: str) -> list[dict[str, Any]]:
    """What a sink received (one JSON record a line, each with the time it arrived)."""
    text = server.run(f"cat {SINKS}/{name}.jsonl").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_for(check: Callable[[], Any], seconds: float = 60, what: str = "") -> Any:
    """Poll check() until it returns something truthy; fail after the given time."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(1)
