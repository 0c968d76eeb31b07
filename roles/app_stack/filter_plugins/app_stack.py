"""app_stack's decisions per app, from the plan and what was read on the host (unit-tested in
tests/test_app_stack_filters.py).

    {{ __app_stack_read.results | app_stack_files }}      # {path: text} of the files slurp could read
    {{ __app_stack_apps | app_stack_runs(files, idle_running, postgres_image, redis_image) }}
    {{ app | app_stack_data_env(passwords, db_address) }}  # DATABASE_URL and REDIS_URL of one app

`app_stack_runs` says, for each app of `berth_apps | berth_apps_plan`, which colour is live, which image
each colour runs and which services and images this run needs. Before an app's first release that is
blue with the app's `image` in both colours; afterwards the release's state file (roles/release owns
it) decides, so a re-run of site.yml never moves traffic or goes back to an older image. The result
holds no environment value, so loops over it need no no_log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

COLOURS = ("blue", "green")


def files(results: Any) -> dict[str, str]:
    """The text of each file a looped ansible.builtin.slurp could read, by path (a missing file is left out)."""
    return {
        str(result["source"]): base64.b64decode(result["content"]).decode()
        for result in results or []
        if isinstance(result, Mapping) and "content" in result and "source" in result
    }


def _release(app: Mapping[str, Any], read: Mapping[str, str]) -> dict[str, Any]:
    """The app's release state ({} before its first release)."""
    text = read.get(app["state_file"])
    if text is None:
        return {}
    try:
        state = json.loads(text)
    except ValueError as exc:
        where = f"{app['state_file']} (the release state of {app['name']})"
        raise AnsibleFilterError(f"{where} is not JSON: {exc}") from exc
    colours = state.get("colours") if isinstance(state, Mapping) else None
    live = (state.get("live") or {}).get("colour") if isinstance(state, Mapping) else None
    if live not in COLOURS or not isinstance(colours, Mapping) or not all(colours.get(c) for c in COLOURS):
        raise AnsibleFilterError(
            f"{app['state_file']} (the release state of {app['name']}) does not say the live colour and the image "
            f"of each colour ({{\"live\": {{\"colour\": \"blue\"}}, \"colours\": {{\"blue\": …, \"green\": …}}}})"
        )
    return {"live": live, "images": {c: str(colours[c]) for c in COLOURS}}


def runs(apps: Any, read: Mapping[str, str] | None, idle_running: bool,
         postgres_image: str, redis_image: str) -> list[dict[str, Any]]:
    """Per app: its live and idle colour, the colours' images, the services to start (data and web, which
    have health checks; workers, which have none), the images they need."""
    found = []
    for app in apps or []:
        release = _release(app, read or {})
        live = release.get("live", "blue")
        idle = "green" if live == "blue" else "blue"
        images = release.get("images") or dict.fromkeys(COLOURS, app["image"])
        data = app["local_services"]
        # The live colour's web and workers; the idle colour's web only when it is kept warm (an idle
        # worker would take jobs with the old code).
        services = [*data, app["web"]["services"][live]]
        colours = [live]
        if idle_running:
            services.append(app["web"]["services"][idle])
            colours.append(idle)
        needed = [images[colour] for colour in colours]
        needed += [{"postgres": postgres_image, "redis": redis_image}[service] for service in data]
        found.append({
            "name": app["name"],
            "dir": app["dir"],
            "live": live,
            "idle": idle,
            "images": images,
            "services": services,
            "workers": [worker["services"][live] for worker in app["workers"]],
            "needed_images": list(dict.fromkeys(needed)),
        })
    return found


def password_files(app: Mapping[str, Any]) -> dict[str, str]:
    """Where each data service's password of the app is: on the app host (data: local) or on the db host."""
    if app["data"] == "local":
        return {service: f"{app['dir']}/secrets/{service}-password" for service in app["local_services"]}
    if app["data"] == "host":
        services = [service for service in ("postgres", "redis") if app[service]]
        return {service: f"{app['db_secrets_dir']}/{service}-password" for service in services}
    return {}


def data_env(app: Mapping[str, Any], passwords: Mapping[str, str], db_address: str = "") -> dict[str, str]:
    """DATABASE_URL and REDIS_URL of the app, where its data lives (the passwords are alphanumeric: they need
    no URL encoding). In check mode on a fresh host a password not made yet is empty."""
    secret = {service: passwords.get(path, "").strip() for service, path in password_files(app).items()}
    env = {}
    if app["data"] == "external":
        env = {"DATABASE_URL": app["database_url"] if app["postgres"] else "",
               "REDIS_URL": app["redis_url"] if app["redis"] else ""}
    elif app["data"] == "local":
        env = {"DATABASE_URL": f"postgresql://{app['db_name']}:{secret.get('postgres', '')}@postgres:5432/"
                               f"{app['db_name']}" if app["postgres"] else "",
               "REDIS_URL": f"redis://:{secret.get('redis', '')}@redis:6379/0" if app["redis"] else ""}
    elif app["data"] == "host":
        if not db_address:
            raise AnsibleFilterError(f"app {app['name']} has data: host, but the db host's address is unknown")
        host = f"[{db_address}]" if ":" in db_address else db_address
        sslmode = "require" if app["data_tls"] else "disable"
        env = {"DATABASE_URL": f"postgresql://{app['db_name']}:{secret.get('postgres', '')}@{host}:5432/"
                               f"{app['db_name']}?sslmode={sslmode}" if app["postgres"] else "",
               "REDIS_URL": f"redis://:{secret.get('redis', '')}@{host}:{app['db_redis_port']}/0"
                            if app["redis"] else ""}
    return {name: value for name, value in env.items() if value}


class FilterModule:
    def filters(self) -> dict:
        return {"app_stack_files": files, "app_stack_runs": runs, "app_stack_data_env": data_env,
                "app_stack_password_files": password_files}
