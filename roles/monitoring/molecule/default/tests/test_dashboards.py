"""The Grafana dashboards' queries find data in the monitoring host's real Prometheus: scripts/check_dashboards.py
and the host dashboard are copied to the host and run there against 127.0.0.1:9090. The site dashboard reads
nginx's access log (mtail) of real apps and the operations dashboard berth's release, backup and
certificate metrics, which only a whole app host has: the whole-site scenario evaluates both; the db_host
scenario the PostgreSQL and Redis dashboards."""

from __future__ import annotations

import re

from conftest import SERVER, wait_for
from dashboards import check_command, expected_counts, install_command

testinfra_hosts = [SERVER]
EVALUATED = ["berth-host.json"]


def test_every_panel_of_the_host_dashboard_finds_series(host, capsys):
    command = check_command(EVALUATED)
    last = host.run(f"{install_command(EVALUATED)} && {command}")

    # The probes and rates need a few scrapes after a restart: retry for a while, then fail with the output.
    def passing() -> object:
        result = host.run(command)
        return result if result.rc == 0 else None

    result = last if last.rc == 0 else wait_for(passing, 60, f"every panel finds series:\n{last.stdout}{last.stderr}")
    lines = result.stdout.splitlines()
    panels, queries = expected_counts(EVALUATED)
    assert lines[-1] == (f"1 dashboards, {panels} panels, {queries} queries, 0 failed "
                         "(evaluated against http://127.0.0.1:9090)"), result.stdout
    # one line per panel and per variable query, each ok with at least one series per query
    panel_lines = [line for line in lines if re.match(r"ok +berth-host\.json panel \d+ ", line)]
    assert len(panel_lines) == panels, result.stdout
    assert all(re.search(r"series( [A-Z]:[1-9]\d*)+$", line) for line in panel_lines), result.stdout
    assert not [line for line in lines if line.startswith("FAIL")], result.stdout
    with capsys.disabled():
        print(f"\ndashboards evaluated in Prometheus: {lines[-1]}")
