#!/usr/bin/env python3
"""Check berth's Grafana dashboards: their structure, and that every panel's query finds data in a Prometheus.

    scripts/check_dashboards.py --structure-only [DASHBOARD.json ...]
    scripts/check_dashboards.py --url http://127.0.0.1:9090 [DASHBOARD.json ...]

Without files it reads every roles/monitoring/files/grafana/dashboards/*.json. Structure (every run): valid
JSON, a title and a uid (unique over the files), unique panel ids (rows' panels included), every panel with
targets uses the Prometheus data source through a template variable of type `datasource` (`${datasource}`),
every target has an `expr`, every variable a query uses is defined (or is one of Grafana's own). With --url,
each target's `expr` is sent to Prometheus' /api/v1/query with the variables replaced (a dashboard's own by
a regex matching every value, `.+`; Grafana's by fixed values: `$__rate_interval` 1m, `$__range` 1h...), and
fails unless it returns at least one series; each `label_values(selector, label)` variable query must find
a series with that label. One line per panel, then the counts; exit status 0 only when everything passed.

The standard library only: it also runs on a monitoring host (python3), and is importable (tests/).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "roles" / "monitoring" / "files" / "grafana" / "dashboards"

# Grafana's own variables, as a query sees them (values that suit a Prometheus scraped every few seconds
# to every minute).
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# A dashboard's own variable in a query: a regex that matches every value (queries use them as =~"$var").
MATCH_ALL = ".+"
# $name, ${name}, ${name:format}, [[name]], [[name:format]]
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),\s*)?(\w+)\s*\)\s*$", re.DOTALL)


class DashboardError(Exception):
    """A dashboard file that cannot be read as one."""


@dataclass
class Result:
    """The outcome of one panel (or variable query): its label, problems, and series found per target."""

    label: str
    problems: list[str] = field(default_factory=list)
    series: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def load(path: Path) -> dict[str, Any]:
    """A dashboard file's JSON (an object), or DashboardError."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise DashboardError(f"{path}: cannot read: {error}") from error
    except json.JSONDecodeError as error:
        raise DashboardError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise DashboardError(f"{path}: not a dashboard (a JSON object)")
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows (collapsed rows keep theirs in `panels`) included."""
    for panel in dashboard.get("panels") or []:
        if not isinstance(panel, dict):
            continue
        yield panel
        yield from (inner for inner in panel.get("panels") or [] if isinstance(inner, dict))


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard's template variables by name."""
    listed = (dashboard.get("templating") or {}).get("list") or []
    return {v["name"]: v for v in listed if isinstance(v, dict) and isinstance(v.get("name"), str)}


def used_variables(text: str) -> list[str]:
    """Names of the variables a query refers to, in order."""
    return [next(g for g in m.groups() if g) for m in VARIABLE.finditer(text)]


def substitute(text: str, names: set[str] | dict[str, Any], builtins: dict[str, str] | None = None) -> str:
    """The query as Prometheus gets it: the dashboard's variables (`names`) as `.+`, Grafana's own by
    `builtins` (BUILTINS by default). Unknown variables are left as they are (validate() reports them)."""
    builtins = BUILTINS if builtins is None else builtins

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in builtins:
            return builtins[name]
        if name in names:
            return MATCH_ALL
        return match.group(0)

    return VARIABLE.sub(value, text)


def _datasource_variable(reference: Any, defined: dict[str, dict[str, Any]]) -> str | None:
    """The name of the Prometheus data source variable a panel's or target's `datasource` refers to."""
    if not isinstance(reference, dict) or reference.get("type") != "prometheus":
        return None
    names = used_variables(str(reference.get("uid", "")))
    if len(names) != 1 or VARIABLE.fullmatch(str(reference.get("uid"))) is None:
        return None
    variable = defined.get(names[0])
    if variable and variable.get("type") == "datasource" and variable.get("query") == "prometheus":
        return names[0]
    return None


def validate(dashboard: dict[str, Any]) -> list[str]:
    """Problems of a dashboard's structure (empty: none)."""
    problems = []
    for key in ("title", "uid"):
        if not isinstance(dashboard.get(key), str) or not dashboard.get(key):
            problems.append(f"dashboard has no {key}")
    defined = variables(dashboard)
    sources = [n for n, v in defined.items() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if not sources:
        problems.append("no template variable of type datasource for prometheus (e.g. ${datasource})")
    for name, variable in defined.items():
        if variable.get("type") == "query":
            if _datasource_variable(variable.get("datasource"), defined) is None:
                problems.append(f"variable {name}: datasource is not the Prometheus data source variable")
            query = variable.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            if not isinstance(text, str) or not text.strip():
                problems.append(f"variable {name}: no query")
            else:
                problems += [f"variable {name}: uses undefined variable ${u}"
                             for u in used_variables(text) if u not in defined and u not in BUILTINS]
    all_panels = list(panels(dashboard))
    if not all_panels:
        problems.append("dashboard has no panels")
    seen: dict[Any, str] = {}
    for panel in all_panels:
        label = f"panel {panel.get('id')} {panel.get('title', '(no title)')!r}"
        if not isinstance(panel.get("id"), int):
            problems.append(f"{label}: no integer id")
        elif panel["id"] in seen:
            problems.append(f"{label}: id {panel['id']} is also {seen[panel['id']]}")
        else:
            seen[panel["id"]] = label
        targets = panel.get("targets")
        if panel.get("type") == "row" or targets is None:
            continue
        if not isinstance(targets, list) or not targets:
            problems.append(f"{label}: targets is not a non-empty list")
            continue
        if _datasource_variable(panel.get("datasource"), defined) is None:
            problems.append(f"{label}: datasource is not {{type: prometheus, uid: ${{<datasource variable>}}}}")
        ref_ids = set()
        for number, target in enumerate(targets):
            where = f"{label} target {target.get('refId', number) if isinstance(target, dict) else number}"
            if not isinstance(target, dict):
                problems.append(f"{where}: not an object")
                continue
            if target.get("refId") in ref_ids or not target.get("refId"):
                problems.append(f"{where}: missing or repeated refId")
            ref_ids.add(target.get("refId"))
            if "datasource" in target and _datasource_variable(target["datasource"], defined) is None:
                problems.append(f"{where}: datasource is not the Prometheus data source variable")
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where}: no expr")
                continue
            problems += [f"{where}: uses undefined variable ${u}"
                         for u in used_variables(expr) if u not in defined and u not in BUILTINS]
    return problems


