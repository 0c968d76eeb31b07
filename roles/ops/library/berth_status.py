#!/usr/bin/python3
"""Ansible module (runs on the host): everything `status` shows about a host and its apps, read in one
round trip. It only reads (files, `docker ps`, openssl): changed is always false, check mode is the same run.

The helpers below are pure functions of what they read, unit-tested in tests/test_ops_status.py.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: berth_status
short_description: Read-only status of a berth host and its apps (releases, workers, lock, backups, certificates)
description:
  - Reads, per app, the release state file, the live colour file, the audit log, the release lock and the
    maintenance flag, and the app's containers (one C(docker ps) for all apps, by their compose labels);
    per host the backup and restore-test metrics of role backup, the certificates under
    O(certificates_dir), the free space of O(disk_paths) and C(MemAvailable).
  - Writes nothing; C(changed) is always false and check mode runs the same reads.
options:
  apps:
    description:
      - The apps to report, as C(berth_apps | berth_apps_plan) gives them (only the keys C(name),
        C(project), C(state_file), C(live_colour_file), C(state_dir), C(lock_dir), C(workers), C(domains)
        are read; never the environment).
    type: list
    elements: dict
    default: []
  audit_log:
    description: The release audit log (one JSON object per line).
    type: path
    default: /var/log/berth/release.log
  metrics_dir:
    description: node_exporter's textfile directory (berth_backup.prom, berth_backup_restore_test.prom).
    type: path
    default: /var/lib/prometheus/node-exporter
  certificates_dir:
    description: The directory of the certificates, one sub-directory with C(cert.pem) per certificate.
    type: path
    default: /etc/letsencrypt/live
  disk_paths:
    description: Paths whose file system's free space is reported (missing ones are left out).
    type: list
    elements: path
    default: [/, /var/lib/docker]
"""

RETURN = r"""
now:
  description: The host's clock (Unix seconds) when the status was read.
  type: int
  returned: always
host:
  description: >-
    What belongs to the host. C(disks): list of {path, total, free, used_percent} (bytes).
    C(memory): {total, available, available_percent} (bytes, from /proc/meminfo).
    C(certificates): list of {name (the directory), domains, not_after (ISO-8601 UTC), days_left, error}.
    C(backups) and C(restore_tests): list of {app, repository, last_success (Unix s, 0 never),
    age_seconds (null when never), ok (last run succeeded)} from role backup's metrics; [] when none.
    C(docker): "" or the error of C(docker ps).
  type: dict
  returned: always
apps:
  description: >-
    One entry per app, in the order given: name; deployed (a state file exists); live {colour (the live
    colour file), version, image, since (ISO-8601 of the live release), action, who ("" when unknown)};
    previous {version, image} or null; releases (retained versions, newest first); web {service,
    running, total} of the live colour and idle_web {service, running} (the warm previous colour);
    workers list of {name, service, running, total (the configured replicas), containers, states}
    of the live colour; lock null or {who, why, kind, since, until, version, expired, known}
    (known false: the lock directory has no holder.json); maintenance null or {who, why, since}.
  type: list
  elements: dict
  returned: always
"""

import json  # noqa: E402 - after the documentation, as Ansible expects
import os  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# Hosts may run Python 3.10 (Ubuntu 22.04), which has no datetime.UTC.
UTC = timezone.utc  # noqa: UP017
# How much of the end of the audit log is read for the last release of each app.
AUDIT_TAIL_BYTES = 1 << 20
COMPOSE_FORMAT = (
    '{{.Label "com.docker.compose.project"}}\t{{.Label "com.docker.compose.service"}}\t'
    '{{.Label "com.docker.compose.oneoff"}}\t{{.State}}'
)
PROM_LINE = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)\s*$')
PROM_LABEL = re.compile(r'(\w+)="([^"]*)"')
Runner = Callable[[list[str]], tuple[int, str, str]]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float | None:
    """Unix seconds of an ISO-8601 UTC time ("2026-11-27T14:03:11Z"), or None."""
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(read_text(path) or "")
    except ValueError:
        return None


def last_ok_releases(lines: Iterable[str]) -> dict[str, dict]:
    """app -> the last successful release line of the audit log (lines: its text lines, oldest first)."""
    found = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("result") == "ok" and record.get("app"):
            found[record["app"]] = record
    return found


