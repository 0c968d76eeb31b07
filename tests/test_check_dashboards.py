"""scripts/check_dashboards.py: the structure checks and the variable substitution, the evaluation against a
stand-in Prometheus on 127.0.0.1, and berth's own dashboards (roles/monitoring/files/grafana/dashboards).

The real evaluation (every panel of the host and site dashboards against a live Prometheus) is in the
monitoring role's scenario (roles/monitoring/molecule/default/tests/test_dashboards.py)."""

from __future__ import annotations

import copy
import io
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import check_dashboards as cd
import pytest
import yaml
from conftest import ROOT

MONITORING = ROOT / "roles" / "monitoring"
DASHBOARDS = sorted((MONITORING / "files" / "grafana" / "dashboards").glob("*.json"))
DS = {"type": "prometheus", "uid": "${datasource}"}


def board(**changes: Any) -> dict[str, Any]:
    """A small valid dashboard: a data source variable, an instance variable, two panels."""
    data = {
        "uid": "t",
        "title": "t",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "instance", "type": "query", "datasource": DS,
             "query": {"query": 'label_values(up{job="node"}, instance)'}},
        ]},
        "panels": [
            {"id": 1, "type": "stat", "title": "Up", "datasource": DS,
             "targets": [{"refId": "A", "datasource": DS, "expr": 'up{instance=~"$instance"}'}]},
            {"id": 2, "type": "timeseries", "title": "CPU", "datasource": DS,
             "targets": [{"refId": "A",
                          "expr": 'rate(node_cpu_seconds_total{instance=~"${instance}"}[$__rate_interval])'},
                         {"refId": "B", "expr": "node_load1"}]},
        ],
    }
    data.update(changes)
    return data


def test_a_valid_dashboard_has_no_problems() -> None:
    assert cd.validate(board()) == []


def spoilt(change: Any) -> list[str]:
    data = board()
    change(data)
    return cd.validate(data)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["panels"][1].update(id=1), "panel 1 'CPU': id 1 is also panel 1 'Up'"),
        (lambda d: d["panels"][0].pop("id"), "panel None 'Up': no integer id"),
        (lambda d: d["panels"][0].pop("datasource"), "panel 1 'Up': datasource is not"),
        (lambda d: d["panels"][0].update(datasource={"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}),
         "panel 1 'Up': datasource is not"),
        (lambda d: d["panels"][0].update(datasource={"type": "loki", "uid": "${datasource}"}),
         "panel 1 'Up': datasource is not"),
        (lambda d: d["panels"][0]["targets"][0].update(datasource={"type": "prometheus", "uid": "abc"}),
         "panel 1 'Up' target A: datasource is not the Prometheus data source variable"),
        (lambda d: d["panels"][1]["targets"][1].pop("expr"), "panel 2 'CPU' target B: no expr"),
        (lambda d: d["panels"][1]["targets"][1].update(expr="  "), "panel 2 'CPU' target B: no expr"),
        (lambda d: d["panels"][1]["targets"][1].update(refId="A"), "panel 2 'CPU' target A: missing or repeated refId"),
        (lambda d: d["panels"][0]["targets"][0].update(expr='up{instance=~"$host"}'),
         "panel 1 'Up' target A: uses undefined variable $host"),
        (lambda d: d["panels"][0].update(targets=[]), "panel 1 'Up': targets is not a non-empty list"),
        (lambda d: d["templating"]["list"].pop(1), "panel 1 'Up' target A: uses undefined variable $instance"),
        (lambda d: d["templating"]["list"].pop(0), "no template variable of type datasource for prometheus"),
        (lambda d: d["templating"]["list"][1].update(datasource={"uid": "x"}),
         "variable instance: datasource is not the Prometheus data source variable"),
        (lambda d: d["templating"]["list"][1].update(query={"query": "label_values(up{x=~\"$nope\"}, instance)"}),
         "variable instance: uses undefined variable $nope"),
        (lambda d: d.pop("uid"), "dashboard has no uid"),
        (lambda d: d.update(panels=[]), "dashboard has no panels"),
    ],
)
def test_structure_problems_are_found(change: Any, problem: str) -> None:
    problems = spoilt(change)
    assert [p for p in problems if p.startswith(problem)], problems


def test_panels_inside_rows_are_checked() -> None:
    data = board()
    inner = copy.deepcopy(data["panels"][0])
    data["panels"].append({"id": 3, "type": "row", "title": "More", "collapsed": True, "panels": [inner]})
    assert [p["id"] for p in cd.panels(data)] == [1, 2, 3, 1]
    assert "panel 1 'Up': id 1 is also panel 1 'Up'" in cd.validate(data)


