"""Shared helpers of the monitoring scenario's tests (run by Molecule's testinfra verifier); the API
helpers are molecule/shared/prometheus_api.py's."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[5] / "molecule" / "shared"))
from prometheus_api import api, get_host, query, wait_for  # noqa: F401

SERVER = "berth-mon-server"
TARGET = "berth-mon-target"
SINKS = "/var/lib/berth-test-sinks"


def records(server: testinfra.host.Host, name: str) -> list[dict[str, Any]]:
    """What a sink received (one JSON record a line, each with the time it arrived)."""
    text = server.run(f"cat {SINKS}/{name}.jsonl").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]
