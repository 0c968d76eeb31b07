"""What a user of a converged host observes after docker, app_stack and app_jobs (see molecule.yml):
the jobs of the app shop run from their timers in one-off containers of the live colour, never two at
once, and their results are in the journal and in node_exporter's metrics. (The app blog, without jobs,
is there too: tests/test_app_stack.py.)"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[5] / "molecule" / "shared"))
from prometheus_api import wait_for  # the scenarios' shared polling helper

testinfra_hosts = ["all"]

SCENARIO = Path(__file__).resolve().parent.parent
PROGRAM = "/usr/local/sbin/berth-job"
METRICS_DIR = "/var/lib/prometheus/node-exporter"
JOBS = ["summary", "slow", "broken", "stuck", "colour"]
LIVE_COLOUR = "/var/lib/berth/apps/shop/live-colour"
SHOP_COMPOSE = "docker compose --project-directory /opt/shop"


def unit(job):
    return f"berth-job-shop-{job}"


def metrics(host, job):
    """The job's samples by metric name (its one label set is app=shop, job_name=<job>)."""
    text = host.file(f"{METRICS_DIR}/{unit(job)}.prom").content_string
    found = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        name, _, labels = key.partition("{")
        assert labels == f'app="shop",job_name="{job}"}}', line
        found[name] = float(value)
    return found


def state(host, job):
    return json.loads(host.file(f"/var/lib/berth/jobs/{unit(job)}.json").content_string)


def journal(host, job, since):
    return host.check_output(f"journalctl --no-pager -o cat -u {unit(job)}.service --since @{int(since)}")


def properties(host, name, *names: str):
    out = host.check_output(f"systemctl show {name} --property={','.join(names)}")
    return dict(line.split("=", 1) for line in out.splitlines())


