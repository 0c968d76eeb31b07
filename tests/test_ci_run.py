"""Unit tests of scripts/ci_run.py's event handling (the real run is in the site scenario)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import ci_run
import pytest


def event(kind: str, host: str = "web1", task: str = "Install", **res: Any) -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, "task": task, "res": res, "duration": 1.5}}


def feed(*events: dict[str, Any], secrets: list[str] | None = None) -> tuple[ci_run.Progress, str]:
    out = io.StringIO()
    progress = ci_run.Progress(secrets=secrets or [], out=out)
    for e in events:
        assert progress(e) is True
    return progress, out.getvalue()


def test_counts_and_lines_per_host() -> None:
    progress, text = feed(
        {"event": "playbook_on_task_start", "event_data": {"task": "Install"}},
        event("runner_on_ok", changed=True),
        event("runner_on_ok", host="web2"),
        event("runner_on_skipped", task="Optional"),
    )
    assert progress.counts["web1"] == {"changed": 1, "skipped": 1}
    assert progress.counts["web2"] == {"ok": 1}
    assert text.splitlines() == [
        "CHANGED     web1 | Install",
        "OK          web2 | Install",
        "SKIPPED     web1 | Optional",
    ]
    assert progress.exit_code("successful") == ci_run.EXIT_OK


def test_failure_and_unreachable_set_the_exit_code() -> None:
    failed, _ = feed(event("runner_on_failed", msg="boom"))
    assert failed.exit_code("failed") == ci_run.EXIT_FAILED
    unreachable, text = feed(
        event("runner_on_failed", msg="x"), event("runner_on_unreachable", host="db1", msg="no route")
    )
    assert unreachable.exit_code("failed") == ci_run.EXIT_UNREACHABLE
    assert "UNREACHABLE db1 | Install | no route" in text


def test_ignored_failure_counts_as_ok() -> None:
    ignored = {"event": "runner_on_failed", "event_data": {"host": "h", "task": "t", "res": {}, "ignore_errors": True}}
    progress, _ = feed(ignored)
    assert progress.counts["h"] == {"ok": 1}
    assert progress.exit_code("successful") == ci_run.EXIT_OK


def test_runner_failure_without_task_failure() -> None:
    progress, _ = feed()
    assert progress.exit_code("failed") == ci_run.EXIT_RUNNER


def test_a_run_where_no_task_ran_is_not_a_success() -> None:
    # ansible-playbook succeeds when the group is empty ("no hosts matched"); a deploy that did
    # nothing must not pass in CI.
    progress, _ = feed()
    assert progress.exit_code("successful") == ci_run.EXIT_RUNNER


def test_secrets_are_masked_everywhere(tmp_path: Path) -> None:
    progress, text = feed(
        event("runner_on_failed", task="Login with s3cr3t", msg="bad password s3cr3t"), secrets=["s3cr3t"]
    )
    assert "s3cr3t" not in text
    ci_run.write_artifacts(tmp_path, progress, "deploy.yml", "failed", 3.0)
    for name in ("summary.json", "junit.xml"):
        assert "s3cr3t" not in (tmp_path / name).read_text()


def test_artifacts_describe_the_run(tmp_path: Path) -> None:
    progress, _ = feed(event("runner_on_ok", changed=True), event("runner_on_failed", task="Migrate", msg="db down"))
    ci_run.write_artifacts(tmp_path, progress, "deploy.yml", "failed", 12.34)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_code"] == ci_run.EXIT_FAILED
    assert summary["hosts"]["web1"]["changed"] == 1
    assert summary["failures"][0]["task"] == "Migrate"
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert suite.find("testcase/failure").get("message") == "db down"


def test_extravars_parsing() -> None:
    assert ci_run.parse_extravars(["app_version=1.2", "x=a=b"]) == {"app_version": "1.2", "x": "a=b"}
    with pytest.raises(SystemExit):
        ci_run.parse_extravars(["novalue"])


def test_secret_looking_extravars_are_masked() -> None:
    assert ci_run.SECRET_KEY.search("db_password")
    assert ci_run.SECRET_KEY.search("registry_token")
    assert not ci_run.SECRET_KEY.search("app_version")
