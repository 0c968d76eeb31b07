"""app_jobs's decisions (unit-tested in tests/test_job_program.py).

    {{ berth_apps | berth_apps_plan | app_jobs_list(metrics_dir, config_dir, state_dir) }}
    {{ unit_file_paths | app_jobs_stale(wanted_units, config_dir, state_dir, metrics_dir) }}

`app_jobs_list` gives one entry per job of every app: its unit, schedule and timeout, and the
configuration its program (files/berth_job.py) reads. No environment value is in it, so loops over it
need no no_log. `app_jobs_stale` names the job units on the host that no job of `berth_apps` wants any
more, with their files: only units named berth-job-*, as only those are this role's.
"""

from __future__ import annotations

import re
from typing import Any

SYSTEMD_DIR = "/etc/systemd/system"
_UNIT_FILE = re.compile(r"^(berth-job-[a-z0-9-]+)\.(service|timer)$")


def jobs(apps: Any, metrics_dir: str, config_dir: str, state_dir: str) -> list[dict[str, Any]]:
    """One entry per job of every app of the plan (`berth_apps | berth_apps_plan`)."""
    found = []
    for app in apps or []:
        for job in app.get("jobs") or []:
            unit = str(job["unit"])
            config = {
                "app": app["name"],
                "job": job["name"],
                "unit": unit,
                "project_dir": app["dir"],
                "live_colour_file": app["live_colour_file"],
                "services": dict(app["web"]["services"]),
                "command": [str(part) for part in job["command"]],
                "schedule": str(job["schedule"]),
                "timeout": int(job["timeout"]),
                "lock": job["lock"],
                "state_file": f"{state_dir}/{unit}.json",
                "metrics_file": f"{metrics_dir}/{unit}.prom",
            }
            found.append({
                "unit": unit,
                "app": app["name"],
                "job": job["name"],
                "schedule": config["schedule"],
                "timeout": config["timeout"],
                "config_file": f"{config_dir}/{unit}.json",
                "config": config,
            })
    return found


def stale(paths: Any, wanted: Any, config_dir: str, state_dir: str, metrics_dir: str) -> list[dict[str, Any]]:
    """The job units (berth-job-<app>-<job>) with a .service or .timer among `paths` that are not `wanted`,
    sorted, each with every file the role and the program made for it."""
    names = set()
    for path in paths or []:
        match = _UNIT_FILE.match(str(path).rsplit("/", 1)[-1])
        if match:
            names.add(match.group(1))
    keep = {str(unit) for unit in wanted or []}
    return [
        {"unit": unit, "files": [f"{SYSTEMD_DIR}/{unit}.service", f"{SYSTEMD_DIR}/{unit}.timer",
                                 f"{config_dir}/{unit}.json", f"{state_dir}/{unit}.json",
                                 f"{metrics_dir}/{unit}.prom"]}
        for unit in sorted(names - keep)
    ]


def duplicates(items: Any) -> list[str]:
    """The values that appear more than once, sorted (two jobs whose units would be the same)."""
    seen: dict[str, int] = {}
    for item in items or []:
        seen[str(item)] = seen.get(str(item), 0) + 1
    return sorted(name for name, count in seen.items() if count > 1)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"app_jobs_list": jobs, "app_jobs_stale": stale, "app_jobs_duplicates": duplicates}

