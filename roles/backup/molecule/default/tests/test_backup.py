"""What a user of the backup role observes (converge.yml; the variables are molecule.yml's host_vars).

Two apps (berth_apps): shop (PostgreSQL, Redis, the uploads volume shop-uploads) and blog (PostgreSQL
only). The data flows are real: rows are written through shop's app and into blog's database, the
backup is taken by playbooks/backup-now.yml (one snapshot per app), a database volume is destroyed or a
table dropped and playbooks/restore.yml -e app=NAME brings it back, leaving the other app alone.
Timings land in artifacts/molecule/backup-timings.json (git-ignored) for the report.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import testinfra

testinfra_hosts = ["berth-backup-trixie"]

ROOT = Path(__file__).resolve().parents[5]
HOST = "berth-backup-trixie"
OFFSITE = "berth-backup-offsite"
APPS = ("shop", "blog")
# The services of each app (no workers in this scenario): both web colours run, blog has no Redis.
SERVICES = {"shop": 4, "blog": 3}
PROGRAM = "/usr/local/sbin/berth-backup"
STATE = "/var/lib/berth/backup"
METRICS = "/var/lib/prometheus/node-exporter/berth_backup.prom"
RESTORE_TEST_METRICS = "/var/lib/prometheus/node-exporter/berth_backup_restore_test.prom"
LOCAL_REPO = "/var/backups/berth/restic"
OFFSITE_REPO = "/srv/restic/repos/berth-backup-trixie"
PASSWORD = "bk-Test$secret#3/@:%z'\"-restic"
UPLOADS = "/var/lib/docker/volumes/shop-uploads/_data"
KEEP = {"hourly": 2, "daily": 3, "weekly": 2, "monthly": 2}
UNITS = ("berth-backup.service", "berth-backup.timer", "berth-backup-verify.service", "berth-backup-verify.timer",
         "berth-backup-failed@.service")
TIMINGS = ROOT / "artifacts" / "molecule" / "backup-timings.json"


# An app's blue port as the plan derives it (plugins/filter/apps.py): shop's web (and, on the db host, its
# Redis) listens on it.
sys.path.insert(0, str(ROOT / "plugins" / "filter"))
from apps import derived_port  # noqa: E402

SHOP_BLUE = derived_port("shop")
SHOP_GREEN = SHOP_BLUE + 1


# --- helpers -------------------------------------------------------------------------------------


def playbook(name, *extra: str):
    """Run one of the project's playbooks against the test host, with Molecule's inventory."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as group:
        group.write(f"berth:\n  children:\n    app:\n      hosts:\n        {HOST}: {{}}\n")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
        "ANSIBLE_CACHE_PLUGIN": "memory",
        "ANSIBLE_NOCOLOR": "1",
    }
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), "-i", group.name]
    try:
        return subprocess.run(
            [*cmd, "-l", HOST, str(ROOT / "playbooks" / name), *extra],
            capture_output=True, text=True, env=env, timeout=1200, check=False,
        )
    finally:
        Path(group.name).unlink()


def timing(name, seconds):
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[name] = round(seconds, 1)
    TIMINGS.write_text(json.dumps(data, indent=2, sort_keys=True))


def get_json(host, port, path):
    script = (
        "import sys, urllib.request\n"
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5).read().decode())\n"
    )
    return json.loads(host.check_output(f"python3 -c {shlex.quote(script)}"))


def read_json(host, path):
    return json.loads(host.file(path).content_string)


def psql(host, sql, app="shop"):
    """A statement in the app's own database (user and database: the app's name)."""
    pg = host.check_output(f"docker compose -p {app} ps -q postgres")
    return host.check_output(f"docker exec {pg} psql -U {app} -d {app} -At -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}")


def visits_digest(host):
    return psql(host, "SELECT count(*) || ':' || md5(string_agg(v::text, ',' ORDER BY id)) FROM visits v")


def posts_digest(host):
    return psql(host, "SELECT count(*) || ':' || coalesce(md5(string_agg(p::text, ',' ORDER BY id)), '') FROM posts p",
                "blog")


def uploads(host):
    """{relative path: sha256} of shop's uploads volume."""
    out = host.check_output(f"cd {UPLOADS} && find . -type f -exec sha256sum {{}} + | sort -k2")
    return {line.split()[1]: line.split()[0] for line in out.splitlines()}


def snapshots(host, repository, app=None):
    out = host.check_output(f"{PROGRAM} snapshots --repository {repository}" + (f" --app {app}" if app else ""))
    return json.loads(out)


def snapshot_ids(host, repository, app=None):
    return {s["id"] for s in snapshots(host, repository, app)}


def metrics(host, path=METRICS):
    """{(name, app, repository): value} of a textfile collector file."""
    found = {}
    for line in host.file(path).content_string.splitlines():
        match = re.fullmatch(r'(\w+)\{app="([\w-]+)",repository="(\w+)"\} (\S+)', line)
        if match:
            found[(match.group(1), match.group(2), match.group(3))] = float(match.group(4))
    return found


def started_at(host, container):
    return host.check_output(f"docker inspect -f '{{{{.State.StartedAt}}}}' {container}")


