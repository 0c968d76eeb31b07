"""Unit tests of the app_jobs role's program (roles/app_jobs/files/berth_job.py) and filters
(roles/app_jobs/filter_plugins/app_jobs.py). No Docker: a stand-in `docker` on PATH runs the job's
command itself, so the lock, the timeout, the records and the metrics are exercised for real.

Its runs in a real one-off container of the live image, from a real timer, are in the role's Molecule
scenario; these pin the rules: the live colour, the compose command, a skip is no failure, a failure
never moves the last success, the metrics have the names the alert rules use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import ROOT


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bj = load("berth_job", ROOT / "roles" / "app_jobs" / "files" / "berth_job.py")
filters = load("app_jobs_filters", ROOT / "roles" / "app_jobs" / "filter_plugins" / "app_jobs.py")
apps = load("berth_apps_filters", ROOT / "plugins" / "filter" / "apps.py")

SYSTEMD_252 = """\
  Original form: Mon..Fri 09:00
Normalized form: Mon..Fri *-*-* 09:00:00
    Next elapse: Fri 2026-11-27 09:00:00 UTC
       From now: 12h left
       Iter. #2: Mon 2026-11-30 09:00:00 UTC
       From now: 3 days left
       Iter. #3: Tue 2026-12-01 09:00:00 UTC
       From now: 4 days left
"""
SYSTEMD_257_BERLIN = """\
  Original form: daily
Normalized form: *-*-* 00:00:00
    Next elapse: Fri 2026-11-27 00:00:00 CET
       (in UTC): Thu 2026-11-26 23:00:00 UTC
       From now: 2h 56min left
   Iteration #2: Sat 2026-11-28 00:00:00 CET
       (in UTC): Fri 2026-11-27 23:00:00 UTC
       From now: 1 day 2h left
"""
NEVER = """\
  Original form: *-02-31 00:00
Normalized form: *-02-31 00:00:00
    Next elapse: never
