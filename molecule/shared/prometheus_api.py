"""Prometheus' and Alertmanager's HTTP APIs as the scenarios' tests ask them (node_exporter, monitoring,
site): from the host that runs them, on its loopback, with curl, through testinfra; and what the alert
sinks (alert-sinks.yml) received.
"""

from __future__ import annotations

import email
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import testinfra

SINKS = "/var/lib/berth-test-sinks"


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


def records(server: testinfra.host.Host, name: str) -> list[dict[str, Any]]:
    """What a sink of alert-sinks.yml received (name: webhook or mail; one JSON record a line, each with
    the time it arrived: "received")."""
    text = server.run(f"cat {SINKS}/{name}.jsonl").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def notified(server: testinfra.host.Host, alertname: str, status: str, since: float,
             **labels: str) -> Callable[[], dict | None]:
    """A check for wait_for: the first webhook record after `since` holding `alertname` in `status`
    (firing, resolved) with the given labels."""
    def check() -> dict | None:
        for record in records(server, "webhook"):
            if record["received"] > since and any(
                alert["labels"].get("alertname") == alertname and alert["status"] == status
                and all(alert["labels"].get(key) == value for key, value in labels.items())
                for alert in record["body"]["alerts"]
            ):
                return record
        return None
    return check


def mailed(server: testinfra.host.Host, word: str, alertname: str, since: float) -> Callable[[], float | None]:
    """A check for wait_for: when the first mail after `since` whose subject says [FIRING…] or
    [RESOLVED] and names `alertname` arrived."""
    def check() -> float | None:
        for record in records(server, "mail"):
            subject = email.message_from_string(record["message"])["Subject"] or ""
            if record["received"] > since and subject.startswith(f"[{word}") and alertname in subject:
                return float(record["received"])
        return None
    return check