def containers(host, app):
    """{service: (state, health, started at)} of the app's containers."""
    out = host.check_output(f"docker compose -p {app} ps --format json")
    return {entry["Service"]: (entry["State"], entry["Health"], started_at(host, entry["ID"]))
            for entry in map(json.loads, out.splitlines())}


def colours(host, app="shop"):
    """{service: (state, health, started at)} of the app's running web colours."""
    return {service: found for service, found in containers(host, app).items() if service.startswith("web-")}


def wait_healthy(host, apps=APPS, timeout=180):
    deadline = time.monotonic() + timeout
    for app in apps:
        while True:
            out = host.run(f"docker compose -p {app} ps --format '{{{{.Health}}}}'").stdout.split()
            if out and all(h == "healthy" for h in out) and len(out) == SERVICES[app]:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"app {app} was not healthy after {timeout} s: {out}")
            time.sleep(2)


def lock_free(host, timeout=300):
    assert host.run(f"flock -w {timeout} {STATE}/lock true").rc == 0, "a backup run still holds the lock"


def snapshot_of(record, app, repository="local"):
    return record["apps"][app]["repositories"][repository]["snapshot_id"]


# --- the role's files -----------------------------------------------------------------------------


def test_restic_from_debian(host):
    assert host.package("restic").is_installed
    assert host.check_output("restic version").startswith("restic 0.18")


def test_program_configuration_and_secrets_are_root_only(host):
    program = host.file(PROGRAM)
    assert (program.user, program.mode) == ("root", 0o755)
    for path in ("/etc/berth/backup", STATE, "/etc/berth/backup/ssh"):
        assert host.file(path).mode == 0o700, path
    for path in ("/etc/berth/backup/password", "/etc/berth/backup/config.json", "/etc/berth/backup/ssh/id_ed25519"):
        assert (host.file(path).user, host.file(path).mode) == ("root", 0o600), path
    # The password is the file's whole content (no newline added) and nowhere else.
    assert host.file("/etc/berth/backup/password").content_string == PASSWORD
    assert PASSWORD not in host.file("/etc/berth/backup/config.json").content_string
    for unit in UNITS:
        assert PASSWORD not in host.file(f"/etc/systemd/system/{unit}").content_string, unit


def test_configuration_names_both_repositories_and_both_apps(host):
    config = read_json(host, "/etc/berth/backup/config.json")
    repos = {r["name"]: r for r in config["repositories"]}
    assert repos["local"]["url"] == LOCAL_REPO
    assert repos["offsite"]["url"] == "sftp:berth-offsite:repos/berth-backup-trixie"
    assert config["keep"] == KEEP
    apps = {app["name"]: app for app in config["apps"]}
    assert sorted(apps) == ["blog", "shop"]
    assert apps["shop"] == {"name": "shop", "project": "shop", "postgres": {"kind": "container", "service": "postgres"},
                            "redis": {"kind": "container", "service": "redis"}, "paths": ["/opt/shop"],
                            "exclude": ["/opt/shop/images"], "volumes": ["shop-uploads"],
                            "components": ["postgres", "redis", "volumes", "paths"]}
    assert (apps["blog"]["redis"], apps["blog"]["volumes"], apps["blog"]["paths"], apps["blog"]["components"]) == (
        None, [], ["/opt/blog"], ["postgres", "paths"])


def test_offsite_host_key_is_pinned(host):
    known = host.file("/etc/berth/backup/ssh/known_hosts").content_string.splitlines()
    offsite = testinfra.get_host(f"docker://{OFFSITE}")
    key = offsite.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string.split()[:2]
    assert known == [f"{OFFSITE} {key[0]} {key[1]}"]
    config = host.file("/etc/berth/backup/ssh/config").content_string
    assert "StrictHostKeyChecking yes" in config
    assert "BatchMode yes" in config


def test_offsite_user_gets_sftp_and_no_shell(host):
    proc = host.run("ssh -F /etc/berth/backup/ssh/config berth-offsite echo shell-reached")
    assert "shell-reached" not in proc.stdout


def unit_properties(host, unit, *names: str):
    out = host.check_output(f"systemctl show {unit} --property={','.join(names)}")
    return dict(line.split("=", 1) for line in out.splitlines())


def test_timers_schedule_the_backup_and_the_restore_test(host):
    for unit in UNITS:
        file = host.file(f"/etc/systemd/system/{unit}")
        assert (file.user, file.mode) == ("root", 0o644), unit
    assert not host.file("/etc/cron.d/berth-backup").exists
    host.check_output("systemd-analyze verify " + " ".join(f"/etc/systemd/system/{u}" for u in UNITS if "@" not in u))
    for timer, service, calendar in (
        ("berth-backup.timer", "berth-backup.service", "*-02-31 00:00:00"),
        ("berth-backup-verify.timer", "berth-backup-verify.service", "*-02-31 00:30:00"),
    ):
        found = unit_properties(host, timer, "ActiveState", "UnitFileState", "Unit", "Persistent", "TimersCalendar")
        assert (found["ActiveState"], found["UnitFileState"], found["Unit"]) == ("active", "enabled", service)
        assert found["Persistent"] == "yes"
        assert f"OnCalendar={calendar}" in found["TimersCalendar"]
        unit = unit_properties(host, service, "OnFailure", "ExecStart", "TimeoutStartUSec", "Nice")
        assert unit["OnFailure"] == f"berth-backup-failed@{service}.service"
        assert unit["TimeoutStartUSec"] == "6h" and unit["Nice"] == "10"


