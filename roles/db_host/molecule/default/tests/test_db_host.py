"""What an app host and the database host observe once db_host converged (the inventory's berth_apps:
shop and blog keep their data on the db host, jobs keeps it local).

The app host connects as the apps would (psql, redis-cli) to the db host's address on the scenario network,
with the passwords the role generated there. What the role should have made is computed with the same
filter it uses (plugins/filter/apps.py). The bookworm scenario runs these tests too (its own hosts).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
from pathlib import Path

import pytest
import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
# The database host (group db) is the host under test; the app host (group app) is the client.
testinfra_hosts = ["db"]

ROOT = Path(__file__).resolve().parents[5]
_spec = importlib.util.spec_from_file_location("apps", ROOT / "plugins" / "filter" / "apps.py")
assert _spec and _spec.loader
apps_filter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(apps_filter)


@pytest.fixture(scope="module")
def plan(host) -> dict[str, dict]:
    """Each app of the inventory's berth_apps, as berth_apps_plan gives it to the role."""
    return {app["name"]: app for app in apps_filter.apps_plan(host.ansible.get_variables()["berth_apps"])}


@pytest.fixture(scope="module")
def hosted(plan) -> dict[str, dict]:
    return {name: app for name, app in plan.items() if app["data"] == "host"}


@pytest.fixture(scope="module")
def client() -> testinfra.host.Host:
    (found,) = testinfra.get_hosts([f"ansible://app?ansible_inventory={INVENTORY}"])
    return found


@pytest.fixture(scope="module")
def address(host) -> str:
    """The db host's address on the scenario network (its default route's: what the role listens on)."""
    return host.check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'").split("/")[0]


@pytest.fixture(scope="module")
def passwords(host, hosted) -> dict[tuple[str, str], str]:
    found = {}
    for app in hosted.values():
        for service in ("postgres", "redis"):
            secret = host.file(f"{app['db_secrets_dir']}/{service}-password")
            if secret.exists:
                found[(app["name"], service)] = secret.content_string
    return found


def psql(client, address: str, db: str, user: str, password: str, sslmode: str = "require", sql: str = "select 1"):
    conninfo = f"host={address} port=5432 dbname={db} user={user} sslmode={sslmode} connect_timeout=5"
    return client.run(f"PGPASSWORD={shlex.quote(password)} psql {shlex.quote(conninfo)} -XAtc {shlex.quote(sql)}")


def redis(client, address: str, port: int, password: str | None, command: str = "ping"):
    auth = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    return client.run(f"{auth}timeout 10 redis-cli --no-auth-warning -h {address} -p {port} {command}")


def superuser(host, sql: str) -> str:
    return host.check_output(f"sudo -u postgres psql -XAtc {shlex.quote(sql)}")


# --- The passwords, made on the db host --------------------------------------------------------------


def test_password_files_are_root_0600_in_a_root_0700_directory(host, hosted):
    for app in hosted.values():
        directory = host.file(app["db_secrets_dir"])
        assert directory.is_directory and directory.user == "root" and directory.mode == 0o700
        for service in ("postgres", "redis"):
            secret = host.file(f"{app['db_secrets_dir']}/{service}-password")
            assert secret.exists == app[service], (app["name"], service)
            if app[service]:
                assert (secret.user, secret.group, secret.mode) == ("root", "root", 0o600)
                assert len(secret.content_string) == 32 and secret.content_string.isalnum()
    assert host.file("/etc/berth/db").mode == 0o700


def test_an_app_with_local_data_gets_nothing_here(host, plan):
    jobs, blog = plan["jobs"], plan["blog"]
    assert not host.file(jobs["db_secrets_dir"]).exists
    assert superuser(host, f"select count(*) from pg_roles where rolname = '{jobs['db_name']}'") == "0"
    assert superuser(host, f"select count(*) from pg_database where datname = '{jobs['db_name']}'") == "0"
    assert not host.file(f"/etc/redis/redis-{jobs['name']}.conf").exists
    assert not host.file(f"/etc/redis/redis-{blog['name']}.conf").exists  # blog: redis: false


# --- PostgreSQL -----------------------------------------------------------------------------------------


