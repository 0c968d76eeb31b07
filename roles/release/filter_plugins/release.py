"""The release role's choice of the app, its lock's input and messages, its receivers' checks
(unit-tested in tests/test_release_modules.py).

    {{ berth_apps | berth_apps_plan | release_app(release_app) }}          # the app to release, or {}
    {{ berth_apps | berth_apps_plan | release_app_problem(release_app) }}  # why none can be chosen, or ""
    {{ lock_action | release_lock_problems(lock_why, lock_until) }}        # playbooks/lock.yml's bad input
    {{ holder | release_lock_holder }}                                     # "a hold by bob since ..." (holder.json)
    {{ berth_notify | release_notify_problems }}                           # bad receivers (never their URLs)

A run releases one app of `berth_apps`: the one named by `-e app=NAME`, or the only one when the host
has one app. The chosen app is its plan (plugins/filter/apps.py) without `env` (its values may be
secrets, and the release never needs them: compose reads them from the app's secrets file), plus what
the release derives from it: the image repository, the host of the check through nginx, the worker
services of each colour and the other apps' state files (their images are never pruned).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

COLOURS = ("blue", "green")
# The tag and/or digest at the end of an image reference (a registry's :port is followed by a /).
_TAG_OR_DIGEST = re.compile(r"(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[a-f0-9]+)?$")


def _names(plan: list[Mapping[str, Any]]) -> list[str]:
    return [str(app["name"]) for app in plan]


def _chosen(plan: Any, name: Any) -> Mapping[str, Any] | None:
    apps = list(plan or [])
    if name:
        return next((app for app in apps if app["name"] == name), None)
    return apps[0] if len(apps) == 1 else None


def release_app(plan: Any, name: Any = "") -> dict[str, Any]:
    """The app to release, without its environment, and what the release derives from it; {} when none fits."""
    app = _chosen(plan, name)
    if app is None:
        return {}
    # Without the values that may be secrets (the environment, a managed database's URLs).
    chosen = {key: value for key, value in app.items() if key not in ("env", "database_url", "redis_url")}
    return {
        **chosen,
        "repository": _TAG_OR_DIGEST.sub("", str(app["image"]), count=1),
        "worker_services": {colour: [worker["services"][colour] for worker in app["workers"]] for colour in COLOURS},
        "other_state_files": [other["state_file"] for other in plan if other["name"] != app["name"]],
    }


def release_app_problem(plan: Any, name: Any = "", doing: str = "release") -> str:
    """Why no app can be chosen (a sentence naming the apps), or "" when one is. doing: what is done to
    the app, for the sentence (release; the maintenance page says "switch")."""
    apps = list(plan or [])
    names = _names(apps)
    if _chosen(apps, name) is not None:
        return ""
    if not apps:
        return (
            f"berth_apps is empty: there is no app to {doing} on this host (describe the apps in berth_apps, "
            "docs/apps.md)"
        )
    example = f"e.g. -e app={names[0]}"
    option = "release_app (-e app=NAME)" if doing == "release" else "-e app=NAME"
    if name:
        return f"{option} must name an app of berth_apps: {', '.join(names)} ({example}); got {str(name)!r}"
    return (
        f"berth_apps has {len(names)} apps ({', '.join(names)}): say which one to {doing} with -e app=NAME ({example})"
    )


LOCK_ACTIONS = ("hold", "show", "release")
NOTIFY_EVENTS = (
    "deploy_started",
    "deploy_succeeded",
    "deploy_failed",
    "deploy_rolled_back",
    "rollback",
    "lock_held",
    "lock_released",
)


def _utc(text: str) -> datetime | None:
    """An ISO-8601 time with a time zone (Z or +hh:mm) as UTC; None when it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else None


def release_lock_until(until: Any) -> str:
    """lock_until as stored in holder.json: UTC, to the second, with Z ("" stays "")."""
    moment = _utc(str(until or ""))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


def release_lock_problems(action: Any, why: Any = "", until: Any = "", now: datetime | None = None) -> list[str]:
    """What is wrong with playbooks/lock.yml's input: one sentence per problem, [] when nothing is."""
    now = now or datetime.now(UTC)
    if action not in LOCK_ACTIONS:
        return [f"lock_action must be one of {', '.join(LOCK_ACTIONS)} (e.g. -e lock_action=show); got {action!r}."]
    problems = []
    if action == "hold" and not str(why or "").strip():
        problems.append("A hold needs a reason others will read: -e \"lock_why='database migration, ask bob'\".")
    if until:
        moment = _utc(str(until))
        if moment is None:
            problems.append(
                "lock_until must be an ISO-8601 time with its time zone, e.g. 2026-11-28T10:00:00Z; "
                f"got {str(until)!r}."
            )
        elif moment <= now:
            problems.append(f"lock_until must be in the future (now {now:%Y-%m-%dT%H:%M:%SZ}); got {str(until)!r}.")
    return problems


def release_lock_holder(holder: Any) -> str:
    """Who holds a lock, for people: "a hold by bob since ... (why: ...; until ...)", "a deploy of v2 by ..."."""
    holder = dict(holder or {})
    kind = holder.get("kind") or "unknown"
    if kind == "unknown":
        return "an unknown holder (the lock has no holder.json: an older berth, or somebody's mkdir)"
    text = f"a {kind}" + (f" of {holder['version']}" if holder.get("version") else "")
    text += f" by {holder.get('who') or 'unknown'} since {holder.get('since') or 'an unknown time'}"
    if kind == "hold":
        text += f" (why: {holder.get('why') or 'not given'!r}; until {holder.get('until') or 'released'})"
    return text


def release_notify_problems(receivers: Any) -> list[str]:
    """What is wrong with berth_notify (one sentence per problem; a receiver is named, its URL never shown)."""
    if not isinstance(receivers, list):
        return ["berth_notify must be a list of receivers ({name, url, kind, events}), e.g. []."]
    problems = []
    for number, receiver in enumerate(receivers, 1):
        if not isinstance(receiver, Mapping):
            problems.append(f"berth_notify receiver {number} must be a mapping ({{name, url, kind, events}}).")
            continue
        name = str(receiver.get("name") or "")
        label = f"berth_notify receiver {number} ({name or 'no name'})"
        if not name:
            problems.append(f"{label} needs a name (it names the receiver in warnings).")
        if not re.match(r"^https?://[^\s/]+", str(receiver.get("url") or "")):
            problems.append(f"{label}: url must be an http:// or https:// URL (not shown: it may hold a token).")
        if receiver.get("kind", "webhook") not in ("webhook", "slack"):
            problems.append(f"{label}: kind must be webhook or slack; got {receiver.get('kind')!r}.")
        unknown = [str(event) for event in receiver.get("events") or [] if event not in NOTIFY_EVENTS]
        if unknown:
            problems.append(f"{label}: unknown events {', '.join(unknown)} (known: {', '.join(NOTIFY_EVENTS)}).")
    return problems


class FilterModule:
    def filters(self) -> dict:
        return {
            "release_app": release_app,
            "release_app_problem": release_app_problem,
            "release_lock_until": release_lock_until,
            "release_lock_problems": release_lock_problems,
            "release_lock_holder": release_lock_holder,
            "release_notify_problems": release_notify_problems,
        }
