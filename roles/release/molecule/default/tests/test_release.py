"""Releases under steady HTTPS load through nginx, as a user of the site would see them.

Each phase runs playbooks/deploy.yml or rollback.yml from the controller while two clients on the host
send traffic through nginx (tests/load): a keep-alive client that never retries, and wrk. Every answer
counts: 0 failed or non-2xx requests in every phase, including the failing ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra

SCENARIO = Path(__file__).resolve().parent.parent
PROJECT = SCENARIO.parents[3]
sys.path.insert(0, str(PROJECT / "tests" / "load"))

from release_phases import LoadedHost, Phase  # noqa: E402

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
NAME, SECOND = "berth-release-trixie", "berth-release-trixie2"
SITE = "release.test"
DEPLOY, ROLLBACK = "playbooks/deploy.yml", "playbooks/rollback.yml"
STATE, AUDIT, COLOUR = "/var/lib/berth/release.json", "/var/log/berth/release.log", "/var/lib/berth/live-colour"
METRICS = "/var/lib/prometheus/node-exporter/berth_release.prom"
FIGURES: dict[str, dict] = {}

testinfra_hosts = [NAME]


@pytest.fixture(scope="module")
def target() -> testinfra.host.Host:
    return testinfra.get_host(f"ansible://{NAME}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def loaded() -> LoadedHost:
    host = LoadedHost(NAME, SITE, INVENTORY, limit=NAME)
    host.install_client()
    yield host
    (PROJECT / "artifacts").mkdir(exist_ok=True)
    (PROJECT / "artifacts" / "release-load.json").write_text(json.dumps(FIGURES, indent=2))


def state(target: testinfra.host.Host) -> dict:
    return json.loads(target.check_output(f"cat {STATE}"))


def audit(target: testinfra.host.Host) -> list[dict]:
    return [json.loads(line) for line in target.check_output(f"cat {AUDIT}").splitlines()]


def started_at(target: testinfra.host.Host, colour: str) -> str:
    return target.check_output(f"docker inspect -f '{{{{.State.StartedAt}}}}' demo-app-{colour}-1")


def served(target: testinfra.host.Host) -> dict:
    return json.loads(target.check_output(f"curl -ksS https://{SITE}/version"))


def nginx_workers(target: testinfra.host.Host) -> str:
    """nginx's worker PIDs: a reload replaces them all, so equal lists mean no reload happened."""
    return target.check_output("pgrep -P $(cat /run/nginx.pid) | sort")


def no_failures(phase: Phase) -> None:
    """Both clients sent real traffic and saw no failure (keep-alive client: no error and only 2xx)."""
    FIGURES[phase.name] = {
        "rc": phase.rc,
        "command_seconds": round(phase.seconds, 2),
        "keepalive": {k: phase.load[k] for k in ("sent", "ok", "failed", "errors", "versions")},
        "wrk": {k: v for k, v in phase.wrk.items() if k != "text"},
    }
    assert phase.load["sent"] >= 100 and phase.wrk["requests"] >= 100, (phase.load, phase.wrk["text"])
    assert phase.load["failed"] == 0, phase.load["errors"]
    assert phase.wrk_failed == 0, phase.wrk["text"]


def test_first_converge_recorded_the_live_release(target):
    now = state(target)
    assert now["live"]["version"] == "v1" and now["live"]["colour"] == "blue"
    assert now["colours"] == {"blue": "berth-demo-app:v1", "green": "berth-demo-app:v1"}
    assert [e["version"] for e in now["releases"]] == ["v1"]
    assert audit(target)[-1]["action"] == "found"
    assert served(target)["version"] == "v1"


def test_deploy_v2_under_load(target, loaded):
    blue_started, workers = started_at(target, "blue"), nginx_workers(target)

    phase = loaded.phase("deploy-v2", DEPLOY, "-e", "app_version=v2")

    assert phase.rc == 0, phase.output[-3000:]
    no_failures(phase)
    # Every keep-alive connection saw v1 then v2, once, while the playbook ran.
    assert phase.version_changes() == [["v1", "v2"]] * 4
    assert phase.switched_during_the_run()
    FIGURES["deploy-v2"]["switched_after_s"] = round(phase.switched_after("v2"), 2)
    now = state(target)
    assert (now["live"]["version"], now["live"]["colour"], now["live"]["from"]["version"]) == ("v2", "green", "v1")
    assert now["live"]["image_id"].startswith("sha256:")
    assert target.check_output(f"cat {COLOUR}") == "green"
    assert served(target) == {"version": "v2", "colour": "green"}
    # The previous colour stays warm and untouched; nginx was not reloaded.
    assert started_at(target, "blue") == blue_started
    assert nginx_workers(target) == workers
    assert audit(target)[-1]["action"] == "deploy" and audit(target)[-1]["result"] == "ok"


