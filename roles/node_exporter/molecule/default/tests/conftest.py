"""Shared helpers of the node_exporter scenario's tests (run by Molecule's testinfra verifier)."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
EXPORTERS = ["berth-node-exporter-trixie", "berth-node-exporter-bookworm"]
PROMETHEUS = "berth-node-exporter-prom"
USER = "prometheus"
PASSWORD = "berth-test-scrape-password"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
CA = "/etc/prometheus/berth-test-ca.pem"


def get_host(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def address(name: str) -> str:
    """The host's address on the scenario network (where the exporter listens)."""
    return get_host(name).check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'").split("/")[0]


def curl(prometheus: testinfra.host.Host, url: str, options: str = "") -> str:
    """HTTP status of a request from the Prometheus host, trusting the test CA."""
    status = f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --cacert {CA}"
    return prometheus.check_output(f"{status} {options} {url}")


def query(prometheus: testinfra.host.Host, expr: str) -> list[dict[str, Any]]:
    """Result of an instant PromQL query on the Prometheus host."""
    url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote(expr)
    answer = json.loads(prometheus.check_output(f"curl -sS --fail '{url}'"))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def api(prometheus: testinfra.host.Host, path: str) -> Any:
    answer = json.loads(prometheus.check_output(f"curl -sS --fail http://127.0.0.1:9090/api/v1/{path}"))
    assert answer["status"] == "success", answer
    return answer["data"]


def wait_for(check: Callable[[], Any], seconds: float = 60, what: str = "") -> Any:
    """Poll check() until it returns something truthy; fail after the given time."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(2)