def test_repositories_exist_and_are_encrypted(host):
    assert host.run(f"{PROGRAM} snapshots --repository local").rc == 0
    assert host.run(f"{PROGRAM} snapshots --repository offsite").rc == 0
    offsite = testinfra.get_host(f"docker://{OFFSITE}")
    assert offsite.file(f"{OFFSITE_REPO}/config").user == "restic"
    assert host.file(f"{LOCAL_REPO}/config").exists


def test_metrics_directory_exists(host):
    assert host.file("/var/lib/prometheus/node-exporter").mode == 0o755


# --- backup, restore test, restore ----------------------------------------------------------------


@pytest.fixture(scope="module")
def first_backup(host):
    """Known data written through shop's app, into its uploads volume and into blog's database, then
    playbooks/backup-now.yml."""
    for _ in range(5):
        get_json(host, SHOP_BLUE, "/visit")
    host.check_output(f"mkdir -p {UPLOADS}/docs && head -c 300000 /dev/urandom > {UPLOADS}/avatar.png")
    host.check_output(f"echo 'hello from the uploads' > {UPLOADS}/docs/readme.txt")
    psql(host, "CREATE TABLE IF NOT EXISTS posts (id serial PRIMARY KEY, title text, body text);"
               " INSERT INTO posts (title, body) SELECT 'post ' || g, md5(g::text) FROM generate_series(1, 40) g;",
         "blog")
    before = {"stats": get_json(host, SHOP_BLUE, "/stats"), "visits": visits_digest(host), "uploads": uploads(host),
              "posts": posts_digest(host), "posts_rows": int(psql(host, "SELECT count(*) FROM posts", "blog"))}
    started = time.monotonic()
    run = playbook("backup-now.yml")
    timing("backup_now_playbook_seconds", time.monotonic() - started)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    record = read_json(host, f"{STATE}/last-backup.json")
    timing("backup_run_seconds", record["seconds"])
    verify = read_json(host, f"{STATE}/last-restore-test.json")
    timing("restore_test_seconds", verify["seconds"])
    return {"before": before, "run": run, "record": record, "verify": verify}


def test_backup_now_backs_up_every_app_to_both_repositories(host, first_backup):
    record, before = first_backup["record"], first_backup["before"]
    assert record["status"] == "ok"
    assert sorted(record["apps"]) == ["blog", "shop"]
    for app in APPS:
        assert record["apps"][app]["status"] == "ok"
        for name in ("local", "offsite"):
            result = record["apps"][app]["repositories"][name]
            assert result["status"] == "ok"
            assert re.fullmatch(r"[0-9a-f]{64}", result["snapshot_id"])
            # One snapshot per app, tagged with it: the app's own list holds it, the other app's does not.
            assert result["snapshot_id"] in snapshot_ids(host, name, app)
            assert result["snapshot_id"] not in snapshot_ids(host, name, "blog" if app == "shop" else "shop")
    for name in ("local", "offsite"):
        assert record["repositories"][name]["status"] == "ok"
        assert record["repositories"][name]["check"] == "ok"
    assert record["apps"]["shop"]["repositories"]["local"]["bytes"] > 300000
    shop = record["apps"]["shop"]["contents"]
    assert shop["postgres"]["tables"]["public.visits"]["rows"] == before["stats"]["db_rows"] >= 5
    assert shop["postgres"]["database"] == "shop"
    assert shop["redis"]["keys"] >= 1
    assert shop["redis"]["keys_exact"] is True
    assert [v["name"] for v in shop["volumes"]] == ["shop-uploads"]
    assert shop["volumes"][0]["files"] == 2
    assert [p["path"] for p in shop["paths"]] == ["/opt/shop"]
    for name in ("postgres/database.dump", "postgres/globals.sql", "redis/dump.rdb"):
        assert re.fullmatch(r"[0-9a-f]{64}", shop["files"][name]["sha256"])
        assert shop["files"][name]["bytes"] > 0
    # The same record is kept among the per-run records.
    runs = host.check_output(f"ls {STATE}/runs").split()
    assert any(name.endswith("-backup.json") for name in runs)


def test_both_apps_databases_are_in_the_backups(first_backup):
    blog = first_backup["record"]["apps"]["blog"]["contents"]
    assert blog["postgres"]["database"] == "blog"
    assert blog["postgres"]["tables"]["public.posts"]["rows"] == first_backup["before"]["posts_rows"] >= 40
    assert "public.visits" not in blog["postgres"]["tables"] or blog["postgres"]["tables"]["public.visits"]["rows"] == 0
    # No Redis in blog, so none in its backup; no volume named after it.
    assert "redis" not in blog and blog["volumes"] == []
    assert [p["path"] for p in blog["paths"]] == ["/opt/blog"]
    assert "public.posts" not in first_backup["record"]["apps"]["shop"]["contents"]["postgres"]["tables"]