def test_rollback_to_the_warm_colour_under_load(target, loaded):
    blue_started, green_started = started_at(target, "blue"), started_at(target, "green")

    phase = loaded.phase("rollback", ROLLBACK)

    assert phase.rc == 0, phase.output[-3000:]
    no_failures(phase)
    assert phase.version_changes() == [["v2", "v1"]] * 4
    assert phase.switched_during_the_run()
    FIGURES["rollback"]["switched_after_s"] = round(phase.switched_after("v1"), 2)
    # Instant: nothing was started or restarted, only the live colour changed.
    assert (started_at(target, "blue"), started_at(target, "green")) == (blue_started, green_started)
    now = state(target)
    assert (now["live"]["version"], now["live"]["colour"], now["live"]["action"]) == ("v1", "blue", "rollback")
    assert served(target) == {"version": "v1", "colour": "blue"}


def test_broken_build_aborts_before_the_switch(target, loaded):
    before = target.check_output(f"sha256sum {STATE} {COLOUR}")

    phase = loaded.phase("deploy-broken", DEPLOY, "-e", "app_version=broken", "-e", "release_health_timeout=10")

    assert phase.rc != 0
    assert "RELEASE ABORTED before the switch" in phase.output, phase.output[-3000:]
    no_failures(phase)
    assert phase.version_changes() == [["v1"]] * 4, "traffic moved"
    # The idle colour is gone, .env names its former image, state and live colour are untouched.
    assert not target.run("docker inspect demo-app-green-1").succeeded
    assert "APP_GREEN_IMAGE=berth-demo-app:v2" in target.file("/opt/demo/.env").content_string
    assert target.check_output(f"sha256sum {STATE} {COLOUR}") == before
    last = audit(target)[-1]
    assert (last["result"], last["stage"], last["version"]) == ("failed", "before the switch", "broken")
    assert 'berth_release_last_run_success{app="demo"} 0' in target.file(METRICS).content_string


def test_failing_check_after_the_switch_moves_traffic_back(target, loaded):
    # The post-switch check asks the site for a page v2 does not have: a failure that only shows after
    # the switch. Traffic must move back to v1 by itself, without a failed request.
    phase = loaded.phase(
        "deploy-post-switch-failure", DEPLOY, "-e", "app_version=v2", "-e", "release_smoke_path=/missing"
    )

    assert phase.rc != 0
    assert "RELEASE ROLLED BACK automatically" in phase.output, phase.output[-3000:]
    no_failures(phase)
    assert all(seen[-1] == "v1" for seen in phase.version_changes())
    assert target.check_output(f"cat {COLOUR}") == "blue"
    assert state(target)["live"]["version"] == "v1"
    assert served(target)["version"] == "v1"
    last = audit(target)[-1]
    assert (last["result"], last["stage"]) == ("failed", "after the switch, rolled back")


def test_check_mode_shows_the_switch_and_changes_nothing(target, loaded):
    files = f"{STATE} {COLOUR} /opt/demo/.env"
    before = target.check_output(f"sha256sum {files}")

    rc, output = loaded.playbook(DEPLOY, "--check", "--diff", "-e", "app_version=v2")

    assert rc == 0, output[-3000:]
    assert "Deploy: blue (berth-demo-app:v1) -> green (berth-demo-app:v2)" in output
    assert "+green" in output and "-blue" in output
    assert target.check_output(f"sha256sum {files}") == before
    assert served(target)["version"] == "v1"


def test_concurrent_deploys_do_not_interleave(target, loaded):
    deploys_before = len([e for e in audit(target) if e["result"] == "ok"])
    # The first run holds the lock for a while: its pre-switch hook (a migration's place) sleeps 8 s.
    command, env = loaded.playbook_command(
        DEPLOY, "-e", "app_version=v2", "-e", '{"release_pre_switch_command": ["sleep", "8"]}'
    )
    first = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The second run starts while the first holds the lock, waits for it, then finds v2 live.
    for _ in range(100):
        if target.run("test -d /run/lock/berth-release-demo").succeeded:
            break
        time.sleep(0.1)
    rc, output = loaded.playbook(DEPLOY, "-e", "app_version=v2")
    first_output = first.communicate(timeout=300)[0]

    assert first.returncode == 0, first_output[-3000:]
    assert rc == 0, output[-3000:]
    assert "FAILED - RETRYING: [berth-release-trixie]: Take the release lock" in output
    assert "is already live on green: nothing to do" in output
    ok = [e for e in audit(target) if e["result"] == "ok"]
    assert len(ok) == deploys_before + 1 and ok[-1]["version"] == "v2"
    assert not target.run("test -e /run/lock/berth-release-demo").succeeded


