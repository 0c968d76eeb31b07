"""The Grafana dashboards' check as the scenarios run it (monitoring, site): scripts/check_dashboards.py
and the chosen dashboards copied to the monitoring host in one command, then run there against its
Prometheus on 127.0.0.1:9090 (which listens on loopback only)."""

from __future__ import annotations

import base64
import io
import sys
import tarfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
DASHBOARDS = PROJECT / "roles" / "monitoring" / "files" / "grafana" / "dashboards"
CHECKER = PROJECT / "scripts" / "check_dashboards.py"
REMOTE = "/root/berth-dashboards"

sys.path.insert(0, str(CHECKER.parent))
import check_dashboards  # noqa: E402


def expected_counts(names: list[str]) -> tuple[int, int]:
    """Panels with queries and queries of the named dashboards, as the checker counts them here."""
    boards = [check_dashboards.load(DASHBOARDS / name) for name in names]
    queried = [p for board in boards for p in check_dashboards.panels(board) if p.get("targets")]
    return len(queried), sum(len(p["targets"]) for p in queried)


def install_command(names: list[str]) -> str:
    """One shell command that writes the checker and the dashboards on the host, as a gzipped tar in base64
    (one round trip, not one per file: each costs seconds through Ansible)."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in (CHECKER, *(DASHBOARDS / name for name in names)):
            tar.add(path, arcname=path.name)
    encoded = base64.b64encode(archive.getvalue()).decode()
    return f"install -d -m 0700 {REMOTE} && echo {encoded} | base64 -d | tar -xz --no-same-owner -C {REMOTE}"


def check_command(names: list[str]) -> str:
    """The checker's command on the host, for the named dashboards."""
    return (f"python3 {REMOTE}/check_dashboards.py --url http://127.0.0.1:9090 "
            + " ".join(f"{REMOTE}/{name}" for name in names))
