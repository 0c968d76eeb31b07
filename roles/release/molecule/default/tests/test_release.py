"""Releases of one app of two on a host, under steady HTTPS load through nginx, as users of both sites see them.

Each phase runs playbooks/deploy.yml or rollback.yml (-e app=shop) from the controller while clients on
the host send traffic through nginx to both apps (tests/load): a keep-alive client that never retries
and wrk on shop.test and on blog.test, and a client that enqueues a job on shop.test ten times a second,
each with its own id. Every answer counts: 0 failed or non-2xx requests on either site in every phase,
including the failing ones; every job enqueued is processed exactly once; blog's containers are never
touched. The figures go to artifacts/release-load.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import testinfra

SCENARIO = Path(__file__).resolve().parent.parent
PROJECT = SCENARIO.parents[3]
sys.path.insert(0, str(PROJECT / "tests" / "load"))

from release_phases import LoadedHost, Phase  # noqa: E402

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
NAME = "berth-release-trixie"
SHOP, BLOG = "shop.test", "blog.test"
DEPLOY, ROLLBACK = "playbooks/deploy.yml", "playbooks/rollback.yml"
APP = ("-e", "app=shop")
AUDIT = "/var/log/berth/release.log"
METRICS = "/var/lib/prometheus/node-exporter/berth_release_{}.prom"
ENQUEUE_RATE = 10.0
# A job that takes this long, picked up by an old worker just before the switch: long enough to be in
# progress when the old workers get SIGTERM (after the new ones started), shorter than their grace
# period (stop_grace_period, molecule.yml: 45 s).
SLOW_JOB_SECONDS = 25
FIGURES: dict[str, dict] = {}

testinfra_hosts = [NAME]


def state_file(app: str) -> str:
    return f"/var/lib/berth/apps/{app}/release.json"


def colour_file(app: str) -> str:
    return f"/var/lib/berth/apps/{app}/live-colour"


# What a release of shop must leave alone when it fails, and what any release of shop leaves of blog.
SHOP_FILES = f"{state_file('shop')} {colour_file('shop')} /opt/shop/.env"
BLOG_FILES = f"{state_file('blog')} {colour_file('blog')} /opt/blog/.env {METRICS.format('blog')}"


@pytest.fixture(scope="module")
def target() -> testinfra.host.Host:
    return testinfra.get_host(f"ansible://{NAME}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def loaded() -> LoadedHost:
    # wrk: 2 connections on each site (two floods on a 2-core machine already slow the releases).
    host = LoadedHost(NAME, SHOP, INVENTORY, limit=NAME, also=(BLOG,), wrk_connections=2, enqueue_rate=ENQUEUE_RATE)
    host.install_client()
    yield host
    (PROJECT / "artifacts").mkdir(exist_ok=True)
    (PROJECT / "artifacts" / "release-load.json").write_text(json.dumps(FIGURES, indent=2))
    print("\nrelease figures:\n" + json.dumps(FIGURES, indent=2))


def state(target: testinfra.host.Host, app: str = "shop") -> dict:
    return json.loads(target.check_output(f"cat {state_file(app)}"))


def audit(target: testinfra.host.Host, app: str = "shop") -> list[dict]:
    lines = [json.loads(line) for line in target.check_output(f"cat {AUDIT}").splitlines()]
    return [line for line in lines if line["app"] == app]


def served(target: testinfra.host.Host, site: str = SHOP) -> dict:
    return json.loads(target.check_output(f"curl -ksS https://{site}/version"))


def containers(target: testinfra.host.Host, project: str, running_only: bool = False) -> dict[str, str]:
    """Container name -> "ID StartedAt" of a compose project (one-off containers left out)."""
    ids = target.check_output(
        f"docker ps {'' if running_only else '--all'} -q --filter label=com.docker.compose.project={project} "
        f"--filter label=com.docker.compose.oneoff=False"
    ).split()
    if not ids:
        return {}
    lines = target.check_output(
        "docker inspect -f '{{.Name}} {{.Id}} {{.State.StartedAt}}' " + " ".join(ids)
    ).splitlines()
    return {line.split()[0].lstrip("/"): " ".join(line.split()[1:]) for line in lines}


def workers(target: testinfra.host.Host, colour: str) -> dict[str, str]:
    """shop's running workers of a colour: name -> "ID StartedAt"."""
    return {k: v for k, v in containers(target, "shop", running_only=True).items() if f"worker-default-{colour}" in k}


