"""The Grafana dashboards' queries find data in the monitoring host's real Prometheus: scripts/check_dashboards.py
and the host and site dashboards are copied to the host and run there against 127.0.0.1:9090 (the operations
dashboard reads berth's release, backup and certificate metrics, which only a whole app host writes: the
whole-site scenario evaluates it)."""

from __future__ import annotations

import base64
import io
import re
import sys
import tarfile
from pathlib import Path

from conftest import SERVER, wait_for

testinfra_hosts = [SERVER]
PROJECT = Path(__file__).resolve().parents[5]
DASHBOARDS = PROJECT / "roles" / "monitoring" / "files" / "grafana" / "dashboards"
CHECKER = PROJECT / "scripts" / "check_dashboards.py"
EVALUATED = ["berth-host.json", "berth-site.json"]
REMOTE = "/root/berth-dashboards"

sys.path.insert(0, str(CHECKER.parent))
import check_dashboards  # noqa: E402


def expected_counts() -> tuple[int, int]:
    """Panels with queries and queries of the evaluated dashboards, as the checker counts them here."""
    boards = [check_dashboards.load(DASHBOARDS / name) for name in EVALUATED]
    queried = [p for board in boards for p in check_dashboards.panels(board) if p.get("targets")]
    return len(queried), sum(len(p["targets"]) for p in queried)


def install_command() -> str:
    """One shell command that writes the checker and the dashboards on the host, as a gzipped tar in base64
    (one round trip, not one per file: each costs seconds through Ansible)."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in (CHECKER, *(DASHBOARDS / name for name in EVALUATED)):
            tar.add(path, arcname=path.name)
    encoded = base64.b64encode(archive.getvalue()).decode()
    return f"install -d -m 0700 {REMOTE} && echo {encoded} | base64 -d | tar -xz --no-same-owner -C {REMOTE}"


def test_every_panel_of_the_host_and_site_dashboards_finds_series(host, capsys):
    command = (f"python3 {REMOTE}/check_dashboards.py --url http://127.0.0.1:9090 "
               + " ".join(f"{REMOTE}/{name}" for name in EVALUATED))
    last = host.run(f"{install_command()} && {command}")

    # The probes and rates need a few scrapes after a restart: retry for a while, then fail with the output.
    def passing() -> object:
        result = host.run(command)
        return result if result.rc == 0 else None

    result = last if last.rc == 0 else wait_for(passing, 60, f"every panel finds series:\n{last.stdout}{last.stderr}")
    lines = result.stdout.splitlines()
    panels, queries = expected_counts()
    assert lines[-1] == (f"2 dashboards, {panels} panels, {queries} queries, 0 failed "
                         "(evaluated against http://127.0.0.1:9090)"), result.stdout
    # one line per panel and per variable query, each ok with at least one series per query
    panel_lines = [line for line in lines if re.match(r"ok +berth-(host|site)\.json panel \d+ ", line)]
    assert len(panel_lines) == panels, result.stdout
    assert all(re.search(r"series( [A-Z]:[1-9]\d*)+$", line) for line in panel_lines), result.stdout
    assert not [line for line in lines if line.startswith("FAIL")], result.stdout
    with capsys.disabled():
        print(f"\ndashboards evaluated in Prometheus: {lines[-1]}")