def test_backup_now_shows_the_record_and_no_secret(first_backup):
    output = first_backup["run"].stdout
    for app in APPS:
        assert snapshot_of(first_backup["record"], app) in output
    assert PASSWORD not in output
    assert "Test$secret" not in output


def test_restore_test_reports_both_apps(host, first_backup):
    verify, record = first_backup["verify"], first_backup["record"]
    assert verify["status"] == "ok", verify.get("error")
    assert sorted(verify["apps"]) == ["blog", "shop"]
    for app in APPS:
        result = verify["apps"][app]
        assert result["status"] == "ok", result.get("error")
        assert result["snapshot"]["id"] == snapshot_of(record, app)
        assert result["checksums"] == "ok"
        assert result["postgres"]["matches_manifest"] is True
        assert result["postgres"]["rows"] == record["apps"][app]["contents"]["postgres"]["rows"]
    assert verify["apps"]["shop"]["redis"]["compared"] is True
    assert verify["apps"]["shop"]["redis"]["keys"] == record["apps"]["shop"]["contents"]["redis"]["keys"]
    assert "redis" not in verify["apps"]["blog"]
    # The scratch containers are gone.
    assert host.check_output("docker ps -a -q --filter label=berth.backup=scratch") == ""
    found = metrics(host, RESTORE_TEST_METRICS)
    for app in APPS:
        assert found[("berth_backup_restore_test_last_run_success", app, "local")] == 1
        assert found[("berth_backup_restore_test_duration_seconds", app, "local")] > 0


def test_snapshots_hold_their_apps_files_but_not_the_image_archives(host, first_backup):
    for app, other in (("shop", "blog"), ("blog", "shop")):
        snapshot = snapshot_of(first_backup["record"], app)
        listing = host.check_output(f"{PROGRAM} restic local ls --recursive {snapshot} /").splitlines()
        assert f"/opt/{app}/compose.yaml" in listing
        assert f"/opt/{app}/secrets/postgres.env" in listing
        # No image archive: app_stack keeps them in /var/lib/berth/images, which is not backed up, and
        # /opt/<app>/images (where earlier releases put them) is left out.
        assert not any(line.startswith((f"/opt/{app}/images", "/var/lib/berth/images")) for line in listing)
        assert not any(line.endswith((".tar", ".tar.gz")) for line in listing)
        assert not any(line.startswith(f"/opt/{other}") for line in listing), f"{other}'s files in {app}'s snapshot"


def test_repositories_hold_nothing_readable(host, first_backup):
    # Encrypted: neither the apps' files nor the dump's table name appear in any repository file.
    for marker in ("BLUE_IMAGE", "CREATE TABLE"):
        assert host.run(f"grep -rl {shlex.quote(marker)} {LOCAL_REPO}").stdout == ""
        offsite = testinfra.get_host(f"docker://{OFFSITE}")
        assert offsite.run(f"grep -rl {shlex.quote(marker)} {OFFSITE_REPO}").stdout == ""


def test_metrics_after_a_successful_run(host, first_backup):
    record = first_backup["record"]
    found = metrics(host)
    for app in APPS:
        for name in ("local", "offsite"):
            assert found[("berth_backup_last_run_success", app, name)] == 1
            assert abs(found[("berth_backup_last_success_timestamp_seconds", app, name)] - record["finished_ts"]) < 1
            assert found[("berth_backup_size_bytes", app, name)] == record["apps"][app]["repositories"][name]["bytes"]
            assert found[("berth_backup_duration_seconds", app, name)] > 0
    metrics_file = host.file(METRICS)
    assert metrics_file.mode == 0o644
    # Written by rename: no temporary file is left beside it.
    assert host.check_output("ls -A /var/lib/prometheus/node-exporter").split() == [
        "berth_backup.prom",
        "berth_backup_restore_test.prom",
    ]


def test_secrets_stay_out_of_records_and_logs(host, first_backup):
    for path in (f"{STATE}/last-backup.json", f"{STATE}/last-restore-test.json", f"{STATE}/state.json"):
        assert PASSWORD not in host.file(path).content_string
    journal = host.check_output("journalctl -t berth-backup --no-pager")
    assert "backup ok" in journal
    assert PASSWORD not in journal
    assert "Test$secret" not in journal


@pytest.fixture(scope="module")
def restored(host, first_backup):
    """shop's data changed after the backup, its database volume destroyed, then playbooks/restore.yml
    -e app=shop (after the refusals: no confirmation, no app, an unknown app)."""
    get_json(host, SHOP_BLUE, "/visit")
    get_json(host, SHOP_GREEN, "/visit")
    host.check_output(f"rm {UPLOADS}/avatar.png && echo stray > {UPLOADS}/stray.txt")
    host.check_output(
        "cd /opt/shop && docker compose stop postgres && docker compose rm -f postgres"
        " && docker volume rm shop_postgres-data"
    )
    blog_before = {"posts": posts_digest(host), "containers": containers(host, "blog")}
    refused = playbook("restore.yml", "-e", "app=shop")
    no_app = playbook("restore.yml", "-e", f"backup_restore_confirm={HOST}")
    unknown = playbook("restore.yml", "-e", f"backup_restore_confirm={HOST}", "-e", "app=news")
    colours_after_refusal = colours(host)
    started_wall = time.time()
    started = time.monotonic()
    run = playbook("restore.yml", "-e", f"backup_restore_confirm={HOST}", "-e", "app=shop")
    timing("restore_playbook_seconds", time.monotonic() - started)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    record = read_json(host, f"{STATE}/last-restore.json")
    timing("restore_run_seconds", record["seconds"])
    return {"refused": refused, "no_app": no_app, "unknown": unknown, "colours_after_refusal": colours_after_refusal,
            "run": run, "record": record, "started": started_wall, "blog_before": blog_before}