def apply_role(extra=None):
    """The role alone against the converged host (apply.yml), with extra variables."""
    argv = [shutil.which("ansible-playbook"), "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "apply.yml")]
    if extra is not None:
        argv += ["-e", json.dumps(extra)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return run.stdout


def test_every_job_has_a_persistent_timer_on_its_schedule(host):
    for job, calendar in (("summary", "*-*-* *:*:00"), ("slow", "2099-01-01 00:00:00")):
        found = properties(host, f"{unit(job)}.timer", "ActiveState", "UnitFileState", "Persistent", "TimersCalendar")
        assert found["ActiveState"] == "active", job
        assert found["UnitFileState"] == "enabled", job
        assert found["Persistent"] == "yes", job
        assert f"OnCalendar={calendar}" in found["TimersCalendar"], found
    for job in JOBS:
        service = properties(host, f"{unit(job)}.service", "Type", "ExecStart", "SuccessExitStatus")
        assert service["Type"] == "oneshot"
        assert f"{PROGRAM} run {unit(job)}" in service["ExecStart"]
        assert "75" in service["SuccessExitStatus"]


def test_summary_runs_on_time_from_its_timer_and_writes_its_row(host):
    # The timer runs it every minute since the converge: wait for a run that began after this test did
    # (its metrics are written when it has ended).
    begun = time.time()
    wait_for(lambda: metrics(host, "summary").get("berth_job_last_run_timestamp_seconds", 0) > begun,
             150, "a run of summary from its timer", interval=2)
    found = metrics(host, "summary")
    assert found["berth_job_last_run_success"] == 1
    assert 0 < found["berth_job_last_duration_seconds"] < 60
    assert found["berth_job_expected_interval_seconds"] == 60
    assert found["berth_job_failures_total"] == 0
    # On time: within a few seconds of the minute (AccuracySec=1s), not systemd's default minute.
    assert found["berth_job_last_run_timestamp_seconds"] % 60 < 10, found
    # Started by the timer (its trigger), logged in the unit's journal with the result and the duration.
    assert properties(host, f"{unit('summary')}.timer", "LastTriggerUSec")["LastTriggerUSec"] not in ("", "n/a")
    log = journal(host, "summary", begun)
    assert "berth-job shop/summary: started: python3 /app/app.py summary in a one-off container of web-blue" in log
    assert "berth-job shop/summary: succeeded: exit 0" in log
    assert '"version": "v1"' in log
    # The job's own work: rows in the app's PostgreSQL (one per run).
    rows = host.check_output(
        "docker compose --project-directory /opt/shop exec -T postgres "
        "sh -c 'psql -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\" -tAc \"SELECT count(*) FROM summaries\"'")
    assert int(rows) >= 1
    # The one-off container is gone; the app's services are untouched.
    assert host.run(f"docker container inspect {unit('summary')}").rc != 0


def test_a_second_start_while_a_run_holds_the_lock_is_refused_and_counted_as_skipped(host):
    before = metrics(host, "slow")
    begun = time.time()
    host.check_output(f"systemctl start --no-block {unit('slow')}.service")
    wait_for(lambda: host.run(f"docker inspect -f '{{{{.State.Running}}}}' {unit('slow')}").stdout.strip() == "true",
             60, "slow's container")
    second = host.run(f"{PROGRAM} run {unit('slow')}")
    assert second.rc == 75, second.stderr
    assert "not started: another run of this job holds its lock /run/lock/berth-job-shop-slow" in second.stderr
    skipped = metrics(host, "slow")
    assert skipped["berth_job_skipped_total"] == before["berth_job_skipped_total"] + 1
    assert skipped["berth_job_failures_total"] == before["berth_job_failures_total"]
    # The run itself goes on to its end and succeeds.
    wait_for(lambda: properties(host, f"{unit('slow')}.service", "ActiveState")["ActiveState"] == "inactive",
             90, "slow's end", interval=2)
    after = metrics(host, "slow")
    assert after["berth_job_last_run_success"] == 1
    assert after["berth_job_runs_total"] == before.get("berth_job_runs_total", 0) + 1
    assert after["berth_job_failures_total"] == before["berth_job_failures_total"]
    assert after["berth_job_skipped_total"] == before["berth_job_skipped_total"] + 1
    assert 20 <= after["berth_job_last_duration_seconds"] < 55
    assert "succeeded: exit 0" in journal(host, "slow", begun)


def test_a_failing_job_fails_its_unit_and_counts_a_failure(host):
    before = metrics(host, "broken")
    begun = time.time()
    assert host.run(f"systemctl start {unit('broken')}.service").rc != 0
    after = metrics(host, "broken")
    assert after["berth_job_last_run_success"] == 0
    assert after["berth_job_failures_total"] == before["berth_job_failures_total"] + 1
    assert "berth_job_last_success_timestamp_seconds" not in after
    assert "berth-job shop/broken: FAILED: exit 1" in journal(host, "broken", begun)
    assert properties(host, f"{unit('broken')}.service", "Result")["Result"] == "exit-code"
    host.check_output(f"systemctl reset-failed {unit('broken')}.service")


def test_a_job_past_its_timeout_is_stopped_and_counts_a_failure(host):
    before = metrics(host, "stuck")
    begun = time.time()
    assert host.run(f"systemctl start {unit('stuck')}.service").rc != 0
    took = time.time() - begun
    assert 10 <= took < 45, took
    after = metrics(host, "stuck")
    assert after["berth_job_last_run_success"] == 0
    assert after["berth_job_failures_total"] == before["berth_job_failures_total"] + 1
    assert "FAILED: stopped after its timeout of 10 s" in journal(host, "stuck", begun)
    # Its container was stopped and removed.
    assert host.run(f"docker container inspect {unit('stuck')}").rc != 0
    host.check_output(f"systemctl reset-failed {unit('stuck')}.service")


def running_services(host):
    return host.run(f"{SHOP_COMPOSE} ps --status running --services").stdout.split()


@pytest.fixture
def live_colour_green(host):
    """green live, and its web stopped as on a host that does not keep the idle colour warm (the scenario
    does, app_stack_idle_colour_running, for the checks of tests/test_app_stack.py): started again after."""
    assert not host.file(LIVE_COLOUR).exists, "nginx is not in this scenario: no live-colour file yet"
    host.check_output(f"{SHOP_COMPOSE} stop web-green")
    assert "web-green" not in running_services(host)
    host.check_output(f"mkdir -p {Path(LIVE_COLOUR).parent} && echo green > {LIVE_COLOUR}")
    yield
    host.check_output(f"rm -f {LIVE_COLOUR}")
    host.check_output(f"{SHOP_COMPOSE} start web-green")
    wait_for(lambda: [json.loads(line)["Health"] for line in host.check_output(
        f"{SHOP_COMPOSE} ps --format json web-green").splitlines()] == ["healthy"],
             90, "shop's web-green healthy again", interval=2)


def test_a_job_runs_in_the_blue_colour_before_any_release(host):
    begun = time.time()
    host.check_output(f"systemctl start {unit('colour')}.service")
    log = journal(host, "colour", begun).splitlines()
    assert "blue" in log and "job-colour" in log
    assert state(host, "colour")["last_run"]["service"] == "web-blue"


def test_a_job_runs_in_the_live_colour(host, live_colour_green):
    begun = time.time()
    host.check_output(f"systemctl start {unit('colour')}.service")
    log = journal(host, "colour", begun).splitlines()
    assert "green" in log and "job-colour" in log
    last = state(host, "colour")["last_run"]
    assert (last["colour"], last["service"], last["image"]) == ("green", "web-green", "berth-demo-app:v1")
    # Only the one-off container ran: the idle colour's web was not started.
    assert running_services(host).count("web-green") == 0


def test_a_removed_job_loses_its_timer_and_files(host):
    extra = {"__extra_jobs": [{"name": "extra", "schedule": "hourly", "command": ["true"]}]}
    files = [f"/etc/systemd/system/{unit('extra')}.service", f"/etc/systemd/system/{unit('extra')}.timer",
             f"/etc/berth/jobs/{unit('extra')}.json", f"/var/lib/berth/jobs/{unit('extra')}.json",
             f"{METRICS_DIR}/{unit('extra')}.prom"]
    apply_role(extra)
    assert all(host.file(path).exists for path in files)
    assert properties(host, f"{unit('extra')}.timer", "ActiveState")["ActiveState"] == "active"
    # Its metrics exist before its first run: when it was scheduled and the interval of its schedule.
    found = metrics(host, "extra")
    assert found["berth_job_expected_interval_seconds"] == 3600
    assert found["berth_job_scheduled_timestamp_seconds"] > 0
    assert "berth_job_last_run_timestamp_seconds" not in found
    apply_role()
    assert [path for path in files if host.file(path).exists] == []
    assert properties(host, f"{unit('extra')}.timer", "LoadState")["LoadState"] == "not-found"
    # The other jobs keep theirs.
    for job in JOBS:
        assert properties(host, f"{unit(job)}.timer", "ActiveState")["ActiveState"] == "active", job
