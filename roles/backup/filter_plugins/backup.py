"""The backup role's decisions per app, from the plan (unit-tested in tests/test_backup_program.py).

    {{ __backup_apps | backup_apps(backup_volumes, backup_exclude) }}   # the apps of config.json
    {{ backup_volumes | backup_volumes_without_app(__backup_apps) }}    # volumes no app owns
    {{ backup_local_repository | backup_app_dirs_holding(__backup_apps) }}  # app directories it is inside

Each app of `berth_apps | berth_apps_plan` is backed up on its own (its own restic snapshot, tagged
with its name): its PostgreSQL and Redis when it has them (compose services `postgres` and `redis` of
the project /opt/<app>), its directory /opt/<app> without /opt/<app>/images (where earlier berth releases
kept image archives; app_stack keeps them in /var/lib/berth/images, which is not backed up), and
the volumes of `backup_volumes` named after it: `<app>_…` (compose's name for a volume of the
project) or `<app>-…`. When two apps' names fit (shop and shop-admin for shop-admin-uploads) the
longer one owns the volume. A volume named after no app is refused by the input checks. The result
holds no environment value, so loops over it need no no_log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def volume_app(volume: str, names: Iterable[str]) -> str | None:
    """The app a volume belongs to by its name (<app>_… or <app>-…; the longest app name wins), or None."""
    owners = [name for name in names if volume.startswith((f"{name}_", f"{name}-"))]
    return max(owners, key=len) if owners else None


def backup_apps(plan: list[Mapping[str, Any]], volumes: list[str], exclude: list[str]) -> list[dict[str, Any]]:
    """What berth-backup needs of each app (config.json's apps)."""
    names = [str(app["name"]) for app in plan or []]
    return [
        {
            "name": app["name"],
            "project": app["project"],
            "postgres_service": "postgres" if app["postgres"] else None,
            "redis_service": "redis" if app["redis"] else None,
            "paths": [app["dir"]],
            "exclude": [f"{app['dir']}/images", *(exclude or [])],
            "volumes": [volume for volume in volumes or [] if volume_app(volume, names) == app["name"]],
        }
        for app in plan or []
    ]


def backup_volumes_without_app(volumes: list[str], plan: list[Mapping[str, Any]]) -> list[str]:
    """The volumes of backup_volumes that no app's name owns."""
    names = [str(app["name"]) for app in plan or []]
    return [volume for volume in volumes or [] if volume_app(str(volume), names) is None]


def backup_app_dirs_holding(path: str, plan: list[Mapping[str, Any]]) -> list[str]:
    """The apps' directories that path is (or is inside of): a repository there would back itself up."""
    return [str(app["dir"]) for app in plan or [] if f"{path.rstrip('/')}/".startswith(f"{app['dir']}/")]


class FilterModule:
    def filters(self) -> dict:
        return {"backup_apps": backup_apps, "backup_volumes_without_app": backup_volumes_without_app,
                "backup_app_dirs_holding": backup_app_dirs_holding}