def nginx_workers(target: testinfra.host.Host) -> str:
    """nginx's worker PIDs: a reload replaces them all, so equal lists mean no reload happened."""
    return target.check_output("pgrep -P $(cat /run/nginx.pid) | sort")


def jobs(target: testinfra.host.Host) -> dict:
    return json.loads(target.check_output(f"curl -ksS https://{SHOP}/jobs"))


def sql(target: testinfra.host.Host, query: str) -> str:
    return target.check_output(f'docker exec shop-postgres-1 psql -U shop -d shop -Atc "{query}"')


def settled_jobs(target: testinfra.host.Host, timeout: float = 60) -> dict:
    """/jobs once the queue is empty and nothing is being processed (two equal answers 2 s apart)."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        now = jobs(target)
        if now["queued"] == 0 and now == last:
            return now
        last = now
        time.sleep(2)
    raise AssertionError(f"the job queue did not settle: {last}")


def no_failures(phase: Phase) -> None:
    """Every client on both sites sent real traffic and saw no failure (keep-alive: no error, only 2xx)."""
    FIGURES[phase.name] = {
        "rc": phase.rc,
        "command_seconds": round(phase.seconds, 2),
        **{
            site: {
                "keepalive": {k: phase.loads[site][k] for k in ("sent", "ok", "failed", "errors", "versions")},
                "wrk": {k: v for k, v in phase.wrks[site].items() if k != "text"},
            }
            for site in (SHOP, BLOG)
        },
        "enqueue": {k: phase.jobs[k] for k in ("sent", "ok", "failed", "errors")},
    }
    for site in (SHOP, BLOG):
        load, wrk = phase.loads[site], phase.wrks[site]
        assert load["sent"] >= 100 and wrk["requests"] >= 100, (site, load, wrk["text"])
        assert load["failed"] == 0, (site, load["errors"])
        assert phase.site_failed(site) == 0, (site, wrk["text"])
    assert phase.jobs["sent"] >= 10 and phase.jobs["failed"] == 0, phase.jobs["errors"]


def jobs_exactly_once(target: testinfra.host.Host, phase: Phase, before: dict, extra: int = 0) -> None:
    """Every job enqueued during the phase (and `extra` more) was processed, each exactly once."""
    after = settled_jobs(target)
    processed = after["processed"] - before["processed"]
    FIGURES[phase.name]["jobs"] = {"enqueued": phase.jobs["ok"] + extra, "processed": processed, "totals": after}
    assert after["processed"] == after["distinct"], after
    assert processed == phase.jobs["ok"] + extra, (processed, phase.jobs)
    prefix = f"load-{phase.name}-"
    done = int(sql(target, f"SELECT count(DISTINCT id) FROM jobs WHERE id LIKE '{prefix}%'"))
    assert done == phase.jobs["ok"], (done, phase.jobs)


def enqueue_slow_job(loaded: LoadedHost, job: str, when: Callable[[], bool]) -> Callable[[], None]:
    """A `during` callback: once when() holds, enqueue a job of SLOW_JOB_SECONDS on shop (through nginx).
    (docker exec, not testinfra: a check every 0.1 s must be quick.)"""

    def run() -> None:
        deadline = time.time() + 120
        while not when() and time.time() < deadline:
            time.sleep(0.1)
        FIGURES.setdefault("slow_jobs", {})[job] = {"enqueued_at": time.time()}
        loaded.docker("curl", "-ksS", f"https://{SHOP}/enqueue?id={job}&seconds={SLOW_JOB_SECONDS}")

    return run


def epoch(docker_time: str) -> float:
    """docker inspect's time (RFC 3339, nanoseconds, UTC) as Unix time."""
    return datetime.fromisoformat(docker_time[:26].rstrip("Z") + "+00:00").timestamp()


