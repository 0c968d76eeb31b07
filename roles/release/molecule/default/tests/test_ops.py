"""The operator commands (roles/ops: playbooks status, audit, logs, exec) on the converged release host.

Each answer is checked against the host itself: the state and live colour files, docker ps, openssl, df,
/proc/meminfo, the audit log, a line the app wrote. The tests leave the host as they found it (pytest runs
this file last, after test_release.py and test_lock.py: conftest.py): the lock and maintenance flag they
make are removed, exec's containers are removed, the one job enqueued has its own id. They never assume
which version is live.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra

PROJECT = Path(__file__).resolve().parents[5]
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
NAME = "berth-release-trixie"
APPS = ("shop", "blog")
AUDIT = "/var/log/berth/release.log"

testinfra_hosts = [NAME]
# Actions that run on the controller, with no round trip to the host.
CONTROLLER_ACTIONS = {"ansible.builtin.assert", "assert", "ansible.builtin.debug", "debug", "set_fact",
                      "ansible.builtin.set_fact", "ansible.builtin.validate_argument_spec", "validate_argument_spec"}


@pytest.fixture(scope="module")
def target() -> testinfra.host.Host:
    return testinfra.get_host(f"ansible://{NAME}?ansible_inventory={INVENTORY}")


def playbook(name: str, *extra: str, as_json: bool = False) -> tuple[int, str, float]:
    """ansible-playbook on this host (rc, output, seconds); as_json: the json callback's output."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=str(PROJECT / "collections"), ANSIBLE_ROLES_PATH=str(PROJECT / "roles"))
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    if as_json:
        env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", INVENTORY, "--limit", NAME,
               f"playbooks/{name}.yml", *extra]
    started = time.monotonic()
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def task_result(output: str, task: str) -> dict:
    """This host's result of the task named `task` in the json callback's output."""
    # (the json document comes first; the profile_tasks callback of ansible.cfg prints its recap after it)
    report, _ = json.JSONDecoder().raw_decode(output, output.index("{"))
    for play in report["plays"]:
        for entry in play["tasks"]:
            if entry["task"]["name"] in (task, f"ops : {task}") and NAME in entry["hosts"]:
                return entry["hosts"][NAME]
    raise AssertionError(f"no task {task!r} in the output")


def status(*extra: str) -> dict:
    rc, out, _ = playbook("status", "-e", "status_format=json", *extra, as_json=True)
    assert rc == 0, out[-3000:]
    shown = task_result(out, "Show the status")["msg"][NAME]
    # The module's own result (what berth's command line reads) is what the play printed.
    module = task_result(out, "berth status")
    assert module["changed"] is False and {k: module[k] for k in ("now", "host", "apps")} == shown
    return shown


def host_json(target: testinfra.host.Host, path: str) -> dict:
    return json.loads(target.check_output(f"cat {path}"))


def running(target: testinfra.host.Host, app: str, service: str) -> int:
    return len(target.check_output(
        f"docker ps -q --filter label=com.docker.compose.project={app} "
        f"--filter label=com.docker.compose.service={service} --filter label=com.docker.compose.oneoff=False"
    ).split())


def test_status_matches_the_host(target: testinfra.host.Host) -> None:
    result = status()
    assert [app["name"] for app in result["apps"]] == list(APPS)
    for app in result["apps"]:
        state = host_json(target, f"/var/lib/berth/apps/{app['name']}/release.json")
        colour = target.file(f"/var/lib/berth/apps/{app['name']}/live-colour").content_string.strip()
        assert app["live"]["colour"] == colour == state["live"]["colour"]
        assert (app["live"]["version"], app["live"]["since"]) == (state["live"]["version"], state["live"]["at"])
        retained = [release["version"] for release in state["releases"]]
        assert app["releases"] == retained
        assert app["previous"] == (None if len(retained) < 2 else {"version": retained[1],
                                                                  "image": state["releases"][1]["image"]})
        assert app["web"] == {"service": f"web-{colour}", "running": running(target, app["name"], f"web-{colour}"),
                              "total": 1}
        assert app["web"]["running"] == 1
        # (free and off after the converge; the next test makes them)
        assert (app["lock"] is None) == (not target.file(f"/run/lock/berth-release-{app['name']}").exists)
        flag = target.file(f"/var/lib/berth/apps/{app['name']}/maintenance")
        assert (app["maintenance"] is None) == (not flag.exists)
    shop = result["apps"][0]
    assert [(w["name"], w["running"], w["total"]) for w in shop["workers"]] == [
        ("default", running(target, "shop", f"worker-default-{shop['live']['colour']}"), 2)]
    assert shop["workers"][0]["running"] == 2 and result["apps"][1]["workers"] == []
    host = result["host"]
    # Certificate expiry: what openssl says on the host, for each of the two sites' certificates.
    assert sorted(cert["name"] for cert in host["certificates"]) == ["blog.test", "shop.test"]
    for cert in host["certificates"]:
        end = target.check_output(f"openssl x509 -noout -enddate -in /etc/letsencrypt/live/{cert['name']}/cert.pem")
        parsed = time.strptime(end.split("=", 1)[1].strip(), "%b %d %H:%M:%S %Y %Z")
        expected = time.strftime("%Y-%m-%dT%H:%M:%SZ", parsed)
        assert (cert["not_after"], cert["domains"], cert["error"]) == (expected, [cert["name"]], "")
        assert cert["days_left"] > 1
    # Disks and memory: as df and /proc/meminfo say (within what changes between two reads).
    for disk in host["disks"]:
        free = int(target.check_output(f"df -B1 --output=avail {disk['path']} | tail -1"))
        assert abs(disk["free"] - free) < 0.02 * disk["total"], (disk, free)
    assert [disk["path"] for disk in host["disks"]] == ["/", "/var/lib/docker"]
    available = int(target.check_output("awk '/^MemAvailable:/ {print $2 * 1024}' /proc/meminfo"))
    assert abs(host["memory"]["available"] - available) < 0.1 * host["memory"]["total"]
    # No backup role on this host: nothing recorded, said so rather than guessed.
    assert host["backups"] == [] and host["restore_tests"] == [] and host["docker"] == ""


