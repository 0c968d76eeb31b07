"""The release lock's holder, holds and the notifications, on the converged host (after test_release.py,
see conftest.py): playbooks/lock.yml (hold, show, release) as an operator runs it, deploys meeting a
hold, a killed deploy's lock and an expired hold, and the events at a receiver in this process (on the
controller's 127.0.0.1: berth sends them from the controller). Deploys are of blog between versions it
already has (no image is loaded), without load: test_release.py covers releases under load."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import testinfra

SCENARIO = Path(__file__).resolve().parent.parent
PROJECT = SCENARIO.parents[3]
sys.path.insert(0, str(PROJECT / "tests" / "load"))

from release_phases import LoadedHost  # noqa: E402

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
NAME = "berth-release-trixie"
DEPLOY, LOCK = "playbooks/deploy.yml", "playbooks/lock.yml"
AUDIT = "/var/log/berth/release.log"
SHOP_FILES = "/var/lib/berth/apps/shop/release.json /var/lib/berth/apps/shop/live-colour /opt/shop/.env"
HOLD = ("-e", "lock_action=hold", "-e", "lock_why=x")
RELEASE_COMMAND = "ansible-playbook playbooks/lock.yml -e app=shop -e lock_action=release"
FIGURES: dict[str, float] = {}

testinfra_hosts = [NAME]


def lock_dir(app: str) -> str:
    return f"/run/lock/berth-release-{app}"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def target() -> testinfra.host.Host:
    return testinfra.get_host(f"ansible://{NAME}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def runner() -> Iterator[LoadedHost]:
    # (LoadedHost for its ansible-playbook command against the scenario's inventory; no load is started)
    yield LoadedHost(NAME, "shop.test", INVENTORY, limit=NAME)
    print("\nlock test seconds: " + json.dumps(FIGURES))


class Receiver:
    """A webhook receiver on 127.0.0.1 in this process: every POST (path, JSON body). On deploy_started it
    reads the app's holder.json on the host right then: the lock is held while the deploy runs."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict]] = []
        self.holders: dict[str, dict] = {}
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("event") == "deploy_started":
                    done = subprocess.run(
                        ["docker", "exec", NAME, "cat", f"{lock_dir(body['app'])}/holder.json"],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    received.holders[body["app"]] = json.loads(done.stdout) if done.returncode == 0 else {}
                received.got.append((self.path, body))
                self.send_response(500 if self.path.startswith("/broken") else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, path: str) -> list[dict]:
        return [body for got_path, body in self.got if got_path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (a receiver that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def notify(*receivers: dict) -> tuple[str, str]:
    return "-e", json.dumps({"berth_notify": list(receivers)})


def audit(target: testinfra.host.Host, app: str) -> list[dict]:
    lines = [json.loads(line) for line in target.check_output(f"cat {AUDIT}").splitlines()]
    return [line for line in lines if line["app"] == app]


def state(target: testinfra.host.Host, app: str) -> dict:
    return json.loads(target.check_output(f"cat /var/lib/berth/apps/{app}/release.json"))


def holder(target: testinfra.host.Host, app: str) -> dict:
    return json.loads(target.check_output(f"cat {lock_dir(app)}/holder.json"))


def put_holder(target: testinfra.host.Host, app: str, **fields: str) -> None:
    """A lock as another run left it (a killed deploy, a hold): the directory and its holder.json."""
    text = json.dumps({"why": "", "until": "", "version": "", "run": "elsewhere", **fields})
    target.check_output(f"mkdir {lock_dir(app)} && echo '{text}' > {lock_dir(app)}/holder.json")


def free(target: testinfra.host.Host, app: str) -> bool:
    return not target.run(f"test -e {lock_dir(app)}").succeeded


def timed(runner: LoadedHost, name: str, *argv: str) -> tuple[int, str]:
    started = time.monotonic()
    rc, output = runner.playbook(*argv)
    FIGURES[name] = round(time.monotonic() - started, 1)
    return rc, output


def flat(output: str) -> str:
    return " ".join(output.split())


def test_a_deploy_holds_the_lock_with_its_holder_and_tells_the_receivers(target, runner, receiver):
    # blog between two versions it has: from a fresh converge v1 -> v2, after test_release.py blog2 -> v1.
    live = state(target, "blog")["live"]["version"]
    version = "v2" if live == "v1" else "v1"
    hook, chat = f"{receiver.url}/hook/TOKEN-A", f"{receiver.url}/chat/TOKEN-B"
    down, broken = f"http://127.0.0.1:{closed_port()}/TOKEN-C", f"{receiver.url}/broken/TOKEN-D"

    rc, output = timed(
        runner,
        "deploy_notified",
        DEPLOY,
        "-e",
        "app=blog",
        "-e",
        f"app_version={version}",
        "-e",
        "berth_operator=alice",
        *notify(
            {"name": "hook", "url": hook},
            {"name": "chat", "url": chat, "kind": "slack", "events": ["deploy_succeeded"]},
            {"name": "down", "url": down},
            {"name": "broken", "url": broken},
        ),
    )

    assert rc == 0, output[-3000:]
    # While it ran (at deploy_started), the lock named alice's deploy of the version; then it was given back.
    seen = receiver.holders["blog"]
    assert (seen["who"], seen["kind"], seen["version"], seen["why"], seen["until"]) == (
        "alice",
        "deploy",
        version,
        "",
        "",
    )
    assert len(seen["run"]) == 32 and abs(datetime.fromisoformat(seen["since"]) - datetime.now(UTC)) < timedelta(
        minutes=5
    )
    assert free(target, "blog")
    events = receiver.events("/hook/TOKEN-A")
    assert [e["event"] for e in events] == ["deploy_started", "deploy_succeeded"]
    for event in events:
        assert (event["app"], event["version"], event["previous_version"]) == ("blog", version, live)
        assert (event["host"], event["who"]) == (NAME, "alice") and event["at"].endswith("Z")
    assert f"alice deployed blog {version} on {NAME} (was {live})" in events[1]["message"]
    chats = receiver.events("/chat/TOKEN-B")
    assert len(chats) == 1 and list(chats[0]) == ["text"] and f"blog {version}" in chats[0]["text"]
    # The receiver that is down and the one that answers 500: a warning each, the deploy went on.
    assert "notification deploy_succeeded of blog to down: unreachable" in flat(output)
    assert "notification deploy_started of blog to broken: answered 500" in flat(output)
    assert state(target, "blog")["live"]["version"] == version
    # No receiver's URL (they hold tokens) anywhere in the output.
    assert "TOKEN-" not in output and receiver.url not in output and down not in output


def test_a_hold_refuses_a_deploy_at_once_with_its_message(target, runner, receiver):
    until = iso(datetime.now(UTC) + timedelta(hours=1))
    before = target.check_output(f"sha256sum {SHOP_FILES}")

    rc, output = timed(
        runner,
        "hold",
        LOCK,
        "-e",
        "app=shop",
        "-e",
        "lock_action=hold",
        "-e",
        json.dumps({"lock_why": "database maintenance"}),
        "-e",
        f"lock_until={until}",
        "-e",
        "berth_operator=bob",
        *notify({"name": "hook", "url": receiver.url + "/locks"}),
    )

    assert rc == 0, output[-3000:]
    held = holder(target, "shop")
    assert (held["who"], held["kind"], held["why"], held["until"], held["version"]) == (
        "bob",
        "hold",
        "database maintenance",
        until,
        "",
    )
    last = audit(target, "shop")[-1]
    assert (last["action"], last["who"], last["holder"]["why"], last["holder"]["until"]) == (
        "lock_held",
        "bob",
        "database maintenance",
        until,
    )
    assert [(e["event"], e["app"], e["who"]) for e in receiver.events("/locks")] == [("lock_held", "shop", "bob")]

    rc, output = timed(runner, "deploy_refused_by_hold", DEPLOY, "-e", "app=shop", "-e", "app_version=v2")

    assert rc != 0
    words = flat(output)
    assert (
        f"shop is held on {NAME}: a hold by bob since {held['since']} (why: 'database maintenance'; until {until})"
        in words
    ), output[-3000:]
    assert RELEASE_COMMAND in words and "berth lock release shop" in words and "Nothing was changed" in words
    # At once: no waiting for release_lock_wait (120 s in this scenario).
    assert "FAILED - RETRYING" not in output and FIGURES["deploy_refused_by_hold"] < 60
    assert target.check_output(f"sha256sum {SHOP_FILES}") == before and holder(target, "shop") == held

    rc, output = runner.playbook(LOCK, "-e", "app=shop", "-e", "lock_action=hold", "-e", "lock_why=mine now")
    assert rc != 0 and f"shop on {NAME} is already held: a hold by bob" in flat(output), output[-3000:]
    assert holder(target, "shop") == held


def test_show_names_the_holder_or_free(target, runner):
    rc, output = timed(runner, "show", LOCK, "-e", "app=shop", "-e", "lock_action=show")
    assert rc == 0, output[-3000:]
    assert f"shop on {NAME}: held by a hold by bob since" in flat(output), output[-3000:]

    rc, output = runner.playbook(LOCK, "-e", "app=blog", "-e", "lock_action=show")
    assert rc == 0 and f"blog on {NAME}: free" in flat(output), output[-3000:]


def test_release_in_check_mode_changes_nothing_then_release_removes_the_hold(target, runner, receiver):
    held, lines = holder(target, "shop"), len(audit(target, "shop"))

    rc, output = runner.playbook(LOCK, "-e", "app=shop", "-e", "lock_action=release", "--check", "--diff")
    assert rc == 0 and "would release a hold by bob" in flat(output), output[-3000:]
    assert holder(target, "shop") == held and len(audit(target, "shop")) == lines

    rc, output = timed(
        runner,
        "release",
        LOCK,
        "-e",
        "app=shop",
        "-e",
        "lock_action=release",
        "-e",
        "berth_operator=carol",
        *notify({"name": "hook", "url": f"{receiver.url}/released"}),
    )

    assert rc == 0, output[-3000:]
    assert f"shop on {NAME}: released a hold by bob" in flat(output)
    assert free(target, "shop")
    last = audit(target, "shop")[-1]
    assert (last["action"], last["who"], last["holder"]["who"], last["reason"]) == (
        "lock_released",
        "carol",
        "bob",
        "released",
    )
    assert [(e["event"], e["who"]) for e in receiver.events("/released")] == [("lock_released", "carol")]


def test_a_killed_deploy_s_lock_is_waited_for_named_and_released(target, runner):
    put_holder(target, "shop", who="alice", kind="deploy", version="v9", since="2026-11-27T09:00:00Z")

    rc, output = runner.playbook(DEPLOY, "-e", "app=shop", "-e", "app_version=v2", "-e", "release_lock_wait=2")
    assert rc != 0
    assert (
        f"Another release of shop is running on {NAME}: a deploy of v9 by alice since 2026-11-27T09:00:00Z holds "
        "/run/lock/berth-release-shop" in flat(output)
    ), output[-3000:]
    assert RELEASE_COMMAND in flat(output) and "FAILED - RETRYING" in output

    rc, output = runner.playbook(LOCK, "-e", "app=shop", "-e", "lock_action=release")
    assert rc == 0, output[-3000:]
    assert "released a deploy of v9 by alice since 2026-11-27T09:00:00Z. It was not a hold" in flat(output)
    assert free(target, "shop")


def test_an_expired_hold_is_taken_over_and_said_so(target, runner):
    put_holder(
        target,
        "blog",
        who="bob",
        kind="hold",
        why="over by now",
        since="2026-11-27T09:00:00Z",
        until=iso(datetime.now(UTC) - timedelta(minutes=1)),
    )
    live = state(target, "blog")["live"]["version"]

    # (the live version again: the run takes the lock, finds nothing to switch and gives it back)
    rc, output = timed(runner, "deploy_after_expired_hold", DEPLOY, "-e", "app=blog", "-e", f"app_version={live}")

    assert rc == 0, output[-3000:]
    assert "the hold by bob ('over by now') expired at" in flat(output) and "took the lock over" in flat(output)
    last = audit(target, "blog")[-1]
    assert (last["action"], last["reason"], last["holder"]["who"]) == ("lock_released", "expired", "bob")
    assert free(target, "blog")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-e", "lock_action=grab"], "lock_action must be one of hold, show, release"),
        (["-e", "lock_action=hold"], "A hold needs a reason others will read"),
        ([*HOLD, "-e", "lock_until=tomorrow"], "ISO-8601 time with its time zone"),
        ([*HOLD, "-e", "lock_until=2020-01-01T00:00:00Z"], "must be in the future"),
        ([*HOLD, "-e", "app=nosuch"], "must name an app of berth_apps: shop, blog"),
        ([*HOLD, *notify({"name": "n", "url": "ftp://T0K3N"})], "url must be an http"),
    ],
)
def test_bad_lock_input_fails_before_any_change(target, runner, extra, message):
    app = [] if any(arg.startswith("app=") for arg in extra) else ["-e", "app=shop"]
    lines = len(audit(target, "shop"))

    rc, output = runner.playbook(LOCK, *app, *extra)

    assert rc != 0 and message in flat(output), output[-3000:]
    assert "changed=0" in output and free(target, "shop") and len(audit(target, "shop")) == lines
    assert "T0K3N" not in output


def test_a_hold_in_check_mode_changes_nothing(target, runner):
    lines = len(audit(target, "shop"))

    rc, output = runner.playbook(LOCK, "-e", "app=shop", "-e", "lock_action=hold", "-e", "lock_why=x", "--check")

    assert rc == 0 and f"shop on {NAME}: free" in flat(output), output[-3000:]
    assert free(target, "shop") and len(audit(target, "shop")) == lines