def test_postgresql_listens_on_localhost_and_the_private_address_only(host, address):
    assert superuser(host, "show listen_addresses") == f"localhost,{address}"
    sockets = set(host.check_output("ss -Htln 'sport = :5432' | awk '{print $4}'").split())
    # localhost: 127.0.0.1, and ::1 where the host has IPv6
    assert sockets - {"[::1]:5432"} == {f"{address}:5432", "127.0.0.1:5432"}


def test_postgresql_settings(host, hosted):
    assert superuser(host, "show ssl") == "on"
    assert superuser(host, "show password_encryption") == "scram-sha-256"
    for app in hosted.values():
        role = app["db_name"]
        scram = f"select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = '{role}'"
        assert superuser(host, scram) == "t"
        flags = "select rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication from pg_roles"
        assert superuser(host, f"{flags} where rolname = '{role}'") == "t|f|f|f|f"
        assert superuser(host, f"select pg_get_userbyid(datdba) from pg_database where datname = '{role}'") == role
        # CONNECT taken from PUBLIC: no other role (here the other app's) may connect, even past pg_hba.
        for other in hosted.values():
            allowed = superuser(host, f"select has_database_privilege('{other['db_name']}', '{role}', 'CONNECT')")
            assert allowed == ("t" if other is app else "f"), (other["name"], app["name"])


def test_pg_hba_holds_debians_local_lines_and_one_line_per_app(host, client, address):
    client_address = client.check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'").split("/")[0]
    sql = ("select type, database[1], user_name[1], coalesce(address, ''), auth_method from pg_hba_file_rules"
           " where error is null order by line_number")
    rows = superuser(host, sql).splitlines()
    assert rows == [
        "local|all|postgres||peer",
        "local|all|all||peer",
        "host|all|all|127.0.0.1|scram-sha-256",
        "host|all|all|::1|scram-sha-256",
        "local|replication|all||peer",
        "host|replication|all|127.0.0.1|scram-sha-256",
        "host|replication|all|::1|scram-sha-256",
        f"hostssl|shop|shop|{client_address}|scram-sha-256",
        f"host|blog|blog|{client_address}|scram-sha-256",
    ]


def test_each_app_logs_into_its_own_database_over_tls(client, address, passwords, hosted):
    for app in hosted.values():
        sql = "select current_user, current_database(), ssl from pg_stat_ssl where pid = pg_backend_pid()"
        out = psql(client, address, app["db_name"], app["db_name"], passwords[(app["name"], "postgres")], sql=sql)
        assert out.rc == 0, out.stderr
        assert out.stdout.strip() == f"{app['db_name']}|{app['db_name']}|t"


def test_an_app_can_write_and_read_its_database(client, address, passwords):
    password = passwords[("shop", "postgres")]
    sql = ("create table if not exists berth_probe (n int); insert into berth_probe values (7);"
           " select sum(n) > 0 from berth_probe")
    out = psql(client, address, "shop", "shop", password, sql=sql)
    assert out.rc == 0 and out.stdout.strip().splitlines()[-1] == "t", out.stderr


def test_an_app_cannot_open_another_apps_database(client, address, passwords):
    shop_pw, blog_pw = passwords[("shop", "postgres")], passwords[("blog", "postgres")]
    # its own name and password, the other database: no pg_hba line lets it in
    out = psql(client, address, "blog", "shop", shop_pw)
    assert out.rc != 0 and 'no pg_hba.conf entry' in out.stderr, out.stderr
    out = psql(client, address, "shop", "blog", blog_pw)
    assert out.rc != 0 and 'no pg_hba.conf entry' in out.stderr, out.stderr
    # the other app's name with its own password
    out = psql(client, address, "blog", "blog", shop_pw)
    assert out.rc != 0 and "password authentication failed" in out.stderr, out.stderr
    # nor PostgreSQL's own databases
    for db in ("postgres", "template1"):
        out = psql(client, address, db, "shop", shop_pw)
        assert out.rc != 0 and 'no pg_hba.conf entry' in out.stderr, out.stderr
    out = psql(client, address, "shop", "postgres", shop_pw)
    assert out.rc != 0 and 'no pg_hba.conf entry' in out.stderr, out.stderr


