"""The release lock's holder, hold/show/release and the notifications, unit by unit: release_host (takes the
lock), release_lock (shows, gives back, releases), release_notify (to a receiver in this process), and the
filters of playbooks/lock.yml's input and messages. Real deploys meeting real locks: the release scenario's
tests/test_lock.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ROOT
from test_release_modules import CHOOSE, host_args, load, module

OPERATOR = load("berth_operator_filter", ROOT / "plugins" / "filter" / "operator.py")
NOW = datetime(2026, 11, 27, 14, 0, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def warned(result: dict) -> str:
    """The module's warnings as text (ansible-core 2.19 returns them as structured events)."""
    return json.dumps(result.get("warnings", []))


def holder_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "lock" / "holder.json").read_text())


def hold(tmp_path: Path, until: str, who: str = "bob") -> None:
    (tmp_path / "lock").mkdir()
    (tmp_path / "lock" / "holder.json").write_text(
        json.dumps(
            {
                "who": who,
                "why": "db work",
                "kind": "hold",
                "since": "2026-11-27T10:00:00Z",
                "until": until,
                "version": "",
                "run": "r1",
            }
        )
    )


# --- release_host: takes the lock -------------------------------------------------------------------


def test_the_lock_records_its_holder_and_run(tmp_path: Path) -> None:
    result = module(
        "release_host", tmp_path, **host_args(tmp_path), holder={"who": "alice", "kind": "deploy", "version": "v2"}
    )

    holder = holder_of(tmp_path)
    assert result["locked"] and len(result["run"]) == 32 and result["taken_over"] == {}
    assert {k: holder[k] for k in ("who", "why", "kind", "until", "version", "run")} == {
        "who": "alice",
        "why": "",
        "kind": "deploy",
        "until": "",
        "version": "v2",
        "run": result["run"],
    }
    assert abs(datetime.fromisoformat(holder["since"]) - datetime.now(UTC)) < timedelta(seconds=30)
    assert [p.name for p in (tmp_path / "lock").iterdir()] == ["holder.json"]


def test_a_lock_held_by_another_deploy_names_it(tmp_path: Path) -> None:
    module("release_host", tmp_path, **host_args(tmp_path), holder={"who": "alice", "kind": "deploy", "version": "v2"})

    second = module("release_host", tmp_path, **host_args(tmp_path), holder={"who": "carol", "kind": "deploy"})

    assert second["failed"] and second["lock_held"] and not second["locked"]
    assert (second["holder"]["who"], second["holder"]["version"]) == ("alice", "v2")
    assert holder_of(tmp_path)["who"] == "alice"


def test_a_hold_alone_takes_the_lock_and_reports_a_change(tmp_path: Path) -> None:
    result = module(
        "release_host", tmp_path, lock_dir=str(tmp_path / "lock"), holder={"who": "bob", "kind": "hold", "why": "x"}
    )

    assert result["changed"] and result["locked"] and "state" not in result
    assert holder_of(tmp_path)["kind"] == "hold"


def test_an_expired_hold_is_taken_over_with_a_warning(tmp_path: Path) -> None:
    hold(tmp_path, until=iso(datetime.now(UTC) - timedelta(minutes=1)))

    result = module("release_host", tmp_path, **host_args(tmp_path), holder={"who": "alice", "kind": "deploy"})

    assert result["locked"] and (result["taken_over"]["who"], result["taken_over"]["run"]) == ("bob", "r1")
    assert "the hold by bob ('db work') expired at" in warned(result), result
    assert holder_of(tmp_path)["who"] == "alice"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("lock")) == ["lock"]


@pytest.mark.parametrize("until", ["", "2999-01-01T00:00:00Z", "not a time"])
def test_a_hold_that_has_not_expired_is_not_taken_over(tmp_path: Path, until: str) -> None:
    hold(tmp_path, until=until)

    result = module("release_host", tmp_path, **host_args(tmp_path), holder={"who": "alice", "kind": "deploy"})

    assert result["failed"] and result["lock_held"] and result["holder"]["who"] == "bob"
    assert holder_of(tmp_path)["who"] == "bob"


def test_an_expired_hold_taken_over_meanwhile_is_put_back(tmp_path: Path) -> None:
    host = load("release_host_direct", ROOT / "roles" / "release" / "library" / "release_host.py")
    hold(tmp_path, until="2026-11-27T11:00:00Z")
    seen = host.read_holder(tmp_path / "lock")
    # Another run took it over and holds the lock now: what this run would move aside is not what it saw.
    (tmp_path / "lock" / "holder.json").write_text(json.dumps({"who": "carol", "kind": "deploy"}))

    assert not host.take_over(tmp_path / "lock", seen, "r2")
    assert host.read_holder(tmp_path / "lock")["who"] == "carol"
    assert not (tmp_path / "lock.expired-r2").exists()


# --- release_lock: shows, gives back, releases ------------------------------------------------------