"""


def config(tmp_path: Path, **changes: object) -> Any:
    data = {
        "app": "shop",
        "job": "summary",
        "unit": "berth-job-shop-summary",
        "project_dir": str(tmp_path / "opt" / "shop"),
        "live_colour_file": str(tmp_path / "live-colour"),
        "services": {"blue": "web-blue", "green": "web-green"},
        "command": ["python3", "/app/app.py", "summary"],
        "schedule": "*:*:00",
        "timeout": 30,
        "lock": str(tmp_path / "lock"),
        "state_file": str(tmp_path / "state" / "berth-job-shop-summary.json"),
        "metrics_file": str(tmp_path / "metrics" / "berth-job-shop-summary.prom"),
        **changes,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return bj.Config.load(path)


def samples(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))


# --- decisions -----------------------------------------------------------------------------------


def test_the_live_colour_is_blue_until_a_release_wrote_one() -> None:
    assert bj.live_colour(None) == "blue"
    assert bj.live_colour("green\n") == "green"
    assert bj.live_colour("blue") == "blue"
    with pytest.raises(bj.JobError, match="not blue or green"):
        bj.live_colour("purple\n")
    with pytest.raises(bj.JobError):
        bj.live_colour("")


def test_the_colour_image_comes_from_the_projects_env() -> None:
    env = "# managed\nBLUE_IMAGE=registry.example.com/shop:1.0\nGREEN_IMAGE=registry.example.com/shop:1.1\n"
    assert bj.colour_image(env, "blue") == "registry.example.com/shop:1.0"
    assert bj.colour_image(env, "green") == "registry.example.com/shop:1.1"
    assert bj.colour_image(None, "blue") == "?"


def test_the_command_runs_in_a_one_off_container_of_the_live_web_service(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert bj.compose_argv(cfg, "green") == [
        "docker", "compose", "--project-directory", str(tmp_path / "opt" / "shop"),
        "run", "--rm", "--no-deps", "-T", "--name", "berth-job-shop-summary",
        "--env", "APP_PROCESS=job-summary",
        "web-green", "python3", "/app/app.py", "summary",
    ]  # fmt: skip


def test_outcome_of_a_command() -> None:
    assert bj.outcome(0, False, 30) == ("ok", "exit 0")
    assert bj.outcome(3, False, 30) == ("failed", "exit 3")
    assert bj.outcome(137, True, 30) == ("failed", "stopped after its timeout of 30 s")


def test_elapses_are_read_in_utc_from_both_systemd_formats() -> None:
    assert bj.parse_elapses(SYSTEMD_252) == [1795770000.0, 1796029200.0, 1796115600.0]
    berlin = bj.parse_elapses(SYSTEMD_257_BERLIN)
    assert berlin == [1795734000.0, 1795820400.0]
    assert bj.parse_elapses(NEVER) == []


def test_the_expected_interval_is_the_longest_gap() -> None:
    # Mon..Fri: the weekend's three days, not a weekday's one.
    assert bj.longest_gap(bj.parse_elapses(SYSTEMD_252)) == 3 * 86400
    assert bj.longest_gap([100.0]) is None
    assert bj.longest_gap([]) is None


def test_a_failure_keeps_the_last_success_and_counts() -> None:
    state = bj.new_state(1000.0)
    bj.record_run(state, {"started": 1100.0, "finished": 1102.5, "seconds": 2.5, "status": "ok"})
    bj.record_run(state, {"started": 1200.0, "finished": 1201.0, "seconds": 1.0, "status": "failed"})
    assert state["last_success"] == 1102.5
    assert state["last_run"]["started"] == 1200.0
    assert (state["runs"], state["failures"], state["skipped"]) == (2, 1, 0)


def test_a_skip_is_neither_a_run_nor_a_failure() -> None:
    state = bj.record_skip(bj.new_state(1000.0), 1500.0)
    assert (state["runs"], state["failures"], state["skipped"]) == (0, 0, 1)
    assert "last_run" not in state


def test_metrics_before_the_first_run_say_only_when_it_was_scheduled() -> None:
    text = bj.render_metrics("shop", "summary", bj.new_state(1700000000.0), 60.0)
    assert samples(text) == {
        'berth_job_scheduled_timestamp_seconds{app="shop",job_name="summary"}': "1700000000.0",
        'berth_job_expected_interval_seconds{app="shop",job_name="summary"}': "60.0",
        'berth_job_runs_total{app="shop",job_name="summary"}': "0",
        'berth_job_failures_total{app="shop",job_name="summary"}': "0",
        'berth_job_skipped_total{app="shop",job_name="summary"}': "0",
    }


def test_metrics_have_the_alerting_names_after_runs() -> None:
    state = bj.new_state(1700000000.0)
    bj.record_run(state, {"started": 1700000060.0, "finished": 1700000062.25, "seconds": 2.25, "status": "ok"})
    bj.record_run(state, {"started": 1700000120.0, "finished": 1700000121.0, "seconds": 1.0, "status": "failed"})
    text = bj.render_metrics("shop", "summary", state, None)
    found = {key.split("{")[0]: value for key, value in samples(text).items()}
    assert found == {
        "berth_job_scheduled_timestamp_seconds": "1700000000.0",
        "berth_job_last_run_timestamp_seconds": "1700000120.0",
        "berth_job_last_run_success": "0",
        "berth_job_last_duration_seconds": "1.0",
        "berth_job_last_success_timestamp_seconds": "1700000062.25",
        "berth_job_runs_total": "2",
        "berth_job_failures_total": "1",
        "berth_job_skipped_total": "0",
    }
    # Every family has its HELP and TYPE (node_exporter merges one metric from several jobs' files).
    for name in found:
        assert f"# HELP {name} " in text
        assert f"# TYPE {name} {'counter' if name.endswith('_total') else 'gauge'}" in text


def test_the_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    with bj.job_lock(str(tmp_path / "lock")) as first, bj.job_lock(str(tmp_path / "lock")) as second:
        assert first is True
        assert second is False
    with bj.job_lock(str(tmp_path / "lock")) as again:
        assert again is True


# --- runs, with a stand-in for docker -------------------------------------------------------------

FAKE_DOCKER = """#!/bin/sh
# Stand-in for docker: `compose ... run ... --name NAME ... SERVICE CMD...` runs CMD here (its pid in
# NAME.pid, the call in calls); `stop --time N NAME` kills it; `rm` does nothing.
dir="$FAKE_DOCKER_DIR"
case "$1" in
  compose)
    shift; name=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --project-directory|--env) shift 2 ;;
        --name) name="$2"; shift 2 ;;
        compose|run|--rm|--no-deps|-T) shift ;;
        *) break ;;
      esac
    done
    echo "$*" >> "$dir/calls"
    echo $$ > "$dir/$name.pid"
    shift
    exec "$@" ;;
  stop) [ -f "$dir/$4.pid" ] && kill "$(cat "$dir/$4.pid")" 2>/dev/null; exit 0 ;;
  *) exit 0 ;;