@pytest.fixture
def held(target: testinfra.host.Host) -> Iterator[dict]:
    """blog: a hold by hand (holder.json as role release writes it) and its maintenance flag; shop: a lock
    directory without holder.json (a killed run's). Removed afterwards, whatever happened."""
    hold = {"who": "ops-test", "why": "checking status", "kind": "hold", "since": "2026-11-27T14:03:11Z",
            "until": "2999-01-01T00:00:00Z", "version": ""}
    flag = {"who": "ops-test", "why": "status test", "since": "2026-11-27T14:04:00Z"}
    target.check_output(
        "mkdir /run/lock/berth-release-blog /run/lock/berth-release-shop && "
        f"echo {shlex.quote(json.dumps(hold))} > /run/lock/berth-release-blog/holder.json && "
        f"echo {shlex.quote(json.dumps(flag))} > /var/lib/berth/apps/blog/maintenance")
    try:
        yield {"hold": hold, "flag": flag}
    finally:
        target.run("rm -rf /run/lock/berth-release-blog /run/lock/berth-release-shop "
                   "/var/lib/berth/apps/blog/maintenance")


def test_status_shows_the_lock_holder_and_maintenance_in_one_round_trip(held: dict) -> None:
    rc, out, seconds = playbook("status")
    assert rc == 0, out[-3000:]
    # How fast status is, is a figure (printed here; the target, under 5 s for one host, is measured by
    # scripts/bench.py --only status); what keeps it fast is checked: one task reaches the host (the module),
    # the others run on the controller.
    print(f"\nstatus (text) on one host: {seconds:.2f} s\n{out}")
    rc, as_json, _ = playbook("status", as_json=True)
    report, _ = json.JSONDecoder().raw_decode(as_json, as_json.index("{"))
    actions = [entry["hosts"][NAME].get("action", "") for play in report["plays"] for entry in play["tasks"]
               if NAME in entry["hosts"]]
    assert actions.count("berth_status") == 1, actions
    assert set(actions) - {"berth_status"} <= CONTROLLER_ACTIONS, actions
    assert ('"    lock: HOLD by ops-test since 2026-11-27T14:03:11Z, why: checking status, '
            'until 2999-01-01T00:00:00Z",') in out
    assert '"    maintenance: ON (who ops-test, since 2026-11-27T14:04:00Z, why: status test)",' in out
    assert '"    lock: HELD by an unknown holder since ' in out
    shop, blog = status()["apps"]
    assert blog["lock"] == {**held["hold"], "known": True, "expired": False}
    assert blog["maintenance"] == held["flag"] and shop["maintenance"] is None
    assert shop["lock"]["known"] is False and shop["lock"]["since"]


def test_status_of_one_app_and_bad_app() -> None:
    assert [app["name"] for app in status("-e", "app=blog")["apps"]] == ["blog"]
    rc, out, _ = playbook("status", "-e", "app=nope")
    assert rc != 0 and "-e app=NAME must name an app of berth_apps (shop, blog); got 'nope'" in out


