"""The filters of role ops (roles/ops/filter_plugins/ops.py): choosing the app, merging the audit logs by time,
logs_since, the logs and exec commands. The commands on a real host: the release scenario's test_ops.py."""

from __future__ import annotations

import json

import pytest
from conftest import load_module

OPS = load_module("ops_filters", "roles/ops/filter_plugins/ops.py")
PLAN = load_module("berth_apps_filters", "plugins/filter/apps.py").apps_plan
APPS = PLAN([
    {"name": "shop", "image": "shop:v1", "env": {"SECRET_KEY": "do-not-show"},
     "workers": [{"name": "default", "command": ["w"]}, {"name": "mail", "command": ["m"]}],
     "jobs": [{"name": "summary", "command": ["s"], "schedule": "hourly"}]},
    {"name": "blog", "image": "blog:v1"},
])
SHOP, BLOG = APPS


def test_the_app_is_named_or_the_only_one() -> None:
    assert OPS.app_problem(APPS, "shop") == ""
    assert OPS.app_problem(APPS, "", "show", required=False) == ""  # status: every app
    assert OPS.app_problem(APPS[:1], "") == ""
    assert OPS.app_problem(APPS, "nope") == (
        "-e app=NAME must name an app of berth_apps (shop, blog); got 'nope'")
    assert OPS.app_problem(APPS, "", "show the logs of") == (
        "berth_apps has 2 apps (shop, blog): say which one to show the logs of with -e app=shop")
    assert "berth_apps is empty" in OPS.app_problem([], "")
    assert "none: berth_apps is empty" in OPS.app_problem([], "shop")


def test_status_apps_carry_no_environment() -> None:
    assert [app["name"] for app in OPS.status_apps(APPS)] == ["shop", "blog"]
    assert [app["name"] for app in OPS.status_apps(APPS, "blog")] == ["blog"]
    assert "do-not-show" not in json.dumps(OPS.status_apps(APPS))


def line(app: str, at: str, epoch: int | None = None, **more: object) -> str:
    record = {"app": app, "at": at, "action": "deploy", "result": "ok", "version": "v1", **more}
    if epoch is not None:
        record["at_epoch"] = epoch
    return json.dumps(record)


def test_audit_logs_merge_by_time_across_hosts() -> None:
    logs = {
        "web-1": "\n".join([line("shop", "2026-11-27T10:00:00Z", 1795773600), "garbage",
                            line("shop", "2026-11-27T12:00:00Z", 1795780800, version="v3")]),
        # no at_epoch (a lock record, say): its ISO time is used
        "web-2": "\n".join([line("shop", "2026-11-27T11:00:00Z", version="v2"), line("blog", "2026-11-27T13:00:00Z")]),
        "web-3": "",
    }
    merged = OPS.audit_merge(logs, 20)
    assert [(r["host"], r["at"]) for r in merged] == [
        ("web-1", "2026-11-27T10:00:00Z"), ("web-2", "2026-11-27T11:00:00Z"),
        ("web-1", "2026-11-27T12:00:00Z"), ("web-2", "2026-11-27T13:00:00Z")]
    assert [r["at"] for r in OPS.audit_merge(logs, 2)] == ["2026-11-27T12:00:00Z", "2026-11-27T13:00:00Z"]
    assert [r["app"] for r in OPS.audit_merge(logs, "20", "blog")] == ["blog"]
    assert OPS.audit_merge({}, 5) == [] and OPS.audit_merge(logs, 0) == []


def test_audit_lines_are_readable() -> None:
    failed = json.loads(line("shop", "2026-11-27T12:00:00Z", version="v3", colour="green", result="failed",
                             stage="migration", live={"version": "v2", "colour": "blue"},
                             migration={"command": ["m"], "rc": 1, "output": "boom"}))
    text = OPS.audit_line({**failed, "host": "web-1"})
    assert text == ("2026-11-27T12:00:00Z  web-1  shop  deploy  FAILED  v3 (green) from v2 (blue)  stage: migration"
                    "  migration rc 1")
    ok = json.loads(line("shop", "2026-11-27T12:00:00Z", version="v2", colour="green", who="ann",
                         **{"from": {"version": "v1", "colour": "blue"}}))
    assert OPS.audit_line({**ok, "host": "web-1"}) == (
        "2026-11-27T12:00:00Z  web-1  shop  deploy  ok  v2 (green) from v1 (blue)  by ann")
    assert OPS.audit_lines([]) == ["no release recorded in the audit logs"]