def test_restore_refuses_without_confirmation_or_app(restored):
    refused = restored["refused"]
    assert refused.returncode != 0
    assert f"backup_restore_confirm={HOST}" in refused.stdout
    assert restored["no_app"].returncode != 0
    assert "Name the app to restore with -e app=NAME: this host has 2 apps (shop, blog)" in restored["no_app"].stdout
    assert restored["unknown"].returncode != 0
    assert "There is no app" in restored["unknown"].stdout and "news" in restored["unknown"].stdout
    assert "on this host; its apps: shop, blog (-e app=NAME)" in restored["unknown"].stdout
    # They stopped nothing.
    assert {s: c[0] for s, c in restored["colours_after_refusal"].items()} == {
        "web-blue": "running",
        "web-green": "running",
    }


def test_restore_brings_back_exactly_the_backed_up_data(host, first_backup, restored):
    before = first_backup["before"]
    stats = get_json(host, SHOP_BLUE, "/stats")
    assert (stats["db_rows"], stats["redis_count"]) == (before["stats"]["db_rows"], before["stats"]["redis_count"])
    assert visits_digest(host) == before["visits"]
    # The uploads volume is exactly the snapshot's: the deleted file is back, the stray one gone.
    assert uploads(host) == before["uploads"]


def test_restore_of_shop_left_blog_alone(host, restored):
    assert posts_digest(host) == restored["blog_before"]["posts"]
    assert containers(host, "blog") == restored["blog_before"]["containers"]


def test_restore_restarted_the_running_colours_and_they_are_healthy(host, restored):
    found = colours(host)
    assert sorted(found) == ["web-blue", "web-green"]
    for service, (state, health, started) in found.items():
        assert (state, health) == ("running", "healthy"), service
        when = datetime.fromisoformat(re.sub(r"\.(\d{6})\d*", r".\1", started).replace("Z", "+00:00"))
        assert when.timestamp() > restored["started"], f"{service} was not stopped during the restore"
    # And the app writes again.
    assert get_json(host, SHOP_GREEN, "/visit")["db_rows"] == get_json(host, SHOP_BLUE, "/stats")["db_rows"]


def test_restore_record_and_no_leftovers(host, restored):
    record = restored["record"]
    assert record["status"] == "ok"
    assert record["app"] == "shop"
    assert record["postgres"]["matches_manifest"] is True
    assert record["components"] == ["postgres", "redis", "volumes"]
    assert "postgres" in record["changed"]
    assert psql(host, "SELECT count(*) FROM pg_database WHERE datname LIKE '%berth_restore%'") == "0"
    assert host.check_output("docker ps -a -q --filter name=shop-berth-") == ""


def test_restore_of_blog_brings_back_its_dropped_rows_and_leaves_shop_alone(host, first_backup, restored):
    """blog's table loses rows and is then dropped; restore.yml -e app=blog brings it back row for row
    (blog has no Redis: that default component is skipped); shop's data and containers are untouched."""
    psql(host, "DELETE FROM posts WHERE id % 2 = 0", "blog")
    psql(host, "DROP TABLE posts", "blog")
    shop_before = {"visits": visits_digest(host), "stats": get_json(host, SHOP_BLUE, "/stats"),
                   "containers": containers(host, "shop")}
    started = time.time()
    run = playbook("restore.yml", "-e", f"backup_restore_confirm={HOST}", "-e", "app=blog")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    record = read_json(host, f"{STATE}/last-restore.json")
    # (blog has no volume: of the default components only postgres is restored)
    assert (record["status"], record["app"], record["components"]) == ("ok", "blog", ["postgres"])
    assert record["snapshot"]["id"] == snapshot_of(first_backup["record"], "blog")
    assert posts_digest(host) == first_backup["before"]["posts"]
    # shop: same rows, same counter, the same containers (not restarted).
    assert visits_digest(host) == shop_before["visits"]
    assert get_json(host, SHOP_BLUE, "/stats") == shop_before["stats"]
    assert containers(host, "shop") == shop_before["containers"]
    # blog's colours were restarted and are healthy again.
    for service, (state, health, started_at_text) in colours(host, "blog").items():
        assert (state, health) == ("running", "healthy"), service
        when = datetime.fromisoformat(re.sub(r"\.(\d{6})\d*", r".\1", started_at_text).replace("Z", "+00:00"))
        assert when.timestamp() > started, f"blog's {service} was not stopped during the restore"


