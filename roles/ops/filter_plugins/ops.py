"""The operator commands' parsing and rendering (role ops), pure functions unit-tested in tests/test_ops_filters.py.

    {{ __ops_apps | ops_app_problem(ops_app, 'show the logs of') }}   # "" or why no app can be chosen
    {{ __ops_results | ops_status_lines }}                          # {host: berth_status result} -> lines
    {{ __ops_audit | ops_audit_merge(20) }}                         # {host: audit log text} -> newest 20, by time
    {{ __ops_records | ops_audit_lines }}                           # -> one readable line per record
    {{ ops_logs_since | ops_since }}                                # {docker, journal} forms, or {} when bad
    {{ ops_exec_command | ops_exec_argv }}                          # a string split as a shell would, or a list

berth's command-line entry imports `render_status` and `render_audit` from this file by path: keep them free
of Ansible.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

DURATION = re.compile(r"^([0-9]+)([smhd])$")
TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Terminal control sequences (docker compose logs writes "erase line" even with --no-color).
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# --- choosing the app ------------------------------------------------------------------------------


def _names(plan: Any) -> list[str]:
    return [str(app["name"]) for app in plan or []]


def app_problem(plan: Any, name: Any = "", doing: str = "act on", required: bool = True) -> str:
    """Why the app cannot be chosen from the plan (a sentence listing the apps), or "".
    required false (status): an empty name means every app."""
    names = _names(plan)
    if name:
        if str(name) in names:
            return ""
        listed = ", ".join(names) if names else "none: berth_apps is empty"
        return f"-e app=NAME must name an app of berth_apps ({listed}); got {str(name)!r}"
    if not required or len(names) == 1:
        return ""
    if not names:
        return "berth_apps is empty: there is no app to " + doing + " on this host (docs/apps.md)"
    return f"berth_apps has {len(names)} apps ({', '.join(names)}): say which one to {doing} with -e app={names[0]}"


def status_apps(plan: Any, name: Any = "") -> list[dict[str, Any]]:
    """What berth_status reads of each app (the named one, or all): never its environment."""
    keys = ("name", "project", "state_file", "live_colour_file", "state_dir", "lock_dir", "workers", "domains")
    return [{key: app[key] for key in keys} for app in plan or [] if not name or app["name"] == name]


# --- status ----------------------------------------------------------------------------------------


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _app_lines(app: Mapping[str, Any]) -> list[str]:
    live = app.get("live") or {}
    head = f"  {app['name']}: "
    if not live.get("colour") and not app.get("deployed"):
        lines = [head + "not set up on this host (no live colour, no release state)"]
    else:
        by = f" by {live['who']}" if live.get("who") else ""
        action = f" ({live['action']})" if live.get("action") else ""
        since = f" since {live['since']}" if live.get("since") else " (no release recorded yet)"
        previous = (app.get("previous") or {}).get("version")
        lines = [f"{head}live {live.get('colour') or '?'} {live.get('version') or '?'}{since}{action}{by}"
                 + (f"; previous {previous}" if previous else "; no previous release")]
        web, idle = app.get("web") or {}, app.get("idle_web") or {}
        warm = f"; previous colour {idle['service']} running (warm)" if idle.get("running") else ""
        lines.append(f"    web: {web.get('service')} {web.get('running', 0)}/{web.get('total', 1)} running{warm}")
        for worker in app.get("workers") or []:
            other = [s for s in worker.get("states") or [] if s != "running"]
            lines.append(f"    worker {worker['name']}: {worker['running']}/{worker['total']} running"
                         + (f" (also {', '.join(other)})" if other else ""))
    lock = app.get("lock")
    if lock is None:
        lines.append("    lock: free")
    elif not lock.get("known"):
        lines.append(f"    lock: HELD by an unknown holder since {lock.get('since') or '?'} (no holder.json)")
    else:
        what = lock.get("kind") or "held"
        parts = [f"    lock: {what.upper()} by {lock.get('who') or '?'} since {lock.get('since') or '?'}"]
        if lock.get("version"):
            parts.append(f"version {lock['version']}")
        if lock.get("why"):
            parts.append(f"why: {lock['why']}")
        if lock.get("until"):
            parts.append(f"until {lock['until']}" + (" (EXPIRED)" if lock.get("expired") else ""))
        lines.append(", ".join(parts))
    maintenance = app.get("maintenance")
    if maintenance is None:
        lines.append("    maintenance: off")
    else:
        details = ", ".join(f"{key} {maintenance[key]}" if key != "why" else f"why: {maintenance[key]}"
                            for key in ("who", "since", "why") if maintenance.get(key))
        lines.append("    maintenance: ON" + (f" ({details})" if details else ""))
    return lines


def _backup_line(label: str, entries: list[Mapping[str, Any]]) -> list[str]:
    if not entries:
        return [f"  {label}: none recorded on this host"]
    return [f"  {label} {e['app']} ({e['repository'] or '-'}): last success {_age(e.get('age_seconds'))}, "
            f"last run {'ok' if e.get('ok') else 'FAILED'}" for e in entries]


def render_status(results: Mapping[str, Any]) -> str:
    """{host: berth_status result} -> the text `status` prints, one block per host."""
    lines: list[str] = []
    for name in sorted(results):
        result = results[name] or {}
        if result.get("failed") or result.get("unreachable"):
            lines += [f"{name}: status could not be read: {result.get('msg', 'failed')}", ""]
            continue
        now = result.get("now")
        lines.append(f"{name}" + (f" (at {datetime.fromtimestamp(now, UTC):%Y-%m-%dT%H:%M:%SZ})"
                                   if now else ""))
        host = result.get("host") or {}
        if host.get("docker"):
            lines.append(f"  docker: {host['docker']}")
        for app in result.get("apps") or []:
            lines += _app_lines(app)
        lines += _backup_line("backup", host.get("backups") or [])
        lines += _backup_line("restore test", host.get("restore_tests") or [])
        for cert in host.get("certificates") or []:
            domains = ", ".join(cert.get("domains") or [cert["name"]])
            if cert.get("error"):
                lines.append(f"  certificate {domains}: unreadable: {cert['error']}")
            else:
                warn = " (RENEWAL OVERDUE)" if (cert.get("days_left") or 0) < 20 else ""
                lines.append(f"  certificate {domains}: expires {cert['not_after']} "
                             f"(in {cert['days_left']} days){warn}")
        for disk in host.get("disks") or []:
            lines.append(f"  disk {disk['path']}: {_size(disk['free'])} free of {_size(disk['total'])} "
                         f"({disk['used_percent']}% used)")
        memory = host.get("memory") or {}
        if memory.get("total"):
            lines.append(f"  memory: {_size(memory['available'])} available of {_size(memory['total'])} "
                         f"({memory['available_percent']}%)")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def status_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """{host: registered berth_status result} -> {host: {now, host, apps}} (what -e status_format=json prints)."""
    shown = {}
    for name, result in results.items():
        result = result or {}
        keys = ("msg", "failed") if result.get("failed") or result.get("unreachable") else ("now", "host", "apps")
        shown[name] = {key: result[key] for key in keys if key in result}
    return shown


def status_lines(results: Mapping[str, Any]) -> list[str]:
    return render_status(results).splitlines()


# --- audit -----------------------------------------------------------------------------------------


def _epoch(record: Mapping[str, Any]) -> float:
    if isinstance(record.get("at_epoch"), (int, float)) or str(record.get("at_epoch", "")).isdigit():
        return float(record["at_epoch"])
    text = str(record.get("at") or record.get("since") or "")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return 0.0


def audit_merge(logs: Mapping[str, Any], lines: Any = 20, app: Any = "") -> list[dict[str, Any]]:
    """{host: the text of the end of its audit log} -> the newest `lines` records of all hosts (of the app
    `app`, when one is named), oldest first, each with `host` (the inventory name) set. Lines that are not
    JSON objects are left out."""
    records = []
    for host, text in (logs or {}).items():
        for order, line in enumerate(str(text or "").splitlines()):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (not app or record.get("app") == app):
                records.append((_epoch(record), host, order, {**record, "host": host}))
    records.sort(key=lambda item: item[:3])
    count = int(lines)
    return [item[3] for item in records[-count:]] if count > 0 else []


def audit_line(record: Mapping[str, Any]) -> str:
    """One record of the audit log as a line: time, host, app, what, result, versions, who, details."""
    at = record.get("at") or record.get("since") or "?"
    action = record.get("action") or record.get("event") or record.get("kind") or "?"
    result = record.get("result") or ""
    what = f"{record.get('version') or '-'}"
    if record.get("colour"):
        what += f" ({record['colour']})"
    moved = record.get("from") or record.get("live") or {}
    if isinstance(moved, Mapping) and moved.get("version"):
        what += f" from {moved['version']}" + (f" ({moved['colour']})" if moved.get("colour") else "")
    parts = [str(at), str(record.get("host", "")), str(record.get("app", "-")), str(action),
             str(result).upper() if result == "failed" else str(result), what]
    if record.get("who"):
        parts.append(f"by {record['who']}")
    holder = record.get("holder")
    if isinstance(holder, Mapping) and holder:
        # a lock's record (role release): whose lock it was, and why it ended (released, expired)
        parts.append(f"lock of {holder.get('who') or '?'}" + (f" ({holder['why']})" if holder.get("why") else ""))
        if record.get("reason"):
            parts.append(str(record["reason"]))
    if record.get("stage"):
        parts.append(f"stage: {record['stage']}")
    if record.get("why"):
        parts.append(f"why: {record['why']}")
    migration = record.get("migration")
    if isinstance(migration, Mapping):
        parts.append(f"migration rc {migration.get('rc')}")
    return "  ".join(part for part in parts if part)


def render_audit(records: list[Mapping[str, Any]]) -> str:
    return "\n".join(audit_line(record) for record in records) or "no release recorded in the audit logs"


def audit_lines(records: list[Mapping[str, Any]]) -> list[str]:
    return render_audit(records).splitlines()


# --- logs ------------------------------------------------------------------------------------------


def since(value: Any) -> dict[str, str]:
    """logs_since for docker and journalctl: "" (no limit), a duration (10m, 2h, 30s, 1d) or an ISO-8601 UTC
    time (2026-11-27T14:03:11Z, fractions allowed: what `docker logs --timestamps` prints, so that a
    follower can poll from the last line it saw). {} when it is none of those."""
    text = str(value if value is not None else "").strip()
    if not text:
        return {"docker": "", "journal": ""}
    match = DURATION.match(text)
    if match:
        seconds = int(match[1]) * SECONDS[match[2]]
        return {"docker": f"{seconds}s", "journal": f"-{seconds}s"}
    if TIMESTAMP.match(text):
        whole, _, fraction = text[:-1].partition(".")
        journal = whole.replace("T", " ") + (f".{fraction[:6]}" if fraction else "") + " UTC"
        return {"docker": text, "journal": journal}
    return {}


def logs_argv(app: Mapping[str, Any], process: str, colour: str, name: str = "", since_value: Any = "",
              tail: Any = 100) -> list[str]:
    """The command that prints the logs: `docker compose logs` of the live colour's web or workers (all, or
    the worker `name`), or journalctl of the app's job units (all, or the job `name`)."""
    when = since(since_value)
    tail = int(tail)
    if process == "job":
        units = [job["unit"] for job in app.get("jobs") or [] if not name or job["name"] == name]
        argv = ["journalctl", "--no-pager", "-o", "short-iso-precise", "-n", str(tail)]
        argv += [f"--unit={unit}.service" for unit in units]
        return argv + ([f"--since={when['journal']}"] if when.get("journal") else [])
    if process == "worker":
        services = [w["services"][colour] for w in app.get("workers") or [] if not name or w["name"] == name]
    else:
        services = [app["web"]["services"][colour]]
    argv = ["docker", "compose", "--project-directory", app["dir"], "-p", app["project"], "logs", "--no-color",
            "--timestamps", f"--tail={tail}"]
    return argv + ([f"--since={when['docker']}"] if when.get("docker") else []) + services