def slow_job_was_handed_over(target: testinfra.host.Host, phase: Phase, job: str, old: str, new: str) -> None:
    """The slow job ran on an old worker, was still in progress when traffic had switched and when the
    new colour's workers had started (the old ones are stopped right after: SIGTERM came mid-job), and
    that old worker finished it and only then stopped, cleanly (exit 0, not killed at the end of its
    grace period)."""
    row = sql(target, f"SELECT version, worker, took, extract(epoch FROM at) FROM jobs WHERE id = '{job}'")
    version, worker, took, finished = row.split("|")
    switched = phase.started + phase.switched_after(new)
    exit_code, stopped = target.check_output(
        f"docker inspect -f '{{{{.State.ExitCode}}}} {{{{.State.FinishedAt}}}}' {worker}"
    ).split()
    new_colour = "blue" if phase.name == "rollback" else "green"
    new_started = [epoch(v.split()[1]) for v in workers(target, new_colour).values()]
    FIGURES["slow_jobs"][job].update(
        {
            "version": version,
            "took": float(took),
            "finished_after_switch_s": round(float(finished) - switched, 2),
            "finished_after_new_workers_started_s": round(float(finished) - max(new_started), 2),
            "old_worker_stopped_after_job_s": round(epoch(stopped) - float(finished), 2),
            "worker_exit_code": int(exit_code),
        }
    )
    assert (version, len(row.splitlines())) == (old, 1), row
    assert float(took) >= SLOW_JOB_SECONDS
    assert float(finished) > switched, "the slow job ended before the switch: nothing was handed over"
    assert float(finished) > max(new_started), "the slow job ended before the old workers were told to stop"
    assert epoch(stopped) >= float(finished), "the old worker stopped before its job was recorded"
    assert exit_code == "0", f"the old worker {worker} did not stop cleanly (137: killed at the grace period)"


def test_first_converge_recorded_both_apps(target):
    for app in ("shop", "blog"):
        now = state(target, app)
        assert now["app"] == app
        assert now["live"]["version"] == "v1" and now["live"]["colour"] == "blue"
        assert now["colours"] == {"blue": "berth-demo-app:v1", "green": "berth-demo-app:v1"}
        assert [e["version"] for e in now["releases"]] == ["v1"]
        assert audit(target, app)[-1]["action"] == "found"
        assert (
            f'berth_release_info{{app="{app}",version="v1",colour="blue"}} 1'
            in target.file(METRICS.format(app)).content_string
        )
    assert served(target, SHOP)["version"] == "v1" and served(target, BLOG)["version"] == "v1"
    assert len(workers(target, "blue")) == 2 and workers(target, "green") == {}


def test_deploy_of_shop_hands_web_and_workers_over_under_load(target, loaded):
    blue_started, nginx = containers(target, "shop")["shop-web-blue-1"], nginx_workers(target)
    blog_before, blog_files = containers(target, "blog"), target.check_output(f"sha256sum {BLOG_FILES}")
    old_workers, before = workers(target, "blue"), settled_jobs(target)
    # The slow job goes in while the migration runs (its one-off container exists): just before the switch.
    migrating = enqueue_slow_job(
        loaded,
        "slow-deploy",
        lambda: bool(loaded.docker("docker", "ps", "-q", "--filter", "label=com.docker.compose.oneoff=True").strip()),
    )

    phase = loaded.phase("deploy-v2", DEPLOY, *APP, "-e", "app_version=v2", during=migrating)

    assert phase.rc == 0, phase.output[-3000:]
    no_failures(phase)
    # Every keep-alive connection to shop saw v1 then v2, once, while the playbook ran; blog only v1.
    assert phase.version_changes(SHOP) == [["v1", "v2"]] * 4
    assert phase.version_changes(BLOG) == [["v1"]] * 4
    assert phase.switched_during_the_run()
    FIGURES["deploy-v2"]["switched_after_s"] = round(phase.switched_after("v2"), 2)
    now = state(target)
    assert (now["live"]["version"], now["live"]["colour"], now["live"]["from"]["version"]) == ("v2", "green", "v1")
    assert now["live"]["image_id"].startswith("sha256:")
    assert target.check_output(f"cat {colour_file('shop')}") == "green"
    assert served(target) == {"version": "v2", "colour": "green"}
    # The workers moved with the web: two green ones run, the blue ones stopped.
    assert len(workers(target, "green")) == 2 and workers(target, "blue") == {}
    assert set(old_workers) <= set(containers(target, "shop"))
    # The previous web stays warm and untouched; nginx was not reloaded; blog was not touched at all.
    assert containers(target, "shop")["shop-web-blue-1"] == blue_started
    assert nginx_workers(target) == nginx
    assert containers(target, "blog") == blog_before
    assert target.check_output(f"sha256sum {BLOG_FILES}") == blog_files
    # The migration ran and its output is in the release's audit line.
    last = audit(target)[-1]
    assert (last["action"], last["result"], last["version"]) == ("deploy", "ok", "v2")
    assert last["migration"]["rc"] == 0 and "migrated to v2" in last["migration"]["output"], last
    jobs_exactly_once(target, phase, before, extra=1)
    slow_job_was_handed_over(target, phase, "slow-deploy", old="v1", new="v2")


