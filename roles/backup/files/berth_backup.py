#!/usr/bin/python3
"""berth-backup: back up, test-restore and restore the apps of a berth host with restic.

Installed by the berth `backup` role as /usr/local/sbin/berth-backup and configured by
/etc/berth/backup/config.json (written by the role from berth_apps). Python standard library only;
it drives `docker` and `restic`.

Each app (its own compose project /opt/<app>) gets its own restic snapshot per run, tagged `berth`
and `app=<app>`: restores, the restore test and retention (restic forget groups by host and tags)
then work per app, and a failed app never holds back another app's backup.

    berth-backup run [--print-record]
        The scheduled backup, app after app: a check that the app's dumps fit in the staging
        directory with backup_staging_reserve_mb left free (else nothing of that app is written);
        pg_dump of its running PostgreSQL container (custom format, one exported snapshot for the
        dump and the row counts/checksums), a fresh Redis RDB, its volumes and paths -> `restic
        backup` to every repository; then forget/prune and check once per repository. One app's
        failure fails the run but not the other apps. Writes a record, the state and the
        node_exporter metrics (per app and repository). Within 3 minutes of boot it first waits
        for the apps' PostgreSQL and Redis.
    berth-backup verify [--app NAME] [--repository NAME] [--snapshot ID] [--print-record]
        Restore test of every app (or one): its latest snapshot's dump into a scratch PostgreSQL
        container (no network) and its RDB into a scratch Redis; row counts and checksums must equal
        the ones in the manifest. One result per app.
    berth-backup restore --app NAME --components postgres,redis,volumes[,paths] [--repository NAME]
                         [--snapshot ID]
        Restore one app's snapshot into its live stack. The app's own services must be stopped
        (restore.yml does it). --app may be left out when there is one app.
    berth-backup snapshots [--repository NAME] [--app NAME]   the snapshots of a repository (JSON)
    berth-backup init [--dry-run]                   create missing repositories (JSON: name -> state)
    berth-backup restic NAME [RESTIC ARGS...]       run restic against a configured repository
    berth-backup unit-failed UNIT                   OnFailure= of the units: record a run that could not
                                                    record itself (killed, timed out, locked out)

Scheduled by systemd timers (berth-backup.timer, berth-backup-verify.timer; Persistent=true, so a run
missed while the host was down runs at boot). Exit status: 0 success; 1 failed; 2 restore failed before
it changed anything; 75 another run holds the lock. Errors go to stderr (the unit's journal) and to
syslog (journalctl -t berth-backup); records and metrics show every failure.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import logging.handlers
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CONFIG_FILE = Path("/etc/berth/backup/config.json")
STATE_DIR = Path("/var/lib/berth/backup")
STAGING = STATE_DIR / "staging"
TAG = "berth"
EXIT_FAILED = 1
EXIT_UNTOUCHED = 2
EXIT_LOCKED = 75
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMPONENTS = ("postgres", "redis", "volumes", "paths")
# The same text form of every value in the source and in a restored copy, whatever the server's defaults.
PG_SESSION = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
    "SET extra_float_digits = 1; SET bytea_output = 'hex';"
)
PG_TABLES = (
    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1;"
)
LOG = logging.getLogger("berth-backup")


class BackupError(Exception):
    """A step failed. The message says which and why, and never holds a secret."""


class LockedError(Exception):
    """Another run holds the lock."""


@dataclass(frozen=True)
class Repository:
    name: str
    url: str
    options: tuple[str, ...]
    env_file: str | None


@dataclass(frozen=True)
class App:
    """One app of berth_apps: its compose project, data services and files (the role derives them)."""

    name: str
    project: str
    postgres_service: str | None
    redis_service: str | None
    paths: tuple[str, ...]
    exclude: tuple[str, ...]
    volumes: tuple[str, ...]

    @property
    def tag(self) -> str:
        """The restic tag of the app's snapshots (besides TAG)."""
        return f"app={self.name}"

    @classmethod
    def load(cls, data: dict[str, Any]) -> App:
        return cls(
            name=data["name"],
            project=data.get("project") or data["name"],
            postgres_service=data.get("postgres_service"),
            redis_service=data.get("redis_service"),
            paths=tuple(data.get("paths", [])),
            exclude=tuple(data.get("exclude", [])),
            volumes=tuple(data.get("volumes", [])),
        )


def choose_app(apps: tuple[App, ...], name: str | None) -> App:
    """The app called name; with no name, the only app (several apps need a name)."""
    names = ", ".join(app.name for app in apps) or "none"
    if not name:
        if len(apps) == 1:
            return apps[0]
        raise BackupError(f"name the app (--app NAME): this host has several apps ({names})" if apps
                          else "this host has no app to back up or restore (berth_apps is empty)")
    for app in apps:
        if app.name == name:
            return app
    raise BackupError(f"no app named {name!r} on this host (its apps: {names})")


@dataclass(frozen=True)
class Config:
    host: str
    apps: tuple[App, ...]
    repositories: tuple[Repository, ...]
    password_file: str
    keep: dict[str, int]
    prune: bool
    check: bool
    check_read_data_subset: str
    cache_dir: str
    metrics_dir: Path
    records_keep: int
    restore_test_repository: str
    wait_timeout: int
    staging_reserve: int

    @classmethod
    def load(cls, path: Path) -> Config:
        data = json.loads(path.read_text())
        repos = tuple(
            Repository(r["name"], r["url"], tuple(r.get("options", [])), r.get("env_file"))
            for r in data["repositories"]
        )
        return cls(
            host=data["host"],
            apps=tuple(App.load(app) for app in data.get("apps", [])),
            repositories=repos,
            password_file=data["password_file"],
            keep={k: int(v) for k, v in data["keep"].items()},
            prune=bool(data.get("prune", True)),
            check=bool(data.get("check", True)),
            check_read_data_subset=data.get("check_read_data_subset", ""),
            cache_dir=data.get("cache_dir", "/var/cache/berth-backup"),
            metrics_dir=Path(data["metrics_dir"]),
            records_keep=int(data.get("records_keep", 200)),
            restore_test_repository=data.get("restore_test_repository") or repos[0].name,
            wait_timeout=int(data.get("wait_timeout", 600)),
            staging_reserve=int(data.get("staging_reserve_bytes", 1 << 30)),
        )

    def repository(self, name: str | None) -> Repository:
        wanted = name or self.restore_test_repository
        for repo in self.repositories:
            if repo.name == wanted:
                return repo
        names = ", ".join(r.name for r in self.repositories)
        raise BackupError(f"no repository named {wanted!r} (configured: {names})")


# --- small helpers -------------------------------------------------------------------------------


def tail(data: bytes | str | None, limit: int = 800) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
    text = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text[-limit:] if text else "(no output)"


