"""Shared helpers of the monitoring scenario's tests (run by Molecule's testinfra verifier); the API
helpers are molecule/shared/prometheus_api.py's."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[5] / "molecule" / "shared"))
from prometheus_api import api, get_host, query, records, wait_for  # noqa: F401

SERVER = "berth-mon-server"
TARGET = "berth-mon-target"