def test_rollback_of_shop_moves_web_and_workers_back_under_load(target, loaded):
    shop_webs = {k: v for k, v in containers(target, "shop").items() if "-web-" in k}
    blog_before, blog_files = containers(target, "blog"), target.check_output(f"sha256sum {BLOG_FILES}")
    before = settled_jobs(target)
    # A rollback to the warm web has no migration to wait for: the slow job goes in as traffic moves
    # (the blue workers start only after the check through nginx), so a green (v2) worker takes it and is
    # still at it when the workers change.
    switched = enqueue_slow_job(
        loaded, "slow-rollback", lambda: loaded.docker("cat", colour_file("shop"), check=False).strip() == "blue"
    )

    phase = loaded.phase("rollback", ROLLBACK, *APP, during=switched)

    assert phase.rc == 0, phase.output[-3000:]
    no_failures(phase)
    assert phase.version_changes(SHOP) == [["v2", "v1"]] * 4
    assert phase.version_changes(BLOG) == [["v1"]] * 4
    assert phase.switched_during_the_run()
    FIGURES["rollback"]["switched_after_s"] = round(phase.switched_after("v1"), 2)
    # Instant: no web was started or restarted, only the live colour changed; no migration ran.
    assert {k: v for k, v in containers(target, "shop").items() if "-web-" in k} == shop_webs
    now = state(target)
    assert (now["live"]["version"], now["live"]["colour"], now["live"]["action"]) == ("v1", "blue", "rollback")
    assert served(target) == {"version": "v1", "colour": "blue"}
    assert len(workers(target, "blue")) == 2 and workers(target, "green") == {}
    assert "migration" not in audit(target)[-1]
    assert containers(target, "blog") == blog_before
    assert target.check_output(f"sha256sum {BLOG_FILES}") == blog_files
    jobs_exactly_once(target, phase, before, extra=1)
    slow_job_was_handed_over(target, phase, "slow-rollback", old="v2", new="v1")


def test_a_failing_migration_aborts_before_the_switch(target, loaded):
    files, shop_workers = target.check_output(f"sha256sum {SHOP_FILES}"), workers(target, "blue")
    before = settled_jobs(target)

    phase = loaded.phase("deploy-bad-migration", DEPLOY, *APP, "-e", "release_image=berth-demo-app:bad-migration")

    assert phase.rc != 0
    output = " ".join(phase.output.split())
    assert "RELEASE ABORTED before the switch: the migration of shop" in output, phase.output[-3000:]
    assert "migration of bad-migration failed: this build's migration is broken on purpose" in output
    no_failures(phase)
    assert phase.version_changes(SHOP) == [["v1"]] * 4, "traffic moved"
    # Traffic and workers untouched: colour file, state, .env (green's former image back), the same workers.
    assert target.check_output(f"sha256sum {SHOP_FILES}") == files
    assert "GREEN_IMAGE=berth-demo-app:v2" in target.file("/opt/shop/.env").content_string
    assert workers(target, "blue") == shop_workers and workers(target, "green") == {}
    assert "shop-web-green-1" not in containers(target, "shop")
    assert served(target)["version"] == "v1"
    last = audit(target)[-1]
    assert (last["result"], last["stage"], last["version"]) == ("failed", "migration", "bad-migration")
    assert last["migration"]["rc"] == 1 and "broken on purpose" in last["migration"]["output"], last
    assert 'berth_release_last_run_success{app="shop"} 0' in target.file(METRICS.format("shop")).content_string
    assert 'berth_release_last_run_success{app="blog"} 1' in target.file(METRICS.format("blog")).content_string
    jobs_exactly_once(target, phase, before)


def test_broken_build_aborts_before_the_switch(target, loaded):
    files, shop_workers = target.check_output(f"sha256sum {SHOP_FILES}"), workers(target, "blue")

    phase = loaded.phase("deploy-broken", DEPLOY, *APP, "-e", "app_version=broken", "-e", "release_health_timeout=10")

    assert phase.rc != 0
    assert "RELEASE ABORTED before the switch" in phase.output, phase.output[-3000:]
    no_failures(phase)
    assert phase.version_changes(SHOP) == [["v1"]] * 4, "traffic moved"
    assert "shop-web-green-1" not in containers(target, "shop")
    assert target.check_output(f"sha256sum {SHOP_FILES}") == files
    assert workers(target, "blue") == shop_workers
    last = audit(target)[-1]
    assert (last["result"], last["stage"], last["version"]) == ("failed", "before the switch", "broken")
    assert "migration" not in last