def test_without_tls_only_the_app_that_allows_it_connects(client, address, passwords):
    out = psql(client, address, "shop", "shop", passwords[("shop", "postgres")], sslmode="disable")
    assert out.rc != 0 and "no encryption" in out.stderr, out.stderr
    out = psql(client, address, "blog", "blog", passwords[("blog", "postgres")], sslmode="disable",
               sql="select ssl from pg_stat_ssl where pid = pg_backend_pid()")
    assert out.rc == 0 and out.stdout.strip() == "f", out.stderr


def test_a_wrong_password_is_refused(client, address):
    out = psql(client, address, "shop", "shop", "not-the-password")
    assert out.rc != 0 and "password authentication failed" in out.stderr, out.stderr


# --- Redis ----------------------------------------------------------------------------------------------


def test_redis_answers_the_app_with_its_password_only(client, address, passwords, plan):
    port = plan["shop"]["db_redis_port"]
    out = redis(client, address, port, passwords[("shop", "redis")])
    assert out.stdout.strip() == "PONG", out.stdout + out.stderr
    out = redis(client, address, port, None)
    assert "NOAUTH" in out.stdout + out.stderr, out.stdout + out.stderr
    out = redis(client, address, port, "not-the-password")
    assert "WRONGPASS" in out.stdout + out.stderr or "invalid" in (out.stdout + out.stderr).lower()


def test_redis_instance_settings(host, client, address, passwords, plan):
    shop = plan["shop"]
    password = passwords[("shop", "redis")]
    config = {}
    for key in ("maxmemory", "maxmemory-policy", "appendonly", "dir", "port", "bind"):
        lines = redis(client, address, shop["db_redis_port"], password, f"config get {key}").stdout.splitlines()
        config[key] = lines[1] if len(lines) > 1 else None
    assert config == {
        "maxmemory": str(256 * 1024 * 1024),
        "maxmemory-policy": "noeviction",
        "appendonly": "yes",
        "dir": "/var/lib/redis/shop",
        "port": str(shop["db_redis_port"]),
        "bind": f"127.0.0.1 {address}",
    }
    unit = host.service("redis-server@shop")
    assert unit.is_running and unit.is_enabled
    conf = host.file("/etc/redis/redis-shop.conf")
    assert (conf.user, conf.group, conf.mode) == ("root", "redis", 0o640)
    data = host.file("/var/lib/redis/shop")
    assert (data.user, data.mode) == ("redis", 0o750)


def test_debians_default_redis_is_off(host):
    assert not host.service("redis-server").is_enabled
    assert not host.service("redis-server").is_running
    assert host.run("ss -Htln 'sport = :6379'").stdout.strip() == ""


# --- The exporters (molecule.yml: on the db host's network address, TLS from a test CA, basic auth) -------

EXPORTER_CA = "/etc/ssl/berth-exporter-test-ca.pem"
SCRAPE = "prometheus:berth-test-scrape-password"
# The Redis exporter takes one basic auth user: the first of node_exporter_basic_auth_users by name.
REDIS_SCRAPE = "ops:berth-test-second-password"
MONITOR = "berth-monitor"


def scrape(host, address: str, port: int, path: str = "/metrics", credentials: str | None = SCRAPE):
    """HTTP status and body of a scrape from the db host, as Prometheus would do it (TLS, basic auth)."""
    name = host.backend.get_hostname()
    auth = f"-u {credentials}" if credentials else ""
    out = host.run(
        f"curl -sS --max-time 30 -w '\\n%{{http_code}}' --cacert {EXPORTER_CA} --resolve {name}:{port}:{address}"
        f" {auth} 'https://{name}:{port}{path}'"
    )
    assert out.rc == 0, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    return status, body


def values(body: str, name: str) -> list[float]:
    return [float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", body, re.M)]


def test_exporters_listen_where_configured_as_prometheus(host, address):
    for service, port in (("prometheus-postgres-exporter", 9187), ("prometheus-redis-exporter", 9121)):
        assert host.service(service).is_running and host.service(service).is_enabled
        assert host.check_output(f"systemctl show -p User --value {service}") == "prometheus"
        listening = host.check_output(f"ss -Htln 'sport = :{port}' | awk '{{print $4}}'").split()
        assert listening == [f"{address}:{port}"], service


def test_postgres_exporter_reads_postgresql_with_tls_and_basic_auth(host, address):
    status, body = scrape(host, address, 9187)
    assert status == "200", body[-500:]
    assert values(body, "pg_up") == [1]
    assert values(body, "pg_settings_max_connections") == [100]
    assert sum(values(body, "pg_stat_database_numbackends")) >= 1
    assert scrape(host, address, 9187, credentials="prometheus:wrong-password")[0] == "401"
    assert scrape(host, address, 9187, credentials=None)[0] == "401"
    config = host.file("/etc/prometheus-postgres-exporter/web-config.yml")
    assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640)
    assert "berth-test-scrape-password" not in config.content_string