def test_show_of_a_free_and_of_a_held_lock(tmp_path: Path) -> None:
    free = module("release_lock", tmp_path, lock_dir=str(tmp_path / "lock"), action="show")
    hold(tmp_path, until="2026-11-27T11:00:00Z")
    held = module("release_lock", tmp_path, lock_dir=str(tmp_path / "lock"), action="show")

    assert (free["held"], free["holder"], free["changed"]) == (False, {}, False)
    assert held["held"] and held["expired"] and held["holder"]["who"] == "bob" and not held["changed"]


def test_give_back_removes_only_the_run_s_own_lock(tmp_path: Path) -> None:
    hold(tmp_path, until="")
    other = module("release_lock", tmp_path, lock_dir=str(tmp_path / "lock"), action="give_back", run="r2")
    assert not other["changed"] and (tmp_path / "lock").is_dir() and "no longer this run's" in warned(other)

    own = module("release_lock", tmp_path, lock_dir=str(tmp_path / "lock"), action="give_back", run="r1")
    assert own["changed"] and not (tmp_path / "lock").exists()


def test_release_removes_any_lock_and_says_whose_it_was(tmp_path: Path) -> None:
    (tmp_path / "lock").mkdir()
    checked = module("release_lock", tmp_path, check=True, lock_dir=str(tmp_path / "lock"), action="release")
    assert checked["changed"] and (tmp_path / "lock").is_dir()

    done = module("release_lock", tmp_path, lock_dir=str(tmp_path / "lock"), action="release")
    assert done["changed"] and done["holder"]["kind"] == "unknown" and not (tmp_path / "lock").exists()


def test_release_stops_at_a_lock_with_something_else_in_it(tmp_path: Path) -> None:
    (tmp_path / "lock").mkdir()
    (tmp_path / "lock" / "notes.txt").write_text("mine")

    result = module("release_lock", tmp_path, lock_dir=str(tmp_path / "lock"), action="release")

    assert result["failed"] and "cannot remove the lock" in result["msg"]
    assert (tmp_path / "lock" / "notes.txt").exists()