def test_failing_check_after_the_switch_moves_traffic_back(target, loaded):
    # The post-switch check asks the site for a page v2 does not have: a failure that only shows after
    # the switch. Traffic must move back to v1 by itself, without a failed request; the workers never move.
    shop_workers = workers(target, "blue")

    phase = loaded.phase(
        "deploy-post-switch-failure", DEPLOY, *APP, "-e", "app_version=v2", "-e", "release_smoke_path=/missing"
    )

    assert phase.rc != 0
    assert "RELEASE ROLLED BACK automatically" in phase.output, phase.output[-3000:]
    no_failures(phase)
    assert all(seen[-1] == "v1" for seen in phase.version_changes(SHOP))
    assert target.check_output(f"cat {colour_file('shop')}") == "blue"
    assert state(target)["live"]["version"] == "v1"
    assert served(target)["version"] == "v1"
    assert workers(target, "blue") == shop_workers and workers(target, "green") == {}
    last = audit(target)[-1]
    assert (last["result"], last["stage"]) == ("failed", "after the switch, rolled back")


def test_check_mode_shows_the_switch_and_changes_nothing(target, loaded):
    files = f"{SHOP_FILES} {BLOG_FILES}"
    before = target.check_output(f"sha256sum {files}")

    rc, output = loaded.playbook(DEPLOY, *APP, "--check", "--diff", "-e", "app_version=v2")

    assert rc == 0, output[-3000:]
    assert "Deploy: blue (berth-demo-app:v1) -> green (berth-demo-app:v2)" in " ".join(output.split())
    assert "+green" in output and "-blue" in output
    assert target.check_output(f"sha256sum {files}") == before
    assert served(target)["version"] == "v1"


def test_concurrent_deploys_of_an_app_do_not_interleave_and_other_apps_do_not_wait(target, loaded):
    deploys_before = len([e for e in audit(target) if e["result"] == "ok"])
    # The first run holds shop's lock for a while: it lets the old web drain 8 s, then stops it.
    first = popen(
        loaded,
        DEPLOY,
        *APP,
        "-e",
        "app_version=v2",
        "-e",
        "release_keep_previous_warm=false",
        "-e",
        "release_drain_seconds=8",
    )
    for _ in range(600):
        if target.run("test -d /run/lock/berth-release-shop").succeeded:
            break
        time.sleep(0.1)
    # Meanwhile blog is released (its own lock: it never waits for shop's). blog2 is a tag of v2 that
    # only blog uses, so that the pruning test below sees which images are shop's alone.
    target.check_output("docker tag berth-demo-app:v2 berth-demo-app:blog2")
    blog = popen(loaded, DEPLOY, "-e", "app=blog", "-e", "app_version=blog2")
    # The second run of shop starts while the first holds the lock, waits for it, then finds v2 live.
    rc, output = loaded.playbook(DEPLOY, *APP, "-e", "app_version=v2")
    first_output, blog_output = first.communicate(timeout=300)[0], blog.communicate(timeout=300)[0]

    assert first.returncode == 0, first_output[-3000:]
    assert blog.returncode == 0, blog_output[-3000:]
    assert "FAILED - RETRYING" not in blog_output, blog_output[-3000:]
    assert (state(target, "blog")["live"]["version"], served(target, BLOG)["version"]) == ("blog2", "v2")
    assert rc == 0, output[-3000:]
    assert f"FAILED - RETRYING: [{NAME}]: Take the release lock" in output
    assert "is already live on green for shop: nothing to do" in " ".join(output.split())
    ok = [e for e in audit(target) if e["result"] == "ok"]
    assert len(ok) == deploys_before + 1 and ok[-1]["version"] == "v2"
    assert not target.run("test -e /run/lock/berth-release-shop").succeeded
    # The old web was stopped after its drain (release_keep_previous_warm=false).
    assert "shop-web-blue-1" not in containers(target, "shop", running_only=True)


