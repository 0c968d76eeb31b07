"""Prometheus' and Alertmanager's HTTP APIs as the scenarios' tests ask them (node_exporter, monitoring):
from the host that runs them, on its loopback, with curl, through testinfra.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import testinfra


def get_host(name: str) -> testinfra.host.Host:
    """A host of the scenario's Molecule inventory."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def api(host: testinfra.host.Host, path: str, port: int = 9090) -> Any:
    """The data of an API answer (path after /api/, e.g. v1/targets; Alertmanager's: port 9093, v2/...)."""
    answer = json.loads(host.check_output(f"curl -sS --fail --max-time 5 'http://127.0.0.1:{port}/api/{path}'"))
    if isinstance(answer, dict) and "status" in answer and "data" in answer:
        assert answer["status"] == "success", answer
        return answer["data"]
    return answer


def query(host: testinfra.host.Host, expr: str) -> list[dict[str, Any]]:
    """The result of an instant PromQL query."""
    return api(host, "v1/query?query=" + urllib.parse.quote(expr))["result"]


def wait_for(check: Callable[[], Any], seconds: float = 60, what: str = "", interval: float = 1) -> Any:
    """Poll check() until it returns something truthy, and return that; fail after the given time."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(interval)