def logs_problem(app: Mapping[str, Any], process: str, worker: str = "", job: str = "") -> str:
    """Why these logs cannot be shown (a sentence listing the app's workers or jobs), or ""."""
    workers = [w["name"] for w in app.get("workers") or []]
    jobs = [j["name"] for j in app.get("jobs") or []]
    if process == "worker":
        if not workers:
            return f"the app {app['name']} has no workers"
        if worker and worker not in workers:
            return f"logs_worker must name a worker of {app['name']} ({', '.join(workers)}); got {worker!r}"
    if process == "job":
        if not jobs:
            return f"the app {app['name']} has no jobs"
        if job and job not in jobs:
            return f"logs_job must name a job of {app['name']} ({', '.join(jobs)}); got {job!r}"
    return ""


def plain_lines(lines: Any) -> list[str]:
    """Output lines without terminal control sequences, as they print readably."""
    return [ANSI.sub("", str(line)) for line in lines or []]


# --- exec ------------------------------------------------------------------------------------------


def exec_argv(command: Any) -> list[str]:
    """exec_command as an argument list: a string is split as a POSIX shell would (no shell runs it), a list
    is taken as it is. [] when it is empty or cannot be split (unbalanced quotes)."""
    if isinstance(command, (list, tuple)):
        return [str(part) for part in command]
    try:
        return shlex.split(str(command or ""))
    except ValueError:
        return []


def shell_join(argv: Any) -> str:
    """An argument list as a shell would need it typed (to name the command in a message)."""
    return shlex.join(str(part) for part in argv or [])


class FilterModule:
    def filters(self) -> dict:
        return {
            "ops_app_problem": app_problem,
            "ops_status_apps": status_apps,
            "ops_status_lines": status_lines,
            "ops_status_results": status_results,
            "ops_audit_merge": audit_merge,
            "ops_audit_lines": audit_lines,
            "ops_since": since,
            "ops_logs_argv": logs_argv,
            "ops_logs_problem": logs_problem,
            "ops_exec_argv": exec_argv,
            "ops_plain_lines": plain_lines,
            "ops_shell_join": shell_join,
        }