def tail_lines(path: str | Path, size: int = AUDIT_TAIL_BYTES) -> list[str]:
    """The whole lines of the last `size` bytes of a file ([] when it cannot be read)."""
    try:
        with Path(path).open("rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, end - size))
            data = handle.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[1:] if end > size else lines


def parse_prom(text: str) -> list[tuple[str, dict[str, str], float]]:
    """node_exporter textfile lines -> list of (metric name, labels, value)."""
    samples = []
    for line in text.splitlines():
        match = PROM_LINE.match(line.strip())
        if match:
            try:
                value = float(match["value"])
            except ValueError:
                continue
            samples.append((match["name"], dict(PROM_LABEL.findall(match["labels"])), value))
    return samples


def backup_results(samples: list[tuple[str, dict[str, str], float]], prefix: str, now: float) -> list[dict]:
    """Per app and repository: the last success, its age and whether the last run succeeded."""
    success, last_run = f"{prefix}_last_success_timestamp_seconds", f"{prefix}_last_run_success"
    entries: dict[tuple[str, str], dict] = {}
    for name, labels, value in samples:
        if name not in (success, last_run) or "app" not in labels:
            continue
        key = (labels["app"], labels.get("repository", ""))
        entry = entries.setdefault(key, {"app": key[0], "repository": key[1], "last_success": 0,
                                         "age_seconds": None, "ok": False})
        if name == success:
            entry["last_success"] = int(value)
            entry["age_seconds"] = int(now - value) if value > 0 else None
        else:
            entry["ok"] = value == 1
    return [entries[key] for key in sorted(entries)]


def compose_containers(output: str) -> dict[tuple[str, str], list[str]]:
    """`docker ps` lines (COMPOSE_FORMAT) -> {(project, service): [state, ...]}, one-off containers left out."""
    found: dict[tuple[str, str], list[str]] = {}
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or parts[2] == "True":
            continue
        found.setdefault((parts[0], parts[1]), []).append(parts[3])
    return found


def lock_status(lock_dir: str, now: float) -> dict | None:
    """None when the app's release lock is free; else its holder (holder.json), known false without it."""
    lock = Path(lock_dir)
    if not lock.is_dir():
        return None
    holder = read_json(lock / "holder.json")
    if not isinstance(holder, dict):
        try:
            since = iso(lock.stat().st_mtime)
        except OSError:
            since = ""
        return {"known": False, "who": "", "why": "", "kind": "", "since": since, "until": "", "version": "",
                "expired": False}
    until = str(holder.get("until") or "")
    until_epoch = parse_iso(until) if until else None
    return {"known": True, **{key: str(holder.get(key) or "") for key in ("who", "why", "kind", "since", "version")},
            "until": until, "expired": until_epoch is not None and until_epoch < now}


def maintenance_status(state_dir: str) -> dict | None:
    """None when the app's maintenance flag is off; else what the flag file says ({} content allowed)."""
    path = Path(state_dir) / "maintenance"
    if not path.exists():
        return None
    content = read_json(path)
    content = content if isinstance(content, dict) else {}
    return {key: str(content.get(key) or "") for key in ("who", "why", "since")}


def app_status(app: dict, containers: dict[tuple[str, str], list[str]], releases: dict[str, dict]) -> dict:
    """One app's entry of the result (see RETURN), without its lock."""
    state = read_json(app["state_file"])
    state = state if isinstance(state, dict) else None
    live = (state or {}).get("live") or {}
    colour = (read_text(app["live_colour_file"]) or "").strip() or str(live.get("colour", ""))
    idle = {"blue": "green", "green": "blue"}.get(colour, "")
    retained = [r for r in (state or {}).get("releases") or [] if isinstance(r, dict)]
    previous = retained[1] if len(retained) > 1 else None
    record = releases.get(app["name"], {})
    project = app.get("project") or app["name"]

    def running(service: str) -> int:
        return sum(1 for state in containers.get((project, service), []) if state == "running")

    workers = []
    for worker in app.get("workers") or []:
        service = worker["services"].get(colour, "") if colour else ""
        states = containers.get((project, service), [])
        workers.append({"name": worker["name"], "service": service, "running": running(service),
                        "total": int(worker.get("replicas", 1)), "containers": len(states),
                        "states": sorted(set(states))})
    web, idle_web = (f"web-{colour}" if colour else ""), (f"web-{idle}" if idle else "")
    return {
        "name": app["name"],
        "deployed": state is not None,
        "live": {
            "colour": colour,
            "version": str(live.get("version", "")),
            "image": str(live.get("image", "")),
            "since": str(live.get("at", "")),
            "action": str(live.get("action", "")),
            # who: the release record's own field when it has one, else the audit log's last ok line of the app.
            "who": str(live.get("who") or record.get("who") or ""),
        },
        "previous": {"version": str(previous.get("version", "")), "image": str(previous.get("image", ""))}
        if previous else None,
        "releases": [str(r.get("version", "")) for r in retained],
        "web": {"service": web, "running": running(web), "total": 1},
        "idle_web": {"service": idle_web, "running": running(idle_web)},
        "workers": workers,
        "lock": None,
        "maintenance": maintenance_status(app["state_dir"]),
    }


def disk_status(paths: list[str]) -> list[dict]:
    found = []
    for path in paths:
        try:
            stat = os.statvfs(path)
        except OSError:
            continue
        total, free = stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize
        used = round(100 * (total - free) / total, 1) if total else 0.0
        found.append({"path": path, "total": total, "free": free, "used_percent": used})
    return found


def memory_status(text: str) -> dict:
    """/proc/meminfo's text -> total and available bytes."""
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[name] = int(fields[0]) * 1024
    total, available = values.get("MemTotal", 0), values.get("MemAvailable", 0)
    return {"total": total, "available": available,
            "available_percent": round(100 * available / total, 1) if total else 0.0}


def openssl_certificate(text: str) -> tuple[float, list[str]]:
    """`openssl x509 -noout -enddate -ext subjectAltName` output -> (not_after epoch, domains)."""
    match = re.search(r"notAfter=(.+)", text)
    if not match:
        raise ValueError("openssl printed no notAfter")
    not_after = datetime.strptime(" ".join(match[1].split()), "%b %d %H:%M:%S %Y %Z")
    domains = re.findall(r"DNS:([^,\s]+)", text)
    return not_after.replace(tzinfo=UTC).timestamp(), domains


def read_certificate(path: str, run: Runner) -> tuple[float, list[str]]:
    """(not_after epoch, domains) of a PEM certificate: with the cryptography package when the host has it
    (no process to start), else with openssl."""
    try:
        from cryptography import x509
    except ImportError:
        x509 = None
    if x509 is not None:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=UTC)
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            domains = names.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            domains = []
        return not_after.timestamp(), list(domains)
    rc, out, err = run(["openssl", "x509", "-noout", "-enddate", "-ext", "subjectAltName", "-in", path])
    if rc != 0:
        raise ValueError(err.strip() or f"openssl exited with {rc}")
    return openssl_certificate(out)


