#!/usr/bin/env python3
"""Backup and restore figures for a database of a few hundred MB (issue 7: RPO/RTO evidence).

Runs against the backup role's Molecule host, converged first:

    cd roles/backup && molecule converge      # two apps, a local and an off-site (SFTP) repository
    scripts/bench_backup.py [--size-mb 300]   # prints the figures (and --json FILE writes them)

It fills the database of one app (shop) with a table of about --size-mb MB (generate_series, inside its
PostgreSQL container), runs playbooks/backup-now.yml (every app's backup to both repositories + restore
tests into scratch databases), destroys that app's database volume, runs playbooks/restore.yml -e app=shop,
checks that every row came back and prints backup time, restore-test time, restore time and the sizes
(those of that app). The table is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _lib import ROOT, VENV_BIN

try:
    import yaml
except ImportError:  # the system Python: run again with the project's virtualenv
    if Path(sys.executable) != VENV_BIN / "python" and (VENV_BIN / "python").exists():
        os.execv(VENV_BIN / "python", [str(VENV_BIN / "python"), __file__, *sys.argv[1:]])
    sys.exit("berth: PyYAML is missing: run scripts/setup.py first")

SCENARIO = ROOT / "roles" / "backup" / "molecule" / "default" / "molecule.yml"
# The app measured (berth_apps): its compose project, and its database and user (the plan's db_name).
PROJECT = "shop"
# One row is about 205 bytes on disk (measured: four md5 strings as text, a float, a timestamp, the tuple header).
ROW_BYTES = 205


def sh(host: str, command: str, timeout: float = 3600) -> str:
    """Run a shell command in the test host; return its stdout, fail loudly otherwise."""
    proc = subprocess.run(
        ["docker", "exec", host, "sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"bench: `{command}` failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


def psql(host: str, sql: str, project: str = PROJECT) -> str:
    pg = sh(host, f"docker compose -p {project} ps -q postgres")
    db = project.replace("-", "_")
    return sh(host, f"docker exec {pg} psql -U {db} -d {db} -At -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}")


def inventory(host: str, directory: Path) -> Path:
    """An inventory for the test host with the scenario's variables (molecule.yml's host_vars)."""
    text = SCENARIO.read_text().replace("$$", "$")
    host_vars = yaml.safe_load(text)["provisioner"]["inventory"]["host_vars"][host]
    host_vars["ansible_connection"] = "community.docker.docker"
    path = directory / "inventory.yml"
    path.write_text(yaml.safe_dump({"berth": {"children": {"app": {"hosts": {host: host_vars}}}}}))
    return path


def playbook(inventory_file: Path, name: str, *extra: str) -> float:
    """Run a playbook of playbooks/ against the inventory; return its wall time in seconds."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
        "ANSIBLE_CACHE_PLUGIN": "memory",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory_file), str(ROOT / "playbooks" / name), *extra],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"bench: {name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return seconds


def record(host: str, kind: str) -> dict[str, Any]:
    return json.loads(sh(host, f"cat /var/lib/berth/backup/last-{kind}.json"))


def fill(host: str, size_mb: int, project: str = PROJECT) -> dict[str, Any]:
    rows = size_mb * 1024 * 1024 // ROW_BYTES
    started = time.monotonic()
    psql(host, "DROP TABLE IF EXISTS bench_rows", project)
    psql(
        host,
        "CREATE TABLE bench_rows AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text)"
        " || md5((g * 31)::text) AS payload, random() AS n, now() - g * interval '1 second' AS at"
        f" FROM generate_series(1, {rows}) AS g",
        project,
    )
    psql(host, "ALTER TABLE bench_rows ADD PRIMARY KEY (id)", project)
    return {
        "rows": int(psql(host, "SELECT count(*) FROM bench_rows", project)),
        "checksum": psql(host, "SELECT sum(hashtextextended(b::text, 0)) FROM bench_rows b", project),
        "database_bytes": int(psql(host, "SELECT pg_database_size(current_database())", project)),
        "fill_seconds": round(time.monotonic() - started, 1),
    }


def destroy_database(host: str, project: str = PROJECT) -> None:
    sh(
        host,
        f"cd /opt/{project} && docker compose stop postgres && docker compose rm -f postgres"
        f" && docker volume rm {project}_postgres-data",
    )


def measure(
    host: str, size_mb: int, inv: Path | None = None, project: str = PROJECT, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Fill, back up, destroy, restore and compare, for the app `project`. Without `inv`, the backup
    scenario's host and variables; scripts/bench.py passes its own inventory, app name and extra variables."""
    with tempfile.TemporaryDirectory() as tmp:
        inv = inv or inventory(host, Path(tmp))
        data = fill(host, size_mb, project)
        backup_wall = playbook(inv, "backup-now.yml", *extra)
        backup, test = record(host, "backup"), record(host, "restore-test")
        destroy_database(host, project)
        restore_wall = playbook(inv, "restore.yml", "-e", f"backup_restore_confirm={host}", "-e", f"app={project}",
                                *extra)
        restored = record(host, "restore")
        back = {
            "rows": int(psql(host, "SELECT count(*) FROM bench_rows", project)),
            "checksum": psql(host, "SELECT sum(hashtextextended(b::text, 0)) FROM bench_rows b", project),
        }
        if (back["rows"], back["checksum"]) != (data["rows"], data["checksum"]):
            sys.exit(f"bench: the restored table differs: {back} != {data}")
        psql(host, "DROP TABLE bench_rows", project)
    # Each app has its own snapshot and restore test: the measured app's.
    app = backup["apps"][project]
    files = app["contents"]["files"]
    repos = app["repositories"]
    return {
        "database_bytes": data["database_bytes"],
        "rows": data["rows"],
        "dump_bytes": files["postgres/database.dump"]["bytes"],
        "snapshot_bytes": repos["local"]["bytes"],
        "added_packed_bytes": {name: repo["added_packed_bytes"] for name, repo in repos.items()},
        "pg_dump_seconds": app["contents"]["postgres"]["seconds"],
        "backup_run_seconds": backup["seconds"],
        "backup_per_repository_seconds": {name: repo["duration"] for name, repo in repos.items()},
        "restore_test_seconds": test["apps"][project]["seconds"],
        "backup_now_playbook_seconds": round(backup_wall, 1),
        "restore_run_seconds": restored["seconds"],
        "restore_database_seconds": restored["postgres"]["seconds"],
        "restore_playbook_seconds": round(restore_wall, 1),
        "restored_rows_match": True,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="berth-backup-trixie", help="the converged test host (container name)")
    parser.add_argument("--size-mb", type=int, default=300, help="size of the table to add, in MB")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = measure(args.host, args.size_mb)
    mib = 1024 * 1024
    print(f"database {figures['database_bytes'] / mib:.0f} MiB ({figures['rows']} rows in the bench table)")
    print(
        f"dump (pg_dump -Fc -Z0) {figures['dump_bytes'] / mib:.0f} MiB; stored per repository (deduplicated, "
        f"compressed): " + ", ".join(f"{k} {v / mib:.0f} MiB" for k, v in figures["added_packed_bytes"].items())
    )
    f = figures
    print(
        f"backup run {f['backup_run_seconds']:.0f} s (pg_dump {f['pg_dump_seconds']:.0f} s); restore test "
        f"{f['restore_test_seconds']:.0f} s; backup-now.yml {f['backup_now_playbook_seconds']:.0f} s"
    )
    print(
        f"restore run {f['restore_run_seconds']:.0f} s (database {f['restore_database_seconds']:.0f} s); "
        f"restore.yml {f['restore_playbook_seconds']:.0f} s"
    )
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