def test_a_held_lock_stops_a_deploy_with_a_clear_message(target, loaded):
    target.check_output("mkdir /run/lock/berth-release-demo")
    try:
        before = target.check_output(f"sha256sum {STATE} {COLOUR}")
        rc, output = loaded.playbook(ROLLBACK, "-e", "release_lock_wait=2")
        assert rc != 0
        assert "Another release of demo is running" in output and "rmdir /run/lock/berth-release-demo" in output
        assert target.check_output(f"sha256sum {STATE} {COLOUR}") == before
        # The lock that another run holds is not taken away.
        assert target.run("test -d /run/lock/berth-release-demo").succeeded
    finally:
        target.check_output("rmdir /run/lock/berth-release-demo")


def test_old_release_images_are_pruned(target, loaded):
    # Two more versions (tags of v1's image): with release_keep_releases 3, v1's tag goes, while
    # the live and previous releases' images and every colour's image stay.
    for tag in ("v3", "v4"):
        target.check_output(f"docker tag berth-demo-app:v1 berth-demo-app:{tag}")
    for version in ("v3", "v4"):
        rc, output = loaded.playbook(DEPLOY, "-e", f"app_version={version}")
        assert rc == 0, output[-3000:]
    now = state(target)
    assert [e["version"] for e in now["releases"]] == ["v4", "v3", "v2"]
    tags = target.check_output("docker image ls berth-demo-app --format '{{.Tag}}'").split()
    assert "v1" not in tags and {"v2", "v3", "v4"} <= set(tags)
    # (v3 and v4 are v1's image, so the app says "v1": the colour tells which container answered)
    assert served(target)["colour"] == now["live"]["colour"]
    metrics = target.file(METRICS).content_string
    assert 'berth_release_info{app="demo",version="v4",colour="' + now["live"]["colour"] + '"} 1' in metrics
    assert 'berth_release_last_run_success{app="demo"} 1' in metrics


@pytest.mark.parametrize(
    ("playbook", "extra", "message"),
    [
        (DEPLOY, [], "Say what to deploy"),
        (DEPLOY, ["-e", "app_version=bad/tag"], "Say what to deploy"),
        (DEPLOY, ["-e", "app_version=v2", "-e", "release_keep_releases=1"], "release_keep_releases >= 2"),
        (ROLLBACK, ["-e", "app_version=v1"], "v1 is not a retained release"),
    ],
)
def test_bad_input_fails_before_any_change(target, loaded, playbook, extra, message):
    before = target.check_output(f"sha256sum {STATE} {COLOUR} /opt/demo/.env")
    rc, output = loaded.playbook(playbook, *extra)
    assert rc != 0
    assert message in " ".join(output.split()), output[-3000:]
    assert target.check_output(f"sha256sum {STATE} {COLOUR} /opt/demo/.env") == before


def test_a_rolling_deploy_switches_each_host_only_when_it_is_healthy(target, loaded):
    # v5 is v2 on the first host and the broken build on the second: deploy.yml releases the hosts one
    # after the other (serial 1); the first switches, the second aborts before its switch and keeps
    # serving its version, and the run fails.
    second = testinfra.get_host(f"ansible://{SECOND}?ansible_inventory={INVENTORY}")
    target.check_output("docker tag berth-demo-app:v2 berth-demo-app:v5")
    second.check_output("docker tag berth-demo-app:broken berth-demo-app:v5")
    second_before = state(second)["live"]
    everywhere = LoadedHost(NAME, SITE, INVENTORY)

    rc, output = everywhere.playbook(DEPLOY, "-e", "app_version=v5", "-e", "release_health_timeout=10")

    assert rc != 0
    assert "RELEASE ABORTED before the switch: berth-demo-app:v5 on" in output, output[-3000:]
    # serial: the second host starts only once the first one is done
    assert output.find(f"[{SECOND}]") > output.rfind(f"changed: [{NAME}]") > 0, output[-3000:]
    assert (state(target)["live"]["version"], served(target)["version"]) == ("v5", "v2")
    assert state(second)["live"] == second_before
    assert json.loads(second.check_output(f"curl -ksS https://{SITE}/version"))["version"] == "v1"
    first_ok, second_failed = audit(target)[-1], audit(second)[-1]
    assert (first_ok["result"], second_failed["result"]) == ("ok", "failed")
    assert first_ok["at_epoch"] <= second_failed["at_epoch"]
