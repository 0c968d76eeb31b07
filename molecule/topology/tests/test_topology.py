"""Two app hosts behind a load balancer, one database host: what users, the load balancer and a stranger see.

- the data is shared: a row written through app host 1 is read through app host 2, a job queued on one is
  done by a worker of either, and the apps reach PostgreSQL (over TLS where asked) and their own Redis on
  the database host;
- a rolling deploy (playbooks/deploy.yml across both hosts) and a rolling reboot (playbooks/reboot.yml)
  under steady HTTPS load through the load balancer (HAProxy, molecule.yml): 0 failed requests for a
  keep-alive client that never retries and for wrk, and no request answered by a host once the load
  balancer had time to see it drain, nor while it was down;
- a stranger (the load balancer's host is one for the database) finds PostgreSQL and Redis closed, and an
  address other than the load balancer's finds the app hosts' port 80 closed;
- bad topologies are refused before any change.
The figures go to artifacts/topology-load.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

SCENARIO = Path(__file__).resolve().parent.parent
PROJECT = SCENARIO.parents[1]
sys.path.insert(0, str(PROJECT / "tests" / "load"))

from release_phases import LoadedHost  # noqa: E402

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
APPS = {"app1": "berth-topo-app1", "app2": "berth-topo-app2"}
DB, LB = "berth-topo-db", "berth-topo-lb"
DB_ADDRESS, LB_ADDRESS, STRANGER_ADDRESS = "10.79.0.21", "10.79.0.30", "10.79.0.31"
APP_ADDRESSES = {"app1": "10.79.0.11", "app2": "10.79.0.12"}
DRAIN_FILE = "/var/lib/berth/draining"
# HAProxy checks every second and takes a server out after 2 failed checks (prepare.yml): a request
# answered by a host later than this after it drained would be the load balancer's, not berth's, fault;
# berth must make sure none is.
LB_NOTICES_WITHIN = 3.0
FIGURES: dict[str, dict] = {}


def docker_exec(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", name, *args], capture_output=True, text=True, check=False)


def through_host(app_host: str, path: str, site: str = "shop.test") -> dict:
    """A request to one app host's nginx as the load balancer sends it (HTTP on 80, the app's Host)."""
    out = docker_exec(APPS[app_host], "curl", "-sS", "--max-time", "10", "-H", "X-Forwarded-Proto: https",
                      "--resolve", f"{site}:80:127.0.0.1", f"http://{site}{path}")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def in_app(app_host: str, app: str, code: str) -> str:
    """Python run in the app's live web container (its environment: DATABASE_URL, REDIS_URL)."""
    colour = docker_exec(APPS[app_host], "cat", f"/var/lib/berth/apps/{app}/live-colour").stdout.strip() or "blue"
    out = docker_exec(APPS[app_host], "docker", "compose", "--project-directory", f"/opt/{app}", "exec", "-T",
                      f"web-{colour}", "python3", "-c", code)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def loaded() -> LoadedHost:
    # The clients run on the load balancer's host and go through HAProxy (HTTPS on 443 of 127.0.0.1).
    load = LoadedHost(LB, "shop.test", INVENTORY, rate=40.0, wrk_connections=2, also=("blog.test",))
    load.record_header = "X-Served-By"
    load.install_client()
    yield load
    (PROJECT / "artifacts").mkdir(exist_ok=True)
    (PROJECT / "artifacts" / "topology-load.json").write_text(json.dumps(FIGURES, indent=2))
    print("\ntopology figures:\n" + json.dumps(FIGURES, indent=2))


# --- Shared data --------------------------------------------------------------------------------------

def test_a_row_written_through_one_app_host_is_read_through_the_other() -> None:
    written = through_host("app1", "/visit")
    read = through_host("app2", "/stats")
    assert read["db_rows"] == written["db_rows"] and read["redis_count"] == written["redis_count"]
    again = through_host("app2", "/visit")
    assert through_host("app1", "/stats")["db_rows"] == again["db_rows"] == written["db_rows"] + 1