def test_a_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(cd.DashboardError, match="not valid JSON"):
        cd.load(tmp_path / "bad.json")
    with pytest.raises(cd.DashboardError, match="not a dashboard"):
        cd.load(tmp_path / "list.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('up{instance=~"$instance"}', 'up{instance=~".+"}'),
        ('up{instance=~"${instance}"}', 'up{instance=~".+"}'),
        ('up{instance=~"${instance:regex}"}', 'up{instance=~".+"}'),
        ('up{instance=~"[[instance]]"}', 'up{instance=~".+"}'),
        ("rate(x[$__rate_interval])", "rate(x[1m])"),
        ("rate(x[${__rate_interval}])", "rate(x[1m])"),
        ("avg_over_time(x[$__range])", "avg_over_time(x[1h])"),
        ("x / $__range_s", "x / 3600"),
        ("rate(x[$__interval])", "rate(x[1m])"),
        ('up{a=~"$instance", b=~"$app"}', 'up{a=~".+", b=~".+"}'),
        # unknown variables are left for validate() to report; $instancex is another name
        ('up{a=~"$other"}', 'up{a=~"$other"}'),
        ('up{a=~"$instancex"}', 'up{a=~"$instancex"}'),
        ("node_load1", "node_load1"),
    ],
)
def test_substitution(text: str, expected: str) -> None:
    assert cd.substitute(text, {"instance", "app"}) == expected


def test_used_variables() -> None:
    assert cd.used_variables('a{x=~"$a", y=~"${b:csv}"}[[c]][$__range]') == ["a", "b", "c", "__range"]


# --- Evaluation, against a stand-in for Prometheus' query API on 127.0.0.1 ---------------------------------


