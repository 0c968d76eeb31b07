"""Shared helpers of the node_exporter scenario's tests (run by Molecule's testinfra verifier)."""

from __future__ import annotations

import sys
from pathlib import Path

import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[5] / "molecule" / "shared"))
from prometheus_api import api, get_host, query, wait_for  # noqa: F401

EXPORTERS = ["berth-node-exporter-trixie", "berth-node-exporter-bookworm"]
PROMETHEUS = "berth-node-exporter-prom"
USER = "prometheus"
PASSWORD = "berth-test-scrape-password"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
CA = "/etc/prometheus/berth-test-ca.pem"


def address(name: str) -> str:
    """The host's address on the scenario network (where the exporter listens)."""
    return get_host(name).check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'").split("/")[0]


def curl(prometheus: testinfra.host.Host, url: str, options: str = "") -> str:
    """HTTP status of a request from the Prometheus host, trusting the test CA."""
    status = f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --cacert {CA}"
    return prometheus.check_output(f"{status} {options} {url}")