# --- release_notify: a receiver in this process -------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[str, list]]:
    got: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            got.append((self.path, body))
            self.send_response(500 if self.path.startswith("/broken") else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", got
    server.shutdown()


def notify(tmp_path: Path, receivers: list, event: str = "deploy_succeeded") -> dict:
    return module(
        "release_notify",
        tmp_path,
        receivers=receivers,
        event=event,
        app="shop",
        version="v2",
        previous_version="v1",
        host="app1",
        who="alice",
        message="alice deployed shop v2 on app1 (was v1).",
    )


def test_each_receiver_gets_its_kind_of_payload_for_its_events(tmp_path: Path, receiver: tuple[str, list]) -> None:
    url, got = receiver

    result = notify(
        tmp_path,
        [
            {"name": "hook", "url": f"{url}/hook/TOKEN1"},
            {"name": "chat", "url": f"{url}/chat/TOKEN2", "kind": "slack"},
            {"name": "locks-only", "url": f"{url}/locks/TOKEN3", "events": ["lock_held"]},
        ],
    )

    assert not result.get("failed") and result["sent"] == ["hook", "chat"] and result["failed_receivers"] == []
    by_path = dict(got)
    hook = by_path["/hook/TOKEN1"]
    assert {k: hook[k] for k in ("event", "app", "version", "previous_version", "host", "who")} == {
        "event": "deploy_succeeded",
        "app": "shop",
        "version": "v2",
        "previous_version": "v1",
        "host": "app1",
        "who": "alice",
    }
    assert hook["message"].startswith("alice deployed") and hook["at"].endswith("Z")
    assert by_path["/chat/TOKEN2"] == {
        "text": "berth: alice deployed shop v2 on app1 (was v1). (deploy_succeeded, app1)"
    }
    assert "/locks/TOKEN3" not in by_path


def test_a_receiver_that_is_down_or_fails_is_a_warning_without_its_url(
    tmp_path: Path, receiver: tuple[str, list]
) -> None:
    url, _ = receiver

    result = notify(
        tmp_path,
        [{"name": "down", "url": "http://127.0.0.1:9/SECRET1"}, {"name": "broken", "url": f"{url}/broken/SECRET2"}],
    )

    assert not result.get("failed") and result["failed_receivers"] == ["down", "broken"]
    assert "down: unreachable" in warned(result) and "broken: answered 500" in warned(result)
    assert "SECRET" not in json.dumps(result)


def test_notify_in_check_mode_sends_nothing(tmp_path: Path, receiver: tuple[str, list]) -> None:
    url, got = receiver
    args = {"receivers": [{"name": "hook", "url": url}], "event": "rollback", "app": "a", "host": "h", "who": "w"}

    result = module("release_notify", tmp_path, check=True, **args, message="m")

    assert not result.get("failed") and result["sent"] == [] and got == []


# --- filters: lock.yml's input, the holder in words, the receivers, who --------------------------------


@pytest.mark.parametrize(
    ("action", "why", "until", "message"),
    [
        ("grab", "", "", "lock_action must be one of hold, show, release (e.g. -e lock_action=show); got 'grab'."),
        ("", "", "", "lock_action must be one of hold, show, release"),
        ("hold", "", "", "A hold needs a reason others will read"),
        ("hold", "  ", "", "A hold needs a reason"),
        ("hold", "x", "tomorrow", "lock_until must be an ISO-8601 time with its time zone"),
        ("hold", "x", "2026-11-28T10:00:00", "lock_until must be an ISO-8601 time with its time zone"),
        ("hold", "x", "2026-11-27T13:59:59Z", "lock_until must be in the future (now 2026-11-27T14:00:00Z)"),
    ],
)
def test_bad_lock_input_is_named(action: str, why: str, until: str, message: str) -> None:
    problems = CHOOSE.release_lock_problems(action, why, until, now=NOW)
    assert len(problems) == 1 and problems[0].startswith(message), problems


@pytest.mark.parametrize(
    ("action", "why", "until"),
    [
        ("hold", "db", ""),
        ("hold", "db", "2026-11-28T10:00:00Z"),
        ("hold", "db", "2026-11-28T11:00:00+01:00"),
        ("show", "", ""),
        ("release", "", ""),
    ],
)
def test_good_lock_input_passes(action: str, why: str, until: str) -> None:
    assert CHOOSE.release_lock_problems(action, why, until, now=NOW) == []


def test_until_is_stored_in_utc() -> None:
    assert CHOOSE.release_lock_until("2026-11-28T11:00:00+01:00") == "2026-11-28T10:00:00Z"
    assert CHOOSE.release_lock_until("") == ""


@pytest.mark.parametrize(
    ("holder", "words"),
    [
        (
            {"kind": "hold", "who": "bob", "why": "db", "since": "S", "until": "U"},
            "a hold by bob since S (why: 'db'; until U",
        ),
        (
            {"kind": "hold", "who": "bob", "why": "db", "since": "S"},
            "a hold by bob since S (why: 'db'; until released)",
        ),
        ({"kind": "deploy", "who": "alice", "since": "S", "version": "v2"}, "a deploy of v2 by alice since S"),
        ({"kind": "unknown", "who": "unknown"}, "an unknown holder (the lock has no holder.json"),
    ],
)
def test_the_holder_in_words(holder: dict, words: str) -> None:
    assert CHOOSE.release_lock_holder(holder).startswith(words)


def test_bad_receivers_are_named_never_their_urls() -> None:
    problems = CHOOSE.release_notify_problems(
        [
            {"name": "ok", "url": "https://hooks.example.net/T0K3N"},
            {"name": "ftp", "url": "ftp://T0K3N@example.net"},
            {"url": "https://example.net/T0K3N", "kind": "teams"},
            {"name": "typo", "url": "http://127.0.0.1:1/T0K3N", "events": ["deploy_done"]},
            "just a string",
        ]
    )

    assert len(problems) == 5, problems
    assert "receiver 2 (ftp): url must be an http:// or https:// URL" in problems[0]
    assert "receiver 3 (no name) needs a name" in problems[1] and "kind must be webhook or slack" in problems[2]
    assert "unknown events deploy_done" in problems[3] and "receiver 5 must be a mapping" in problems[4]
    assert "T0K3N" not in json.dumps(problems)
    assert CHOOSE.release_notify_problems([]) == [] and CHOOSE.release_notify_problems("x")


def test_the_operator_is_the_given_name_else_the_controller_s_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_OPERATOR", "ci-pipeline")
    monkeypatch.setenv("USER", "root")
    assert OPERATOR.berth_operator("alice") == "alice"
    assert OPERATOR.berth_operator("") == "ci-pipeline"
    monkeypatch.delenv("BERTH_OPERATOR")
    assert OPERATOR.berth_operator(None) == "root"
    monkeypatch.delenv("USER")
    monkeypatch.setattr(OPERATOR.getpass, "getuser", lambda: "deploy")
    assert OPERATOR.berth_operator("") == "deploy"  # the process's login name (a shell without USER)
    monkeypatch.setattr(OPERATOR.getpass, "getuser", lambda: "")
    assert OPERATOR.berth_operator("") == "unknown"


def test_check_mode_reports_a_hold_but_not_an_expired_one_and_takes_nothing(tmp_path: Path) -> None:
    hold(tmp_path, until=iso(datetime.now(UTC) + timedelta(hours=1)))
    result = module("release_host", tmp_path, check=True, **host_args(tmp_path), holder={"who": "alice"})
    assert result["failed"] and result["lock_held"] and result["holder"]["who"] == "bob"
    (tmp_path / "lock" / "holder.json").unlink()
    (tmp_path / "lock").rmdir()
    hold(tmp_path, until=iso(datetime.now(UTC) - timedelta(minutes=1)))
    result = module("release_host", tmp_path, check=True, **host_args(tmp_path), holder={"who": "alice"})
    assert not result.get("failed") and not result["locked"] and holder_of(tmp_path)["who"] == "bob"