def run(
    argv: list[str],
    what: str,
    *,
    env: dict[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | int = subprocess.PIPE,
    timeout: float | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command; on failure raise BackupError naming `what` with the end of its stderr."""
    LOG.debug("run: %s", " ".join(argv[:4]))
    try:
        proc = subprocess.run(
            argv, env=env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BackupError(f"{what}: no answer after {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        raise BackupError(f"{what} failed (exit {proc.returncode}): {tail(proc.stderr)}")
    return proc


def out(argv: list[str], what: str, **kwargs: Any) -> str:
    return run(argv, what, **kwargs).stdout.decode().strip()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file so that readers see the old or the new content, never a part (temp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def read_env_file(path: str) -> dict[str, str]:
    """KEY=value lines (values optionally in single quotes), as the role writes them."""
    values = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            if len(value) >= 2 and value[0] == value[-1] == "'":
                value = value[1:-1]
            values[key.strip()] = value
    return values


def now_iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def empty_dir(path: Path) -> None:
    """Remove what is inside path (path itself may be a mount point and stays)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextlib.contextmanager
def lock(name: str) -> Iterator[None]:
    """One run at a time (flock on a file under the state directory; released when the process ends)."""
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (STATE_DIR / name).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockedError(f"another berth-backup run holds {STATE_DIR / name}") from exc
        yield


def wait_until(what: str, timeout: float, probe: Any, interval: float = 0.5) -> Any:
    """Call probe() until it returns something true; BackupError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BackupError(f"{what}: not reached after {timeout:.0f} s")
        time.sleep(interval)


# --- docker --------------------------------------------------------------------------------------


def project_containers(app: App, service: str | None = None, *, running: bool = True) -> list[str]:
    argv = ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={app.project}"]
    if service:
        argv += ["--filter", f"label=com.docker.compose.service={service}"]
    if not running:
        argv.append("--all")
    return out(argv, "docker ps").split()


def service_container(app: App, service: str, *, running: bool = True) -> str:
    found = project_containers(app, service, running=running)
    if not found:
        state = "running" if running else "present"
        raise BackupError(f"service {service} of compose project {app.project} is not {state}")
    return found[0]


def running_services(app: App) -> set[str]:
    fmt = '{{.Label "com.docker.compose.service"}}'
    argv = ["docker", "ps", "--format", fmt, "--filter", f"label=com.docker.compose.project={app.project}"]
    return set(out(argv, "docker ps").split())


def inspect(container: str) -> dict[str, Any]:
    return json.loads(out(["docker", "inspect", container], "docker inspect"))[0]


def container_env(container: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in inspect(container)["Config"]["Env"] or [])
    return {key: value for key, value in pairs}


def remove_container(name: str) -> None:
    run(["docker", "rm", "-f", "-v", name], f"removing container {name}", check=False)


def health(container: str) -> str:
    state = inspect(container)["State"]
    if not state.get("Running"):
        return "stopped"
    return state.get("Health", {}).get("Status", "running")


# --- PostgreSQL ----------------------------------------------------------------------------------


class Psql:
    """One psql session in a container, fed statement by statement (the transaction stays open between)."""

    def __init__(self, container: str, user: str, database: str) -> None:
        self.container = container
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        argv = ["docker", "exec", "-i", container, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]
        self._proc = subprocess.Popen(
            [*argv, "-U", user, "-d", database],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
        )
        self.rows(PG_SESSION)

    def rows(self, sql: str) -> list[list[str]]:
        assert self._proc.stdin and self._proc.stdout
        marker = f"__berth_{secrets.token_hex(8)}__"
        try:
            self._proc.stdin.write(f"{sql}\n\\echo {marker}\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass
        lines = []
        while (line := self._proc.stdout.readline()) != "":
            if line.rstrip("\n") == marker:
                return [row.split("|") for row in lines]
            lines.append(line.rstrip("\n"))
        self._errors.seek(0)
        raise BackupError(f"psql in {self.container[:12]} failed: {tail(self._errors.read())}")

    def close(self) -> None:
        if self._proc.stdin and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._errors.close()

    def __enter__(self) -> Psql:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def table_stats(psql: Psql) -> dict[str, dict[str, Any]]:
    """Row count and an order-independent checksum (sum of row hashes) of every table."""
    stats = {}
    for (table,) in psql.rows(PG_TABLES):
        count, digest = psql.rows(
            f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM {table} AS t;"
        )[0]
        stats[table] = {"rows": int(count), "checksum": digest}
    return stats


def compare_tables(expected: dict[str, dict[str, Any]], found: dict[str, dict[str, Any]]) -> list[str]:
    """Differences between two table_stats results, as readable lines (empty when equal)."""
    problems = [f"table {t} missing" for t in sorted(set(expected) - set(found))]
    problems += [f"unexpected table {t}" for t in sorted(set(found) - set(expected))]
    for table in sorted(set(expected) & set(found)):
        want, got = expected[table], found[table]
        if want["rows"] != got["rows"]:
            problems.append(f"{table}: {got['rows']} rows, expected {want['rows']}")
        elif want["checksum"] != got["checksum"]:
            problems.append(f"{table}: checksum differs ({want['rows']} rows)")
    return problems


def postgres_identity(container: str) -> tuple[str, str]:
    env = container_env(container)
    user = env.get("POSTGRES_USER") or "postgres"
    return user, env.get("POSTGRES_DB") or user


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def wait_postgres(container: str, user: str, database: str, timeout: float) -> None:
    # TCP on the container's loopback: the image's init server listens on the socket only.
    argv = ["docker", "exec", container, "pg_isready", "-q", "-h", "127.0.0.1", "-U", user, "-d", database]
    wait_until(
        f"PostgreSQL in {container[:12]} ready", timeout, lambda: run(argv, "pg_isready", check=False).returncode == 0
    )


def dump_postgres(app: App, staging: Path) -> dict[str, Any]:
    assert app.postgres_service
    started = time.monotonic()
    container = service_container(app, app.postgres_service)
    user, database = postgres_identity(container)
    run(["docker", "exec", container, "pg_isready", "-q", "-U", user, "-d", database], "PostgreSQL: pg_isready")
    target = staging / "postgres"
    target.mkdir(mode=0o700)
    dump = target / "database.dump"
    with Psql(container, user, database) as psql:
        # The dump and the table figures share one snapshot, so they describe the same data.
        psql.rows("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;")
        snapshot = psql.rows("SELECT pg_export_snapshot();")[0][0]
        with dump.open("wb") as handle:
            run(
                ["docker", "exec", container, "pg_dump", "--format=custom", "--compress=0", f"--snapshot={snapshot}",
                 "-U", user, "-d", database],
                "pg_dump",
                stdout=handle,
            )
        tables = table_stats(psql)
        size = int(psql.rows("SELECT pg_database_size(current_database());")[0][0])
        psql.rows("COMMIT;")
    with (target / "globals.sql").open("wb") as handle:
        run(["docker", "exec", container, "pg_dumpall", "--globals-only", "-U", user, "-l", database],
            "pg_dumpall --globals-only", stdout=handle)
    return {
        "service": app.postgres_service,
        "image": inspect(container)["Config"]["Image"],
        "user": user,
        "database": database,
        "database_bytes": size,
        "dump": "postgres/database.dump",
        "globals": "postgres/globals.sql",
        "tables": tables,
        "rows": sum(t["rows"] for t in tables.values()),
        "seconds": round(time.monotonic() - started, 3),
    }


ROLE_LINE = re.compile(r'^(?:CREATE|ALTER) ROLE ("(?:[^"]|"")+"|\S+)(?: WITH .*)?;$')


def missing_role_statements(globals_sql: str, existing: set[str]) -> list[str]:
    """CREATE/ALTER ROLE lines of a globals dump for the roles the target server lacks."""
    statements = []
    for line in globals_sql.splitlines():
        match = ROLE_LINE.match(line)
        if match:
            name = match.group(1)
            name = name[1:-1].replace('""', '"') if name.startswith('"') else name
            if name not in existing:
                statements.append(line)
    return statements


def restore_into_new_database(container: str, user: str, work: Path, item: dict[str, Any], name: str) -> dict:
    """Restore the dump into a new database `name` (from template0); return its table figures."""
    with Psql(container, user, "template1") as psql:
        existing = {row[0] for row in psql.rows("SELECT rolname FROM pg_roles;")}
        for statement in missing_role_statements((work / item["globals"]).read_text(), existing):
            psql.rows(statement)
        psql.rows(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE);")
        psql.rows(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 OWNER {quote_ident(user)};")
    with (work / item["dump"]).open("rb") as handle:
        run(
            ["docker", "exec", "-i", container, "pg_restore", "--exit-on-error", "--single-transaction",
             "-U", user, "-d", name],
            "pg_restore",
            stdin=handle,
        )
    with Psql(container, user, name) as psql:
        return table_stats(psql)


def checked_restore(container: str, user: str, work: Path, item: dict[str, Any], name: str) -> dict[str, Any]:
    started = time.monotonic()
    found = restore_into_new_database(container, user, work, item, name)
    problems = compare_tables(item["tables"], found)
    if problems:
        raise BackupError("the restored database differs from the backup: " + "; ".join(problems[:10]))
    return {
        "tables": len(found),
        "rows": sum(t["rows"] for t in found.values()),
        "matches_manifest": True,
        "seconds": round(time.monotonic() - started, 3),
    }


# --- Redis ---------------------------------------------------------------------------------------


def redis_cli(container: str, *args: str) -> str:
    reply = out(["docker", "exec", container, "redis-cli", "--no-auth-warning", *args], f"redis-cli {args[0]}")
    if reply.startswith(("ERR", "NOAUTH", "WRONGPASS", "NOPERM", "LOADING", "MISCONF")):
        raise BackupError(f"redis-cli {args[0]}: {reply}")
    return reply


def redis_info(container: str, section: str) -> dict[str, str]:
    lines = redis_cli(container, "INFO", section).splitlines()
    return dict(line.strip().split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def redis_keys(container: str) -> int:
    """Keys in all databases (INFO keyspace: db0:keys=3,expires=0,...)."""
    info = redis_info(container, "keyspace")
    return sum(int(value.split(",")[0].split("=")[1]) for value in info.values())


def redis_config(container: str, name: str) -> str:
    reply = redis_cli(container, "CONFIG", "GET", name).splitlines()
    return reply[1] if len(reply) > 1 else ""


def redis_ping(container: str) -> bool:
    argv = ["docker", "exec", container, "redis-cli", "--no-auth-warning", "PING"]
    proc = run(argv, "redis-cli PING", check=False)
    return proc.returncode == 0 and proc.stdout.strip() == b"PONG"


def save_redis(cfg: Config, app: App, staging: Path) -> dict[str, Any]:
    assert app.redis_service
    started = time.monotonic()
    container = service_container(app, app.redis_service)
    directory, filename = redis_config(container, "dir"), redis_config(container, "dbfilename")
    before = redis_info(container, "persistence")
    keys_before = redis_keys(container)
    redis_cli(container, "BGSAVE", "SCHEDULE")

    def saved() -> bool:
        info = redis_info(container, "persistence")
        newer = int(info.get("rdb_saves", 0)) > int(before.get("rdb_saves", 0)) or int(
            info["rdb_last_save_time"]
        ) > int(before["rdb_last_save_time"])
        return info["rdb_bgsave_in_progress"] == "0" and newer

    wait_until("Redis background save (BGSAVE)", cfg.wait_timeout, saved, interval=0.2)
    if redis_info(container, "persistence")["rdb_last_bgsave_status"] != "ok":
        raise BackupError("Redis BGSAVE failed (rdb_last_bgsave_status is not ok): see the redis container's log")
    keys_after = redis_keys(container)
    target = staging / "redis"
    target.mkdir(mode=0o700)
    run(["docker", "cp", f"{container}:{directory}/{filename}", str(target / "dump.rdb")], "docker cp of the RDB")
    return {
        "service": app.redis_service,
        "image": inspect(container)["Config"]["Image"],
        "dir": directory,
        "dbfilename": filename,
        "appendonly": redis_config(container, "appendonly"),
        "rdb": "redis/dump.rdb",
        # Exact only when no key came or went while the snapshot was taken.
        "keys": keys_after,
        "keys_exact": keys_before == keys_after,
        "seconds": round(time.monotonic() - started, 3),
    }


def wait_redis_loaded(container: str, timeout: float) -> None:
    def loaded() -> bool:
        return redis_ping(container) and redis_info(container, "persistence").get("loading") == "0"

    wait_until(f"Redis in {container[:12]} loaded", timeout, loaded)


# --- files ---------------------------------------------------------------------------------------


def tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under path."""
    if path.is_file():
        return 1, path.stat().st_size
    files = size = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                size += (Path(root) / name).lstat().st_size
                files += 1
    return files, size


def volume_mountpoint(name: str) -> Path | None:
    proc = run(["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", name], "docker volume inspect", check=False)
    return Path(proc.stdout.decode().strip()) if proc.returncode == 0 else None


def collect_files(app: App) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes = []
    for name in app.volumes:
        path = volume_mountpoint(name)
        if path is None:
            raise BackupError(f"docker volume {name} (backup_volumes) does not exist")
        files, size = tree_size(path)
        volumes.append({"name": name, "path": str(path), "files": files, "bytes": size})
    paths = []
    for name in app.paths:
        path = Path(name)
        if not path.exists():
            raise BackupError(f"path {name} of app {app.name} does not exist")
        files, size = tree_size(path)
        paths.append({"path": name, "files": files, "bytes": size})
    return volumes, paths


# --- restic --------------------------------------------------------------------------------------


def restic_env(cfg: Config, repo: Repository) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", DEFAULT_PATH),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "RESTIC_REPOSITORY": repo.url,
        "RESTIC_PASSWORD_FILE": cfg.password_file,
        "RESTIC_CACHE_DIR": cfg.cache_dir,
    }
    if repo.env_file:
        env.update(read_env_file(repo.env_file))
    return env


def restic_argv(repo: Repository, *args: str) -> list[str]:
    options = [part for option in repo.options for part in ("-o", option)]
    return ["restic", *options, *args]


def restic(cfg: Config, repo: Repository, *args: str, what: str, check: bool = True, **kwargs: Any) -> Any:
    return run(restic_argv(repo, *args), f"{what} ({repo.name})", env=restic_env(cfg, repo), check=check, **kwargs)


def backup_summary(stdout: bytes) -> dict[str, Any] | None:
    for line in reversed(stdout.decode(errors="replace").splitlines()):
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("message_type") == "summary":
                return message
    return None


def keep_arguments(keep: dict[str, int]) -> list[str]:
    args = [f"--keep-{period}={count}" for period, count in keep.items() if count > 0]
    if not args:
        # restic would forget every snapshot: never.
        raise BackupError("no retention is configured (every keep count is 0): refusing to forget")
    return args


def forget_arguments(apps: list[App], keep: dict[str, int]) -> list[str]:
    """restic forget's selection: the snapshots of these apps only (each --tag is one app's pair of tags;
    restic takes any of them), each app a group of its own (host and tags), with the retention."""
    if not apps:
        raise BackupError("no app to forget snapshots of")
    tags = [part for app in apps for part in ("--tag", f"{TAG},{app.tag}")]
    return [*tags, "--group-by", "host,tags", *keep_arguments(keep)]


def forget(cfg: Config, repo: Repository, apps: list[App]) -> dict[str, Any]:
    """Retention over the snapshots of the apps just backed up to this repository (never another app's)."""
    proc = restic(
        cfg, repo, "forget", "--json", "--retry-lock", "5m", "--host", cfg.host, *forget_arguments(apps, cfg.keep),
        what="restic forget",
    )
    groups = json.loads(proc.stdout or b"[]") or []
    kept = [s["short_id"] for g in groups for s in g.get("keep") or []]
    removed = [s["short_id"] for g in groups for s in g.get("remove") or []]
    if removed and cfg.prune:
        restic(cfg, repo, "prune", "--retry-lock", "5m", what="restic prune")
    return {"kept": kept, "removed": removed, "pruned": bool(removed and cfg.prune)}


def unlock(cfg: Config, repo: Repository) -> None:
    # A run that systemd stopped at its time limit (or that was killed) leaves restic's lock behind, and
    # forget/prune would wait for it. This run holds berth-backup's own lock, so no other run of this host
    # uses the repository: `restic unlock` removes just such locks (of processes no longer running on this
    # host, or older than 30 minutes), never a live one.
    restic(cfg, repo, "unlock", what="restic unlock (stale locks)")


def backup_to(cfg: Config, repo: Repository, app: App, sources: list[str]) -> dict[str, Any]:
    """One app's snapshot in one repository."""
    started = time.monotonic()
    excludes = [part for pattern in app.exclude for part in ("--exclude", pattern)]
    proc = restic(
        cfg, repo, "backup", "--json", "--retry-lock", "5m", "--tag", f"{TAG},{app.tag}", "--host", cfg.host,
        *excludes, *sources, what=f"restic backup of {app.name}", check=False,
    )
    summary = backup_summary(proc.stdout)
    if proc.returncode == 3 and summary:
        # Some source files could not be read: that snapshot is incomplete and must not count as a backup.
        restic(cfg, repo, "forget", summary["snapshot_id"], what="restic forget of the incomplete snapshot")
        raise BackupError(f"restic backup of {app.name} ({repo.name}) could not read every file: {tail(proc.stderr)}")
    if proc.returncode != 0 or not summary:
        raise BackupError(f"restic backup of {app.name} ({repo.name}) failed (exit {proc.returncode}): "
                          f"{tail(proc.stderr)}")
    return {
        "snapshot_id": summary["snapshot_id"],
        "bytes": summary["total_bytes_processed"],
        "files": summary["total_files_processed"],
        "added_bytes": summary["data_added"],
        "added_packed_bytes": summary.get("data_added_packed"),
        "seconds": round(time.monotonic() - started, 3),
    }


def maintain(cfg: Config, repo: Repository, apps: list[App]) -> dict[str, Any]:
    """After the apps' backups: retention over those apps' snapshots, then restic check."""
    started = time.monotonic()
    result: dict[str, Any] = {"forget": forget(cfg, repo, apps)}
    if cfg.check:
        extra = [f"--read-data-subset={cfg.check_read_data_subset}"] if cfg.check_read_data_subset else []
        restic(cfg, repo, "check", "--retry-lock", "5m", *extra, what="restic check")
        result["check"] = "ok" + (f" (data subset {cfg.check_read_data_subset})" if extra else "")
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def snapshot_list(cfg: Config, repo: Repository, app: App | None = None, *selector: str) -> list[dict[str, Any]]:
    """berth's snapshots in a repository: every app's, or one app's."""
    tag = f"{TAG},{app.tag}" if app else TAG
    proc = restic(cfg, repo, "snapshots", "--json", "--no-lock", "--tag", tag, *selector, what="restic snapshots")
    return json.loads(proc.stdout or b"[]") or []


def snapshot_app(snapshot: dict[str, Any]) -> str | None:
    """The app a snapshot was made for (its app= tag), or None (made before berth backed up per app)."""
    for tag in snapshot.get("tags") or []:
        if tag.startswith("app="):
            return tag[len("app="):]
    return None


def resolve_snapshot(cfg: Config, repo: Repository, app: App, wanted: str) -> dict[str, Any]:
    """The app's latest snapshot of this host, or the one with this ID, which must be the app's."""
    if wanted == "latest":
        found = snapshot_list(cfg, repo, app, "--host", cfg.host)
    else:
        found = [s for s in snapshot_list(cfg, repo) if s["id"].startswith(wanted) or s["short_id"] == wanted]
    if not found:
        raise BackupError(f"no snapshot {wanted!r} of app {app.name} of host {cfg.host} in repository {repo.name}")
    if len({s["id"] for s in found}) > 1 and wanted != "latest":
        raise BackupError(f"snapshot {wanted!r} is ambiguous in repository {repo.name}")
    snapshot = max(found, key=lambda s: s["time"])
    if snapshot_app(snapshot) != app.name:
        raise BackupError(f"snapshot {snapshot['short_id']} is not one of app {app.name} "
                          f"(it is of {snapshot_app(snapshot) or 'no app'})")
    return snapshot


def fetch(cfg: Config, repo: Repository, snapshot: dict[str, Any], work: Path) -> dict[str, Any]:
    """Restore the snapshot's staged files (dump, RDB, manifest) into work; check them against the manifest."""
    if str(STAGING) not in snapshot.get("paths", []):
        raise BackupError(f"snapshot {snapshot['short_id']} was not made by berth-backup (no {STAGING} in it)")
    restic(cfg, repo, "restore", "--no-lock", f"{snapshot['id']}:{STAGING}", "--target", str(work),
           what="restic restore of the staged files")
    manifest = json.loads((work / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        path = work / name
        if not path.is_file():
            raise BackupError(f"{name} is missing from snapshot {snapshot['short_id']}")
        if sha256(path) != meta["sha256"]:
            raise BackupError(f"{name} in snapshot {snapshot['short_id']} does not match its manifest checksum")
    return manifest


# --- records, state, metrics ---------------------------------------------------------------------


def new_record(kind: str, cfg: Config) -> dict[str, Any]:
    started = time.time()
    return {"kind": kind, "host": cfg.host, "started": now_iso(started), "started_ts": started, "status": "running"}


def finish_record(record: dict[str, Any], failure: str | None) -> None:
    finished = time.time()
    record.update(finished=now_iso(finished), finished_ts=finished,
                  seconds=round(finished - record["started_ts"], 3), status="failed" if failure else "ok")
    if failure:
        record["error"] = failure


def save_record(cfg: Config, record: dict[str, Any]) -> Path:
    runs = STATE_DIR / "runs"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(record["started_ts"]))
    path = runs / f"{stamp}-{record['kind']}.json"
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    write_atomic(STATE_DIR / f"last-{record['kind']}.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    for old in sorted(runs.glob("*.json"))[: -cfg.records_keep]:
        old.unlink()
    return path


def update_state(state: dict[str, Any], section: str, record: dict[str, Any]) -> dict[str, Any]:
    """Fold a finished run into the state (section -> app -> repository): a failure never moves an app's
    last success in a repository."""
    apps = state.setdefault(section, {})
    for app, app_result in record.get("apps", {}).items():
        entries = apps.setdefault(app, {})
        for name, result in app_result.get("repositories", {}).items():
            entry = entries.setdefault(name, {"last_success": 0, "size": 0})
            ok = result.get("status") == "ok"
            entry.update(last_run=record["finished_ts"], last_run_success=ok,
                         duration=result.get("duration", record["seconds"]))
            if ok:
                entry.update(last_success=record["finished_ts"], size=result.get("bytes", entry["size"]),
                             snapshot=result.get("snapshot_id", entry.get("snapshot")))
    return state


METRICS = {
    "backup": (
        "berth_backup",
        [
            ("last_success_timestamp_seconds", "last_success", "Unix time of the app's last successful backup."),
            ("last_run_success", "last_run_success", "1 if the app's backup in the last run succeeded, else 0."),
            ("duration_seconds", "duration", "Seconds the app's backup took in the last run (dumps and this "
             "repository)."),
            ("size_bytes", "size", "Bytes in the app's last successful snapshot (before deduplication)."),
        ],
    ),
    "restore_test": (
        "berth_backup_restore_test",
        [
            ("last_success_timestamp_seconds", "last_success", "Unix time of the app's last passed restore test."),
            ("last_run_success", "last_run_success", "1 if the app's last restore test passed, else 0."),
            ("duration_seconds", "duration", "Seconds the app's last restore test took."),
        ],
    ),
}


def render_metrics(state: dict[str, Any], section: str, apps: list[str], repositories: list[str]) -> str:
    """node_exporter textfile lines for a state section, one per app and repository (labels app and
    repository); an app or repository that never ran shows 0. Apps no longer configured are left out."""
    prefix, metrics = METRICS[section]
    lines = []
    for suffix, key, help_text in metrics:
        lines += [f"# HELP {prefix}_{suffix} {help_text}", f"# TYPE {prefix}_{suffix} gauge"]
        for app in apps:
            for name in repositories:
                entry = state.get(section, {}).get(app, {}).get(name, {})
                value = entry.get(key, 0) if isinstance(entry, dict) else 0
                value = int(value) if isinstance(value, bool) else value
                lines.append(f'{prefix}_{suffix}{{app="{app}",repository="{name}"}} {value}')
    return "\n".join(lines) + "\n"


def publish(cfg: Config, section: str, record: dict[str, Any]) -> None:
    state = update_state(load_json(STATE_DIR / "state.json", {}), section, record)
    write_atomic(STATE_DIR / "state.json", json.dumps(state, indent=2, sort_keys=True) + "\n")
    prefix = METRICS[section][0]
    apps = [app.name for app in cfg.apps]
    names = [repo.name for repo in cfg.repositories]
    write_atomic(cfg.metrics_dir / f"{prefix}.prom", render_metrics(state, section, apps, names), mode=0o644)


def size_text(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""  # not reached


# The dumps are estimated by what they hold: the database's size (a plain custom-format dump holds its rows
# but no index, so it is smaller) and Redis's memory (its RDB is smaller still), plus this share.
STAGING_MARGIN = 0.10


def staging_problem(need: dict[str, int], free: int, reserve: int, staging: Path) -> str | None:
    """Why the dumps must not be staged in a file system with `free` bytes, or None when they fit."""
    estimate = sum(need.values())
    wanted = int(estimate * (1 + STAGING_MARGIN)) + reserve
    if free >= wanted:
        return None
    parts = " + ".join(f"{name} {size_text(size)}" for name, size in need.items()) or "nothing"
    return (
        f"not enough free space in {staging} to stage the dumps, so nothing was written: they need up to "
        f"{size_text(estimate * (1 + STAGING_MARGIN))} ({parts}, + {STAGING_MARGIN:.0%}), and "
        f"{size_text(reserve)} must stay free for the rest of the host (backup_staging_reserve_mb), but only "
        f"{size_text(free)} is free. Free space on that file system, or mount a larger one at {staging}."
    )


# A run this soon after boot (a run the timer missed while the host was down starts at boot, Persistent=true)
# waits for the stack's data services, which Docker starts again in their own time, instead of failing.
BOOT_SETTLE = 180.0


def seconds_since_boot() -> float:
    """Age of PID 1 (the host's, or a container host's own init): /proc/uptime minus its start time."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    # Field 22 of /proc/1/stat (after the command in parentheses): start time in clock ticks after boot.
    started = int(Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()[19])
    return uptime - started / os.sysconf("SC_CLK_TCK")


def settle_after_boot(cfg: Config) -> None:
    """Just after boot, wait (until BOOT_SETTLE seconds after it) for the apps' PostgreSQL and Redis to answer."""
    left = BOOT_SETTLE - seconds_since_boot()
    if left <= 0:
        return
    LOG.info("the host started %.0f s ago: waiting up to %.0f s for the apps", BOOT_SETTLE - left, left)
    deadline = time.monotonic() + left
    services = [(app, s) for app in cfg.apps for s in (app.postgres_service, app.redis_service) if s]
    for app, service in services:
        container = wait_until(f"service {service} of compose project {app.project} running after boot",
                               max(deadline - time.monotonic(), 0),
                               lambda a=app, s=service: project_containers(a, s))[0]
        if service == app.postgres_service:
            user, database = postgres_identity(container)
            wait_postgres(container, user, database, max(deadline - time.monotonic(), 0))
        else:
            wait_until(f"Redis in {container[:12]} answering after boot", max(deadline - time.monotonic(), 0),
                       lambda c=container: redis_ping(c))


def check_staging_space(cfg: Config, app: App, staging: Path) -> dict[str, int]:
    """Refuse, before anything is written, dumps that would not fit with the reserve left free."""
    need: dict[str, int] = {}
    if app.postgres_service:
        container = service_container(app, app.postgres_service)
        user, database = postgres_identity(container)
        with Psql(container, user, database) as psql:
            need["database"] = int(psql.rows("SELECT pg_database_size(current_database());")[0][0])
    if app.redis_service:
        container = service_container(app, app.redis_service)
        need["Redis"] = int(redis_info(container, "memory")["used_memory"])
    problem = staging_problem(need, shutil.disk_usage(staging).free, cfg.staging_reserve, staging)
    if problem:
        raise BackupError(problem)
    return need


# --- commands ------------------------------------------------------------------------------------


def collect(cfg: Config, app: App, staging: Path) -> dict[str, Any]:
    """Everything one app's snapshot holds, staged: dumps plus a manifest with sizes and checksums."""
    manifest: dict[str, Any] = {"host": cfg.host, "app": app.name, "project": app.project,
                                "created": now_iso(time.time())}
    check_staging_space(cfg, app, staging)
    if app.postgres_service:
        manifest["postgres"] = dump_postgres(app, staging)
    if app.redis_service:
        manifest["redis"] = save_redis(cfg, app, staging)
    manifest["volumes"], manifest["paths"] = collect_files(app)
    manifest["files"] = {
        str(path.relative_to(staging)): {"bytes": path.stat().st_size, "sha256": sha256(path)}
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    }
    write_atomic(staging / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def backup_app(cfg: Config, app: App, unlocked: set[str]) -> dict[str, Any]:
    """One app's backup: its dumps and files staged, then its own snapshot in every repository. The result
    holds each repository's outcome; an app whose dumps failed has every repository failed."""
    started = time.monotonic()
    result: dict[str, Any] = {"repositories": {}}
    repos = result["repositories"]
    empty_dir(STAGING)
    try:
        try:
            manifest = collect(cfg, app, STAGING)
        except (BackupError, OSError) as exc:
            message = f"nothing of app {app.name} was backed up: {exc}"
            for repo in cfg.repositories:
                repos[repo.name] = {"status": "failed", "error": message,
                                    "duration": round(time.monotonic() - started, 3)}
            return result
        collected = time.monotonic() - started
        result["contents"] = {k: v for k, v in manifest.items() if k not in ("host", "app", "project", "created")}
        sources = [str(STAGING), *(v["path"] for v in manifest["volumes"]), *app.paths]
        for repo in cfg.repositories:
            try:
                if repo.name not in unlocked:
                    unlock(cfg, repo)
                    unlocked.add(repo.name)
                done = backup_to(cfg, repo, app, sources)
                repos[repo.name] = {"status": "ok", **done, "duration": round(collected + done["seconds"], 3)}
            except (BackupError, OSError) as exc:
                repos[repo.name] = {"status": "failed", "error": str(exc), "duration": round(collected, 3)}
    finally:
        empty_dir(STAGING)
    return result


def run_failures(record: dict[str, Any]) -> list[str]:
    """What failed in a backup run, app by app and repository by repository (empty: the run succeeded)."""
    found = []
    for name, app in sorted(record.get("apps", {}).items()):
        errors = {result.get("error") for result in app["repositories"].values() if result["status"] != "ok"}
        found += [f"app {name}: {error}" for error in sorted(filter(None, errors))]
    found += [f"repository {name}: {result['error']}" for name, result in sorted(record.get("repositories", {}).items())
              if result["status"] != "ok"]
    return found


def backup(cfg: Config, record: dict[str, Any]) -> str | None:
    """One backup run into record: every app (one failing does not stop the others), then retention and
    check per repository over the apps it now holds a new snapshot of. Returns the failure, if any."""
    settle_after_boot(cfg)
    apps: dict[str, Any] = record.setdefault("apps", {})
    unlocked: set[str] = set()
    for app in cfg.apps:
        apps[app.name] = backup_app(cfg, app, unlocked)
        apps[app.name]["status"] = ("ok" if all(r["status"] == "ok" for r in apps[app.name]["repositories"].values())
                                    else "failed")
    repos: dict[str, Any] = record.setdefault("repositories", {})
    for repo in cfg.repositories:
        done = [app for app in cfg.apps if apps[app.name]["repositories"][repo.name]["status"] == "ok"]
        if not done:
            continue
        try:
            repos[repo.name] = {"status": "ok", **maintain(cfg, repo, done)}
        except (BackupError, OSError) as exc:
            # The snapshots are written, but a repository whose retention or check failed is not a success.
            repos[repo.name] = {"status": "failed", "error": str(exc)}
            for app in done:
                apps[app.name]["repositories"][repo.name].update(status="failed", error=str(exc))
                apps[app.name]["status"] = "failed"
    failures = run_failures(record)
    return "; ".join(failures) if failures else None


def fail_every_app(cfg: Config, record: dict[str, Any], failure: str, repositories: list[str]) -> None:
    """Whatever failed, every app's metrics must show this run: apps without a result get this failure."""
    for app in cfg.apps:
        entry = record.setdefault("apps", {}).setdefault(app.name, {"status": "failed", "error": failure})
        for name in repositories:
            entry.setdefault("repositories", {}).setdefault(name, {"status": "failed", "error": failure})


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    with lock("lock"):
        record = new_record("backup", cfg)
        try:
            failure = backup(cfg, record)
        except (BackupError, OSError) as exc:
            failure = str(exc)
        if failure:
            fail_every_app(cfg, record, failure, [repo.name for repo in cfg.repositories])
        finish_record(record, failure)
        save_record(cfg, record)
        publish(cfg, "backup", record)
    return report(record, args)


def report(record: dict[str, Any], args: argparse.Namespace) -> int:
    if args.print_record:
        print(json.dumps(record, indent=2, sort_keys=True))
    if record["status"] != "ok":
        LOG.error("%s FAILED after %.1f s: %s", record["kind"], record["seconds"], record["error"])
        return EXIT_FAILED
    LOG.info("%s ok in %.1f s", record["kind"], record["seconds"])
    return 0


def scratch_postgres(item: dict[str, Any], work: Path, name: str, timeout: float) -> dict[str, Any]:
    """Restore the dump into a fresh container of the same image, without network; compare with the manifest."""
    remove_container(name)
    env = {**os.environ, "POSTGRES_USER": item["user"], "POSTGRES_DB": item["database"],
           "POSTGRES_PASSWORD": secrets.token_urlsafe(24)}
    run(
        ["docker", "run", "-d", "--name", name, "--network", "none", "--label", "berth.backup=scratch",
         "-e", "POSTGRES_USER", "-e", "POSTGRES_DB", "-e", "POSTGRES_PASSWORD", item["image"]],
        "starting the scratch PostgreSQL container", env=env,
    )
    try:
        wait_postgres(name, item["user"], item["database"], timeout)
        return checked_restore(name, item["user"], work, item, item["database"])
    finally:
        remove_container(name)


def scratch_redis(item: dict[str, Any], work: Path, name: str, timeout: float) -> dict[str, Any]:
    """Load the RDB into a fresh Redis of the same image, without network; count its keys."""
    remove_container(name)
    started = time.monotonic()
    run(
        ["docker", "create", "--name", name, "--network", "none", "--label", "berth.backup=scratch", item["image"],
         "redis-server", "--dir", "/data", "--dbfilename", "dump.rdb", "--appendonly", "no", "--save", ""],
        "creating the scratch Redis container",
    )
    try:
        run(["docker", "cp", str(work / item["rdb"]), f"{name}:/data/dump.rdb"], "docker cp of the RDB")
        run(["docker", "start", name], "starting the scratch Redis container")
        wait_redis_loaded(name, timeout)
        keys = redis_keys(name)
        if item["keys_exact"] and keys != item["keys"]:
            raise BackupError(f"the restored Redis has {keys} keys, the backup recorded {item['keys']}")
        return {"keys": keys, "compared": item["keys_exact"], "seconds": round(time.monotonic() - started, 3)}
    finally:
        remove_container(name)


def verify_app(cfg: Config, repo: Repository, app: App, wanted: str, work: Path) -> dict[str, Any]:
    """The restore test of one app's snapshot: checksums, its dump in a scratch PostgreSQL, its RDB in a
    scratch Redis. Raises BackupError; fills in what it could test before."""
    result: dict[str, Any] = {}
    empty_dir(work)
    try:
        snapshot = resolve_snapshot(cfg, repo, app, wanted)
        result["snapshot"] = {"id": snapshot["id"], "time": snapshot["time"]}
        manifest = fetch(cfg, repo, snapshot, work)
        result["checksums"] = "ok"
        if "postgres" in manifest:
            result["postgres"] = scratch_postgres(manifest["postgres"], work, f"{app.project}-berth-restore-test",
                                                  cfg.wait_timeout)
        if "redis" in manifest:
            result["redis"] = scratch_redis(manifest["redis"], work, f"{app.project}-berth-restore-test-redis",
                                            cfg.wait_timeout)
    finally:
        with contextlib.suppress(OSError):
            empty_dir(work)
    return result


def cmd_verify(cfg: Config, args: argparse.Namespace) -> int:
    repo = cfg.repository(args.repository)
    # One app when named (a snapshot ID is one app's), else every app, each with its own result.
    apps = [choose_app(cfg.apps, args.app)] if args.app or args.snapshot != "latest" else list(cfg.apps)
    with lock("verify.lock"):
        record = new_record("restore-test", cfg)
        record["repository"] = repo.name
        record["apps"] = {}
        for app in apps:
            started = time.monotonic()
            entry: dict[str, Any] = {}
            try:
                entry.update(verify_app(cfg, repo, app, args.snapshot, STATE_DIR / "verify"))
                entry["status"] = "ok"
            except (BackupError, OSError) as exc:
                entry.update(status="failed", error=str(exc))
            seconds = round(time.monotonic() - started, 3)
            entry["seconds"] = seconds
            entry["repositories"] = {repo.name: {"status": entry["status"], "duration": seconds}}
            record["apps"][app.name] = entry
        failures = [f"app {name}: {entry['error']}" for name, entry in record["apps"].items()
                    if entry["status"] != "ok"]
        finish_record(record, "; ".join(failures) or None)
        save_record(cfg, record)
        publish(cfg, "restore_test", record)
    return report(record, args)


def restore_postgres(cfg: Config, app: App, item: dict[str, Any], work: Path, touched: list[str]) -> dict[str, Any]:
    """Restore into a new database, compare it with the manifest, then swap it in for the live one."""
    assert app.postgres_service
    container = service_container(app, app.postgres_service)
    user, database = postgres_identity(container)
    wait_postgres(container, user, database, cfg.wait_timeout)
    staging_db = f"{database}__berth_restore"
    result = checked_restore(container, user, work, item, staging_db)
    touched.append("postgres")
    with Psql(container, user, "template1") as psql:
        psql.rows(f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE);")
        psql.rows(f"ALTER DATABASE {quote_ident(staging_db)} RENAME TO {quote_ident(database)};")
    return result


def convert_to_aof(info: dict[str, Any], mount: dict[str, Any], item: dict[str, Any], name: str,
                   timeout: float) -> None:
    """Load the RDB in a one-off Redis and let it write the append-only files (Redis's documented switch)."""
    source = mount.get("Name") if mount["Type"] == "volume" else mount["Source"]
    user = ["--user", info["Config"]["User"]] if info["Config"].get("User") else []
    remove_container(name)
    run(
        ["docker", "run", "-d", "--name", name, "--network", "none", *user, "-v", f"{source}:{mount['Destination']}",
         info["Config"]["Image"], "redis-server", "--dir", item["dir"], "--dbfilename", item["dbfilename"],
         "--appendonly", "no", "--save", ""],
        "starting a one-off Redis on the restored data",
    )
    try:
        wait_redis_loaded(name, timeout)
        before = redis_info(name, "persistence")
        redis_cli(name, "CONFIG", "SET", "appendonly", "yes")

        def rewritten() -> bool:
            now = redis_info(name, "persistence")
            done = now["aof_rewrite_in_progress"] == "0" and now["aof_rewrite_scheduled"] == "0"
            newer = int(now.get("aof_rewrites", 1)) > int(before.get("aof_rewrites", 0))
            return done and newer and now.get("aof_last_bgrewrite_status") == "ok"

        wait_until("Redis append-only file rewrite", timeout, rewritten, interval=0.2)
        run(["docker", "exec", name, "redis-cli", "SHUTDOWN"], "stopping the one-off Redis", check=False)
        run(["docker", "wait", name], "waiting for the one-off Redis to stop", timeout=timeout, check=False)
    finally:
        remove_container(name)


def restore_redis(cfg: Config, app: App, item: dict[str, Any], work: Path, touched: list[str]) -> dict[str, Any]:
    assert app.redis_service
    started = time.monotonic()
    container = service_container(app, app.redis_service, running=False)
    info = inspect(container)
    mounts = [m for m in info["Mounts"] if m["Destination"] == item["dir"]]
    if not mounts:
        raise BackupError(f"Redis's data directory {item['dir']} is not a volume or bind mount of {container[:12]}")
    data = Path(mounts[0]["Source"])
    touched.append("redis")
    run(["docker", "stop", container], "stopping Redis")
    owner = data.stat()
    empty_dir(data)
    target = data / item["dbfilename"]
    shutil.copyfile(work / item["rdb"], target)
    os.chown(target, owner.st_uid, owner.st_gid)
    if item.get("appendonly") == "yes":
        convert_to_aof(info, mounts[0], item, f"{app.project}-berth-restore-redis", cfg.wait_timeout)
    run(["docker", "start", container], "starting Redis")
    wait_until("Redis healthy", cfg.wait_timeout, lambda: health(container) in ("healthy", "running"))
    wait_redis_loaded(container, cfg.wait_timeout)
    keys = redis_keys(container)
    if item["keys_exact"] and keys != item["keys"]:
        raise BackupError(f"Redis has {keys} keys after the restore, the backup recorded {item['keys']}")
    return {"keys": keys, "seconds": round(time.monotonic() - started, 3)}


def ensure_volume(app: App, name: str) -> Path:
    """The volume's mount point, creating the volume (labelled as compose's own when it is) if missing."""
    path = volume_mountpoint(name)
    if path:
        return path
    labels = []
    if name.startswith(f"{app.project}_"):
        short = name[len(app.project) + 1 :]
        labels = ["--label", f"com.docker.compose.project={app.project}",
                  "--label", f"com.docker.compose.volume={short}"]
    run(["docker", "volume", "create", *labels, name], f"creating volume {name}")
    path = volume_mountpoint(name)
    assert path
    return path


def restore_files(cfg: Config, repo: Repository, app: App, snapshot: dict, manifest: dict, components: list[str],
                  touched: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if "volumes" in components:
        for volume in manifest["volumes"]:
            target = ensure_volume(app, volume["name"])
            touched.append(f"volume {volume['name']}")
            # The volume's content becomes exactly the snapshot's (files not in it are deleted).
            restic(cfg, repo, "restore", "--no-lock", f"{snapshot['id']}:{volume['path']}", "--target", str(target),
                   "--delete", what=f"restic restore of volume {volume['name']}")
            result[f"volume {volume['name']}"] = "restored"
    if "paths" in components and manifest["paths"]:
        includes = [part for entry in manifest["paths"] for part in ("--include", entry["path"])]
        touched.append("paths")
        restic(cfg, repo, "restore", "--no-lock", snapshot["id"], "--target", "/", *includes,
               what="restic restore of the paths")
        result["paths"] = [entry["path"] for entry in manifest["paths"]]
    return result


def restore(cfg: Config, args: argparse.Namespace, record: dict[str, Any], touched: list[str]) -> None:
    components = [c for c in args.components.split(",") if c]
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown or not components:
        allowed = ",".join(COMPONENTS)
        raise BackupError(f"components must be a comma-separated subset of {allowed} (got {args.components!r})")
    app = choose_app(cfg.apps, args.app)
    record["app"] = app.name
    repo = cfg.repository(args.repository)
    snapshot = resolve_snapshot(cfg, repo, app, args.snapshot)
    record.update(repository=repo.name, components=components,
                  snapshot={"id": snapshot["id"], "time": snapshot["time"]})
    work = STATE_DIR / "restore"
    empty_dir(work)
    try:
        started = time.monotonic()
        manifest = fetch(cfg, repo, snapshot, work)
        record["fetch_seconds"] = round(time.monotonic() - started, 3)
        for component in ("postgres", "redis"):
            if component in components and component not in manifest:
                raise BackupError(f"snapshot {snapshot['short_id']} holds no {component} backup")
        own = {app.postgres_service, app.redis_service}
        others = sorted(running_services(app) - own)
        if others:
            raise BackupError(f"stop the services of app {app.name} first ({', '.join(others)} running): "
                              "restore.yml does it")
        if "postgres" in components:
            record["postgres"] = restore_postgres(cfg, app, manifest["postgres"], work, touched)
        if "redis" in components:
            record["redis"] = restore_redis(cfg, app, manifest["redis"], work, touched)
        record["files"] = restore_files(cfg, repo, app, snapshot, manifest, components, touched)
    finally:
        with contextlib.suppress(OSError):
            empty_dir(work)


def cmd_restore(cfg: Config, args: argparse.Namespace) -> int:
    with lock("lock"):
        record = new_record("restore", cfg)
        touched: list[str] = []
        failure = None
        try:
            restore(cfg, args, record, touched)
        except (BackupError, OSError) as exc:
            failure = str(exc)
        record["changed"] = touched
        finish_record(record, failure)
        save_record(cfg, record)
    code = report(record, args)
    if code and not touched:
        LOG.error("nothing was changed by this restore")
        return EXIT_UNTOUCHED
    return code


def cmd_snapshots(cfg: Config, args: argparse.Namespace) -> int:
    repo = cfg.repository(args.repository)
    app = choose_app(cfg.apps, args.app) if args.app else None
    print(json.dumps(snapshot_list(cfg, repo, app), indent=2))
    return 0


def cmd_init(cfg: Config, args: argparse.Namespace) -> int:
    states = {}
    for repo in cfg.repositories:
        proc = restic(cfg, repo, "cat", "config", "--no-lock", what="restic cat config", check=False)
        if proc.returncode == 0:
            states[repo.name] = "exists"
        elif proc.returncode == 10 and args.dry_run:
            states[repo.name] = "missing"
        elif proc.returncode == 10:
            restic(cfg, repo, "init", what="restic init")
            states[repo.name] = "created"
        elif proc.returncode == 12:
            raise BackupError(f"repository {repo.name}: wrong password (backup_password does not open it)")
        else:
            raise BackupError(f"repository {repo.name} ({repo.url}) cannot be reached: {tail(proc.stderr)}")
    print(json.dumps(states, sort_keys=True))
    return 0


def cmd_restic(cfg: Config, args: argparse.Namespace) -> int:
    repo = cfg.repository(args.name)
    os.execvpe("restic", restic_argv(repo, *args.restic_args), restic_env(cfg, repo))
    return EXIT_FAILED  # not reached


# The systemd units that run the program (templates of the role), and the kind of run each makes.
UNITS = {"berth-backup.service": "backup", "berth-backup-verify.service": "restore-test"}
SECTIONS = {"backup": "backup", "restore-test": "restore_test"}


def unit_failure(unit: str, props: dict[str, str], last: dict[str, Any], now: float, now_mono: float) -> str | None:
    """What to record for a failed unit, or None when its run recorded the failure itself.

    The program records every failure it sees (exit 1). What it cannot record is its own end: killed at the
    unit's time limit or by the kernel, or not started because another run held the lock (exit 75).
    """
    started_mono = int(props.get("ExecMainStartTimestampMonotonic") or 0) / 1e6
    started = now - (now_mono - started_mono) if started_mono else 0.0
    if last.get("status") == "failed" and last.get("started_ts", 0) >= started - 1:
        return None
    result, status = props.get("Result", "unknown"), props.get("ExecMainStatus", "")
    if result == "exit-code" and status == str(EXIT_LOCKED):
        return f"{unit} did not run: another berth-backup run held the lock (a backup-now.yml or restore.yml)"
    return (f"{unit} ended with result {result} (exit status {status or 'none'}) before berth-backup could "
            f"record its run; see journalctl -u {unit}")


def cmd_unit_failed(cfg: Config, args: argparse.Namespace) -> int:
    """OnFailure= of the units: make every failed unit a failed run in the records and the metrics."""
    kind = UNITS.get(args.unit)
    if kind is None:
        raise BackupError(f"unknown unit {args.unit!r} (known: {', '.join(UNITS)})")
    props = dict(
        line.split("=", 1)
        for line in out(["systemctl", "show", args.unit, "--property=Result,ExecMainStatus,"
                         "ExecMainStartTimestampMonotonic"], "systemctl show").splitlines()
        if "=" in line
    )
    last = load_json(STATE_DIR / f"last-{kind}.json", {})
    failure = unit_failure(args.unit, props, last, time.time(), time.monotonic())
    if failure is None:
        LOG.error("%s failed, and its run recorded why: %s", args.unit, last.get("error", "?"))
        return 0
    LOG.error("%s", failure)
    record = new_record(kind, cfg)
    names = [repo.name for repo in cfg.repositories] if kind == "backup" else [cfg.repository(None).name]
    fail_every_app(cfg, record, failure, names)
    record["unit"] = args.unit
    finish_record(record, failure)
    save_record(cfg, record)
    publish(cfg, SECTIONS[kind], record)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="berth-backup", description=__doc__.split("\n\n")[0])
    top.add_argument("--config", type=Path, default=CONFIG_FILE, help="configuration file (JSON)")
    top.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr too")
    sub = top.add_subparsers(dest="command", required=True)
    run_cmd = sub.add_parser("run", help="back up to every repository")
    run_cmd.add_argument("--print-record", action="store_true", help="print the run's record (JSON)")
    verify = sub.add_parser("verify", help="restore test into scratch containers")
    restore_cmd = sub.add_parser("restore", help="restore one app into its live stack")
    for cmd in (verify, restore_cmd):
        cmd.add_argument("--app", help="the app (verify: default every app; restore: required with several)")
        cmd.add_argument("--repository", help="repository name (default: the restore-test repository)")
        cmd.add_argument("--snapshot", default="latest", help="snapshot ID or 'latest'")
        cmd.add_argument("--print-record", action="store_true", help="print the run's record (JSON)")
    restore_cmd.add_argument("--components", default="postgres,redis,volumes", help="what to restore")
    snapshots = sub.add_parser("snapshots", help="list snapshots (JSON)")
    snapshots.add_argument("--repository", help="repository name")
    snapshots.add_argument("--app", help="only this app's snapshots")
    init = sub.add_parser("init", help="create missing repositories")
    init.add_argument("--dry-run", action="store_true", help="only report missing repositories")
    failed = sub.add_parser("unit-failed", help="record a failed systemd unit's run (its OnFailure=)")
    failed.add_argument("unit", help="the unit, e.g. berth-backup.service")
    passthrough = sub.add_parser("restic", help="run restic against a repository")
    passthrough.add_argument("name", help="repository name")
    passthrough.add_argument("restic_args", nargs=argparse.REMAINDER, help="restic's arguments")
    return top


def setup_logging(verbose: bool) -> None:
    LOG.setLevel(logging.INFO)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.INFO if verbose else logging.WARNING)
    stderr.setFormatter(logging.Formatter("berth-backup: %(levelname)s: %(message)s"))
    LOG.addHandler(stderr)
    if Path("/dev/log").exists():
        syslog = logging.handlers.SysLogHandler(address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        syslog.setFormatter(logging.Formatter("berth-backup[%(process)d]: %(levelname)s: %(message)s"))
        LOG.addHandler(syslog)


COMMANDS = {
    "run": cmd_run,
    "verify": cmd_verify,
    "restore": cmd_restore,
    "snapshots": cmd_snapshots,
    "init": cmd_init,
    "restic": cmd_restic,
    "unit-failed": cmd_unit_failed,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    os.umask(0o077)
    try:
        cfg = Config.load(args.config)
        return COMMANDS[args.command](cfg, args)
    except LockedError as exc:
        LOG.error("%s: not started", exc)
        return EXIT_LOCKED
    except (BackupError, OSError) as exc:
        LOG.error("%s failed: %s", args.command, exc)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