def test_audit_is_the_end_of_the_log_by_time(target: testinfra.host.Host) -> None:
    lines = [json.loads(line) for line in target.check_output(f"cat {AUDIT}").splitlines()]
    rc, out, _ = playbook("audit", "-e", "audit_lines=3", "-e", "audit_format=json", as_json=True)
    assert rc == 0, out[-3000:]
    records = task_result(out, "Show the audit records")["msg"]
    assert records == [{**line, "host": NAME} for line in lines[-3:]]
    assert [r["at_epoch"] for r in records] == sorted(r["at_epoch"] for r in records)
    rc, out, _ = playbook("audit", "-e", "app=blog", "-e", "audit_lines=50", as_json=True)
    shown = task_result(out, "Show the audit records")["msg"]
    blog = [line for line in lines if line["app"] == "blog"][-50:]
    assert rc == 0 and len(shown) == len(blog) > 0
    # (releases name a version and colour; the lock's records of test_lock.py name neither: "-")
    assert all(f"  {NAME}  blog  {r['action']}  ok  {r.get('version') or '-'}"
               + (f" ({r['colour']})" if r.get("colour") else "") in text
               for r, text in zip(blog, shown, strict=True))


def logs(*extra: str) -> tuple[int, str]:
    rc, out, _ = playbook("logs", "-e", "app=shop", *extra)
    return rc, out


def test_logs_show_what_the_app_wrote(target: testinfra.host.Host) -> None:
    marker = f"ops-{uuid.uuid4().hex[:12]}"
    # The web process logs each request (but health checks) on stderr; the worker prints each job it did.
    target.check_output(f"curl -ksS -o /dev/null https://shop.test/version?{marker}")
    target.check_output(f"curl -ksS -o /dev/null 'https://shop.test/enqueue?id={marker}'")
    after = target.check_output("date -u +%Y-%m-%dT%H:%M:%S.%NZ").strip()
    rc, out = logs("-e", "logs_since=5m", "-e", "logs_tail=200")
    assert rc == 0 and f"GET /version?{marker} HTTP/1.1" in out, out[-3000:]
    colour = target.file("/var/lib/berth/apps/shop/live-colour").content_string.strip()
    assert f"web-{colour}-1  | " in out and "\\u001b" not in out
    for _ in range(10):  # the worker takes the job within a second or so
        rc, out = logs("-e", "logs_worker=default", "-e", "logs_since=5m")
        if f"job {marker} done in" in out:
            break
        time.sleep(1)
    assert rc == 0 and f"job {marker} done in" in out and f"worker-default-{colour}-" in out, out[-3000:]
    # logs_since as a timestamp (how a follower polls): nothing before it.
    rc, out = logs("-e", f"logs_since={after}")
    assert rc == 0 and marker not in out


@pytest.mark.parametrize(("extra", "message"), [
    (("-e", "logs_since=yesterday"), "logs_since must be a duration (10m, 2h, 30s, 1d) or an ISO-8601 UTC time"),
    (("-e", "logs_worker=nope"), "logs_worker must name a worker of shop (default); got 'nope'"),
    (("-e", "logs_process=job"), "the app shop has no jobs"),
])
def test_bad_logs_input_is_refused(extra: tuple[str, ...], message: str) -> None:
    rc, out = logs(*extra)
    assert rc != 0 and message in out, out[-2000:]


def test_logs_need_the_app() -> None:
    rc, out, _ = playbook("logs")
    assert rc != 0 and "berth_apps has 2 apps (shop, blog): say which one to show the logs of with -e app=shop" in out


def oneoffs(target: testinfra.host.Host) -> str:
    return target.check_output("docker ps -aq --filter label=com.docker.compose.project=shop "
                               "--filter label=com.docker.compose.oneoff=True")


def test_exec_passes_the_exit_code_and_sees_the_environment(target: testinfra.host.Host) -> None:
    before = oneoffs(target)
    code = "import os, sys; print('colour', os.environ['APP_COLOUR'], 'db', 'DATABASE_URL' in os.environ); sys.exit(3)"
    rc, out, _ = playbook("exec", "-e", "app=shop", "-e", json.dumps({"exec_command": ["python3", "-c", code]}),
                          as_json=True)
    assert rc != 0
    result = task_result(out, "berth exec")
    colour = target.file("/var/lib/berth/apps/shop/live-colour").content_string.strip()
    assert result["rc"] == 3 and f"colour {colour} db True" in result["stdout"]
    assert task_result(out, "Pass the command's exit code on")["msg"].endswith("exited with 3")
    assert oneoffs(target) == before  # the container is gone
    # A string is split as a shell would; exit 0 is a success.
    rc, out, _ = playbook("exec", "-e", "app=shop", "-e", "exec_command='python3 -c \"print(6 * 7)\"'")
    assert rc == 0 and '"42"' in out, out[-3000:]


def test_exec_runs_nothing_in_check_mode(target: testinfra.host.Host) -> None:
    before = target.check_output("docker ps -aq | wc -l")
    rc, out, _ = playbook("exec", "--check", "-e", "app=shop", "-e", "exec_command=false")
    assert rc == 0 and "Check mode: exec would run false in a new container of shop's live image" in out, out[-2000:]
    assert target.check_output("docker ps -aq | wc -l") == before
    rc, out, _ = playbook("exec", "-e", "app=shop", "-e", json.dumps({"exec_command": "echo 'unbalanced"}))
    assert rc != 0 and "exec_command must be the command to run" in out