def test_restore_a_chosen_snapshot_from_offsite(host, first_backup, restored):
    """A later backup, then shop's first snapshot restored from the off-site repository (database only)."""
    first = snapshot_of(first_backup["record"], "shop", "offsite")
    for _ in range(3):
        get_json(host, SHOP_BLUE, "/visit")
    assert playbook("backup-now.yml", "-e", "backup_now_restore_test=false").returncode == 0
    # Retention keeps the oldest snapshot of each app while its counts last (a fresh scenario's first).
    assert first in snapshot_ids(host, "offsite", "shop"), "the first snapshot was forgotten: run on a fresh scenario"
    redis_now = get_json(host, SHOP_BLUE, "/stats")["redis_count"]
    # A snapshot of another app is refused.
    blog_first = snapshot_of(first_backup["record"], "blog", "offsite")
    other = playbook("restore.yml", "-e", f"backup_restore_confirm={HOST}", "-e", "app=shop",
                     "-e", f"backup_restore_snapshot={blog_first[:12]}", "-e", "backup_restore_repository=offsite")
    assert other.returncode != 0
    assert f"No snapshot {blog_first[:12]} of app shop" in other.stdout
    run = playbook(
        "restore.yml",
        "-e", f"backup_restore_confirm={HOST}",
        "-e", "app=shop",
        "-e", f"backup_restore_snapshot={first[:12]}",
        "-e", "backup_restore_repository=offsite",
        "-e", '{"backup_restore_components": ["postgres"]}',
    )
    assert run.returncode == 0, run.stdout[-4000:]
    record = read_json(host, f"{STATE}/last-restore.json")
    assert (record["repository"], record["snapshot"]["id"]) == ("offsite", first)
    stats = get_json(host, SHOP_BLUE, "/stats")
    assert stats["db_rows"] == first_backup["before"]["stats"]["db_rows"]
    assert stats["redis_count"] == redis_now  # Redis was not part of this restore
    wait_healthy(host)


# --- schedule, lock, retention, integrity ---------------------------------------------------------


def test_a_run_of_the_service_makes_a_snapshot(host):
    """The scheduled unit itself, started as its timer starts it."""
    lock_free(host)
    before = read_json(host, f"{STATE}/last-backup.json")["started_ts"]
    host.check_output("systemctl start berth-backup.service")  # a oneshot: returns when the run has ended
    record = read_json(host, f"{STATE}/last-backup.json")
    assert record["started_ts"] > before
    assert record["status"] == "ok", record.get("error")
    for app in APPS:
        for name in ("local", "offsite"):
            assert snapshot_of(record, app, name) in snapshot_ids(host, name, app)
    journal = host.check_output(f"journalctl --no-pager -u berth-backup.service --since @{int(before)}")
    assert "Finished berth-backup.service" in journal or "Deactivated successfully" in journal


def test_a_run_killed_at_its_time_limit_is_recorded_as_failed(host):
    """OnFailure=: a run that cannot record its own end (here: stopped by systemd) still counts as failed."""
    lock_free(host)
    dropin = "/run/systemd/system/berth-backup.service.d"
    host.check_output(f"mkdir -p {dropin} && printf '[Service]\\nTimeoutStartSec=2\\n' > {dropin}/test.conf"
                      " && systemctl daemon-reload")
    try:
        before = time.time()
        assert host.run("systemctl start berth-backup.service").rc != 0
        wait = time.monotonic() + 60
        while (record := read_json(host, f"{STATE}/last-backup.json"))["started_ts"] < before - 1:
            assert time.monotonic() < wait, "no failure recorded within 60 s"
            time.sleep(1)
    finally:
        host.check_output(f"rm -rf {dropin} && systemctl daemon-reload && systemctl reset-failed")
    lock_free(host)
    assert record["status"] == "failed"
    assert record["unit"] == "berth-backup.service"
    assert "ended with result timeout" in record["error"]
    found = metrics(host)
    for app in APPS:
        for name in ("local", "offsite"):
            assert found[("berth_backup_last_run_success", app, name)] == 0
    assert "ended with result timeout" in host.check_output(
        f"journalctl --no-pager -t berth-backup --since @{int(before)}")
    # A restic killed inside a run leaves its lock in the repository (here made certain with kill -9); the
    # next run must not wait for it (forget and prune need the repository to themselves).
    host.check_output(f"{PROGRAM} restic local backup --tag stale-lock-test /usr & "
                      f"for i in $(seq 50); do [ -n \"$(ls {LOCAL_REPO}/locks)\" ] && break; sleep 0.2; done; "
                      "kill -9 $!; wait; true")
    assert int(host.check_output(f"ls {LOCAL_REPO}/locks | wc -l")) >= 1
    after = host.run(f"{PROGRAM} run")
    assert after.rc == 0, after.stderr
    assert read_json(host, f"{STATE}/last-backup.json")["status"] == "ok"
    assert host.check_output(f"ls {LOCAL_REPO}/locks | wc -l") == "0"


def test_runs_never_overlap(host):
    lock_free(host)
    out = host.run(f"{PROGRAM} run & sleep 2; {PROGRAM} run; echo second=$?; wait $!; echo first=$?")
    assert "second=75" in out.stdout
    assert "first=0" in out.stdout
    assert "another berth-backup run holds" in out.stderr


