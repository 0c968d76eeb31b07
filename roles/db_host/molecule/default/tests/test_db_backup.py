"""What a user of the backup role observes on the database host (converge.yml: roles db_host + backup; these
tests were the backup role's own db host scenario, folded into this one).

Two apps keep their data on the db host (data: host): shop (its database and its own Redis instance) and
blog (its database only). Rows are written into their databases and keys into shop's Redis, the backup is
taken by playbooks/backup-now.yml (a snapshot per app, and its restore test on this host's PostgreSQL and a
scratch redis-server), a table is dropped and keys changed, and playbooks/restore.yml -e app=shop brings
them back while shop's stand-in on the app host keeps running, reconnects, and answers the health check
the playbook makes there. The database replaced is kept under its before_restore name, and dropped as
docs/disaster-recovery.md says. Timings land in artifacts/molecule/backup-dbhost-timings.json (git-ignored).
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra

testinfra_hosts = ["berth-dbhost-trixie"]

ROOT = Path(__file__).resolve().parents[5]
HOST = "berth-dbhost-trixie"
APP_HOST = "berth-dbhost-client"
PROGRAM = "/usr/local/sbin/berth-backup"
STATE = "/var/lib/berth/backup"
METRICS = "/var/lib/prometheus/node-exporter/berth_backup.prom"
RESTORE_TEST_METRICS = "/var/lib/prometheus/node-exporter/berth_backup_restore_test.prom"
STAGING = "/var/lib/berth/backup/staging"
TIMINGS = ROOT / "artifacts" / "molecule" / "backup-dbhost-timings.json"
KEYS = 20
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# An app's blue port as the plan derives it (plugins/filter/apps.py): shop's web (and, on the db host, its
# Redis) listens on it.
sys.path.insert(0, str(ROOT / "plugins" / "filter"))
from apps import derived_port  # noqa: E402

SHOP_BLUE = derived_port("shop")
SHOP_GREEN = SHOP_BLUE + 1


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> testinfra.host.Host:
    """The app host, where shop's stand-in runs."""
    return testinfra.get_host(f"ansible://{APP_HOST}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def playbook(name: str, *extra: str) -> subprocess.CompletedProcess:
    """Run one of the project's playbooks against the db host, with Molecule's inventory (groups db and app)."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
        "ANSIBLE_CACHE_PLUGIN": "memory",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), "-l", HOST]
    done = subprocess.run([*cmd, str(ROOT / "playbooks" / name), *extra], capture_output=True, text=True, env=env,
                          timeout=1200, check=False)
    # (Molecule's environment asks for colours: the output is compared as plain text)
    done.stdout = ANSI.sub("", done.stdout)
    return done


def restore(*extra: str) -> subprocess.CompletedProcess:
    return playbook("restore.yml", "-e", f"backup_restore_confirm={HOST}", *extra)


def timing(name: str, seconds: float) -> None:
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[name] = round(seconds, 1)
    TIMINGS.write_text(json.dumps(data, indent=2, sort_keys=True))


def psql(host, sql: str, database: str = "shop") -> str:
    """A statement as the local superuser postgres."""
    return host.check_output(f"runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1 -d {database} "
                             f"-c {shlex.quote(sql)}")


def as_app(host, sql: str, app: str) -> str:
    """A statement as the app's own role in its database (what it creates, it owns)."""
    return psql(host, f"SET ROLE {app}; {sql}", app)


def redis(host, *args: str) -> str:
    """redis-cli of shop's instance, the password in the environment as berth-backup passes it."""
    command = " ".join(shlex.quote(arg) for arg in args)
    return host.check_output(f"REDISCLI_AUTH=$(cat /etc/berth/db/shop/redis-password) redis-cli --no-auth-warning "
                             f"-p {SHOP_BLUE} {command}")


def redis_keys(host) -> dict[str, str]:
    names = sorted(redis(host, "KEYS", "*").split())
    return dict(zip(names, redis(host, "MGET", *names).splitlines(), strict=True)) if names else {}


def visits_digest(host) -> str:
    return psql(host, "SELECT count(*) || ':' || md5(string_agg(v::text, ',' ORDER BY id)) FROM visits v")


def posts_digest(host) -> str:
    return psql(host, "SELECT count(*) || ':' || md5(string_agg(p::text, ',' ORDER BY id)) FROM posts p", "blog")


def read_json(host, path: str) -> dict:
    return json.loads(host.file(path).content_string)


def metric(host, path: str, name: str, app: str) -> float:
    text = host.file(path).content_string
    found = re.search(rf'^{name}{{app="{app}",repository="local"}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} of {app} missing in {path}"
    return float(found.group(1))


def standin(client, path: str) -> tuple[int, str]:
    """GET the stand-in of shop on the app host (shop's live colour, green)."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{SHOP_GREEN}{path}', timeout=5)\n"
        "    print(r.status, r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, e.read().decode())\n"
        "except OSError as e:\n"
        "    print(0, e)\n"
    )
    status, body = client.check_output(f"python3 -c {shlex.quote(script)}").split(" ", 1)
    return int(status), body


def start_standin(host, client) -> None:
    """shop's stand-in on the app host, with copies of shop's passwords (as app_stack would give them to
    the app), connecting to the db host's address on the scenario network."""
    address = host.check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'").split("/")[0]
    client.check_output("install -d -m 0700 /etc/berth/db/shop")
    for name in ("postgres-password", "redis-password"):
        secret = host.file(f"/etc/berth/db/shop/{name}").content_string
        client.check_output(f"umask 077 && printf %s {shlex.quote(secret)} > /etc/berth/db/shop/{name}")
    client.run("systemctl stop berth-standin-shop; systemctl reset-failed berth-standin-shop")
    client.check_output(f"systemd-run --unit berth-standin-shop --property Restart=no /usr/bin/python3 "
                        f"/usr/local/lib/berth-test/standin_app.py shop {SHOP_GREEN} {SHOP_BLUE} {address}")
    client.check_output("install -d -m 0755 /var/lib/berth/apps/shop")
    client.check_output("echo green > /var/lib/berth/apps/shop/live-colour")
    deadline = time.monotonic() + 30
    while standin(client, "/healthz")[0] != 200:
        assert time.monotonic() < deadline, "the stand-in of shop never became healthy"
        time.sleep(0.5)


def secrets_of(host) -> list[str]:
    return [host.file(f"/etc/berth/db/{app}/{name}").content_string.strip()
            for app, name in (("shop", "postgres-password"), ("shop", "redis-password"), ("blog", "postgres-password"))]


# --- the tests, in order -----------------------------------------------------------------------------


def test_the_db_host_backs_up_its_servers_without_docker(host):
    assert host.run("command -v docker").rc != 0
    config = json.loads(host.file("/etc/berth/backup/config.json").content_string)
    assert [app["name"] for app in config["apps"]] == ["shop", "blog"]
    shop, blog = config["apps"]
    assert shop["postgres"] == {"kind": "host", "database": "shop", "port": 5432}
    assert shop["redis"] == {"kind": "host", "unit": "redis-server@shop", "port": SHOP_BLUE,
                             "dir": "/var/lib/redis/shop", "password_file": "/etc/berth/db/shop/redis-password"}
    assert (blog["redis"], blog["paths"], blog["volumes"]) == (None, [], [])
    assert host.service("berth-backup.timer").is_enabled
    assert host.file("/etc/systemd/system/berth-backup.service").contains("^After=postgresql.service ")


def test_backup_now_makes_a_snapshot_per_app_and_its_restore_test_passes(host):
    as_app(host, "CREATE TABLE visits (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), note text); "
                 "INSERT INTO visits (note) SELECT 'visit ' || n FROM generate_series(1, 1000) n;", "shop")
    as_app(host, "CREATE TABLE posts (id serial PRIMARY KEY, title text NOT NULL); "
                 "INSERT INTO posts (title) SELECT 'post ' || n FROM generate_series(1, 50) n;", "blog")
    redis(host, "MSET", *[part for n in range(1, KEYS + 1) for part in (f"key:{n}", f"value {n}")])
    started = time.monotonic()
    done = playbook("backup-now.yml")
    timing("backup_now_playbook_seconds", time.monotonic() - started)
    assert done.returncode == 0, done.stdout + done.stderr

    run = read_json(host, f"{STATE}/last-backup.json")
    assert run["status"] == "ok"
    timing("backup_run_seconds", run["seconds"])
    assert {name: app["status"] for name, app in run["apps"].items()} == {"shop": "ok", "blog": "ok"}
    shop = run["apps"]["shop"]["contents"]
    assert (shop["postgres"]["kind"], shop["postgres"]["tables"]["public.visits"]["rows"]) == ("host", 1000)
    assert (shop["redis"]["kind"], shop["redis"]["keys"], shop["redis"]["keys_exact"]) == ("host", KEYS, True)
    assert "redis" not in run["apps"]["blog"]["contents"]

    for app, files in (("shop", {"postgres/database.dump", "redis/dump.rdb", "manifest.json"}),
                       ("blog", {"postgres/database.dump", "manifest.json"})):
        snapshots = json.loads(host.check_output(f"{PROGRAM} snapshots --repository local --app {app}"))
        assert len(snapshots) == 1 and snapshots[0]["hostname"] == HOST
        assert set(snapshots[0]["tags"]) == {"berth", f"app={app}"}
        listed = host.check_output(f"{PROGRAM} restic local ls --no-lock {snapshots[0]['id']}").splitlines()
        assert {line[len(STAGING) + 1:] for line in listed if line.startswith(f"{STAGING}/") and "." in line} == files
        head = host.check_output(f"{PROGRAM} restic local dump --no-lock {snapshots[0]['id']} "
                                 f"{STAGING}/postgres/database.dump | head -c 5")
        assert head == "PGDMP"  # pg_dump's custom format

    test = read_json(host, f"{STATE}/last-restore-test.json")
    assert test["status"] == "ok", test
    timing("restore_test_seconds", test["seconds"])
    assert test["apps"]["shop"]["postgres"]["database"] == "berth_restore_test_shop"
    assert test["apps"]["shop"]["postgres"]["matches_manifest"] is True
    assert test["apps"]["shop"]["postgres"]["rows"] == 1000
    assert test["apps"]["shop"]["redis"] | {"seconds": 0} == {"keys": KEYS, "compared": True, "seconds": 0}
    assert test["apps"]["blog"]["postgres"]["rows"] == 50 and "redis" not in test["apps"]["blog"]
    # Nothing of the test is left: neither the scratch databases nor the scratch Redis directories.
    assert psql(host, "SELECT count(*) FROM pg_database WHERE datname LIKE 'berth_restore_test_%'") == "0"
    assert [name for name in host.check_output("ls -A /var/lib/redis").split() if name.startswith("berth-")] == []
    for app in ("shop", "blog"):
        assert metric(host, METRICS, "berth_backup_last_run_success", app) == 1
        assert metric(host, METRICS, "berth_backup_size_bytes", app) > 0
        assert metric(host, RESTORE_TEST_METRICS, "berth_backup_restore_test_last_run_success", app) == 1
    # The passwords of the apps appear in no record and no output (redis-cli reads its one from the environment).
    records = host.check_output(f"cat {STATE}/runs/*.json {STATE}/state.json")
    for secret in secrets_of(host):
        assert secret not in records and secret not in done.stdout + done.stderr


def test_a_backup_with_an_apps_redis_down_fails_naming_it_and_still_backs_up_the_other(host):
    before = metric(host, METRICS, "berth_backup_last_success_timestamp_seconds", "shop")
    host.check_output("systemctl stop redis-server@shop")
    try:
        run = host.run(f"{PROGRAM} run")
    finally:
        host.check_output("systemctl start redis-server@shop")
    assert run.rc == 1
    assert "app shop" in run.stderr
    record = read_json(host, f"{STATE}/last-backup.json")
    assert (record["apps"]["shop"]["status"], record["apps"]["blog"]["status"]) == ("failed", "ok")
    assert metric(host, METRICS, "berth_backup_last_run_success", "shop") == 0
    assert metric(host, METRICS, "berth_backup_last_success_timestamp_seconds", "shop") == before
    assert metric(host, METRICS, "berth_backup_last_run_success", "blog") == 1
    deadline = time.monotonic() + 30
    while host.run(f"REDISCLI_AUTH=$(cat /etc/berth/db/shop/redis-password) redis-cli -p {SHOP_BLUE} "
                   "--no-auth-warning PING").stdout.strip() != "PONG":
        assert time.monotonic() < deadline
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["-e", "app=shop"], f"A restore replaces the live data of an app on {HOST}"),
        (["-e", f"backup_restore_confirm={HOST}", "-e", "app=wiki"],
         'There is no app \\"wiki\\" on this host; its apps: shop, blog'),
        (["-e", f"backup_restore_confirm={HOST}", "-e", "app=shop", "-e", '{"backup_restore_components": ["volumes"]}'],
         f"App shop has none of the components asked for (volumes) on the db host {HOST}: it has "
         "postgres, redis."),
        (["-e", f"backup_restore_confirm={HOST}"],
         f"Name the app to restore with -e app=NAME: the db host {HOST} has 2 apps (shop, blog)."),
    ],
)
def test_restore_refuses_before_any_change(host, extra, says):
    done = playbook("restore.yml", *extra)
    assert done.returncode == 2
    assert says in done.stdout
    assert "Look for the backup program" not in done.stdout


