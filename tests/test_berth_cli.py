"""Unit tests of scripts/berth.py, the command-line entry: event handling, exit codes, masking, artifacts, and
which playbook each command runs (real runs: the whole-site and release scenarios)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import berth
import pytest


def event(kind: str, host: str = "web1", task: str = "Install", **res: Any) -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, "task": task, "res": res, "duration": 1.5}}


def feed(*events: dict[str, Any], secrets: list[str] | None = None) -> tuple[berth.Progress, str]:
    out = io.StringIO()
    progress = berth.Progress(secrets=secrets or [], out=out)
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
    assert progress.exit_code("successful") == berth.EXIT_OK


def test_failure_and_unreachable_set_the_exit_code() -> None:
    failed, _ = feed(event("runner_on_failed", msg="boom"))
    assert failed.exit_code("failed") == berth.EXIT_FAILED
    unreachable, text = feed(
        event("runner_on_failed", msg="x"), event("runner_on_unreachable", host="db1", msg="no route")
    )
    assert unreachable.exit_code("failed") == berth.EXIT_UNREACHABLE
    assert "UNREACHABLE db1 | Install | no route" in text


def test_ignored_failure_counts_as_ok() -> None:
    ignored = {"event": "runner_on_failed", "event_data": {"host": "h", "task": "t", "res": {}, "ignore_errors": True}}
    progress, _ = feed(ignored)
    assert progress.counts["h"] == {"ok": 1}
    assert progress.exit_code("successful") == berth.EXIT_OK


def test_runner_failure_without_task_failure() -> None:
    progress, _ = feed()
    assert progress.exit_code("failed") == berth.EXIT_RUNNER


def test_a_run_where_no_task_ran_is_not_a_success() -> None:
    # ansible-playbook succeeds when the group is empty ("no hosts matched"); a deploy that did
    # nothing must not pass in CI.
    progress, _ = feed()
    assert progress.exit_code("successful") == berth.EXIT_RUNNER


def test_secrets_are_masked_everywhere(tmp_path: Path) -> None:
    progress, text = feed(
        event("runner_on_failed", task="Login with s3cr3t", msg="bad password s3cr3t"), secrets=["s3cr3t"]
    )
    assert "s3cr3t" not in text
    berth.write_artifacts(tmp_path, progress, "deploy.yml", "failed", 3.0)
    for name in ("summary.json", "junit.xml"):
        assert "s3cr3t" not in (tmp_path / name).read_text()


def test_artifacts_describe_the_run(tmp_path: Path) -> None:
    progress, _ = feed(event("runner_on_ok", changed=True), event("runner_on_failed", task="Migrate", msg="db down"))
    berth.write_artifacts(tmp_path, progress, "deploy.yml", "failed", 12.34)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_code"] == berth.EXIT_FAILED
    assert summary["hosts"]["web1"]["changed"] == 1
    assert summary["failures"][0]["task"] == "Migrate"
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert suite.find("testcase/failure").get("message") == "db down"


def test_extravars_parsing(tmp_path: Path) -> None:
    assert berth.parse_extravars(["app_version=1.2", "x=a=b"]) == {"app_version": "1.2", "x": "a=b"}
    (tmp_path / "secrets.yml").write_text("db_password: s3cr3t\nn: 2\n")
    found = berth.parse_extravars([f"@{tmp_path}/secrets.yml", '{"k": [1]}'])
    assert found == {"db_password": "s3cr3t", "n": 2, "k": [1]}
    for bad in (["novalue"], ["@/nonexistent.yml"], ["{not json"]):
        with pytest.raises(SystemExit, match="-e"):
            berth.parse_extravars(bad)


def test_secret_looking_extravars_are_masked() -> None:
    assert berth.SECRET_KEY.search("db_password")
    assert berth.SECRET_KEY.search("registry_token")
    assert not berth.SECRET_KEY.search("app_version")


def plan(*argv: str) -> berth.Run:
    return berth.plan(berth.parser().parse_args(["-i", "inv", *argv]))


def test_each_command_maps_to_its_playbook() -> None:
    assert plan("site") == berth.Run("site.yml")
    assert plan("run", "playbooks/reboot.yml") == berth.Run("playbooks/reboot.yml")
    assert plan("deploy", "shop", "1.4.2") == berth.Run("playbooks/deploy.yml", {"app": "shop", "app_version": "1.4.2"})
    assert plan("rollback", "shop") == berth.Run("playbooks/rollback.yml", {"app": "shop"})
    assert plan("rollback", "shop", "1.4.1").extravars == {"app": "shop", "app_version": "1.4.1"}
    assert plan("status") == berth.Run("playbooks/status.yml", {"status_format": "text"}, quiet=True)
    assert plan("status", "shop", "--json").extravars == {"app": "shop", "status_format": "json"}
    assert plan("audit", "--lines", "5").extravars == {"audit_lines": 5, "audit_format": "text"}
    assert plan("logs", "shop", "--worker", "--since", "10m").extravars == {
        "app": "shop", "logs_tail": 100, "logs_since": "10m", "logs_process": "worker"
    }
    assert plan("logs", "shop", "--worker", "default").extravars["logs_worker"] == "default"
    assert plan("logs", "shop", "--job", "report").extravars == {
        "app": "shop", "logs_tail": 100, "logs_process": "job", "logs_job": "report"
    }
    assert plan("lock", "hold", "shop", "--why", "db upgrade").extravars == {
        "app": "shop", "lock_action": "hold", "lock_why": "db upgrade"
    }
    assert plan("lock", "show", "shop").quiet
    assert plan("maintenance", "on", "shop").extravars == {"app": "shop", "maintenance": "on"}
    assert plan("backup") == berth.Run("playbooks/backup-now.yml")


def test_exec_takes_the_words_after_the_double_dash() -> None:
    args = berth.parser().parse_args(["-i", "inv", "exec", "shop", "--", "python3", "-c", "exit(3)"])
    assert berth.plan(args).extravars == {"app": "shop", "exec_command": ["python3", "-c", "exit(3)"]}
    with pytest.raises(SystemExit, match="after --"):
        plan("exec", "shop")


def test_deploy_archive_is_passed_as_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert plan("deploy", "shop", "v2", "--archive", "shop.tar.gz").extravars["release_image_archive"] == str(
        tmp_path / "shop.tar.gz"
    )


def test_options_go_before_or_after_the_command() -> None:
    assert berth.parser().parse_args(["-i", "a", "status"]).inventory == "a"
    assert berth.parser().parse_args(["status", "-i", "b"]).inventory == "b"


def test_no_inventory_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BERTH_INVENTORY", raising=False)
    with pytest.raises(SystemExit, match="which inventory"):
        berth.main(["status"])


def test_quiet_runs_print_only_failures_and_the_reports() -> None:
    out = io.StringIO()
    progress = berth.Progress(out=out, quiet=True)
    progress(event("runner_on_ok", task="Read"))
    report = {"msg": ["shop: live blue v2", "token s3"]}
    data = {"host": "web1", "task": "Show", "task_action": "ansible.builtin.debug", "res": report}
    progress({"event": "runner_on_ok", "event_data": data})
    progress(event("runner_on_failed", task="Exec", msg="exited with 3", rc=3))
    assert out.getvalue().splitlines() == ["FAILED      web1 | Exec | exited with 3"]
    progress.secrets = ["s3"]
    assert progress.reports() == ["shop: live blue v2\ntoken ********"]
    assert berth.exec_exit_code(progress) == 3


def test_log_timestamps_sort_by_time_whatever_their_form() -> None:
    docker = "web-blue-1  | 2026-11-27T14:03:11.123456789Z GET /"
    journal = "2026-11-27T14:03:11.5+00:00 berth-job-shop-report[1]: done"
    found = [berth.utc_stamp(berth.TIMESTAMP.search(line).group(0)) for line in (docker, journal)]
    assert found == ["2026-11-27T14:03:11.123456789Z", "2026-11-27T14:03:11.500000000Z"]
    assert sorted(found) == found
    assert berth.utc_stamp("2026-11-27T14:03:11Z") < found[0]