def snapshot_time(text):
    text = re.sub(r"\.(\d{6})\d*", r".\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(text)


def expected_keep(snaps, keep):
    """restic's documented policy, written out independently: newest first, one snapshot per new bucket
    while a bucket type has counts left, and the oldest snapshot while counts are left."""
    ordered = sorted(snaps, key=lambda s: snapshot_time(s["time"]), reverse=True)
    buckets = {
        "hourly": lambda t: t.strftime("%Y%m%d%H"),
        "daily": lambda t: t.strftime("%Y%m%d"),
        "weekly": lambda t: "{}{:02d}".format(*t.isocalendar()[:2]),
        "monthly": lambda t: t.strftime("%Y%m"),
    }
    left = dict(keep)
    last = dict.fromkeys(buckets)
    kept = set()
    for index, snap in enumerate(ordered):
        when = snapshot_time(snap["time"])
        for name, bucket in buckets.items():
            if left[name] > 0:
                value = bucket(when)
                if value != last[name] or index == len(ordered) - 1:
                    kept.add(snap["id"])
                    last[name] = value
                    left[name] -= 1
    return kept


def test_retention_forgets_and_prunes_as_configured_per_app(host):
    """Back-dated snapshots of shop; a run applies the policy to each app's own snapshots (a group per app)."""
    lock_free(host)
    now = time.time()
    offsets_hours = [1.2, 2.2, 3.2, 26, 50, 74, 98, 122, 170, 220, 340, 500, 720, 1100, 1500, 2200]
    for hours in offsets_hours:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now - hours * 3600))
        host.check_output(
            f"TZ=UTC {PROGRAM} restic local backup --quiet --tag berth,app=shop --host {HOST} "
            f"--time {shlex.quote(stamp)} /etc/hostname"
        )
    before = {app: snapshots(host, "local", app) for app in APPS}
    offsite_before = snapshot_ids(host, "offsite")
    assert host.run(f"{PROGRAM} run").rc == 0
    record = read_json(host, f"{STATE}/last-backup.json")
    removed_all = set()
    for app in APPS:
        after = snapshots(host, "local", app)
        new = [s for s in after if s["id"] == snapshot_of(record, app)]
        assert len(new) == 1
        assert {s["id"] for s in after} == expected_keep(before[app] + new, KEEP), app
        removed_all |= {s["short_id"] for s in before[app]} - {s["short_id"] for s in after}
    # Most of shop's back-dated snapshots go; blog's own newest ones are never counted against shop's.
    shop_after = {s["short_id"] for s in snapshots(host, "local", "shop")}
    assert len({s["short_id"] for s in before["shop"]} - shop_after) >= 10
    forget = record["repositories"]["local"]["forget"]
    assert set(forget["removed"]) == removed_all
    assert forget["pruned"] is True
    # The off-site repository follows the same policy over its own (real) snapshots only.
    offsite_after = snapshot_ids(host, "offsite")
    assert {snapshot_of(record, app, "offsite") for app in APPS} <= offsite_after
    assert offsite_after <= offsite_before | {snapshot_of(record, app, "offsite") for app in APPS}
    assert host.run(f"{PROGRAM} restic local check").rc == 0


def test_offsite_copy_passes_restic_check_reading_all_data(host):
    lock_free(host)
    proc = host.run(f"{PROGRAM} restic offsite check --read-data")
    assert proc.rc == 0, proc.stderr
    assert "no errors were found" in proc.stdout


# --- failures are loud and leave the last good backups alone --------------------------------------


def failing_run(host, fault, repair):
    """Snapshots and metrics before, a run with the fault in place, then the repaired host's snapshots."""
    before = {(app, name): snapshot_ids(host, name, app) for app in APPS for name in ("local", "offsite")}
    metrics_before = metrics(host)
    fault()
    try:
        proc = host.run(f"{PROGRAM} run")
        record = read_json(host, f"{STATE}/last-backup.json")
    finally:
        repair()
    after = {(app, name): snapshot_ids(host, name, app) for app in APPS for name in ("local", "offsite")}
    return before, metrics_before, proc, record, after


def test_one_apps_database_down_fails_the_run_loudly_but_not_the_other_app(host):
    """shop's PostgreSQL stopped: shop's snapshots and last success stay, blog is still backed up, the run
    fails and says which app."""
    lock_free(host)
    play = {}

    def fault() -> None:
        host.check_output("cd /opt/shop && docker compose stop postgres")
        play["run"] = playbook("backup-now.yml")

    def repair() -> None:
        host.check_output("cd /opt/shop && docker compose up -d --wait postgres")
        wait_healthy(host)

    before, metrics_before, proc, record, after = failing_run(host, fault, repair)
    play = play["run"]
    assert play.returncode != 0
    assert "service postgres of compose project shop is not running" in play.stdout
    assert proc.rc == 1
    assert "ERROR" in proc.stderr and "app shop" in proc.stderr and "postgres" in proc.stderr
    assert record["status"] == "failed"
    assert (record["apps"]["shop"]["status"], record["apps"]["blog"]["status"]) == ("failed", "ok")
    found = metrics(host)
    for name in ("local", "offsite"):
        assert after[("shop", name)] == before[("shop", name)]
        assert record["apps"]["shop"]["repositories"][name]["status"] == "failed"
        assert found[("berth_backup_last_run_success", "shop", name)] == 0
        # The last success stays the previous good run's, so "no success for 2 h" can fire for shop.
        key = ("berth_backup_last_success_timestamp_seconds", "shop", name)
        assert found[key] == metrics_before[key] > 0
        size = ("berth_backup_size_bytes", "shop", name)
        assert found[size] == metrics_before[size]
        # blog got its snapshot in the same run.
        assert snapshot_of(record, "blog", name) in after[("blog", name)]
        assert found[("berth_backup_last_run_success", "blog", name)] == 1
        assert found[("berth_backup_last_success_timestamp_seconds", "blog", name)] > metrics_before[
            ("berth_backup_last_success_timestamp_seconds", "blog", name)]