def query(url: str, expr: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The series of an instant query (a scalar or string answer counts as one); raises RuntimeError
    with Prometheus' error."""
    address = url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            answer = json.loads(error.read())
        except ValueError:
            raise RuntimeError(f"HTTP {error.code}") from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise RuntimeError(str(error)) from error
    if answer.get("status") != "success":
        raise RuntimeError(f"{answer.get('errorType', 'error')}: {answer.get('error', answer)}")
    data = answer["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def evaluate(dashboard: dict[str, Any], url: str, timeout: float = 10) -> list[Result]:
    """Each panel's queries (and each label_values variable) evaluated in Prometheus at `url`."""
    defined = variables(dashboard)
    results = []
    for name, variable in defined.items():
        raw = variable.get("query")
        text = raw.get("query") if isinstance(raw, dict) else raw
        if variable.get("type") != "query" or not isinstance(text, str):
            continue
        result = Result(f"variable {name}")
        match = LABEL_VALUES.match(text)
        if not match or not match.group(1):
            result.problems.append(f"not checked: only label_values(<selector>, <label>) is ({text})")
        else:
            selector, label = substitute(match.group(1), defined), match.group(2)
            try:
                found = [s for s in query(url, selector, timeout) if label in s.get("metric", {})]
            except RuntimeError as error:
                result.problems.append(f"{selector}: {error}")
            else:
                result.series[label] = len(found)
                if not found:
                    result.problems.append(f"no series of {selector} has the label {label}")
        results.append(result)
    for panel in panels(dashboard):
        targets = panel.get("targets")
        if panel.get("type") == "row" or not targets:
            continue
        result = Result(f"panel {panel.get('id')} {panel.get('title', '')!r}")
        for target in targets:
            expr = substitute(target["expr"], defined)
            ref = target.get("refId", "?")
            try:
                found = query(url, expr, timeout)
            except RuntimeError as error:
                result.problems.append(f"{ref}: {error}: {expr}")
                continue
            result.series[ref] = len(found)
            if not found:
                result.problems.append(f"{ref}: no series: {expr}")
        results.append(result)
    return results


def default_files() -> list[Path]:
    return sorted(DEFAULT_DIR.glob("*.json"))


def check(files: list[Path], url: str | None, timeout: float = 10, out: Any = None) -> int:
    """Check the files (and evaluate them when `url` is given); print one line per panel and the counts.
    The number of failures (0: all passed)."""
    out = out or sys.stdout
    failures = panels_seen = queries = 0
    uids: dict[str, Path] = {}
    for path in files:
        try:
            dashboard = load(path)
        except DashboardError as error:
            print(f"FAIL {error}", file=out)
            failures += 1
            continue
        problems = validate(dashboard)
        uid = dashboard.get("uid")
        if isinstance(uid, str) and uid in uids:
            problems.append(f"uid {uid} is also {uids[uid].name}'s")
        uids.setdefault(str(uid), Path(path))
        for problem in problems:
            print(f"FAIL {Path(path).name}: {problem}", file=out)
        failures += len(problems)
        counted = [p for p in panels(dashboard) if p.get("type") != "row" and p.get("targets")]
        panels_seen += len(counted)
        queries += sum(len(p["targets"]) for p in counted)
        if url is None:
            if not problems:
                print(f"ok   {Path(path).name}: {len(counted)} panels, structure", file=out)
            continue
        if problems:
            continue
        for result in evaluate(dashboard, url, timeout):
            series = " ".join(f"{ref}:{n}" for ref, n in result.series.items())
            if result.ok:
                print(f"ok   {Path(path).name} {result.label}: series {series}", file=out)
            else:
                failures += 1
                print(f"FAIL {Path(path).name} {result.label}: {'; '.join(result.problems)}", file=out)
    mode = f"evaluated against {url}" if url else "structure only"
    print(f"{len(files)} dashboards, {panels_seen} panels, {queries} queries, {failures} failed ({mode})", file=out)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="dashboard JSON files (default: berth's)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="Prometheus to evaluate every query in, e.g. http://127.0.0.1:9090")
    where.add_argument("--structure-only", action="store_true", help="check the structure, query nothing")
    parser.add_argument("--timeout", type=float, default=10, help="seconds per query (default 10)")
    args = parser.parse_args(argv)
    files = args.files or default_files()
    if not files:
        parser.error(f"no dashboards given and none in {DEFAULT_DIR}")
    return 1 if check(files, None if args.structure_only else args.url, args.timeout) else 0


if __name__ == "__main__":
    sys.exit(main())
