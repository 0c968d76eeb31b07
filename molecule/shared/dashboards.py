"""The Grafana dashboards' check as the scenarios run it (monitoring, site): scripts/check_dashboards.py
and the chosen dashboards copied to the monitoring host in one command, then run there against its
Prometheus on 127.0.0.1:9090 (which listens on loopback only)."""

from __future__ import annotations

import base64
import io
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
DASHBOARDS = PROJECT / "roles" / "monitoring" / "files" / "grafana" / "dashboards"
CHECKER = PROJECT / "scripts" / "check_dashboards.py"
REMOTE = "/root/berth-dashboards"

sys.path.insert(0, str(CHECKER.parent))
import check_dashboards  # noqa: E402
from prometheus_api import wait_for  # noqa: E402


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


def evaluate(host: Any, names: list[str]) -> str:
    """Install the checker and the named dashboards on the monitoring host and run it against its
    Prometheus until every panel's query returns series (the rates need a few scrapes: up to 60 s), then
    check its report: one ok line per panel with at least one series per query, no FAIL, and the counts
    the files hold. Returns the summary line."""
    command = check_command(names)
    last = host.run(f"{install_command(names)} && {command}")

    def passing() -> Any:
        result = host.run(command)
        return result if result.rc == 0 else None

    result = last if last.rc == 0 else wait_for(passing, 60, f"every panel finds series:\n{last.stdout}{last.stderr}")
    lines = result.stdout.splitlines()
    panels, queries = expected_counts(names)
    assert lines[-1] == (f"{len(names)} dashboards, {panels} panels, {queries} queries, 0 failed "
                         "(evaluated against http://127.0.0.1:9090)"), result.stdout
    files = "|".join(re.escape(name) for name in names)
    panel_lines = [line for line in lines if re.match(rf"ok +({files}) panel \d+ ", line)]
    assert len(panel_lines) == panels, result.stdout
    assert all(re.search(r"series( [A-Z]:[1-9]\d*)+$", line) for line in panel_lines), result.stdout
    assert not [line for line in lines if line.startswith("FAIL")], result.stdout
    return lines[-1]