def test_a_job_queued_on_one_host_is_done_once_by_the_shared_workers() -> None:
    before = through_host("app2", "/jobs")
    run = int(time.time())  # ids of this run's jobs only (the test may run again on the same hosts)
    for number in range(6):
        through_host(f"app{number % 2 + 1}", f"/enqueue?id=topology-{run}-{number}")
    for _ in range(60):
        jobs = through_host("app1", "/jobs")
        if jobs["processed"] >= before["processed"] + 6 and jobs["queued"] == 0:
            break
        time.sleep(0.5)
    # Six rows more, each of a new id: every job done, none twice.
    assert (jobs["processed"], jobs["distinct"]) == (before["processed"] + 6, before["distinct"] + 6)


def test_the_apps_reach_their_data_on_the_db_host_with_tls_where_asked() -> None:
    check = ("import os, psycopg2; c = psycopg2.connect(os.environ['DATABASE_URL']); cur = c.cursor(); "
             "cur.execute('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'); "
             "print(cur.fetchone()[0], c.info.host)")
    for app_host in APPS:
        assert in_app(app_host, "shop", check) == f"True {DB_ADDRESS}"
        # blog asked for no TLS (data_tls: false, molecule.yml).
        assert in_app(app_host, "blog", check) == f"False {DB_ADDRESS}"
        ping = "import os, redis; print(redis.Redis.from_url(os.environ['REDIS_URL']).ping())"
        assert in_app(app_host, "shop", ping) == "True"
        # No PostgreSQL or Redis container runs on an app host.
        names = docker_exec(APPS[app_host], "docker", "ps", "--format", "{{.Names}}").stdout.split()
        assert names and not [name for name in names if "postgres" in name or "redis" in name]


def test_one_app_cannot_open_the_other_apps_database() -> None:
    code = ("import os, psycopg2\nurl = os.environ['DATABASE_URL'].replace('/shop?', '/blog?')\n"
            "try:\n    psycopg2.connect(url)\n    print('opened')\nexcept psycopg2.OperationalError as e:\n"
            "    print('refused' if 'blog' in str(e) else str(e))")
    assert in_app("app1", "shop", code) == "refused"


# --- The firewall, as a stranger sees it ---------------------------------------------------------------

def test_a_stranger_finds_postgresql_and_redis_closed() -> None:
    ports = "22,5432,6379," + str(redis_port())
    scan = docker_exec(LB, "nmap", "-Pn", "-n", "--max-retries", "1", "--host-timeout", "60s", "-p", ports,
                       DB_ADDRESS)
    assert scan.returncode == 0, scan.stderr
    open_ports = [line.split("/")[0] for line in scan.stdout.splitlines() if "/tcp" in line and " open " in line]
    assert open_ports == ["22"], scan.stdout
    # From an app host the same ports answer.
    for app_host in APPS:
        for port in (5432, redis_port()):
            reach = docker_exec(APPS[app_host], "timeout", "5", "bash", "-c", f"</dev/tcp/{DB_ADDRESS}/{port}")
            assert reach.returncode == 0, (app_host, port, reach.stderr)


def redis_port() -> int:
    """shop's Redis instance on the db host: its blue web port (plugins/filter/apps.py)."""
    out = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; s = u.spec_from_file_location('a', "
         f"'{PROJECT}/plugins/filter/apps.py'); m = u.module_from_spec(s); s.loader.exec_module(m); "
         "print(m.derived_port('shop'))"], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_only_the_load_balancer_reaches_the_app_hosts_web() -> None:
    docker_exec(LB, "ip", "addr", "add", f"{STRANGER_ADDRESS}/24", "dev", "eth0")
    for address in APP_ADDRESSES.values():
        lb = docker_exec(LB, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                         "--interface", LB_ADDRESS, f"http://{address}/berth-lb-health")
        assert lb.stdout == "200", lb.stderr
        stranger = docker_exec(LB, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                               "--interface", STRANGER_ADDRESS, f"http://{address}/berth-lb-health")
        assert stranger.returncode != 0 and stranger.stdout in ("", "000")
        https = docker_exec(LB, "curl", "-sk", "--max-time", "5", "--interface", LB_ADDRESS, f"https://{address}/")
        assert https.returncode != 0