def test_unreachable_offsite_fails_loudly_while_local_still_backs_up(host):
    lock_free(host)
    offsite = testinfra.get_host(f"docker://{OFFSITE}")
    before, metrics_before, proc, record, after = failing_run(
        host, lambda: offsite.check_output("systemctl stop ssh"), lambda: offsite.check_output("systemctl start ssh")
    )
    assert proc.rc == 1
    assert "offsite" in proc.stderr
    found = metrics(host)
    for app in APPS:
        assert record["apps"][app]["repositories"]["local"]["status"] == "ok"
        assert record["apps"][app]["repositories"]["offsite"]["status"] == "failed"
        assert after[(app, "offsite")] == before[(app, "offsite")]
        assert snapshot_of(record, app) in after[(app, "local")]
        assert found[("berth_backup_last_run_success", app, "local")] == 1
        assert found[("berth_backup_last_run_success", app, "offsite")] == 0
        key = ("berth_backup_last_success_timestamp_seconds", app, "offsite")
        assert found[key] == metrics_before[key]


def test_dumps_that_do_not_fit_fail_before_writing_anything(host):
    """A staging file system too small for the dumps plus the reserve: refused up front, nothing written."""
    lock_free(host)
    before = {name: snapshot_ids(host, name) for name in ("local", "offsite")}
    # 64 MiB: room for these small databases' dumps, but not with backup_staging_reserve_mb (1024) left free.
    host.check_output(f"mount -t tmpfs -o size=64m berth-test-small {STATE}/staging")
    try:
        proc = host.run(f"{PROGRAM} run")
        left = host.check_output(f"find {STATE}/staging -mindepth 1 | wc -l")
    finally:
        host.check_output(f"umount {STATE}/staging")
    record = read_json(host, f"{STATE}/last-backup.json")
    assert proc.rc == 1
    assert f"not enough free space in {STATE}/staging to stage the dumps, so nothing was written" in proc.stderr
    assert "1.0 GiB must stay free" in proc.stderr and "backup_staging_reserve_mb" in proc.stderr
    assert left == "0"
    assert record["status"] == "failed" and "nothing was written" in record["error"]
    for app in APPS:
        assert f"nothing of app {app} was backed up" in record["error"]
    assert {name: snapshot_ids(host, name) for name in ("local", "offsite")} == before
    for app in APPS:
        assert host.run(f"cd /opt/{app} && docker compose exec -T postgres pg_isready -q").rc == 0
    wait_healthy(host)


def docker(*args: str, timeout=120):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=True).stdout


def test_a_run_missed_while_the_host_was_down_runs_at_boot(host):
    """The timer's time passes while the host is stopped; once it is started again, the backup runs."""
    lock_free(host)
    due = int(time.time()) + 20
    calendar = datetime.fromtimestamp(due, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    dropin = "/etc/systemd/system/berth-backup.timer.d"
    host.check_output(f"mkdir -p {dropin} && printf '[Timer]\\nOnCalendar=\\nOnCalendar=%s\\n' "
                      f"{shlex.quote(calendar)} > {dropin}/test.conf && systemctl daemon-reload"
                      " && systemctl restart berth-backup.timer")
    try:
        assert f"OnCalendar={calendar.replace(' UTC', '')}" in unit_properties(
            host, "berth-backup.timer", "TimersCalendar")["TimersCalendar"].replace(" UTC", "")
        docker("stop", HOST)
        stopped = time.time()
        assert stopped < due, "the host must go down before the timer is due"
        time.sleep(due - stopped + 5)
        docker("start", HOST)
        booted = time.time()
        deadline = time.monotonic() + 120
        while host.run("systemctl is-system-running").stdout.strip() not in ("running", "degraded"):
            assert time.monotonic() < deadline, "the host did not finish booting within 120 s"
            time.sleep(2)
        deadline = time.monotonic() + 300
        while (record := read_json(host, f"{STATE}/last-backup.json"))["started_ts"] < booted - 1 or (
            record["status"] == "running"
        ):
            assert time.monotonic() < deadline, "no backup ran within 300 s of the boot"
            time.sleep(3)
    finally:
        host.run(f"rm -rf {dropin} && systemctl daemon-reload && systemctl restart berth-backup.timer")
    timing("boot_to_missed_backup_done", record["finished_ts"] - booted)
    assert record["status"] == "ok", record.get("error")
    journal = host.check_output("journalctl --no-pager -b -u berth-backup.timer -u berth-backup.service")
    assert "berth-backup" in journal
    for app in APPS:
        for name in ("local", "offsite"):
            assert snapshot_of(record, app, name) in snapshot_ids(host, name, app)
    wait_healthy(host)
