"""The Grafana dashboards' queries find data in the monitoring host's real Prometheus: scripts/check_dashboards.py
and the host dashboard are copied to the host and run there against 127.0.0.1:9090. The site dashboard reads
nginx's access log (mtail) of real apps and the operations dashboard berth's release, backup and
certificate metrics, which only a whole app host has: the whole-site scenario evaluates both; the db_host
scenario the PostgreSQL and Redis dashboards."""

from __future__ import annotations

from conftest import SERVER
from dashboards import evaluate

testinfra_hosts = [SERVER]
EVALUATED = ["berth-host.json"]


def test_every_panel_of_the_host_dashboard_finds_series(host, capsys):
    summary = evaluate(host, EVALUATED)
    with capsys.disabled():
        print(f"\ndashboards evaluated in Prometheus: {summary}")