# --- Rolling deploy and rolling reboot under load through the load balancer -----------------------------

class DrainWatch:
    """Polls each app host: "serving", "drained" (the drain file exists) or "down" (not running), with times."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.samples: dict[str, list[tuple[float, str]]] = {name: [] for name in APPS}

    def state(self, name: str) -> str:
        # (docker exec itself exits 1 when the container is not running: the answer is in the output)
        done = docker_exec(APPS[name], "sh", "-c", f"if test -e {DRAIN_FILE}; then echo drained; else echo serving; fi")
        return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "down"

    def run(self) -> None:
        while not self.stop.is_set():
            for name in APPS:
                self.samples[name].append((time.time(), self.state(name)))
            self.stop.wait(0.25)

    def out_of_service(self, name: str) -> list[tuple[float, float]]:
        """The intervals in which the host was drained or down, from the first such sample to the next
        "serving" one."""
        spans, start = [], None
        for when, state in self.samples[name]:
            if state != "serving" and start is None:
                start = when
            elif state == "serving" and start is not None:
                spans.append((start, when))
                start = None
        if start is not None:
            spans.append((start, time.time()))
        return spans


def rolling(loaded: LoadedHost, name: str, playbook: str, *extra: str) -> tuple:
    watch = DrainWatch()
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    try:
        phase = loaded.phase(name, playbook, *extra, settle=3.0)
    finally:
        watch.stop.set()
        thread.join(timeout=10)
    return phase, watch


def answered_while_out(phase, watch: DrainWatch) -> dict[str, dict[str, int]]:
    """Per host: requests it answered within LB_NOTICES_WITHIN s of draining (allowed: the load balancer
    had not seen it yet, and they must succeed) and later while out of service (must be none)."""
    found = {name: {"grace": 0, "late": 0} for name in APPS}
    answered = [entry for load in phase.loads.values() for entry in load.get("answered", [])]
    for name in APPS:
        for start, end in watch.out_of_service(name):
            for when, server, _ok in answered:
                if server == name and start <= when <= end:
                    found[name]["late" if when > start + LB_NOTICES_WITHIN else "grace"] += 1
    return found


def figures(phase, watch: DrainWatch, out: dict) -> dict:
    servers: dict[str, int] = {}
    for load in phase.loads.values():
        for _, server, _ok in load.get("answered", []):
            servers[str(server)] = servers.get(str(server), 0) + 1
    return {
        "seconds": round(phase.seconds, 1),
        "keepalive_sent_failed": {site: [load["sent"], load["failed"]] for site, load in phase.loads.items()},
        "wrk_requests_failed": {site: [wrk.get("requests", 0), sum(wrk.get(k, 0) for k in
                                       ("connect", "read", "write", "timeout", "non2xx3xx"))]
                                for site, wrk in phase.wrks.items()},
        "answered_by": servers,
        "out_of_service_seconds": {name: [round(end - start, 1) for start, end in watch.out_of_service(name)]
                                   for name in APPS},
        "answered_while_out": out,
    }


def test_a_rolling_deploy_under_load_fails_no_request(loaded: LoadedHost) -> None:
    phase, watch = rolling(loaded, "deploy", "playbooks/deploy.yml", "-e", "app=shop", "-e", "app_version=v2")
    out = answered_while_out(phase, watch)
    FIGURES["rolling deploy"] = figures(phase, watch, out)
    assert phase.rc == 0, phase.output[-3000:]
    assert phase.failed == 0, FIGURES["rolling deploy"]
    # Both hosts moved to v2, one after the other, and both answered all along.
    for app_host in APPS:
        assert through_host(app_host, "/version")["version"] == "v2"
    assert set(FIGURES["rolling deploy"]["answered_by"]) == {"app1", "app2"}


def test_a_rolling_reboot_under_load_fails_no_request(loaded: LoadedHost) -> None:
    boots = {name: docker_exec(container, "cut", "-d ", "-f22", "/proc/1/stat").stdout for name, container
             in APPS.items()}
    phase, watch = rolling(loaded, "reboot", "playbooks/reboot.yml", "-e", "reboot_lb_wait=4")
    out = answered_while_out(phase, watch)
    FIGURES["rolling reboot"] = figures(phase, watch, out)
    assert phase.rc == 0, phase.output[-3000:]
    assert phase.failed == 0, FIGURES["rolling reboot"]
    # Each host really rebooted (its PID 1 started again), one at a time, and is serving again.
    for name, container in APPS.items():
        assert docker_exec(container, "cut", "-d ", "-f22", "/proc/1/stat").stdout != boots[name]
        assert len(watch.out_of_service(name)) == 1
        assert watch.state(name) == "serving"
    (a_start, a_end), = watch.out_of_service("app1")
    (b_start, b_end), = watch.out_of_service("app2")
    assert a_end <= b_start or b_end <= a_start, "both app hosts were out of service at once"
    # No request reached a host once the load balancer had seen it drain, nor while it was down.
    assert all(counts["late"] == 0 for counts in out.values()), out
    # The apps answer on both hosts after the reboot, with the data they had.
    for app_host in APPS:
        assert through_host(app_host, "/version")["version"] == "v2"
        assert through_host(app_host, "/stats")["db_rows"] >= 2


def test_a_rolling_deploy_stops_at_the_first_unhealthy_host(loaded: LoadedHost) -> None:
    # v6 is v2's build on app1 and the broken build on app2: deploy.yml releases the hosts one after the
    # other; app1 switches, app2 aborts before its switch and keeps serving v2, the run fails, and the
    # load balancer's clients see no failure.
    docker_exec(APPS["app1"], "docker", "tag", "berth-demo-app:v2", "berth-demo-app:v6")
    docker_exec(APPS["app2"], "docker", "tag", "berth-demo-app:broken", "berth-demo-app:v6")
    phase, watch = rolling(loaded, "broken", "playbooks/deploy.yml", "-e", "app=shop", "-e", "app_version=v6",
                           "-e", "release_health_timeout=10")
    FIGURES["rolling deploy, broken on the second host"] = figures(phase, watch, answered_while_out(phase, watch))
    assert phase.rc != 0
    assert "RELEASE ABORTED before the switch: berth-demo-app:v6 on" in phase.output, phase.output[-3000:]
    # serial: app2 starts only once app1 is done
    assert phase.output.find("[berth-topo-app2]") > phase.output.rfind("changed: [berth-topo-app1]") > 0
    state = {name: json.loads(docker_exec(container, "cat", "/var/lib/berth/apps/shop/release.json").stdout)
             for name, container in APPS.items()}
    assert (state["app1"]["live"]["version"], state["app2"]["live"]["version"]) == ("v6", "v2")
    assert through_host("app2", "/version")["version"] == "v2"
    assert phase.failed == 0, FIGURES["rolling deploy, broken on the second host"]


# --- Backups where the data is: on the database host ------------------------------------------------------

def db_sql(query: str, database: str = "shop") -> str:
    out = docker_exec(DB, "runuser", "-u", "postgres", "--", "psql", "-d", database, "-Atc", query)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def kept_databases() -> set[str]:
    """The databases restores kept, closed to connections."""
    return set(db_sql("SELECT datname FROM pg_database WHERE datname LIKE 'shop_before_restore_%' "
                      "AND NOT datallowconn", "postgres").splitlines())


def test_the_db_host_backs_up_and_restores_while_both_app_hosts_run(loaded: LoadedHost) -> None:
    kept_before = kept_databases()
    rows = through_host("app1", "/visit")["db_rows"]
    backup = loaded.playbook("playbooks/backup-now.yml", "--limit", DB)
    assert backup[0] == 0, backup[1][-3000:]
    snapshots = json.loads(docker_exec(DB, "sh", "-c", "RESTIC_PASSWORD_FILE=/etc/berth/backup/password "
                                       "restic -r /var/backups/berth/restic snapshots --json").stdout or "[]")
    assert {"app=shop", "app=blog"} <= {tag for snap in snapshots for tag in snap.get("tags", [])}
    metrics = docker_exec(DB, "cat", "/var/lib/prometheus/node-exporter/berth_backup_restore_test.prom").stdout
    for app in ("shop", "blog"):
        assert f'berth_backup_restore_test_last_run_success{{app="{app}",repository="local"}} 1' in metrics
    # A row written after the backup, through the other host; then the restore, under load.
    assert through_host("app2", "/visit")["db_rows"] == rows + 1
    phase = loaded.phase("restore", "playbooks/restore.yml", "--limit", DB, "-e", f"backup_restore_confirm={DB}",
                         "-e", "app=shop", settle=3.0)
    FIGURES["restore of shop on the db host"] = {
        "seconds": round(phase.seconds, 1),
        "keepalive_sent_failed": {site: [load["sent"], load["failed"]] for site, load in phase.loads.items()}}
    assert phase.rc == 0, phase.output[-3000:]
    # Both app hosts serve the restored data; the database as it was is kept beside it.
    for app_host in APPS:
        assert through_host(app_host, "/stats")["db_rows"] == rows
    # (kept closed to connections: opened here only to count its rows)
    kept = sorted(kept_databases() - kept_before)
    assert len(kept) == 1
    db_sql(f"ALTER DATABASE {kept[0]} WITH ALLOW_CONNECTIONS true", "postgres")
    assert db_sql("SELECT count(*) FROM visits", kept[0]) == str(rows + 1)
    db_sql(f"ALTER DATABASE {kept[0]} WITH ALLOW_CONNECTIONS false", "postgres")
    assert phase.failed == 0, FIGURES["restore of shop on the db host"]


# --- A managed database (data: external): dumped from the first app host only ---------------------------

MANAGED_PASSWORD = "news-managed-test-pw"  # molecule.yml's URL


def managed_sql(query: str) -> str:
    out = docker_exec(LB, "runuser", "-u", "postgres", "--", "psql", "-d", "news", "-Atc", query)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def backup_file(app_host: str, path: str) -> subprocess.CompletedProcess:
    return docker_exec(APPS[app_host], "cat", f"/var/lib/berth/backup/{path}")


def test_the_first_app_host_alone_dumps_the_managed_database_and_its_restore_test_passes(loaded: LoadedHost) -> None:
    # A row of news's, through app host 2: the data is the managed database's, not a host's.
    rows = through_host("app2", "/visit", site="news.test")["db_rows"]
    assert managed_sql("SELECT count(*) FROM visits") == str(rows)
    backup = loaded.playbook("playbooks/backup-now.yml", "--limit", "app")
    assert backup[0] == 0, backup[1][-3000:]
    first = json.loads(backup_file("app1", "last-backup.json").stdout)["apps"]["news"]
    assert first["status"] == "ok", first
    dump = first["contents"]["postgres"]
    assert (dump["kind"], dump["database"], dump["user"], dump["rows"]) == ("external", "news", "news", rows)
    assert dump["server_version"].startswith("17")
    # The restore test restored that dump into a scratch server on app host 1 and found every row.
    tested = json.loads(backup_file("app1", "last-restore-test.json").stdout)["apps"]["news"]
    assert tested["status"] == "ok" and tested["postgres"]["matches_manifest"], tested
    assert tested["postgres"]["rows"] == rows
    # App host 2 backs up news's files only: the database is dumped once, by the first app host.
    second = json.loads(backup_file("app2", "last-backup.json").stdout)["apps"]["news"]
    assert second["status"] == "ok" and "postgres" not in second["contents"], second
    urls_file = "/etc/berth/backup/database-urls.json"
    assert docker_exec(APPS["app2"], "test", "-e", urls_file).returncode == 1
    # The URL's password only in the root-only file of app host 1: never in the configuration, the records,
    # the journal, or the output; no client container left behind.
    mode = docker_exec(APPS["app1"], "stat", "-c", "%a %U", urls_file).stdout.strip()
    assert mode == "600 root"
    for app_host in APPS:
        found = docker_exec(APPS[app_host], "sh", "-c", "grep -rl -F -e \"$1\" /etc/berth/backup/config.json "
                            "/var/lib/berth/backup; journalctl -q --no-pager | grep -c -F -e \"$1\"", "-",
                            MANAGED_PASSWORD)
        assert found.stdout.split() == ["0"], (app_host, found.stdout)
        assert not docker_exec(APPS[app_host], "docker", "ps", "-aq", "--filter", "label=berth.backup").stdout.strip()
    assert MANAGED_PASSWORD not in backup[1]
    # berth restores no managed database, but its dump is usable: docs/disaster-recovery.md's steps, as
    # written, bring it into a new database (made at the provider's console) with every row.
    managed_sql("DROP DATABASE IF EXISTS news_restored WITH (FORCE)")
    managed_sql("CREATE DATABASE news_restored OWNER news")
    steps = (
        "set -e; rm -rf /root/news-restore\n"
        "berth-backup restic local restore latest --host berth-topo-app1 --tag app=news "
        "--include /var/lib/berth/backup/staging/postgres --target /root/news-restore\n"
        "docker run --rm -i -e PGPASSWORD -e PGSSLMODE=require berth-standin/postgres:17 "
        "pg_restore --no-owner --no-privileges --single-transaction --exit-on-error "
        "-h 10.79.0.30 -U news -d news_restored "
        "< /root/news-restore/var/lib/berth/backup/staging/postgres/database.dump\n"
        "rm -rf /root/news-restore")
    restored = docker_exec(APPS["app1"], "env", f"PGPASSWORD={MANAGED_PASSWORD}", "sh", "-c", steps)
    assert restored.returncode == 0, restored.stderr[-2000:]
    out = docker_exec(LB, "runuser", "-u", "postgres", "--", "psql", "-d", "news_restored", "-Atc",
                      "SELECT count(*) FROM visits")
    assert out.stdout.strip() == str(rows), out.stderr


# --- Bad topologies, refused before any change --------------------------------------------------------

def site_with(*extra: str, inventory: str = INVENTORY) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(PROJECT / "collections"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", inventory, "site.yml",
                           *extra], cwd=PROJECT, env=env, capture_output=True, text=True, check=False, timeout=300)


@pytest.mark.parametrize(
    ("apps", "says"),
    [
        ([{"name": "shop", "image": "berth-demo-app:v1", "domains": ["shop.test"]}],
         "app shop keeps its postgres and redis on each app host (data: local), but there are 2 app hosts"),
        ([{"name": "shop", "image": "berth-demo-app:v1", "data": "external", "redis": False,
           "database_url": "postgresql://shop:topsecret@db.example.com/shop?sslmode=disable"}],
         "database_url must ask for TLS with sslmode=require"),
    ],
)
def test_a_bad_topology_is_refused_before_any_change(apps: list, says: str) -> None:
    done = site_with("-e", json.dumps({"berth_apps": apps}))
    assert done.returncode != 0 and says in done.stdout, done.stdout[-2000:]
    assert "topsecret" not in done.stdout + done.stderr
    assert "changed=0" in done.stdout and "changed=1" not in done.stdout


def test_data_on_a_db_host_without_a_db_host_is_refused() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as inventory:
        inventory.write(json.dumps({"berth": {"children": {"app": {"hosts": {
            name: {"ansible_connection": "community.docker.docker"} for name in APPS.values()}}}}}))
        inventory.flush()
        done = site_with("-e", json.dumps({"berth_apps": [{"name": "shop", "image": "berth-demo-app:v1",
                                                          "data": "host"}]}), inventory=inventory.name)
    assert done.returncode != 0
    assert "app shop has data: host, but the inventory group db has no host" in done.stdout, done.stdout[-2000:]