def popen(loaded: LoadedHost, playbook: str, *extra: str) -> subprocess.Popen:
    command, env = loaded.playbook_command(playbook, *extra)
    return subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_held_lock_stops_a_release_with_a_clear_message(target, loaded):
    target.check_output("mkdir /run/lock/berth-release-shop")
    try:
        before = target.check_output(f"sha256sum {SHOP_FILES}")
        rc, output = loaded.playbook(ROLLBACK, *APP, "-e", "release_lock_wait=2")
        output = " ".join(output.split())
        assert rc != 0
        # (a lock without holder.json, as an older berth or a manual mkdir leaves it: an unknown holder)
        assert f"Another release of shop is running on {NAME}: an unknown holder" in output, output[-3000:]
        assert "ansible-playbook playbooks/lock.yml -e app=shop -e lock_action=release" in output
        assert target.check_output(f"sha256sum {SHOP_FILES}") == before
        # The lock that another run holds is not taken away.
        assert target.run("test -d /run/lock/berth-release-shop").succeeded
    finally:
        target.check_output("rmdir /run/lock/berth-release-shop")


def test_old_release_images_are_pruned_but_never_another_app_s(target, loaded):
    # More versions of shop (tags of v1's image). With release_keep_releases 3: after v3 and v4, v1
    # falls out of shop's releases, but blog still retains it (and a container runs it): it stays. After
    # v5, v2 falls out, and only shop ever used it: it goes.
    for tag in ("v3", "v4", "v5"):
        target.check_output(f"docker tag berth-demo-app:v1 berth-demo-app:{tag}")
    for version in ("v3", "v4"):
        rc, output = loaded.playbook(DEPLOY, *APP, "-e", f"app_version={version}")
        assert rc == 0, output[-3000:]
    assert [e["version"] for e in state(target)["releases"]] == ["v4", "v3", "v2"]
    assert "v1" in target.check_output("docker image ls berth-demo-app --format '{{.Tag}}'").split()
    rc, output = loaded.playbook(DEPLOY, *APP, "-e", "app_version=v5")
    assert rc == 0, output[-3000:]
    now = state(target)
    assert [e["version"] for e in now["releases"]] == ["v5", "v4", "v3"]
    tags = target.check_output("docker image ls berth-demo-app --format '{{.Tag}}'").split()
    assert "v2" not in tags and {"v1", "v3", "v4", "v5", "blog2"} <= set(tags)
    # (v3 to v5 are v1's image, so the app says "v1": the colour tells which container answered)
    assert served(target)["colour"] == now["live"]["colour"]
    metrics = target.file(METRICS.format("shop")).content_string
    assert 'berth_release_info{app="shop",version="v5",colour="' + now["live"]["colour"] + '"} 1' in metrics
    assert 'berth_release_last_run_success{app="shop"} 1' in metrics
    assert served(target, BLOG)["version"] == "v2"


@pytest.mark.parametrize(
    ("playbook", "extra", "message"),
    [
        # two apps on the host: which one is required, and the apps are named
        (
            DEPLOY,
            ["-e", "app_version=v2"],
            "berth_apps has 2 apps (shop, blog): say which one to release with -e app=NAME",
        ),
        (DEPLOY, ["-e", "app=nosuch", "-e", "app_version=v2"], "must name an app of berth_apps: shop, blog"),
        (ROLLBACK, ["-e", "app=nosuch"], "must name an app of berth_apps: shop, blog (e.g. -e app=shop); got 'nosuch'"),
        (DEPLOY, [*APP], "Say what to deploy"),
        (DEPLOY, [*APP, "-e", "app_version=bad/tag"], "Say what to deploy"),
        (DEPLOY, [*APP, "-e", "app_version=v2", "-e", "release_keep_releases=1"], "release_keep_releases >= 2"),
        (ROLLBACK, [*APP, "-e", "app_version=v1"], "v1 is not a retained release"),
    ],
)
def test_bad_input_fails_before_any_change(target, loaded, playbook, extra, message):
    files = f"{SHOP_FILES} {BLOG_FILES}"
    before = (target.check_output(f"sha256sum {files}"), containers(target, "shop"), containers(target, "blog"))
    rc, output = loaded.playbook(playbook, *extra)
    assert rc != 0
    assert message in " ".join(output.split()), output[-3000:]
    assert "changed=0" in output, output[-3000:]
    assert (target.check_output(f"sha256sum {files}"), containers(target, "shop"), containers(target, "blog")) == before