@pytest.mark.parametrize(("value", "docker", "journal"), [
    ("", "", ""),
    ("10m", "600s", "-600s"),
    ("30s", "30s", "-30s"),
    ("2h", "7200s", "-7200s"),
    ("1d", "86400s", "-86400s"),
    ("2026-11-27T14:03:11Z", "2026-11-27T14:03:11Z", "2026-11-27 14:03:11 UTC"),
    ("2026-11-27T14:03:11.123456789Z", "2026-11-27T14:03:11.123456789Z", "2026-11-27 14:03:11.123456 UTC"),
])
def test_logs_since(value: str, docker: str, journal: str) -> None:
    assert OPS.since(value) == {"docker": docker, "journal": journal}


@pytest.mark.parametrize("value", ["10", "10 m", "-10m", "10min", "yesterday", "2026-11-27 14:03:11",
                                   "2026-11-27T14:03:11+01:00", "2026-11-27T14:03Z", "1w"])
def test_bad_logs_since(value: str) -> None:
    assert OPS.since(value) == {}


def test_logs_commands() -> None:
    assert OPS.logs_argv(SHOP, "web", "green", "", "10m", 50) == [
        "docker", "compose", "--project-directory", "/opt/shop", "-p", "shop", "logs", "--no-color", "--timestamps",
        "--tail=50", "--since=600s", "web-green"]
    assert OPS.logs_argv(SHOP, "worker", "blue", "", "", "100")[-2:] == ["worker-default-blue", "worker-mail-blue"]
    assert OPS.logs_argv(SHOP, "worker", "blue", "mail")[-1] == "worker-mail-blue"
    assert OPS.logs_argv(SHOP, "job", "", "", "2026-11-27T14:03:11Z", 10) == [
        "journalctl", "--no-pager", "-o", "short-iso-precise", "-n", "10", "--unit=berth-job-shop-summary.service",
        "--since=2026-11-27 14:03:11 UTC"]


def test_logs_problems_list_the_workers_and_jobs() -> None:
    assert OPS.logs_problem(SHOP, "web") == "" and OPS.logs_problem(SHOP, "worker", "mail") == ""
    assert OPS.logs_problem(SHOP, "worker", "nope") == (
        "logs_worker must name a worker of shop (default, mail); got 'nope'")
    assert OPS.logs_problem(SHOP, "job", job="nope") == "logs_job must name a job of shop (summary); got 'nope'"
    assert OPS.logs_problem(BLOG, "worker") == "the app blog has no workers"
    assert OPS.logs_problem(BLOG, "job") == "the app blog has no jobs"


def test_exec_commands() -> None:
    assert OPS.exec_argv("python3 manage.py shell -c 'print(1 + 1)'") == [
        "python3", "manage.py", "shell", "-c", "print(1 + 1)"]
    assert OPS.exec_argv(["sh", "-c", "exit 3"]) == ["sh", "-c", "exit 3"]
    assert OPS.exec_argv("echo $HOME; rm -rf /") == ["echo", "$HOME;", "rm", "-rf", "/"]  # no shell runs it
    assert OPS.exec_argv("") == [] and OPS.exec_argv(None) == [] and OPS.exec_argv("echo 'unbalanced") == []
    assert OPS.shell_join(["sh", "-c", "exit 3"]) == "sh -c 'exit 3'"


def test_output_lines_lose_terminal_sequences() -> None:
    assert OPS.plain_lines(["\x1b[2Kweb-blue-1  | hello", "\x1b[1;31mred\x1b[0m"]) == ["web-blue-1  | hello", "red"]


def test_status_results_keep_what_the_module_returned() -> None:
    registered = {"web-1": {"changed": False, "now": 1, "host": {}, "apps": [], "invocation": {"module_args": {}}},
                  "web-2": {"failed": True, "msg": "no route"}}
    assert OPS.status_results(registered) == {"web-1": {"now": 1, "host": {}, "apps": []},
                                              "web-2": {"msg": "no route", "failed": True}}


def test_a_lock_record_names_the_holder_and_why_it_ended() -> None:
    record = {"app": "shop", "action": "lock_released", "result": "ok", "who": "alice", "at": "2026-11-27T10:00:00Z",
              "host": "app1", "holder": {"who": "bob", "why": "db work", "kind": "hold"}, "reason": "expired"}
    assert OPS.audit_line(record) == (
        "2026-11-27T10:00:00Z  app1  shop  lock_released  ok  -  by alice  lock of bob (db work)  expired"
    )