esac
"""


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_DIR", str(tmp_path))
    monkeypatch.setattr(bj, "expected_interval", lambda cfg: 60.0)
    return tmp_path


def state(cfg: Any) -> dict:
    return json.loads(cfg.state_file.read_text())


def test_a_run_in_the_live_colour_is_recorded(fake_docker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(fake_docker, command=["true"])
    (fake_docker / "live-colour").write_text("green\n")
    assert bj.cmd_run(cfg) == bj.EXIT_OK
    assert (fake_docker / "calls").read_text() == "web-green true\n"
    found = state(cfg)
    assert (found["runs"], found["failures"], found["last_run"]["status"]) == (1, 0, "ok")
    assert found["last_run"]["colour"] == "green"
    metrics = samples(cfg.metrics_file.read_text())
    assert metrics['berth_job_last_run_success{app="shop",job_name="summary"}'] == "1"
    assert metrics['berth_job_expected_interval_seconds{app="shop",job_name="summary"}'] == "60.0"
    log = capsys.readouterr().err
    assert "berth-job shop/summary: started: true in a one-off container of web-green" in log
    assert "berth-job shop/summary: succeeded: exit 0" in log


def test_a_failing_command_is_a_failure(fake_docker: Path) -> None:
    cfg = config(fake_docker, command=["false"])
    assert bj.cmd_run(cfg) == bj.EXIT_FAILED
    assert bj.cmd_run(cfg) == bj.EXIT_FAILED
    found = state(cfg)
    assert (found["runs"], found["failures"], found["last_run"]["result"]) == (2, 2, "exit 1")
    assert "last_success" not in found


def test_a_command_past_its_timeout_is_stopped_and_failed(fake_docker: Path) -> None:
    cfg = config(fake_docker, command=["sleep", "30"], timeout=1)
    begun = time.monotonic()
    assert bj.cmd_run(cfg) == bj.EXIT_FAILED
    assert time.monotonic() - begun < 10
    assert state(cfg)["last_run"]["result"] == "stopped after its timeout of 1 s"


def test_a_bad_live_colour_fails_before_any_container(fake_docker: Path) -> None:
    cfg = config(fake_docker)
    (fake_docker / "live-colour").write_text("purple\n")
    assert bj.cmd_run(cfg) == bj.EXIT_FAILED
    assert not (fake_docker / "calls").exists()
    assert state(cfg)["last_run"]["result"].startswith("not run: the live-colour file says")


def test_a_start_while_a_run_holds_the_lock_is_skipped(fake_docker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(fake_docker, command=["true"])
    with bj.job_lock(cfg.lock):
        assert bj.cmd_run(cfg) == bj.EXIT_LOCKED
    assert not (fake_docker / "calls").exists()
    found = state(cfg)
    assert (found["runs"], found["failures"], found["skipped"]) == (0, 0, 1)
    assert "holds its lock" in capsys.readouterr().err
    metrics = samples(cfg.metrics_file.read_text())
    assert metrics['berth_job_skipped_total{app="shop",job_name="summary"}'] == "1"
    assert metrics['berth_job_failures_total{app="shop",job_name="summary"}'] == "0"


def test_main_refuses_a_name_that_is_no_job_unit(capsys: pytest.CaptureFixture[str]) -> None:
    assert bj.main(["run", "../../etc/passwd"]) == bj.EXIT_FAILED
    assert "is no job unit" in capsys.readouterr().err


# --- the role's filters ----------------------------------------------------------------------------

APPS = [
    {"name": "shop", "image": "shop:1", "jobs": [
        {"name": "summary", "schedule": "*:0/5", "command": ["python3", "/app/app.py", "summary"]},
        {"name": "slow", "schedule": "daily", "command": ["sleep", 20], "timeout": 60},
    ]},
    {"name": "blog", "image": "blog:1"},
]  # fmt: skip


def test_each_job_gets_its_unit_and_the_configuration_of_its_program() -> None:
    found = filters.jobs(apps.apps_plan(APPS), "/metrics", "/etc/berth/jobs", "/var/lib/berth/jobs")
    assert [job["unit"] for job in found] == ["berth-job-shop-summary", "berth-job-shop-slow"]
    slow = found[1]
    assert slow["config_file"] == "/etc/berth/jobs/berth-job-shop-slow.json"
    assert slow["config"] == {
        "app": "shop",
        "job": "slow",
        "unit": "berth-job-shop-slow",
        "project_dir": "/opt/shop",
        "live_colour_file": "/var/lib/berth/apps/shop/live-colour",
        "services": {"blue": "web-blue", "green": "web-green"},
        "command": ["sleep", "20"],
        "schedule": "daily",
        "timeout": 60,
        "lock": "/run/lock/berth-job-shop-slow",
        "state_file": "/var/lib/berth/jobs/berth-job-shop-slow.json",
        "metrics_file": "/metrics/berth-job-shop-slow.prom",
    }
    assert found[0]["timeout"] == 3600


def test_the_jobs_hold_no_environment_value() -> None:
    plan = apps.apps_plan([{**APPS[0], "env": {"SECRET_KEY": "s3cret-value"}}])
    assert "s3cret-value" not in json.dumps(filters.jobs(plan, "/m", "/c", "/s"))


def test_only_job_units_no_job_wants_are_stale() -> None:
    paths = [
        "/etc/systemd/system/berth-job-shop-summary.service",
        "/etc/systemd/system/berth-job-shop-summary.timer",
        "/etc/systemd/system/berth-job-shop-old.timer",
        "/etc/systemd/system/berth-job-shop-old.service",
        "/etc/systemd/system/berth-job-blog-gone.service",
        "/etc/systemd/system/berth-backup.timer",
        "/etc/systemd/system/berth-job-shop-old.service.d",
    ]
    found = filters.stale(paths, ["berth-job-shop-summary"], "/c", "/s", "/m")
    assert [entry["unit"] for entry in found] == ["berth-job-blog-gone", "berth-job-shop-old"]
    assert found[1]["files"] == [
        "/etc/systemd/system/berth-job-shop-old.service",
        "/etc/systemd/system/berth-job-shop-old.timer",
        "/c/berth-job-shop-old.json",
        "/s/berth-job-shop-old.json",
        "/m/berth-job-shop-old.prom",
    ]


def test_two_jobs_with_one_unit_are_found() -> None:
    plan = apps.apps_plan([
        {"name": "a-b", "image": "x:1", "jobs": [{"name": "c", "schedule": "daily", "command": ["true"]}]},
        {"name": "a", "image": "x:1", "jobs": [{"name": "b-c", "schedule": "daily", "command": ["true"]}]},
    ])  # fmt: skip
    units = [job["unit"] for job in filters.jobs(plan, "/m", "/c", "/s")]
    assert filters.duplicates(units) == ["berth-job-a-b-c"]
    assert filters.duplicates(["x", "y"]) == []
