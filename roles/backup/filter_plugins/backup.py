"""The backup role's decisions per app and host, from the plan (unit-tested in tests/test_backup_program.py).

    {{ __backup_apps | backup_apps(backup_volumes, backup_exclude, 'app' or 'db', external) }}  # config.json's apps
    {{ groups | backup_host_role(inventory_hostname) }}                  # app (an app host) or db
    {{ groups | backup_dumps_managed_databases(inventory_hostname) }}    # the one app host that dumps them
    {{ __backup_apps | backup_database_urls }}                            # app -> managed database URL (secret)
    {{ backup_volumes | backup_volumes_without_app(__backup_apps) }}    # volumes no app owns
    {{ backup_local_repository | backup_app_dirs_holding(__backup_apps) }}  # app directories it is inside
    {{ app | backup_restore_refusal(__backup_apps, __backup_host_apps, role, host, components) }}
    {{ plan_app | backup_health_url(live_colour_file_content) }}       # the app's health URL on an app host

Each app of `berth_apps | berth_apps_plan` is backed up on its own (its own restic snapshot, tagged
with its name) where its parts are:

- on an **app host** (group `app`): its directory /opt/<app> without /opt/<app>/images (where earlier berth
  releases kept image archives; app_stack keeps them in /var/lib/berth/images, which is not backed up), the
  volumes of `backup_volumes` named after it (`<app>_…`, compose's name for a volume of the project, or
  `<app>-…`; when two apps' names fit, shop and shop-admin for shop-admin-uploads, the longer one owns the
  volume), and its PostgreSQL and Redis only when they are containers of its compose project
  (`data: local`): `{kind: container, service: postgres|redis}`;
- on the **db host** (group `db`): the apps with `data: host` only, each with its PostgreSQL database
  `{kind: host, database: <db_name>}` (Debian's cluster on 5432, reached as the local superuser postgres)
  and its Redis instance `{kind: host, unit: redis-server@<name>, port: <db_redis_port>, dir:
  /var/lib/redis/<name>, password_file: <db_secrets_dir>/redis-password}` as roles/db_host makes them;
  no files (the db host has no app directory and no Docker).

An app with `data: external` (a managed database) has its files and volumes backed up on every app host
like any app, and its database dumped (pg_dump against its URL) on exactly one app host, the first of the
group app: `{kind: external, image: <the client image>, url_file: <JSON app -> URL>}`. Its Redis is not
backed up (a managed Redis is the provider's; `redis-cli --rdb` is refused by most of them). restore.yml
does not restore a managed database, so `postgres` is not among its components. A volume named after no
app is refused by the input checks. The results hold no environment value (the URLs stay in url_file),
so loops over them need no no_log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

# roles/db_host: PostgreSQL's port on the db host and the directory of each app's Redis instance.
DB_HOST_POSTGRES_PORT = 5432
DB_HOST_REDIS_DIR = "/var/lib/redis"
HOST_ROLES = ("app", "db")


def volume_app(volume: str, names: Iterable[str]) -> str | None:
    """The app a volume belongs to by its name (<app>_… or <app>-…; the longest app name wins), or None."""
    owners = [name for name in names if volume.startswith((f"{name}_", f"{name}-"))]
    return max(owners, key=len) if owners else None


def _components(postgres: Any, redis: Any, volumes: list[str], paths: list[str]) -> list[str]:
    """What restore.yml can restore of an app on this host (backup_restore_components' values): an app host
    restores volumes only of an app that has some, so a restore there never stops an app for nothing."""
    return ((["postgres"] if postgres else []) + (["redis"] if redis else []) + (["volumes"] if volumes else [])
            + (["paths"] if paths else []))


def _app_host_app(app: Mapping[str, Any], names: list[str], volumes: list[str], exclude: list[str],
                  external: Mapping[str, str] | None) -> dict[str, Any]:
    local = app.get("local_services") or []
    postgres = {"kind": "container", "service": "postgres"} if "postgres" in local else None
    if external and app.get("data") == "external" and app.get("postgres", True):
        postgres = {"kind": "external", "image": external["image"], "url_file": external["url_file"]}
    redis = {"kind": "container", "service": "redis"} if "redis" in local else None
    own_volumes = [volume for volume in volumes or [] if volume_app(volume, names) == app["name"]]
    restorable = postgres if postgres and postgres["kind"] == "container" else None
    return {
        "name": app["name"],
        "project": app["project"],
        "postgres": postgres,
        "redis": redis,
        "paths": [app["dir"]],
        "exclude": [f"{app['dir']}/images", *(exclude or [])],
        "volumes": own_volumes,
        "components": _components(restorable, redis, own_volumes, [app["dir"]]),
    }


def _db_host_app(app: Mapping[str, Any]) -> dict[str, Any]:
    postgres = ({"kind": "host", "database": app["db_name"], "port": DB_HOST_POSTGRES_PORT}
                if app.get("postgres", True) else None)
    redis = ({"kind": "host", "unit": f"redis-server@{app['name']}", "port": int(app["db_redis_port"]),
              "dir": f"{DB_HOST_REDIS_DIR}/{app['name']}", "password_file": f"{app['db_secrets_dir']}/redis-password"}
             if app.get("redis", True) else None)
    return {
        "name": app["name"],
        "project": app["project"],
        "postgres": postgres,
        "redis": redis,
        "paths": [],
        "exclude": [],
        "volumes": [],
        "components": _components(postgres, redis, [], []),
    }


def backup_apps(plan: list[Mapping[str, Any]], volumes: list[str], exclude: list[str],
                host_role: str = "app", external: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """What berth-backup backs up of each app on a host whose role is `app` (an app host) or `db` (the db
    host): config.json's apps. external: {image, url_file} on the app host that dumps the managed databases
    (backup_dumps_managed_databases), else None."""
    if host_role not in HOST_ROLES:
        raise ValueError(f"backup_apps: host_role must be one of {', '.join(HOST_ROLES)}; got {host_role!r}")
    if host_role == "db":
        return [_db_host_app(app) for app in plan or []
                if app.get("data") == "host" and (app.get("postgres", True) or app.get("redis", True))]
    names = [str(app["name"]) for app in plan or []]
    return [_app_host_app(app, names, volumes, exclude, external) for app in plan or []]


def backup_dumps_managed_databases(groups: Mapping[str, Any], host: str) -> bool:
    """Whether this host dumps the managed databases (data: external): the first host of the group app
    (the inventory's order), so that each is dumped once however many app hosts serve its app."""
    app_hosts = list((groups or {}).get("app", []))
    return bool(app_hosts) and app_hosts[0] == host


def backup_database_urls(plan: list[Mapping[str, Any]]) -> dict[str, str]:
    """The URL of each managed database berth dumps (data: external with PostgreSQL): app name -> URL. A
    secret: written with no_log to a root-only file."""
    return {str(app["name"]): str(app["database_url"]) for app in plan or []
            if app.get("data") == "external" and app.get("postgres", True) and app.get("database_url")}


def backup_host_role(groups: Mapping[str, Any], host: str) -> str:
    """db for the host of the inventory group db, else app (an app host, or a host of an inventory
    without groups app and db, as berth's one-VPS inventories before them)."""
    return "db" if host in (groups or {}).get("db", []) else "app"


def backup_volumes_without_app(volumes: list[str], plan: list[Mapping[str, Any]]) -> list[str]:
    """The volumes of backup_volumes that no app's name owns."""
    names = [str(app["name"]) for app in plan or []]
    return [volume for volume in volumes or [] if volume_app(str(volume), names) is None]


def backup_app_dirs_holding(path: str, plan: list[Mapping[str, Any]]) -> list[str]:
    """The apps' directories that path is (or is inside of): a repository there would back itself up."""
    return [str(app["dir"]) for app in plan or [] if f"{path.rstrip('/')}/".startswith(f"{app['dir']}/")]


def _where_data_is(app: Mapping[str, Any]) -> str:
    if app.get("data") == "host":
        return "its database and Redis are on the db host (data: host): restore them there, -l <the db host>"
    if app.get("data") == "external":
        return ("its data is in a managed database (data: external): berth backs it up from the first app host "
                "but does not restore it (docs/disaster-recovery.md)")
    return "its data is in containers on the app hosts (data: local): restore it there, -l <an app host>"


def backup_restore_refusal(name: str, plan: list[Mapping[str, Any]], host_apps: list[Mapping[str, Any]],
                           host_role: str, host: str, components: list[str]) -> str:
    """Why restore.yml must not restore app `name` on this host, or "" when it may.

    name: -e app=NAME ("" when not given: allowed when the host backs up one app); plan: every app;
    host_apps: what this host backs up (backup_apps); components: backup_restore_components."""
    names = [str(app["name"]) for app in host_apps or []]
    what = "this host" if host_role == "app" else f"the db host {host}"
    if not name:
        if len(names) == 1:
            name = names[0]
        elif names:
            return f"Name the app to restore with -e app=NAME: {what} has {len(names)} apps ({', '.join(names)})."
        elif host_role == "db":
            return f"No app keeps its data on the db host {host} (data: host): nothing to restore here."
        else:
            return "There is no app on this host (berth_apps is empty): nothing to restore."
    chosen = next((app for app in host_apps or [] if app["name"] == name), None)
    if chosen is None:
        known = next((app for app in plan or [] if app["name"] == name), None)
        if known is not None and host_role == "db":
            return f"App {name} has nothing on the db host {host}: {_where_data_is(known)}."
        return (f"There is no app \"{name}\" on this host; its apps: {', '.join(names) or 'none'} "
                f"(-e app=NAME).")
    known = next((app for app in plan or [] if app["name"] == name), {})
    if host_role == "app" and known.get("data") == "external" and "postgres" in (components or []):
        others = [component for component in chosen["components"] if component != "postgres"]
        return (f"App {name}'s database is a managed one (data: external): restore.yml does not restore it "
                f"(docs/disaster-recovery.md). To restore its other parts here, ask for them: "
                f"-e '{{\"backup_restore_components\": {json.dumps(others)}}}'.")
    if not [component for component in components or [] if component in chosen["components"]]:
        where = "" if host_role == "app" else f" on {what}"
        return (f"App {name} has none of the components asked for ({', '.join(components or [])}){where}: it "
                f"has {', '.join(chosen['components'])}.")
    return ""


def backup_health_url(app: Mapping[str, Any], live_colour: str | None) -> str:
    """The URL an app host answers the app's health on: its live colour's port on 127.0.0.1 (the live colour
    file's content, blue or green; blue when the file is missing or says something else)."""
    colour = (live_colour or "").strip()
    colour = colour if colour in ("blue", "green") else "blue"
    return f"http://127.0.0.1:{app['ports'][colour]}{app['web']['health_path']}"


class FilterModule:
    def filters(self) -> dict:
        return {"backup_apps": backup_apps, "backup_host_role": backup_host_role,
                "backup_volumes_without_app": backup_volumes_without_app,
                "backup_app_dirs_holding": backup_app_dirs_holding,
                "backup_restore_refusal": backup_restore_refusal, "backup_health_url": backup_health_url,
                "backup_dumps_managed_databases": backup_dumps_managed_databases,
                "backup_database_urls": backup_database_urls}