def test_restore_brings_back_a_dropped_table_while_the_app_runs_and_keeps_the_old_database(host, client):
    backed_up = visits_digest(host)
    keys = redis_keys(host)
    assert len(keys) == KEYS
    start_standin(host, client)
    connects = json.loads(standin(client, "/stats")[1])["connects"]
    # The damage, after the backup: shop's table dropped and its keys changed; blog gets a row (it must keep it).
    as_app(host, "DROP TABLE visits;", "shop")
    redis(host, "DEL", "key:1")
    redis(host, "SET", "key:new", "after the backup")
    as_app(host, "INSERT INTO posts (title) VALUES ('after the backup');", "blog")
    blog_before = posts_digest(host)

    started = time.monotonic()
    done = restore("-e", "app=shop")
    timing("restore_playbook_seconds", time.monotonic() - started)
    assert done.returncode == 0, done.stdout + done.stderr
    record = read_json(host, f"{STATE}/last-restore.json")
    timing("restore_run_seconds", record["seconds"])
    timing("restore_swap_seconds", record["postgres"]["swap_seconds"])
    # The playbook asked the app host for shop's health on its live colour (Ansible names the delegated host).
    assert f"ok: [{HOST} -> {APP_HOST}]" in done.stdout
    assert f"http://127.0.0.1:{SHOP_GREEN}/healthz" in done.stdout

    assert visits_digest(host) == backed_up
    assert redis_keys(host) == keys
    assert posts_digest(host) == blog_before
    # As roles/db_host makes it: owned by shop, its tables too, nobody else may connect.
    assert psql(host, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'") == "shop"
    assert psql(host, "SELECT tableowner FROM pg_tables WHERE tablename = 'visits'") == "shop"
    assert psql(host, "SELECT has_database_privilege('blog', 'shop', 'CONNECT')") == "f"
    assert psql(host, "SELECT count(*) FROM pg_database WHERE datname = 'shop_restoring'") == "0"
    # The replaced database is kept, closed to connections; it is the damaged one (no visits).
    kept = record["postgres"]["kept"]
    assert re.fullmatch(r"shop_before_restore_\d{8}_\d{6}", kept)
    assert psql(host, f"SELECT datallowconn FROM pg_database WHERE datname = '{kept}'") == "f"
    psql(host, f'ALTER DATABASE "{kept}" ALLOW_CONNECTIONS true')
    assert psql(host, "SELECT to_regclass('visits') IS NULL", kept) == "t"
    # Redis: the old directory is kept beside the new one, which has its append-only file.
    assert host.file(record["redis"]["kept"]).is_directory
    assert host.file("/var/lib/redis/shop/appendonlydir").is_directory
    # The stand-in kept running and opened a new session (the restore ended its old one).
    assert standin(client, "/healthz")[0] == 200
    assert json.loads(standin(client, "/stats")[1])["connects"] > connects
    # The instance restarts on its append-only file with the restored keys.
    host.check_output("systemctl restart redis-server@shop")
    deadline = time.monotonic() + 30
    while host.run(f"REDISCLI_AUTH=$(cat /etc/berth/db/shop/redis-password) redis-cli -p {SHOP_BLUE} "
                   "--no-auth-warning DBSIZE").stdout.strip() != str(KEYS):
        assert time.monotonic() < deadline, "the restored keys did not survive a restart"
        time.sleep(0.5)
    for secret in secrets_of(host):
        assert secret not in done.stdout + done.stderr


def test_a_restore_fails_when_an_app_host_does_not_answer(host, client):
    client.check_output("systemctl stop berth-standin-shop")
    done = restore("-e", "app=shop", "-e", "backup_wait_timeout=10")
    assert done.returncode == 2
    assert f"{APP_HOST}: http://127.0.0.1:{SHOP_GREEN}/healthz" in done.stdout
    assert "Wait until each app host answers the app's health check" in done.stdout
    # The data was restored all the same (the restore itself succeeded): the app host is what failed.
    assert read_json(host, f"{STATE}/last-restore.json")["status"] == "ok"


def test_the_kept_databases_are_dropped_as_the_runbook_says(host):
    kept = psql(host, "SELECT datname FROM pg_database WHERE datname LIKE 'shop_before_restore_%' ORDER BY 1").split()
    assert len(kept) == 2
    for name in kept:
        host.check_output(f"runuser -u postgres -- dropdb {name}")
    assert psql(host, "SELECT count(*) FROM pg_database WHERE datname LIKE 'shop_before_restore_%'") == "0"
    host.check_output("rm -r /var/lib/redis/shop.before-restore-*")
    assert [name for name in host.check_output("ls -A /var/lib/redis").split() if name.startswith("shop")] == ["shop"]