def test_postgres_monitor_role_has_pg_monitor_only_and_reads_no_app_table(host):
    flags = "select rolsuper, rolcreaterole, rolcreatedb from pg_roles where rolname = 'prometheus'"
    assert superuser(host, flags) == "f|f|f"
    member_of = (
        "select string_agg(g.rolname, ',') from pg_auth_members m join pg_roles g on g.oid = m.roleid"
        " join pg_roles r on r.oid = m.member where r.rolname = 'prometheus'"
    )
    assert superuser(host, member_of) == "pg_monitor"
    # An app's table: the monitor role is not even let into the app's database ...
    host.check_output("sudo -u postgres psql -d shop -XAtc 'create table if not exists berth_test_secret (x text)'")
    out = host.run("sudo -u prometheus psql -d shop -XAtc 'select * from berth_test_secret'")
    assert out.rc != 0 and "permission denied for database" in out.stderr, out.stderr
    # ... and a table where it may connect is not readable either.
    host.check_output("sudo -u postgres psql -d postgres -XAtc 'create table if not exists berth_test_secret (x text)'")
    out = host.run("sudo -u prometheus psql -d postgres -XAtc 'select * from berth_test_secret'")
    assert out.rc != 0 and "permission denied for table" in out.stderr, out.stderr


def test_redis_exporter_reads_each_instance(host, address, hosted):
    with_redis = [app for app in hosted.values() if app["redis"]]
    assert with_redis
    for app in with_redis:
        target = f"/scrape?target=redis://127.0.0.1:{app['db_redis_port']}"
        status, body = scrape(host, address, 9121, target, REDIS_SCRAPE)
        assert status == "200", body[-500:]
        assert values(body, "redis_up") == [1], app["name"]
        assert values(body, "redis_memory_max_bytes") == [256 * 1024 * 1024]
        assert values(body, "redis_memory_used_bytes")[0] > 0
        assert values(body, "redis_exporter_last_scrape_error") == [0]
    # No instance of its own on /metrics (Debian's default one is off).
    status, body = scrape(host, address, 9121, credentials=REDIS_SCRAPE)
    assert status == "200" and values(body, "redis_up") == []
    assert scrape(host, address, 9121, credentials="ops:wrong-password")[0] == "401"
    assert scrape(host, address, 9121, credentials=SCRAPE)[0] == "401"
    assert scrape(host, address, 9121, credentials=None)[0] == "401"


def test_redis_monitor_user_reads_info_but_no_key_and_no_config(host, passwords, plan):
    port = plan["shop"]["db_redis_port"]
    secret = host.file("/etc/berth/db/redis-monitor-password")
    assert (secret.user, secret.group, secret.mode) == ("root", "root", 0o600)
    monitor = secret.content_string
    settings = host.file("/etc/default/prometheus-redis-exporter")
    assert (settings.user, settings.group, settings.mode) == ("root", "prometheus", 0o640)
    # Only its hash is in the instance's configuration.
    assert monitor not in host.file("/etc/redis/redis-shop.conf").content_string
    app = f"REDISCLI_AUTH={shlex.quote(passwords[('shop', 'redis')])} redis-cli --no-auth-warning -p {port}"
    assert host.check_output(f"{app} set berth-test-key secret") == "OK"
    as_monitor = f"REDISCLI_AUTH={shlex.quote(monitor)} redis-cli --no-auth-warning --user {MONITOR} -p {port}"
    assert "maxmemory:" in host.check_output(f"{as_monitor} info memory")
    for command in ("get berth-test-key", "config get requirepass", "keys berth-test-key", "set other x"):
        out = host.run(f"{as_monitor} {command}")
        assert "NOPERM" in out.stdout + out.stderr, f"{command}: {out.stdout} {out.stderr}"
