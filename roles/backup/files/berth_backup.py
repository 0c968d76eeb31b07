#!/usr/bin/python3
"""berth-backup: back up, test-restore and restore the apps of a berth host with restic.

Installed by the berth `backup` role as /usr/local/sbin/berth-backup and configured by
/etc/berth/backup/config.json (written by the role from berth_apps). Python standard library only;
it drives `restic` and, where the data is, `docker` (an app host: the compose projects /opt/<app>, their
volumes, and the PostgreSQL and Redis containers of apps with data: local) or Debian's PostgreSQL and
Redis (the db host, group db: the database and the Redis instance of each app with data: host, as
roles/db_host makes them; no Docker there). The first app host also dumps the managed database of each app
with data: external, with pg_dump in a client container (the URL's parts in its environment, never on a
command line); the restore test restores that dump into a scratch container of the same image.

Each app gets its own restic snapshot per run and host, tagged `berth` and `app=<app>`: restores, the
restore test and retention (restic forget groups by host and tags) then work per app, and a failed app
never holds back another app's backup.

    berth-backup run [--print-record]
        The scheduled backup, app after app: a check that the app's dumps fit in the staging
        directory with backup_staging_reserve_mb left free (else nothing of that app is written);
        pg_dump of its PostgreSQL (custom format, one exported snapshot for the dump and the row
        counts/checksums; in its running container, or on the db host as the local superuser
        postgres), a fresh Redis RDB (BGSAVE in its container, or `redis-cli --rdb` from the db
        host's instance), its volumes and paths -> `restic backup` to every repository; then
        forget/prune and check once per repository. One app's failure fails the run but not the
        other apps. Writes a record, the state and the node_exporter metrics (per app and
        repository). Within 3 minutes of boot it first waits for the apps' PostgreSQL and Redis.
    berth-backup verify [--app NAME] [--repository NAME] [--snapshot ID] [--print-record]
        Restore test of every app (or one): its latest snapshot's dump into a scratch PostgreSQL
        (a container without network; on the db host a scratch database berth_restore_test_<db> of
        the same cluster, dropped afterwards) and its RDB into a scratch Redis (a container without
        network; on the db host Debian's redis-server on a unix socket in a temporary directory);
        row counts and checksums must equal the ones in the manifest. One result per app.
    berth-backup restore --app NAME --components postgres,redis,volumes[,paths] [--repository NAME]
                         [--snapshot ID]
        Restore one app's snapshot into its live data. On an app host the app's own services must
        be stopped (restore.yml does it). On the db host the apps keep running: the dump goes into
        <db>_restoring, is compared with the manifest, and then, in one short step, the app's
        connections end and the live database becomes <db>_before_restore_<UTC time> (kept) and the
        restored one <db>; the Redis instance is stopped, its directory kept beside it, and started
        on the snapshot. --app may be left out when there is one app.
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
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, unquote, urlsplit

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


CONTAINER = "container"
HOST = "host"
# A managed database (data: external), reached with its URL from one app host.
EXTERNAL = "external"


@dataclass(frozen=True)
class Postgres:
    """Where an app's PostgreSQL is: a compose service of its project (kind container, the database and user
    from the container's environment), a database of this host's cluster (kind host: the db host, reached
    as the local superuser postgres by peer authentication; the database and its owner role are named alike)
    or a managed database (kind external: its URL in the file url_file, a JSON object app -> URL, reached
    from a client container of `image`, whose pg_dump and scratch server the backup and its test use)."""

    kind: str
    service: str = ""
    database: str = ""
    port: int = 5432
    image: str = ""
    url_file: str = ""

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> Postgres | None:
        if not data:
            return None
        return cls(kind=data["kind"], service=data.get("service", ""), database=data.get("database", ""),
                   port=int(data.get("port", 5432)), image=data.get("image", ""), url_file=data.get("url_file", ""))


@dataclass(frozen=True)
class Redis:
    """Where an app's Redis is: a compose service of its project (kind container) or an instance of this host
    (kind host: the db host's systemd unit redis-server@<app> on a port of 127.0.0.1, with its data
    directory and the file holding its password)."""

    kind: str
    service: str = ""
    unit: str = ""
    port: int = 0
    dir: str = ""
    password_file: str = ""

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> Redis | None:
        if not data:
            return None
        return cls(kind=data["kind"], service=data.get("service", ""), unit=data.get("unit", ""),
                   port=int(data.get("port", 0)), dir=data.get("dir", ""), password_file=data.get("password_file", ""))


@dataclass(frozen=True)
class App:
    """One app of berth_apps as this host backs it up: its data services and files (the role derives them,
    roles/backup/filter_plugins/backup.py)."""

    name: str
    project: str
    postgres: Postgres | None
    redis: Redis | None
    paths: tuple[str, ...]
    exclude: tuple[str, ...]
    volumes: tuple[str, ...]

    @property
    def tag(self) -> str:
        """The restic tag of the app's snapshots (besides TAG)."""
        return f"app={self.name}"

    @property
    def in_docker(self) -> bool:
        """Whether any part of the app is Docker's (containers, volumes, a compose project's files): an app
        host's. The db host's apps have none, and the program never calls docker for them."""
        services = [s for s in (self.postgres, self.redis) if s is not None]
        return bool(self.paths or self.volumes or any(s.kind in (CONTAINER, EXTERNAL) for s in services))

    @classmethod
    def load(cls, data: dict[str, Any]) -> App:
        return cls(
            name=data["name"],
            project=data.get("project") or data["name"],
            postgres=Postgres.load(data.get("postgres")),
            redis=Redis.load(data.get("redis")),
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
    """Run a command; on failure raise BackupError naming `what` with the end of its stderr. It runs in /
    (a command run as another user, such as postgres, may not enter root's working directory)."""
    LOG.debug("run: %s", " ".join(argv[:4]))
    try:
        proc = subprocess.run(
            argv, env=env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=timeout, check=False, cwd="/"
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


PSQL_OPTIONS = ("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1")


def as_postgres(*argv: str) -> list[str]:
    """A command as the db host's local superuser postgres: peer authentication on the socket, no password."""
    return ["runuser", "-u", "postgres", "--", *argv]


class Psql:
    """One psql session (argv: the psql command), fed statement by statement (the transaction stays open
    between). Any failed statement ends the session (ON_ERROR_STOP) and raises BackupError."""

    def __init__(self, argv: list[str], label: str) -> None:
        self.label = label
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            cwd="/",
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
        raise BackupError(f"psql ({self.label}) failed: {tail(self._errors.read())}")

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


def container_psql(container: str, user: str, database: str) -> Psql:
    """psql in a PostgreSQL container (an app host's data: local)."""
    return Psql(["docker", "exec", "-i", container, *PSQL_OPTIONS, "-U", user, "-d", database], f"in {container[:12]}")


def external_client_name(app: App) -> str:
    """The client container of an app's managed database (external_client)."""
    return f"{app.project}-berth-backup-client"


def external_psql(app: App) -> Psql:
    """psql in the app's running client container (external_client): the connection from its environment."""
    return Psql(["docker", "exec", "-i", external_client_name(app), *PSQL_OPTIONS],
                f"managed database of app {app.name}")


# libpq's environment variable for each parameter a connection URL may carry (PostgreSQL's libpq
# documentation, "Environment Variables"). Parameters naming a file are left out: the file would have to be
# inside the client container (sslrootcert=system, the system's CAs, is the exception).
LIBPQ_ENV = {
    "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslnegotiation": "PGSSLNEGOTIATION",
    "sslsni": "PGSSLSNI", "sslcompression": "PGSSLCOMPRESSION", "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION", "channel_binding": "PGCHANNELBINDING",
    "connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME", "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "gssencmode": "PGGSSENCMODE",
    "client_encoding": "PGCLIENTENCODING", "require_auth": "PGREQUIREAUTH",
}


def pg_url_env(url: str) -> dict[str, str]:
    """libpq's environment (PGHOST, PGUSER, PGPASSWORD, …) for a postgres:// or postgresql:// URL, so that
    the URL's password is never on a command line. BackupError for what this cannot carry; its message
    never holds the URL or the password."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise BackupError("the database URL must start with postgresql:// or postgres://")
    if "," in parts.netloc:
        raise BackupError("the database URL names several hosts: berth's backup takes one")
    try:
        port = parts.port
    except ValueError as exc:
        raise BackupError("the database URL's port is not a number") from exc
    if not parts.hostname:
        raise BackupError("the database URL names no host")
    env = {"PGHOST": unquote(parts.hostname), "PGPORT": str(port or 5432)}
    if parts.username:
        env["PGUSER"] = unquote(parts.username)
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
    database = unquote(parts.path.lstrip("/"))
    if database:
        env["PGDATABASE"] = database
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "sslrootcert" and value != "system":
            raise BackupError("the database URL's sslrootcert names a file, which berth's backup client cannot "
                              "read: use sslrootcert=system (the system's CAs), or sslmode=require")
        if key not in LIBPQ_ENV:
            raise BackupError(f"the database URL's parameter {key} is not one berth's backup passes on "
                              f"({', '.join(sorted(LIBPQ_ENV))})")
        env[LIBPQ_ENV[key]] = value
    return env


def database_url(app: App) -> str:
    """The URL of an app's managed database, from the role's file (JSON: app -> URL, root only)."""
    assert app.postgres and app.postgres.kind == EXTERNAL
    try:
        urls = json.loads(Path(app.postgres.url_file).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read the database URLs of {app.postgres.url_file}: {exc}") from exc
    if not urls.get(app.name):
        raise BackupError(f"{app.postgres.url_file} has no database URL for app {app.name}")
    return str(urls[app.name])


@contextlib.contextmanager
def external_client(app: App) -> Iterator[str]:
    """A client container of the app's managed database for the time of the block: the image's psql and
    pg_dump, libpq's environment from the URL (passed by name: the values are never on a command line),
    the default bridge network (the database is outside this host)."""
    assert app.postgres and app.postgres.kind == EXTERNAL
    name = external_client_name(app)
    env = pg_url_env(database_url(app))
    remove_container(name)
    run(["docker", "run", "-d", "--name", name, "--label", "berth.backup=client", "--entrypoint", "sleep",
         *(arg for key in sorted(env) for arg in ("-e", key)), app.postgres.image, "infinity"],
        "starting the client container of the managed database", env={**os.environ, **env})
    try:
        yield name
    finally:
        remove_container(name)


def host_psql(pg: Postgres, database: str) -> Psql:
    """psql as postgres into a database of this host's cluster (the db host)."""
    return Psql(as_postgres(*PSQL_OPTIONS, "-p", str(pg.port), "-d", database), f"database {database} on this host")


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


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def wait_postgres(container: str, user: str, database: str, timeout: float) -> None:
    # TCP on the container's loopback: the image's init server listens on the socket only.
    argv = ["docker", "exec", container, "pg_isready", "-q", "-h", "127.0.0.1", "-U", user, "-d", database]
    wait_until(
        f"PostgreSQL in {container[:12]} ready", timeout, lambda: run(argv, "pg_isready", check=False).returncode == 0
    )


DUMP = "postgres/database.dump"
# What dump_in_snapshot reads besides the tables, in the same transaction.
DUMP_FIGURES = ("SELECT pg_database_size(current_database()), current_user, current_database(), "
                "pg_get_userbyid(datdba), current_setting('server_version') FROM pg_database "
                "WHERE datname = current_database();")


def dump_in_snapshot(psql: Psql, pg_dump: list[str], staging: Path, what: str) -> dict[str, Any]:
    """Run pg_dump (its argv, writing the custom format to stdout) into staging/postgres/database.dump and
    read the table figures in one exported snapshot, so that both describe the same data. Returns the
    manifest's common part: the figures, the database's size, user, name, owner and server version."""
    started = time.monotonic()
    target = staging / "postgres"
    target.mkdir(mode=0o700, exist_ok=True)
    psql.rows("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;")
    snapshot = psql.rows("SELECT pg_export_snapshot();")[0][0]
    with (staging / DUMP).open("wb") as handle:
        run([*pg_dump, "--format=custom", "--compress=0", f"--snapshot={snapshot}"], what, stdout=handle)
    tables = table_stats(psql)
    size, user, database, owner, version = psql.rows(DUMP_FIGURES)[0]
    psql.rows("COMMIT;")
    return {"user": user, "database": database, "owner": owner, "server_version": version,
            "database_bytes": int(size), "dump": DUMP, "tables": tables,
            "rows": sum(t["rows"] for t in tables.values()), "seconds": round(time.monotonic() - started, 3)}


def dump_container_postgres(app: App, staging: Path) -> dict[str, Any]:
    """pg_dump of the app's PostgreSQL container, with its table figures and the server's roles."""
    assert app.postgres and app.postgres.kind == CONTAINER
    started = time.monotonic()
    container = service_container(app, app.postgres.service)
    user, database = postgres_identity(container)
    run(["docker", "exec", container, "pg_isready", "-q", "-U", user, "-d", database], "PostgreSQL: pg_isready")
    with container_psql(container, user, database) as psql:
        dump = dump_in_snapshot(psql, ["docker", "exec", container, "pg_dump", "-U", user, "-d", database], staging,
                                "pg_dump")
    with (staging / "postgres" / "globals.sql").open("wb") as handle:
        run(["docker", "exec", container, "pg_dumpall", "--globals-only", "-U", user, "-l", database],
            "pg_dumpall --globals-only", stdout=handle)
    return {**dump, "kind": CONTAINER, "service": app.postgres.service, "image": inspect(container)["Config"]["Image"],
            "globals": "postgres/globals.sql", "seconds": round(time.monotonic() - started, 3)}


def dump_external_postgres(app: App, staging: Path) -> dict[str, Any]:
    """pg_dump of the app's managed database from its client container (external_client, running), with its
    table figures. No globals: the provider's roles are not berth's to restore (the restore test restores
    without owners and privileges)."""
    assert app.postgres and app.postgres.kind == EXTERNAL
    with external_psql(app) as psql:
        dump = dump_in_snapshot(psql, ["docker", "exec", external_client_name(app), "pg_dump"], staging,
                                "pg_dump of the managed database")
    return {**dump, "kind": EXTERNAL, "image": app.postgres.image}


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
    with container_psql(container, user, "template1") as psql:
        existing = {row[0] for row in psql.rows("SELECT rolname FROM pg_roles;")}
        # A managed database's dump has no globals (and no owners): the scratch server's user owns it all.
        if item.get("globals"):
            for statement in missing_role_statements((work / item["globals"]).read_text(), existing):
                psql.rows(statement)
        psql.rows(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE);")
        psql.rows(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 OWNER {quote_ident(user)};")
    owners = [] if item.get("globals") else ["--no-owner", "--no-privileges"]
    with (work / item["dump"]).open("rb") as handle:
        run(
            ["docker", "exec", "-i", container, "pg_restore", "--exit-on-error", "--single-transaction", *owners,
             "-U", user, "-d", name],
            "pg_restore",
            stdin=handle,
        )
    with container_psql(container, user, name) as psql:
        return table_stats(psql)


def restored_matches(item: dict[str, Any], found: dict[str, dict[str, Any]], started: float) -> dict[str, Any]:
    """The result of a restored database whose table figures equal the manifest's; BackupError otherwise."""
    problems = compare_tables(item["tables"], found)
    if problems:
        raise BackupError("the restored database differs from the backup: " + "; ".join(problems[:10]))
    return {
        "tables": len(found),
        "rows": sum(t["rows"] for t in found.values()),
        "matches_manifest": True,
        "seconds": round(time.monotonic() - started, 3),
    }


def checked_restore(container: str, user: str, work: Path, item: dict[str, Any], name: str) -> dict[str, Any]:
    started = time.monotonic()
    return restored_matches(item, restore_into_new_database(container, user, work, item, name), started)


# --- PostgreSQL of the db host -------------------------------------------------------------------
# The db host's cluster (Debian's, port 5432) holds a database and a login role named db_name per app
# with data: host (roles/db_host). berth-backup reaches it as the local superuser postgres by peer
# authentication: no password is read or passed.

# PostgreSQL's longest identifier (NAMEDATALEN - 1 bytes).
PG_NAME_MAX = 63
# How long pg_terminate_backend waits for each of the app's sessions to end, in milliseconds.
TERMINATE_WAIT_MS = 10000


def utc_stamp(ts: float) -> str:
    """A UTC time as it goes into the names of what a restore keeps (lower case: a name needs no quotes)."""
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime(ts))


def kept_database_name(database: str, ts: float) -> str:
    """The name the live database is kept under when a restore replaces it."""
    name = f"{database}_before_restore_{utc_stamp(ts)}"
    if len(name.encode()) > PG_NAME_MAX:
        raise BackupError(f"database name {name} would be longer than PostgreSQL's {PG_NAME_MAX} bytes")
    return name


def restore_test_database_name(database: str) -> str:
    """The scratch database of the db host's restore test."""
    return f"berth_restore_test_{database}"


def host_pg_ready(pg: Postgres) -> bool:
    return run(as_postgres("pg_isready", "-q", "-p", str(pg.port)), "pg_isready", check=False).returncode == 0


def dump_host_postgres(app: App, staging: Path) -> dict[str, Any]:
    """pg_dump of the app's database in this host's cluster (the db host), with its table figures. No
    globals: the db host's roles are roles/db_host's (it makes the app's role and its password)."""
    pg = app.postgres
    assert pg and pg.kind == HOST
    started = time.monotonic()
    run(as_postgres("pg_isready", "-q", "-p", str(pg.port), "-d", pg.database), "PostgreSQL: pg_isready")
    with host_psql(pg, pg.database) as psql:
        dump = dump_in_snapshot(psql, as_postgres("pg_dump", "-p", str(pg.port), "-d", pg.database), staging,
                                "pg_dump")
    return {**dump, "kind": HOST, "port": pg.port, "seconds": round(time.monotonic() - started, 3)}


def create_host_database(pg: Postgres, name: str) -> None:
    """A new, empty database `name` as roles/db_host makes the app's: owned by the app's role (named as its
    database), CONNECT and TEMPORARY taken from PUBLIC. A leftover of an earlier attempt is dropped first."""
    with host_psql(pg, "postgres") as psql:
        if not psql.rows(f"SELECT 1 FROM pg_roles WHERE rolname = {quote_literal(pg.database)};"):
            raise BackupError(f"PostgreSQL on this host has no role {pg.database}: apply the data layer "
                              f"(playbooks/data.yml, role db_host) first")
        psql.rows(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE);")
        psql.rows(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 OWNER {quote_ident(pg.database)};")
        psql.rows(f"REVOKE CONNECT, TEMPORARY ON DATABASE {quote_ident(name)} FROM PUBLIC;")


def drop_host_database(pg: Postgres, name: str) -> None:
    with host_psql(pg, "postgres") as psql:
        psql.rows(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE);")


def host_checked_restore(pg: Postgres, work: Path, item: dict[str, Any], name: str) -> dict[str, Any]:
    """Restore the dump into a new database `name` of this host's cluster (pg_restore as postgres: the
    objects keep their owner, the app's role) and compare every table with the manifest."""
    started = time.monotonic()
    create_host_database(pg, name)
    with (work / item["dump"]).open("rb") as handle:
        run(as_postgres("pg_restore", "--exit-on-error", "--single-transaction", "-p", str(pg.port), "-d", name),
            "pg_restore", stdin=handle)
    with host_psql(pg, name) as psql:
        found = table_stats(psql)
    return restored_matches(item, found, started)


def scratch_host_postgres(pg: Postgres, item: dict[str, Any], work: Path) -> dict[str, Any]:
    """The db host's restore test of a dump: into berth_restore_test_<db> of the same cluster, compared with
    the manifest, then dropped (also when it failed)."""
    name = restore_test_database_name(pg.database)
    try:
        return {"database": name, **host_checked_restore(pg, work, item, name)}
    finally:
        with contextlib.suppress(BackupError, OSError):
            drop_host_database(pg, name)


def swap_host_database(pg: Postgres, restored: str, kept: str) -> bool:
    """Put database `restored` in the place of the app's live one in one short step: no new session may open
    the live one, the app's sessions end (the apps reconnect), and in one transaction the live one is renamed
    to `kept` and the restored one to the live name. Returns whether there was a live one (now `kept`,
    which no one can connect to until ALTER DATABASE ... ALLOW_CONNECTIONS true). When the swap fails, the
    live one is open again and unchanged."""
    live = quote_ident(pg.database)
    with host_psql(pg, "postgres") as psql:
        existed = bool(psql.rows(f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(pg.database)};"))
        if existed:
            psql.rows(f"ALTER DATABASE {live} ALLOW_CONNECTIONS false;")
    try:
        with host_psql(pg, "postgres") as psql:
            if existed:
                psql.rows(f"SELECT pg_terminate_backend(pid, {TERMINATE_WAIT_MS}) FROM pg_stat_activity "
                          f"WHERE datname = {quote_literal(pg.database)} AND pid <> pg_backend_pid();")
            psql.rows("BEGIN;")
            if existed:
                psql.rows(f"ALTER DATABASE {live} RENAME TO {quote_ident(kept)};")
            psql.rows(f"ALTER DATABASE {quote_ident(restored)} RENAME TO {live};")
            psql.rows("COMMIT;")
    except BackupError:
        if existed:
            with contextlib.suppress(BackupError, OSError), host_psql(pg, "postgres") as psql:
                psql.rows(f"ALTER DATABASE {live} ALLOW_CONNECTIONS true;")
        raise
    return existed


def restore_host_postgres(cfg: Config, app: App, item: dict[str, Any], work: Path,
                          touched: list[str]) -> dict[str, Any]:
    """Restore into <db>_restoring, compare it with the manifest, then swap it in for the live one, which is kept
    as <db>_before_restore_<UTC time>. Until the swap the live database is untouched."""
    pg = app.postgres
    assert pg and pg.kind == HOST
    started = time.monotonic()
    wait_until("PostgreSQL on this host ready", cfg.wait_timeout, lambda: host_pg_ready(pg))
    restoring = f"{pg.database}_restoring"
    kept = kept_database_name(pg.database, time.time())
    try:
        result = host_checked_restore(pg, work, item, restoring)
    except (BackupError, OSError):
        with contextlib.suppress(BackupError, OSError):
            drop_host_database(pg, restoring)
        raise
    touched.append("postgres")
    swap_started = time.monotonic()
    existed = swap_host_database(pg, restoring, kept)
    return {**result, "database": pg.database, "kept": kept if existed else None,
            "swap_seconds": round(time.monotonic() - swap_started, 3), "seconds": round(time.monotonic() - started, 3)}


# --- Redis ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisCli:
    """How redis-cli reaches one Redis: its command up to the Redis command (docker exec into a container, or a
    port or socket of this host), and the password, which goes into the environment (REDISCLI_AUTH), never
    on a command line."""

    argv: tuple[str, ...]
    label: str
    password: str = field(default="", repr=False)

    def env(self) -> dict[str, str] | None:
        return {**os.environ, "REDISCLI_AUTH": self.password} if self.password else None


def container_redis(container: str) -> RedisCli:
    """The Redis of a container (an app host's data: local; no password inside the project's network)."""
    return RedisCli(("docker", "exec", container, "redis-cli", "--no-auth-warning"), f"in {container[:12]}")


def host_redis(redis: Redis) -> RedisCli:
    """An instance of this host (the db host's redis-server@<app>) on its port of 127.0.0.1, with its password."""
    password = Path(redis.password_file).read_text().strip()
    return RedisCli(("redis-cli", "--no-auth-warning", "-h", "127.0.0.1", "-p", str(redis.port)), redis.unit,
                    password)


def socket_redis(socket: Path) -> RedisCli:
    """A scratch redis-server of this host on its unix socket (no password: only root and redis reach it)."""
    return RedisCli(("redis-cli", "-s", str(socket)), "the scratch Redis")


def redis_cli(cli: RedisCli, *args: str) -> str:
    reply = out([*cli.argv, *args], f"redis-cli {args[0]} ({cli.label})", env=cli.env())
    if reply.startswith(("ERR", "NOAUTH", "WRONGPASS", "NOPERM", "LOADING", "MISCONF")):
        raise BackupError(f"redis-cli {args[0]} ({cli.label}): {reply}")
    return reply


def redis_info(cli: RedisCli, section: str) -> dict[str, str]:
    lines = redis_cli(cli, "INFO", section).splitlines()
    return dict(line.strip().split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def redis_keys(cli: RedisCli) -> int:
    """Keys in all databases (INFO keyspace: db0:keys=3,expires=0,...)."""
    info = redis_info(cli, "keyspace")
    return sum(int(value.split(",")[0].split("=")[1]) for value in info.values())


def redis_config(cli: RedisCli, name: str) -> str:
    reply = redis_cli(cli, "CONFIG", "GET", name).splitlines()
    return reply[1] if len(reply) > 1 else ""


def redis_ping(cli: RedisCli) -> bool:
    proc = run([*cli.argv, "PING"], "redis-cli PING", env=cli.env(), check=False)
    return proc.returncode == 0 and proc.stdout.strip() == b"PONG"


def save_redis(cfg: Config, app: App, staging: Path) -> dict[str, Any]:
    """A fresh RDB of the app's Redis container (BGSAVE, then docker cp)."""
    assert app.redis and app.redis.kind == CONTAINER
    started = time.monotonic()
    container = service_container(app, app.redis.service)
    cli = container_redis(container)
    directory, filename = redis_config(cli, "dir"), redis_config(cli, "dbfilename")
    before = redis_info(cli, "persistence")
    keys_before = redis_keys(cli)
    redis_cli(cli, "BGSAVE", "SCHEDULE")

    def saved() -> bool:
        info = redis_info(cli, "persistence")
        newer = int(info.get("rdb_saves", 0)) > int(before.get("rdb_saves", 0)) or int(
            info["rdb_last_save_time"]
        ) > int(before["rdb_last_save_time"])
        return info["rdb_bgsave_in_progress"] == "0" and newer

    wait_until("Redis background save (BGSAVE)", cfg.wait_timeout, saved, interval=0.2)
    if redis_info(cli, "persistence")["rdb_last_bgsave_status"] != "ok":
        raise BackupError("Redis BGSAVE failed (rdb_last_bgsave_status is not ok): see the redis container's log")
    keys_after = redis_keys(cli)
    target = staging / "redis"
    target.mkdir(mode=0o700)
    run(["docker", "cp", f"{container}:{directory}/{filename}", str(target / "dump.rdb")], "docker cp of the RDB")
    return {
        "kind": CONTAINER,
        "service": app.redis.service,
        "image": inspect(container)["Config"]["Image"],
        "dir": directory,
        "dbfilename": filename,
        "appendonly": redis_config(cli, "appendonly"),
        "rdb": "redis/dump.rdb",
        # Exact only when no key came or went while the snapshot was taken.
        "keys": keys_after,
        "keys_exact": keys_before == keys_after,
        "seconds": round(time.monotonic() - started, 3),
    }


def wait_redis_loaded(cli: RedisCli, timeout: float) -> None:
    def loaded() -> bool:
        return redis_ping(cli) and redis_info(cli, "persistence").get("loading") == "0"

    wait_until(f"Redis ({cli.label}) loaded", timeout, loaded)


def rewrite_aof(cli: RedisCli, timeout: float) -> None:
    """Switch a Redis that loaded an RDB to the append-only file (Redis's documented way: CONFIG SET appendonly
    yes, which rewrites the AOF from the data set) and wait until the rewrite succeeded."""
    before = redis_info(cli, "persistence")
    redis_cli(cli, "CONFIG", "SET", "appendonly", "yes")

    def rewritten() -> bool:
        now = redis_info(cli, "persistence")
        done = now["aof_rewrite_in_progress"] == "0" and now["aof_rewrite_scheduled"] == "0"
        newer = int(now.get("aof_rewrites", 1)) > int(before.get("aof_rewrites", 0))
        return done and newer and now.get("aof_last_bgrewrite_status") == "ok"

    wait_until("Redis append-only file rewrite", timeout, rewritten, interval=0.2)


# --- Redis of the db host ------------------------------------------------------------------------
# Each app with data: host and Redis has its own instance (roles/db_host): the systemd unit
# redis-server@<app> of Debian's package, on the app's port, its data in /var/lib/redis/<app> (append-only
# file), its password in <db_secrets_dir>/redis-password. Scratch servers run Debian's redis-server as the
# user redis on a unix socket in a directory of their own (0700): no TCP port, so nothing else reaches them.

REDIS_USER = "redis"
SCRATCH_SOCKET = "redis.sock"


def save_host_redis(cfg: Config, app: App, staging: Path) -> dict[str, Any]:
    """A fresh RDB of the app's instance on this host, streamed by `redis-cli --rdb` (the server forks a
    snapshot for it, as for a replica); the key count before and after tells whether it is exact."""
    redis = app.redis
    assert redis and redis.kind == HOST
    started = time.monotonic()
    cli = host_redis(redis)
    keys_before = redis_keys(cli)
    target = staging / "redis"
    target.mkdir(mode=0o700)
    run([*cli.argv, "--rdb", str(target / "dump.rdb")], f"redis-cli --rdb ({redis.unit})", env=cli.env())
    keys_after = redis_keys(cli)
    return {
        "kind": HOST,
        "unit": redis.unit,
        "port": redis.port,
        "dir": redis.dir,
        "dbfilename": redis_config(cli, "dbfilename") or "dump.rdb",
        "appendonly": redis_config(cli, "appendonly"),
        "server_version": redis_info(cli, "server").get("redis_version", ""),
        "rdb": "redis/dump.rdb",
        # Exact only when no key came or went while the snapshot was taken.
        "keys": keys_after,
        "keys_exact": keys_before == keys_after,
        "seconds": round(time.monotonic() - started, 3),
    }


def scratch_redis_config(directory: Path, dbfilename: str, socket: Path) -> str:
    """The configuration of a scratch redis-server: the data in `directory`, a unix socket, no TCP port, no
    saving of its own (the caller decides about the append-only file)."""
    return "\n".join([
        "port 0",
        f"unixsocket {socket}",
        "unixsocketperm 700",
        f"dir {directory}",
        f"dbfilename {dbfilename}",
        "appendonly no",
        'save ""',
        "daemonize no",
        'logfile ""',
    ]) + "\n"


def chown_to(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def scratch_redis_server(directory: Path, dbfilename: str, timeout: float) -> Iterator[RedisCli]:
    """Debian's redis-server as the user redis on the data in `directory` (which redis may write), loaded and
    answering on a unix socket; stopped (SIGTERM: a clean shutdown, the append-only file synced) afterwards."""
    run_dir = Path(tempfile.mkdtemp(prefix="berth-scratch-redis-", dir=directory.parent))
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc: subprocess.Popen[bytes] | None = None
    try:
        chown_to(run_dir, REDIS_USER)
        socket = run_dir / SCRATCH_SOCKET
        conf = run_dir / "redis.conf"
        conf.write_text(scratch_redis_config(directory, dbfilename, socket))
        chown_to(conf, REDIS_USER)
        proc = subprocess.Popen(["runuser", "-u", REDIS_USER, "--", "redis-server", str(conf)],
                                stdout=log, stderr=log, cwd="/")
        cli = socket_redis(socket)

        def loaded() -> bool:
            if proc is not None and proc.poll() is not None:
                log.seek(0)
                raise BackupError(f"the scratch Redis stopped (exit {proc.returncode}): {tail(log.read())}")
            return socket.exists() and redis_ping(cli) and redis_info(cli, "persistence").get("loading") == "0"

        wait_until("the scratch Redis loaded", timeout, loaded, interval=0.2)
        yield cli
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def scratch_host_redis(item: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    """The db host's restore test of an RDB: loaded by a scratch redis-server (a temporary directory beside the
    instances' data, removed afterwards), its keys counted."""
    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="berth-restore-test-", dir=Path(item["dir"]).parent))
    try:
        chown_to(directory, REDIS_USER)
        target = directory / "dump.rdb"
        shutil.copyfile(work / item["rdb"], target)
        chown_to(target, REDIS_USER)
        with scratch_redis_server(directory, "dump.rdb", timeout) as cli:
            keys = redis_keys(cli)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if item["keys_exact"] and keys != item["keys"]:
        raise BackupError(f"the restored Redis has {keys} keys, the backup recorded {item['keys']}")
    return {"keys": keys, "compared": item["keys_exact"], "seconds": round(time.monotonic() - started, 3)}


def kept_redis_dir(directory: str, ts: float) -> Path:
    """Where a restore keeps the instance's data directory it replaces (a free name: .2, .3 ... after it
    when a restore of the same second kept one)."""
    path = Path(directory)
    kept = path.with_name(f"{path.name}.before-restore-{utc_stamp(ts)}")
    number = 1
    while kept.exists() or kept.is_symlink():
        number += 1
        kept = path.with_name(f"{path.name}.before-restore-{utc_stamp(ts)}.{number}")
    return kept


def restore_host_redis(cfg: Config, app: App, item: dict[str, Any], work: Path, touched: list[str]) -> dict[str, Any]:
    """Stop the app's instance, keep its data directory beside it, put the snapshot's RDB in a new one (an
    instance with appendonly yes gets its append-only file from a scratch server that loads the RDB), start
    it and count its keys."""
    redis = app.redis
    assert redis and redis.kind == HOST
    started = time.monotonic()
    data = Path(redis.dir)
    kept = kept_redis_dir(redis.dir, time.time())
    dbfilename = item.get("dbfilename") or "dump.rdb"
    touched.append("redis")
    run(["systemctl", "stop", redis.unit], f"stopping {redis.unit}")
    existed = data.exists()
    # The new directory as the old one was (roles/db_host makes it redis:redis 0750).
    mode = data.stat().st_mode & 0o7777 if existed else 0o750
    if existed:
        data.rename(kept)
    data.mkdir()
    data.chmod(mode)
    chown_to(data, REDIS_USER)
    target = data / dbfilename
    shutil.copyfile(work / item["rdb"], target)
    target.chmod(0o640)
    chown_to(target, REDIS_USER)
    if item.get("appendonly") == "yes":
        with scratch_redis_server(data, dbfilename, cfg.wait_timeout) as scratch:
            rewrite_aof(scratch, cfg.wait_timeout)
    run(["systemctl", "start", redis.unit], f"starting {redis.unit}")
    cli = host_redis(redis)
    wait_redis_loaded(cli, cfg.wait_timeout)
    keys = redis_keys(cli)
    if item["keys_exact"] and keys != item["keys"]:
        raise BackupError(f"Redis has {keys} keys after the restore, the backup recorded {item['keys']}")
    return {"keys": keys, "kept": str(kept) if existed else None, "seconds": round(time.monotonic() - started, 3)}


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
    """Just after boot, wait (until BOOT_SETTLE seconds after it) for the apps' PostgreSQL and Redis to answer.
    One that does not answer in time is left to its app's backup, which then fails naming it (the other apps
    are backed up all the same)."""
    left = BOOT_SETTLE - seconds_since_boot()
    if left <= 0:
        return
    LOG.info("the host started %.0f s ago: waiting up to %.0f s for the apps", BOOT_SETTLE - left, left)
    deadline = time.monotonic() + left
    for app in cfg.apps:
        try:
            if app.postgres:
                wait_postgres_up(app, app.postgres, max(deadline - time.monotonic(), 0))
            if app.redis:
                wait_redis_up(app, app.redis, max(deadline - time.monotonic(), 0))
        except (BackupError, OSError) as exc:
            LOG.warning("app %s after boot: %s", app.name, exc)


def wait_postgres_up(app: App, pg: Postgres, timeout: float) -> None:
    """Wait until the app's PostgreSQL answers: its container running and ready, or this host's cluster (a
    managed database is not this host's to wait for: its backup tells)."""
    if pg.kind == EXTERNAL:
        return
    if pg.kind == HOST:
        wait_until("PostgreSQL on this host answering after boot", timeout, lambda: host_pg_ready(pg))
        return
    started = time.monotonic()
    container = wait_until(f"service {pg.service} of compose project {app.project} running after boot", timeout,
                           lambda: project_containers(app, pg.service))[0]
    user, database = postgres_identity(container)
    wait_postgres(container, user, database, max(timeout - (time.monotonic() - started), 0))


def wait_redis_up(app: App, redis: Redis, timeout: float) -> None:
    """Wait until the app's Redis answers PING: its container's, or its instance on this host."""
    if redis.kind == HOST:
        cli = host_redis(redis)
        wait_until(f"Redis {redis.unit} answering after boot", timeout, lambda: redis_ping(cli))
        return
    started = time.monotonic()
    container = wait_until(f"service {redis.service} of compose project {app.project} running after boot", timeout,
                           lambda: project_containers(app, redis.service))[0]
    cli = container_redis(container)
    wait_until(f"Redis in {container[:12]} answering after boot", max(timeout - (time.monotonic() - started), 0),
               lambda: redis_ping(cli))


def app_psql(app: App, pg: Postgres) -> Psql:
    """A psql session in the app's own database, wherever it is (a managed one: through its running client
    container, external_client)."""
    if pg.kind == EXTERNAL:
        return external_psql(app)
    if pg.kind == HOST:
        return host_psql(pg, pg.database)
    container = service_container(app, pg.service)
    user, database = postgres_identity(container)
    return container_psql(container, user, database)


def app_redis(app: App, redis: Redis) -> RedisCli:
    """redis-cli of the app's Redis, wherever it is."""
    if redis.kind == HOST:
        return host_redis(redis)
    return container_redis(service_container(app, redis.service))


def check_staging_space(cfg: Config, app: App, staging: Path) -> dict[str, int]:
    """Refuse, before anything is written, dumps that would not fit with the reserve left free."""
    need: dict[str, int] = {}
    if app.postgres:
        with app_psql(app, app.postgres) as psql:
            need["database"] = int(psql.rows("SELECT pg_database_size(current_database());")[0][0])
    if app.redis:
        need["Redis"] = int(redis_info(app_redis(app, app.redis), "memory")["used_memory"])
    problem = staging_problem(need, shutil.disk_usage(staging).free, cfg.staging_reserve, staging)
    if problem:
        raise BackupError(problem)
    return need


# --- commands ------------------------------------------------------------------------------------


def collect(cfg: Config, app: App, staging: Path) -> dict[str, Any]:
    """Everything one app's snapshot holds, staged: dumps plus a manifest with sizes and checksums."""
    manifest: dict[str, Any] = {"host": cfg.host, "app": app.name, "project": app.project,
                                "created": now_iso(time.time())}
    with external_client(app) if app.postgres and app.postgres.kind == EXTERNAL else contextlib.nullcontext():
        check_staging_space(cfg, app, staging)
        if app.postgres:
            dump = {HOST: dump_host_postgres, EXTERNAL: dump_external_postgres}.get(app.postgres.kind,
                                                                                  dump_container_postgres)
            manifest["postgres"] = dump(app, staging)
    if app.redis:
        manifest["redis"] = (save_host_redis(cfg, app, staging) if app.redis.kind == HOST
                             else save_redis(cfg, app, staging))
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
        cli = container_redis(name)
        wait_redis_loaded(cli, timeout)
        keys = redis_keys(cli)
        if item["keys_exact"] and keys != item["keys"]:
            raise BackupError(f"the restored Redis has {keys} keys, the backup recorded {item['keys']}")
        return {"keys": keys, "compared": item["keys_exact"], "seconds": round(time.monotonic() - started, 3)}
    finally:
        remove_container(name)


def item_kind(item: dict[str, Any]) -> str:
    """Where a manifest's dump came from (snapshots made before the db host have no kind: containers)."""
    return item.get("kind", CONTAINER)


def verify_postgres(cfg: Config, app: App, item: dict[str, Any], work: Path) -> dict[str, Any]:
    if item_kind(item) == HOST:
        return scratch_host_postgres(Postgres(kind=HOST, database=item["database"], port=int(item.get("port", 5432))),
                                     item, work)
    return scratch_postgres(item, work, f"{app.project}-berth-restore-test", cfg.wait_timeout)


def verify_redis(cfg: Config, app: App, item: dict[str, Any], work: Path) -> dict[str, Any]:
    if item_kind(item) == HOST:
        return scratch_host_redis(item, work, cfg.wait_timeout)
    return scratch_redis(item, work, f"{app.project}-berth-restore-test-redis", cfg.wait_timeout)


def verify_app(cfg: Config, repo: Repository, app: App, wanted: str, work: Path) -> dict[str, Any]:
    """The restore test of one app's snapshot: checksums, its dump in a scratch PostgreSQL, its RDB in a
    scratch Redis (containers without network on an app host; on the db host a scratch database of its
    cluster and a scratch redis-server). Raises BackupError; fills in what it could test before."""
    result: dict[str, Any] = {}
    empty_dir(work)
    try:
        snapshot = resolve_snapshot(cfg, repo, app, wanted)
        result["snapshot"] = {"id": snapshot["id"], "time": snapshot["time"]}
        manifest = fetch(cfg, repo, snapshot, work)
        result["checksums"] = "ok"
        if "postgres" in manifest:
            result["postgres"] = verify_postgres(cfg, app, manifest["postgres"], work)
        if "redis" in manifest:
            result["redis"] = verify_redis(cfg, app, manifest["redis"], work)
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
    assert app.postgres and app.postgres.kind == CONTAINER
    container = service_container(app, app.postgres.service)
    user, database = postgres_identity(container)
    wait_postgres(container, user, database, cfg.wait_timeout)
    staging_db = f"{database}__berth_restore"
    result = checked_restore(container, user, work, item, staging_db)
    touched.append("postgres")
    with container_psql(container, user, "template1") as psql:
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
        cli = container_redis(name)
        wait_redis_loaded(cli, timeout)
        rewrite_aof(cli, timeout)
        run(["docker", "exec", name, "redis-cli", "SHUTDOWN"], "stopping the one-off Redis", check=False)
        run(["docker", "wait", name], "waiting for the one-off Redis to stop", timeout=timeout, check=False)
    finally:
        remove_container(name)


def restore_redis(cfg: Config, app: App, item: dict[str, Any], work: Path, touched: list[str]) -> dict[str, Any]:
    assert app.redis and app.redis.kind == CONTAINER
    started = time.monotonic()
    container = service_container(app, app.redis.service, running=False)
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
    cli = container_redis(container)
    wait_redis_loaded(cli, cfg.wait_timeout)
    keys = redis_keys(cli)
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
            if component in components and getattr(app, component) is None:
                raise BackupError(f"app {app.name} has no {component} on this host")
        if app.in_docker:
            # An app host: the app's own services must not write while their data is replaced. (On the db
            # host the apps keep running: the database is swapped in one step and Redis restarts.)
            own = {s.service for s in (app.postgres, app.redis) if s is not None and s.kind == CONTAINER}
            others = sorted(running_services(app) - own)
            if others:
                raise BackupError(f"stop the services of app {app.name} first ({', '.join(others)} running): "
                                  "restore.yml does it")
        if "postgres" in components and app.postgres and app.postgres.kind == EXTERNAL:
            raise BackupError(f"app {app.name}'s database is a managed one (data: external): berth does not "
                              "restore it (docs/disaster-recovery.md)")
        if "postgres" in components and app.postgres:
            restorer = restore_host_postgres if app.postgres.kind == HOST else restore_postgres
            record["postgres"] = restorer(cfg, app, manifest["postgres"], work, touched)
        if "redis" in components and app.redis:
            restorer = restore_host_redis if app.redis.kind == HOST else restore_redis
            record["redis"] = restorer(cfg, app, manifest["redis"], work, touched)
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