def certificate_status(directory: str, now: float, run: Runner) -> list[dict]:
    found = []
    for path in sorted(Path(directory).glob("*/cert.pem")):
        name = path.parent.name
        entry = {"name": name, "domains": [name], "not_after": "", "days_left": None, "error": ""}
        try:
            not_after, domains = read_certificate(str(path), run)
            entry.update(domains=domains or [name], not_after=iso(not_after),
                         days_left=round((not_after - now) / 86400, 1))
        except (OSError, ValueError) as exc:
            entry["error"] = str(exc)
        found.append(entry)
    return found


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "apps": {"type": "list", "elements": "dict", "default": []},
            "audit_log": {"type": "path", "default": "/var/log/berth/release.log"},
            "metrics_dir": {"type": "path", "default": "/var/lib/prometheus/node-exporter"},
            "certificates_dir": {"type": "path", "default": "/etc/letsencrypt/live"},
            "disk_paths": {"type": "list", "elements": "path", "default": ["/", "/var/lib/docker"]},
        },
        supports_check_mode=True,
    )
    params = module.params
    now = time.time()

    def run(argv: list[str]) -> tuple[int, str, str]:
        # A program that is not there is an answer (reported), not a failure of the whole status.
        if not module.get_bin_path(argv[0]):
            return 127, "", f"{argv[0]} is not installed"
        return module.run_command(argv, environ_update={"LC_ALL": "C"})

    docker_error, containers = "", {}
    if params["apps"]:
        rc, out, err = run(["docker", "ps", "--all", "--filter", "label=com.docker.compose.project",
                            "--format", COMPOSE_FORMAT])
        if rc == 0:
            containers = compose_containers(out)
        else:
            docker_error = err.strip() or f"docker ps exited with {rc}"
    releases = last_ok_releases(tail_lines(params["audit_log"]))
    apps = []
    for app in params["apps"]:
        entry = app_status(app, containers, releases)
        entry["lock"] = lock_status(app["lock_dir"], now)
        apps.append(entry)
    metrics = Path(params["metrics_dir"])
    samples = []
    for name in ("berth_backup.prom", "berth_backup_restore_test.prom"):
        samples += parse_prom(read_text(metrics / name) or "")
    host = {
        "disks": disk_status(params["disk_paths"]),
        "memory": memory_status(read_text("/proc/meminfo") or ""),
        "certificates": certificate_status(params["certificates_dir"], now, run),
        "backups": backup_results(samples, "berth_backup", now),
        "restore_tests": backup_results(samples, "berth_backup_restore_test", now),
        "docker": docker_error,
    }
    module.exit_json(changed=False, now=int(now), host=host, apps=apps)


if __name__ == "__main__":
    main()