class StandIn(BaseHTTPRequestHandler):
    """Answers /api/v1/query: `up...` and `node_load1` with one series, `node_cpu...` with none, a query
    holding `bad(` with Prometheus' 400 error. Records every query it got."""

    queries: list[str] = []  # noqa: RUF012 (the test reads it)

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        expr = urllib.parse.parse_qs(parsed.query)["query"][0]
        StandIn.queries.append(expr)
        if "bad(" in expr:
            status, body = 400, {"status": "error", "errorType": "bad_data", "error": "parse error"}
        elif parsed.path != "/api/v1/query":
            status, body = 404, {}
        else:
            found = [] if "node_cpu" in expr else [{"metric": {"instance": "web1"}, "value": [1, "1"]}]
            status, body = 200, {"status": "success", "data": {"resultType": "vector", "result": found}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    StandIn.queries = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_every_query_is_sent_substituted_and_empty_results_fail(prometheus: str) -> None:
    results = {r.label: r for r in cd.evaluate(board(), prometheus)}
    assert StandIn.queries == [
        'up{job="node"}',
        'up{instance=~".+"}',
        'rate(node_cpu_seconds_total{instance=~".+"}[1m])',
        "node_load1",
    ]
    assert results["variable instance"].ok and results["variable instance"].series == {"instance": 1}
    assert results["panel 1 'Up'"].ok and results["panel 1 'Up'"].series == {"A": 1}
    cpu = results["panel 2 'CPU'"]
    assert not cpu.ok and cpu.series == {"A": 0, "B": 1}
    assert cpu.problems == ['A: no series: rate(node_cpu_seconds_total{instance=~".+"}[1m])']


def test_prometheus_errors_are_failures(prometheus: str) -> None:
    data = board()
    data["panels"][0]["targets"][0]["expr"] = "bad(up)"
    [problem] = next(r for r in cd.evaluate(data, prometheus) if r.label == "panel 1 'Up'").problems
    assert problem == "A: bad_data: parse error: bad(up)"
    with pytest.raises(RuntimeError):
        cd.query("http://127.0.0.1:9", "up", timeout=2)  # nothing listens on the discard port


def test_check_prints_a_line_per_panel_and_the_counts(prometheus: str, tmp_path: Path) -> None:
    good = board(panels=board()["panels"][:1])
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "cpu.json").write_text(json.dumps(board(uid="cpu")))
    out = io.StringIO()
    assert cd.check([tmp_path / "good.json", tmp_path / "cpu.json"], prometheus, out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines == [
        "ok   good.json variable instance: series instance:1",
        "ok   good.json panel 1 'Up': series A:1",
        "ok   cpu.json variable instance: series instance:1",
        "ok   cpu.json panel 1 'Up': series A:1",
        "FAIL cpu.json panel 2 'CPU': A: no series: rate(node_cpu_seconds_total{instance=~\".+\"}[1m])",
        f"2 dashboards, 3 panels, 4 queries, 1 failed (evaluated against {prometheus})",
    ]
    assert cd.main(["--url", prometheus, str(tmp_path / "good.json")]) == 0
    assert cd.main(["--url", prometheus, str(tmp_path / "cpu.json")]) == 1


def test_structure_problems_stop_the_evaluation(tmp_path: Path, prometheus: str) -> None:
    (tmp_path / "a.json").write_text(json.dumps(board()))
    (tmp_path / "b.json").write_text(json.dumps(board()))  # the same uid
    (tmp_path / "c.json").write_text("{")
    out = io.StringIO()
    assert cd.check([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"], None, out=out) == 2
    assert "FAIL b.json: uid t is also a.json's" in out.getvalue()
    assert re.search(r"FAIL .*c\.json: not valid JSON", out.getvalue())
    StandIn.queries = []
    out = io.StringIO()
    cd.check([tmp_path / "b.json"], prometheus, out=out)
    assert StandIn.queries  # b alone is fine
    StandIn.queries = []
    cd.check([tmp_path / "a.json", tmp_path / "b.json"], prometheus, out=io.StringIO())
    assert len(StandIn.queries) == 4  # only a's: b repeats a's uid


# --- berth's dashboards -------------------------------------------------------------------------------------


def test_berth_ships_its_dashboards() -> None:
    assert [p.name for p in DASHBOARDS] == ["berth-host.json", "berth-operations.json", "berth-postgres.json",
                                            "berth-redis.json", "berth-site.json"]
    assert cd.default_files() == DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_berth_dashboards_are_valid_and_small(path: Path) -> None:
    dashboard = cd.load(path)
    assert cd.validate(dashboard) == []
    queried = [p for p in cd.panels(dashboard) if p.get("targets")]
    assert 6 <= len(queried) <= 12
    # every panel is where Grafana's grid can show it, and says what it shows
    for panel in queried:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24 and panel.get("description"), panel["title"]


def test_the_structure_check_passes_on_berth_dashboards() -> None:
    out = io.StringIO()
    assert cd.check(DASHBOARDS, None, out=out) == 0, out.getvalue()


def metric_names(expr: str) -> set[str]:
    """berth_* metric names in a query."""
    return set(re.findall(r"\bberth_[a-z_]+\b", expr))


def test_berth_metrics_in_the_dashboards_are_written_by_berth() -> None:
    """Every berth_* name the dashboards query appears in a writer's source (the release template, the backup
    program, the certificate script, the mtail program of nginx's log), not only in the docs."""
    writers = "".join(
        p.read_text()
        for p in [
            *ROOT.glob("roles/release/templates/**/*.prom.j2"),
            ROOT / "roles" / "backup" / "files" / "berth_backup.py",
            ROOT / "roles" / "node_exporter" / "files" / "berth_tls_metrics.py",
            ROOT / "roles" / "nginx" / "files" / "etc" / "mtail" / "berth-nginx.mtail",
        ]
    )
    # mtail's histograms are served as Prometheus's: <name>_bucket, _sum and _count
    written_histograms = re.findall(r"^histogram (berth_[a-z_]+)", writers, flags=re.MULTILINE)
    # the backup program builds its names from a prefix and suffixes
    backup = re.findall(r'^\s+\("([a-z_]+)", "[a-z_]+", "', writers, flags=re.MULTILINE)
    written = set(re.findall(r"\bberth_[a-z_]+\b", writers))
    written |= {f"berth_backup_{s}" for s in backup} | {f"berth_backup_restore_test_{s}" for s in backup}
    written |= {f"{name}_{part}" for name in written_histograms for part in ("bucket", "sum", "count")}
    used = {name for path in DASHBOARDS for p in cd.panels(cd.load(path)) for t in p.get("targets", [])
            for name in metric_names(t["expr"])}
    assert used, "the operations dashboard queries berth's metrics"
    assert used - written == set()


def test_the_dashboard_provider_reads_where_the_role_installs() -> None:
    provider_file = MONITORING / "files" / "grafana" / "provisioning" / "dashboards" / "berth.yaml"
    provider = yaml.safe_load(provider_file.read_text())
    role_vars = yaml.safe_load((MONITORING / "vars" / "main.yml").read_text())
    [entry] = provider["providers"]
    assert entry["options"]["path"] == role_vars["__monitoring_grafana_dashboards_dir"]
    assert entry["type"] == "file" and entry["allowUiUpdates"] is False
