"""The release role's choice of the app (unit-tested in tests/test_release_modules.py).

    {{ berth_apps | berth_apps_plan | release_app(release_app) }}          # the app to release, or {}
    {{ berth_apps | berth_apps_plan | release_app_problem(release_app) }}  # why none can be chosen, or ""

A run releases one app of `berth_apps`: the one named by `-e app=NAME`, or the only one when the host
has one app. The chosen app is its plan (plugins/filter/apps.py) without `env` (its values may be
secrets, and the release never needs them: compose reads them from the app's secrets file), plus what
the release derives from it: the image repository, the host of the check through nginx, the worker
services of each colour and the other apps' state files (their images are never pruned).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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


def release_app_problem(plan: Any, name: Any = "") -> str:
    """Why no app can be chosen (a sentence naming the apps), or "" when one is."""
    apps = list(plan or [])
    names = _names(apps)
    if _chosen(apps, name) is not None:
        return ""
    if not apps:
        return (
            "berth_apps is empty: there is no app to release on this host (describe the apps in berth_apps, "
            "docs/apps.md)"
        )
    example = f"e.g. -e app={names[0]}"
    if name:
        return (
            f"release_app (-e app=NAME) must name an app of berth_apps: {', '.join(names)} ({example}); "
            f"got {str(name)!r}"
        )
    return (
        f"berth_apps has {len(names)} apps ({', '.join(names)}): say which one to release with -e app=NAME ({example})"
    )


class FilterModule:
    def filters(self) -> dict:
        return {"release_app": release_app, "release_app_problem": release_app_problem}
