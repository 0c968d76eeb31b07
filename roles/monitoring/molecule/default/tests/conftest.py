"""Shared helpers of the monitoring scenario's tests (run by Molecule's testinfra verifier); the API
helpers are molecule/shared/prometheus_api.py's."""

from __future__ import annotations

import sys
from pathlib import Path

import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[5] / "molecule" / "shared"))
from prometheus_api import api, get_host, query, records, wait_for  # noqa: F401

SERVER = "berth-mon-server"
TARGET = "berth-mon-target"
# the berth hosts: node_exporter on Debian 13 and Debian 12
EXPORTERS = [TARGET, "berth-mon-bookworm"]
USER = "prometheus"
PASSWORD = "berth-test-scrape-password"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
# the test CA, trusted by the monitoring host (prepare.yml)
CA = "/usr/local/share/ca-certificates/berth-test-ca.crt"


def address(name: str) -> str:
    """The host's address on the scenario network (where its node_exporter listens)."""
    return get_host(name).check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'").split("/")[0]


def curl(server: testinfra.host.Host, url: str, options: str = "") -> str:
    """HTTP status of a request from the monitoring host, trusting the test CA."""
    status = f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --cacert {CA}"
    return server.check_output(f"{status} {options} {url}")
