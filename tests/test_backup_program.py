"""Unit tests of the pure parts of the backup role's program (roles/backup/files/berth_backup.py).

Its runs against real PostgreSQL, Redis, restic and an SFTP host are in the role's Molecule scenario;
these pin the rules that must hold whatever the data: a failure never moves the last success, the
metrics file has exactly the names alerts use (one line per app and repository), retention can never be
empty and never reaches another app's snapshots, one app's failure fails the run and names the app. The
role's filters (roles/backup/filter_plugins/backup.py) decide what each app's snapshot holds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT


def load_program() -> ModuleType:
    path = ROOT / "roles" / "backup" / "files" / "berth_backup.py"
    spec = importlib.util.spec_from_file_location("berth_backup", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["berth_backup"] = module
    spec.loader.exec_module(module)
    return module


def load_filters() -> ModuleType:
    path = ROOT / "roles" / "backup" / "filter_plugins" / "backup.py"
    spec = importlib.util.spec_from_file_location("backup_filters", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bb = load_program()
filters = load_filters()


def record(finished: float, **apps: dict) -> dict:
    """A finished run: {app: {repository: result}}."""
    return {"finished_ts": finished, "seconds": 12.5,
            "apps": {app: {"repositories": repositories} for app, repositories in apps.items()}}


def app(name: str, postgres: bool = True, redis: bool = True, volumes: tuple[str, ...] = ()) -> object:
    """An app of an app host with its PostgreSQL and Redis in containers (data: local)."""
    return bb.App(name=name, project=name, postgres=bb.Postgres("container", service="postgres") if postgres else None,
                  redis=bb.Redis("container", service="redis") if redis else None, paths=(f"/opt/{name}",),
                  exclude=(f"/opt/{name}/images",), volumes=volumes)


def db_app(name: str, port: int, redis: bool = True, password_file: str = "/nonexistent") -> object:
    """An app of the db host (data: host): its database in the host's cluster, its own Redis instance."""
    return bb.App(name=name, project=name, postgres=bb.Postgres("host", database=name.replace("-", "_")),
                  redis=bb.Redis("host", unit=f"redis-server@{name}", port=port, dir=f"/var/lib/redis/{name}",
                                 password_file=password_file) if redis else None,
                  paths=(), exclude=(), volumes=())


def test_a_failed_run_keeps_the_last_success_and_size() -> None:
    state: dict = {}
    ok = {"status": "ok", "bytes": 4096, "snapshot_id": "abc"}
    bb.update_state(state, "backup", record(1000.0, shop={"local": ok}))
    bb.update_state(state, "backup", record(2000.0, shop={"local": {"status": "failed", "error": "db down"}}))
    entry = state["backup"]["shop"]["local"]
    assert entry["last_success"] == 1000.0
    assert entry["size"] == 4096
    assert entry["snapshot"] == "abc"
    assert entry["last_run"] == 2000.0
    assert entry["last_run_success"] is False


def test_one_apps_failure_leaves_the_other_apps_success() -> None:
    state: dict = {}
    ok = {"status": "ok", "bytes": 10, "snapshot_id": "s1"}
    bb.update_state(state, "backup", record(1000.0, shop={"local": ok}, blog={"local": ok}))
    bb.update_state(state, "backup", record(2000.0, shop={"local": {"status": "failed", "error": "x"}},
                                            blog={"local": ok | {"snapshot_id": "s2"}}))
    assert (state["backup"]["shop"]["local"]["last_success"], state["backup"]["shop"]["local"]["snapshot"]) == (
        1000.0, "s1")
    assert (state["backup"]["blog"]["local"]["last_success"], state["backup"]["blog"]["local"]["snapshot"]) == (
        2000.0, "s2")


def test_metrics_have_the_alerting_names_and_one_line_per_app_and_repository() -> None:
    state: dict = {}
    ok = {"status": "ok", "bytes": 10, "duration": 3.25}
    bb.update_state(state, "backup", record(1700000000.5, shop={"local": ok},
                                            blog={"local": {"status": "failed", "error": "db down", "duration": 1}}))
    text = bb.render_metrics(state, "backup", ["shop", "blog"], ["local", "offsite"])
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == [
        'berth_backup_last_success_timestamp_seconds{app="shop",repository="local"} 1700000000.5',
        'berth_backup_last_success_timestamp_seconds{app="shop",repository="offsite"} 0',
        'berth_backup_last_success_timestamp_seconds{app="blog",repository="local"} 0',
        'berth_backup_last_success_timestamp_seconds{app="blog",repository="offsite"} 0',
        'berth_backup_last_run_success{app="shop",repository="local"} 1',
        'berth_backup_last_run_success{app="shop",repository="offsite"} 0',
        'berth_backup_last_run_success{app="blog",repository="local"} 0',
        'berth_backup_last_run_success{app="blog",repository="offsite"} 0',
        'berth_backup_duration_seconds{app="shop",repository="local"} 3.25',
        'berth_backup_duration_seconds{app="shop",repository="offsite"} 0',
        'berth_backup_duration_seconds{app="blog",repository="local"} 1',
        'berth_backup_duration_seconds{app="blog",repository="offsite"} 0',
        'berth_backup_size_bytes{app="shop",repository="local"} 10',
        'berth_backup_size_bytes{app="shop",repository="offsite"} 0',
        'berth_backup_size_bytes{app="blog",repository="local"} 0',
        'berth_backup_size_bytes{app="blog",repository="offsite"} 0',
    ]
    assert "# TYPE berth_backup_size_bytes gauge" in text
    assert text.endswith("\n")


def test_metrics_leave_out_apps_no_longer_configured_and_old_state() -> None:
    # The state of an app removed from berth_apps, and a state file of the single-app berth (repository at
    # the top), are not shown and do not break the file.
    state = {"backup": {"gone": {"local": {"last_success": 5}}, "local": {"last_success": 7, "size": 1}}}
    text = bb.render_metrics(state, "backup", ["shop"], ["local"])
    assert "gone" not in text and 'app="local"' not in text
    assert 'berth_backup_last_success_timestamp_seconds{app="shop",repository="local"} 0' in text


def test_restore_test_metrics_are_per_app() -> None:
    state: dict = {}
    bb.update_state(state, "restore_test", record(50.0, shop={"local": {"status": "ok", "duration": 4}},
                                                  blog={"local": {"status": "failed", "duration": 2}}))
    text = bb.render_metrics(state, "restore_test", ["shop", "blog"], ["local"])
    assert 'berth_backup_restore_test_last_run_success{app="shop",repository="local"} 1' in text
    assert 'berth_backup_restore_test_last_run_success{app="blog",repository="local"} 0' in text
    assert 'berth_backup_restore_test_last_success_timestamp_seconds{app="blog",repository="local"} 0' in text


def test_a_run_fails_naming_each_failed_app_and_repository() -> None:
    shop_failed = {"status": "failed", "error": "nothing of app shop was backed up: x"}
    run = {
        "apps": {
            "shop": {"repositories": {"local": shop_failed, "offsite": shop_failed}},
            "blog": {"repositories": {"local": {"status": "ok"}, "offsite": {"status": "failed", "error": "no ssh"}}},
        },
        "repositories": {"local": {"status": "ok"}, "offsite": {"status": "failed", "error": "check failed"}},
    }
    assert bb.run_failures(run) == [
        "app blog: no ssh",
        "app shop: nothing of app shop was backed up: x",
        "repository offsite: check failed",
    ]
    assert bb.run_failures({"apps": {"blog": {"repositories": {"local": {"status": "ok"}}}}}) == []


def test_a_failure_before_any_app_ran_is_every_apps_failure() -> None:
    cfg_apps = (app("shop"), app("blog", redis=False))
    cfg = type("Cfg", (), {"apps": cfg_apps})()
    run: dict = {"apps": {"shop": {"status": "ok", "repositories": {"local": {"status": "ok"}}}}}
    bb.fail_every_app(cfg, run, "killed", ["local", "offsite"])
    assert run["apps"]["shop"]["repositories"] == {"local": {"status": "ok"},
                                                   "offsite": {"status": "failed", "error": "killed"}}
    assert run["apps"]["blog"]["repositories"] == {"local": {"status": "failed", "error": "killed"},
                                                   "offsite": {"status": "failed", "error": "killed"}}


def test_retention_selects_only_the_apps_backed_up_each_in_its_own_group() -> None:
    args = bb.forget_arguments([app("shop"), app("blog")], {"hourly": 24, "daily": 7})
    assert args == ["--tag", "berth,app=shop", "--tag", "berth,app=blog", "--group-by", "host,tags",
                    "--keep-hourly=24", "--keep-daily=7"]
    with pytest.raises(bb.BackupError):
        bb.forget_arguments([], {"hourly": 24})


def test_an_app_is_chosen_by_name_or_as_the_only_one() -> None:
    shop, blog = app("shop"), app("blog")
    assert bb.choose_app((shop,), None) is shop
    assert bb.choose_app((shop, blog), "blog") is blog
    with pytest.raises(bb.BackupError, match=r"several apps \(shop, blog\)"):
        bb.choose_app((shop, blog), None)
    with pytest.raises(bb.BackupError, match=r"no app named 'news' on this host \(its apps: shop, blog\)"):
        bb.choose_app((shop, blog), "news")
    with pytest.raises(bb.BackupError, match="berth_apps is empty"):
        bb.choose_app((), None)


def test_a_snapshots_app_is_its_tag() -> None:
    assert bb.snapshot_app({"tags": ["berth", "app=shop"]}) == "shop"
    assert bb.snapshot_app({"tags": ["berth"]}) is None
    assert bb.snapshot_app({}) is None
    assert app("shop").tag == "app=shop"


PLAN = [
    {"name": "shop", "project": "shop", "dir": "/opt/shop", "local_services": ["postgres", "redis"],
     "data": "local", "postgres": True, "redis": True, "db_name": "shop", "db_redis_port": 21000,
     "db_secrets_dir": "/etc/berth/db/shop"},
    {"name": "shop-admin", "project": "shop-admin", "dir": "/opt/shop-admin", "local_services": ["postgres"],
     "data": "local", "postgres": True, "redis": False, "db_name": "shop_admin", "db_redis_port": 21002,
     "db_secrets_dir": "/etc/berth/db/shop-admin"},
    {"name": "blog", "project": "blog", "dir": "/opt/blog", "local_services": [], "data": "local", "postgres": False,
     "redis": False, "db_name": "blog", "db_redis_port": 21004, "db_secrets_dir": "/etc/berth/db/blog"},
]


def test_each_app_gets_its_services_directory_and_volumes() -> None:
    volumes = ["shop_uploads", "shop-admin-files", "blog-media", "shop-cache"]
    apps = filters.backup_apps(PLAN, volumes, ["*.tmp"])
    assert apps[0] == {"name": "shop", "project": "shop", "postgres": {"kind": "container", "service": "postgres"},
                       "redis": {"kind": "container", "service": "redis"},
                       "paths": ["/opt/shop"], "exclude": ["/opt/shop/images", "*.tmp"],
                       "volumes": ["shop_uploads", "shop-cache"],
                       "components": ["postgres", "redis", "volumes", "paths"]}
    # The longer name owns shop-admin-files.
    assert (apps[1]["volumes"], apps[1]["redis"]) == (["shop-admin-files"], None)
    assert (apps[2]["volumes"], apps[2]["postgres"], apps[2]["exclude"], apps[2]["components"]) == (
        ["blog-media"], None, ["/opt/blog/images", "*.tmp"], ["volumes", "paths"])
    # The configuration the program reads back.
    loaded = bb.App.load(apps[1])
    assert (loaded.name, loaded.postgres, loaded.redis, loaded.volumes, loaded.in_docker) == (
        "shop-admin", bb.Postgres("container", service="postgres"), None, ("shop-admin-files",), True)
    assert filters.backup_apps([], volumes, []) == []


def test_volumes_named_after_no_app_are_found() -> None:
    assert filters.backup_volumes_without_app(["shop_uploads", "uploads", "shopping", "blog"], PLAN) == [
        "uploads", "shopping", "blog"]
    assert filters.backup_volumes_without_app(["uploads"], []) == ["uploads"]


def test_a_repository_inside_an_apps_directory_is_found() -> None:
    assert filters.backup_app_dirs_holding("/opt/shop/restic", PLAN) == ["/opt/shop"]
    assert filters.backup_app_dirs_holding("/opt/shop", PLAN) == ["/opt/shop"]
    assert filters.backup_app_dirs_holding("/opt/shopping/restic", PLAN) == []
    assert filters.backup_app_dirs_holding("/var/backups/berth/restic", PLAN) == []


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "metrics" / "berth_backup.prom"
    bb.write_atomic(target, "a 1\n", mode=0o644)
    bb.write_atomic(target, "a 2\n", mode=0o644)
    assert target.read_text() == "a 2\n"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["berth_backup.prom"]


def test_retention_is_never_empty() -> None:
    assert bb.keep_arguments({"hourly": 24, "daily": 0, "weekly": 4}) == ["--keep-hourly=24", "--keep-weekly=4"]
    with pytest.raises(bb.BackupError, match="refusing to forget"):
        bb.keep_arguments({"hourly": 0, "daily": 0})


def test_restic_backup_summary_is_found_among_status_lines() -> None:
    lines = [
        {"message_type": "status", "percent_done": 0.5},
        {"message_type": "summary", "snapshot_id": "f" * 64, "total_bytes_processed": 7},
    ]
    out = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    assert bb.backup_summary(out)["snapshot_id"] == "f" * 64
    assert bb.backup_summary(b"Fatal: unable to open repository\n") is None


def test_table_comparison_names_each_difference() -> None:
    source = {"public.a": {"rows": 3, "checksum": "1"}, "public.b": {"rows": 1, "checksum": "2"}}
    assert bb.compare_tables(source, json.loads(json.dumps(source))) == []
    found = {"public.a": {"rows": 2, "checksum": "1"}, "public.c": {"rows": 0, "checksum": "0"}}
    assert bb.compare_tables(source, found) == [
        "table public.b missing",
        "unexpected table public.c",
        "public.a: 2 rows, expected 3",
    ]
    found = {"public.a": {"rows": 3, "checksum": "9"}, "public.b": {"rows": 1, "checksum": "2"}}
    assert bb.compare_tables(source, found) == ["public.a: checksum differs (3 rows)"]


def test_only_missing_roles_are_created_from_the_globals_dump() -> None:
    globals_sql = "\n".join(
        [
            "CREATE ROLE app;",
            "ALTER ROLE app WITH SUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$x';",
            'CREATE ROLE "report ""ro""";',
            'ALTER ROLE "report ""ro""" WITH NOSUPERUSER LOGIN;',
            'GRANT app TO "report ""ro""";',
        ]
    )
    assert bb.missing_role_statements(globals_sql, {"app"}) == [
        'CREATE ROLE "report ""ro""";',
        'ALTER ROLE "report ""ro""" WITH NOSUPERUSER LOGIN;',
    ]
    assert bb.missing_role_statements(globals_sql, {"app", 'report "ro"'}) == []


def test_env_files_are_read_as_the_role_writes_them(tmp_path: Path) -> None:
    env = tmp_path / "offsite.env"
    env.write_text("# comment\nAWS_ACCESS_KEY_ID='id'\nAWS_SECRET_ACCESS_KEY='s3cr$t=x'\n")
    assert bb.read_env_file(str(env)) == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "s3cr$t=x"}


def test_configuration_as_the_role_writes_it(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "host": "web1",
                "apps": [
                    {"name": "shop", "project": "shop", "postgres": {"kind": "container", "service": "postgres"},
                     "redis": {"kind": "container", "service": "redis"},
                     "paths": ["/opt/shop"], "exclude": ["/opt/shop/images"], "volumes": []},
                    {"name": "blog", "project": "blog", "postgres": {"kind": "container", "service": "postgres"},
                     "redis": None, "paths": ["/opt/blog"], "exclude": ["/opt/blog/images"], "volumes": ["blog_media"]},
                ],
                "repositories": [
                    {"name": "local", "url": "/srv/restic", "options": [], "env_file": None},
                    {"name": "offsite", "url": "sftp:x:r", "options": ["sftp.args=-F /x"], "env_file": None},
                ],
                "password_file": "/etc/berth/backup/password",
                "keep": {"hourly": "24", "daily": 7},
                "metrics_dir": "/var/lib/prometheus/node-exporter",
            }
        )
    )
    cfg = bb.Config.load(config)
    assert cfg.keep == {"hourly": 24, "daily": 7}
    assert [a.name for a in cfg.apps] == ["shop", "blog"]
    assert cfg.apps[1].redis is None and cfg.apps[1].volumes == ("blog_media",)
    assert cfg.restore_test_repository == "local"
    assert bb.restic_argv(cfg.repository("offsite"), "snapshots") == ["restic", "-o", "sftp.args=-F /x", "snapshots"]
    with pytest.raises(bb.BackupError, match="no repository named 'cloud'"):
        cfg.repository("cloud")


MIB = 1 << 20


def test_dumps_that_fit_with_the_reserve_are_staged() -> None:
    need = {"database": 100 * MIB, "Redis": 10 * MIB}
    # 110 MiB + 10 % = 121 MiB, + 1024 MiB reserve
    assert bb.staging_problem(need, 1145 * MIB + 1, 1024 * MIB, Path("/s")) is None
    assert bb.staging_problem({}, 0, 0, Path("/s")) is None


def test_dumps_that_would_eat_the_reserve_are_refused_with_the_figures() -> None:
    need = {"database": 100 * MIB, "Redis": 10 * MIB}
    problem = bb.staging_problem(need, 1144 * MIB, 1024 * MIB, Path("/var/lib/berth/backup/staging"))
    assert problem is not None
    assert "nothing was written" in problem
    assert "database 100.0 MiB + Redis 10.0 MiB" in problem
    assert "121.0 MiB" in problem and "1.0 GiB must stay free" in problem and "1.1 GiB is free" in problem
    assert "backup_staging_reserve_mb" in problem


def unit(result: str, status: str, started_mono: float) -> dict[str, str]:
    return {"Result": result, "ExecMainStatus": status, "ExecMainStartTimestampMonotonic": str(int(started_mono * 1e6))}


def test_a_failure_the_run_recorded_is_not_recorded_twice() -> None:
    # The unit started 30 s ago (monotonic 970 of 1000, wall clock 5000 now), its run at wall clock 4970.5.
    last = {"status": "failed", "started_ts": 4970.5, "error": "db down"}
    assert bb.unit_failure("berth-backup.service", unit("exit-code", "1", 970), last, 5000.0, 1000.0) is None


def test_a_run_that_could_not_record_its_end_is_recorded() -> None:
    earlier = {"status": "failed", "started_ts": 1000.0}  # an older run's failure
    timeout = bb.unit_failure("berth-backup.service", unit("timeout", "15", 970), earlier, 5000.0, 1000.0)
    assert timeout is not None and "result timeout" in timeout and "journalctl -u berth-backup.service" in timeout
    ok_before = {"status": "ok", "started_ts": 4980.0}  # killed runs leave the earlier "ok" as last record
    assert bb.unit_failure("berth-backup.service", unit("signal", "9", 970), ok_before, 5000.0, 1000.0)
    locked = bb.unit_failure("berth-backup-verify.service", unit("exit-code", "75", 970), {}, 5000.0, 1000.0)
    assert locked is not None and "another berth-backup run held the lock" in locked


def config(tmp_path: Path, apps: tuple) -> object:
    return bb.Config(
        host="web1", apps=apps,
        repositories=(bb.Repository("local", "/r", (), None), bb.Repository("offsite", "sftp:x:r", (), None)),
        password_file="/p", keep={"hourly": 2}, prune=True, check=True, check_read_data_subset="", cache_dir="/c",
        metrics_dir=tmp_path / "metrics", records_keep=5, restore_test_repository="local", wait_timeout=10,
        staging_reserve=0,
    )


def test_a_run_backs_up_every_app_though_one_fails_and_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """shop's dump fails: blog is still backed up to both repositories and its retention runs; the run fails,
    its record and metrics name shop, and retention never touches shop's snapshots."""
    monkeypatch.setattr(bb, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(bb, "STAGING", tmp_path / "state" / "staging")
    monkeypatch.setattr(bb, "settle_after_boot", lambda cfg: None)
    monkeypatch.setattr(bb, "unlock", lambda cfg, repo: None)
    calls: list[tuple] = []

    def collect(cfg: object, one: object, staging: Path) -> dict:
        if one.name == "shop":
            raise bb.BackupError("service postgres of compose project shop is not running")
        return {"host": "web1", "app": one.name, "volumes": [], "paths": [], "files": {}}

    def backup_to(cfg: object, repo: object, one: object, sources: list) -> dict:
        calls.append(("backup", one.name, repo.name))
        return {"snapshot_id": f"{one.name}-{repo.name}", "bytes": 7, "seconds": 0.5}

    def maintain(cfg: object, repo: object, done: list) -> dict:
        calls.append(("maintain", repo.name, [a.name for a in done]))
        return {"forget": {"kept": [], "removed": [], "pruned": False}, "check": "ok", "seconds": 0.1}

    monkeypatch.setattr(bb, "collect", collect)
    monkeypatch.setattr(bb, "backup_to", backup_to)
    monkeypatch.setattr(bb, "maintain", maintain)
    cfg = config(tmp_path, (app("shop"), app("blog", redis=False)))
    args = type("Args", (), {"print_record": False})()
    assert bb.cmd_run(cfg, args) == bb.EXIT_FAILED
    assert calls == [("backup", "blog", "local"), ("backup", "blog", "offsite"),
                     ("maintain", "local", ["blog"]), ("maintain", "offsite", ["blog"])]
    saved = json.loads((tmp_path / "state" / "last-backup.json").read_text())
    assert saved["status"] == "failed"
    assert "app shop: nothing of app shop was backed up: service postgres of compose project shop" in saved["error"]
    assert (saved["apps"]["shop"]["status"], saved["apps"]["blog"]["status"]) == ("failed", "ok")
    assert saved["apps"]["blog"]["repositories"]["offsite"]["snapshot_id"] == "blog-offsite"
    text = (tmp_path / "metrics" / "berth_backup.prom").read_text()
    assert 'berth_backup_last_run_success{app="shop",repository="local"} 0' in text
    assert 'berth_backup_last_run_success{app="blog",repository="offsite"} 1' in text


def test_a_failed_check_fails_the_apps_of_that_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bb, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(bb, "STAGING", tmp_path / "state" / "staging")
    monkeypatch.setattr(bb, "settle_after_boot", lambda cfg: None)
    monkeypatch.setattr(bb, "unlock", lambda cfg, repo: None)
    monkeypatch.setattr(bb, "collect", lambda cfg, one, staging: {"volumes": [], "paths": [], "files": {}})
    monkeypatch.setattr(bb, "backup_to", lambda cfg, repo, one, sources: {"snapshot_id": "s", "seconds": 0.1})

    def maintain(cfg: object, repo: object, done: list) -> dict:
        if repo.name == "offsite":
            raise bb.BackupError("restic check (offsite) failed (exit 1): pack damaged")
        return {"forget": {}, "seconds": 0.1}

    monkeypatch.setattr(bb, "maintain", maintain)
    run: dict = {}
    failure = bb.backup(config(tmp_path, (app("shop"), app("blog"))), run)
    assert failure is not None and "repository offsite: restic check (offsite) failed" in failure
    for name in ("shop", "blog"):
        assert run["apps"][name]["status"] == "failed"
        assert run["apps"][name]["repositories"]["local"]["status"] == "ok"
        assert run["apps"][name]["repositories"]["offsite"]["status"] == "failed"


def test_the_restore_test_has_one_result_per_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bb, "STATE_DIR", tmp_path / "state")

    def verify_app(cfg: object, repo: object, one: object, wanted: str, work: Path) -> dict:
        if one.name == "blog":
            raise bb.BackupError("the restored database differs from the backup: public.posts: 3 rows, expected 4")
        return {"snapshot": {"id": "s1"}, "checksums": "ok", "postgres": {"matches_manifest": True}}

    monkeypatch.setattr(bb, "verify_app", verify_app)
    cfg = config(tmp_path, (app("shop"), app("blog", redis=False)))
    args = type("Args", (), {"print_record": False, "repository": None, "app": None, "snapshot": "latest"})()
    assert bb.cmd_verify(cfg, args) == bb.EXIT_FAILED
    saved = json.loads((tmp_path / "state" / "last-restore-test.json").read_text())
    assert (saved["apps"]["shop"]["status"], saved["apps"]["blog"]["status"]) == ("ok", "failed")
    assert saved["error"] == "app blog: the restored database differs from the backup: public.posts: 3 rows, expected 4"
    text = (tmp_path / "metrics" / "berth_backup_restore_test.prom").read_text()
    assert 'berth_backup_restore_test_last_run_success{app="shop",repository="local"} 1' in text
    assert 'berth_backup_restore_test_last_run_success{app="blog",repository="local"} 0' in text
    # One app, named: only it is tested.
    args.app = "shop"
    assert bb.cmd_verify(cfg, args) == 0
    assert list(json.loads((tmp_path / "state" / "last-restore-test.json").read_text())["apps"]) == ["shop"]


# --- the db host (group db): the data of apps with data: host ------------------------------------

TOPOLOGY_PLAN = [
    {**PLAN[0], "data": "host", "local_services": []},
    {**PLAN[1], "data": "host", "local_services": []},
    {**PLAN[2], "data": "local", "postgres": True, "redis": True, "local_services": ["postgres", "redis"]},
    {"name": "news", "project": "news", "dir": "/opt/news", "local_services": [], "data": "external",
     "postgres": True, "redis": True, "db_name": "news", "db_redis_port": 21006,
     "db_secrets_dir": "/etc/berth/db/news"},
]


def test_the_db_host_backs_up_the_database_and_redis_of_each_app_with_data_host() -> None:
    apps = filters.backup_apps(TOPOLOGY_PLAN, ["shop_uploads"], ["*.tmp"], "db")
    assert apps == [
        {"name": "shop", "project": "shop",
         "postgres": {"kind": "host", "database": "shop", "port": 5432},
         "redis": {"kind": "host", "unit": "redis-server@shop", "port": 21000, "dir": "/var/lib/redis/shop",
                   "password_file": "/etc/berth/db/shop/redis-password"},
         "paths": [], "exclude": [], "volumes": [], "components": ["postgres", "redis"]},
        {"name": "shop-admin", "project": "shop-admin",
         "postgres": {"kind": "host", "database": "shop_admin", "port": 5432}, "redis": None,
         "paths": [], "exclude": [], "volumes": [], "components": ["postgres"]},
    ]
    loaded = bb.App.load(apps[0])
    assert loaded.postgres == bb.Postgres("host", database="shop")
    assert (loaded.redis.unit, loaded.redis.port, loaded.in_docker) == ("redis-server@shop", 21000, False)
    # An app with data: host and neither PostgreSQL nor Redis has nothing on the db host.
    assert filters.backup_apps([{**TOPOLOGY_PLAN[1], "postgres": False}], [], [], "db") == []
    with pytest.raises(ValueError, match="host_role must be one of app, db"):
        filters.backup_apps(TOPOLOGY_PLAN, [], [], "web")


def test_an_app_host_backs_up_only_the_files_of_apps_whose_data_is_elsewhere() -> None:
    apps = {a["name"]: a for a in filters.backup_apps(TOPOLOGY_PLAN, ["shop_uploads"], [], "app")}
    # data: host with a volume, data: external without: what restore.yml may restore there.
    for name, components in (("shop", ["volumes", "paths"]), ("news", ["paths"])):
        assert (apps[name]["postgres"], apps[name]["redis"], apps[name]["components"]) == (None, None, components)
    assert apps["shop"]["volumes"] == ["shop_uploads"] and apps["shop"]["paths"] == ["/opt/shop"]
    assert apps["blog"]["postgres"] == {"kind": "container", "service": "postgres"}


def test_the_host_role_is_db_only_in_the_group_db() -> None:
    groups = {"app": ["app1", "app2"], "db": ["db1"], "berth": ["app1", "app2", "db1"]}
    assert [filters.backup_host_role(groups, h) for h in ("app1", "db1")] == ["app", "db"]
    assert filters.backup_host_role({"berth": ["web1"]}, "web1") == "app"  # an inventory without the groups


@pytest.mark.parametrize(
    ("name", "role", "components", "says"),
    [
        ("", "db", ["postgres"], "Name the app to restore with -e app=NAME: the db host db1 has 2 apps (shop, "
                                 "shop-admin)."),
        ("blog", "db", ["postgres"], "App blog has nothing on the db host db1: its data is in containers on the app "
                                     "hosts (data: local): restore it there, -l <an app host>."),
        ("news", "db", ["postgres"], "App news has nothing on the db host db1: its data is in a managed database"),
        ("wiki", "db", ["postgres"], 'There is no app "wiki" on this host; its apps: shop, shop-admin (-e app=NAME).'),
        ("shop-admin", "db", ["redis", "volumes"], "App shop-admin has none of the components asked for (redis, "
                                                   "volumes) on the db host db1: it has postgres."),
        ("blog", "app", ["redis"], ""),
        # An app host stops an app only to restore something of it there: not for an app whose data is on
        # the db host and that has no volume, with the default components.
        ("shop", "app", ["postgres", "redis", "volumes"], "App shop has none of the components asked for (postgres, "
                                                          "redis, volumes): it has paths."),
        ("shop", "app", ["paths"], ""),
        # A managed database is never restored by berth: asking for it is refused, the other parts are not.
        ("news", "app", ["postgres", "redis", "volumes"], "App news's database is a managed one (data: external): "
                                                          "restore.yml does not restore it (docs/disaster-recovery"
                                                          ".md). To restore its other parts here, ask for them: "
                                                          "-e '{\"backup_restore_components\": [\"paths\"]}'."),
        ("news", "app", ["paths"], ""),
        ("shop", "db", ["postgres", "redis", "volumes"], ""),
        ("", "app", ["volumes"], "Name the app to restore with -e app=NAME: this host has 4 apps"),
    ],
)
def test_restore_names_what_it_cannot_restore_on_this_host(name: str, role: str, components: list, says: str) -> None:
    host_apps = filters.backup_apps(TOPOLOGY_PLAN, [], [], role)
    refusal = filters.backup_restore_refusal(name, TOPOLOGY_PLAN, host_apps, role, "db1", components)
    assert refusal.startswith(says) if says else refusal == ""


def test_restore_without_an_app_on_a_db_host_with_one_app_or_none() -> None:
    one = filters.backup_apps(TOPOLOGY_PLAN[:1], [], [], "db")
    assert filters.backup_restore_refusal("", TOPOLOGY_PLAN, one, "db", "db1", ["postgres"]) == ""
    assert filters.backup_restore_refusal("", TOPOLOGY_PLAN, [], "db", "db1", ["postgres"]) == (
        "No app keeps its data on the db host db1 (data: host): nothing to restore here.")


def test_an_app_answers_its_health_on_its_live_colours_port() -> None:
    shop = {"ports": {"blue": 21000, "green": 21001}, "web": {"health_path": "/healthz"}}
    assert filters.backup_health_url(shop, "green\n") == "http://127.0.0.1:21001/healthz"
    assert filters.backup_health_url(shop, "blue") == "http://127.0.0.1:21000/healthz"
    assert filters.backup_health_url(shop, None) == "http://127.0.0.1:21000/healthz"
    assert filters.backup_health_url(shop, "purple") == "http://127.0.0.1:21000/healthz"


class FakePsql:
    """A psql session of the fakes: records (database, statement), answers by the statement's start, and fails
    (as psql with ON_ERROR_STOP does) on a statement holding `fail_on`."""

    def __init__(self, log: list, database: str, answers: dict[str, list], fail_on: str | None = None) -> None:
        self.log, self.database, self.answers, self.fail_on = log, database, answers, fail_on

    def rows(self, sql: str) -> list[list[str]]:
        self.log.append((self.database, sql))
        if self.fail_on and self.fail_on in sql:
            raise bb.BackupError(f"psql (database {self.database} on this host) failed: ERROR: {self.fail_on}")
        return next((rows for start, rows in self.answers.items() if sql.startswith(start)), [])

    def __enter__(self) -> FakePsql:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def fake_psql(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list], fail_on: str | None = None) -> list:
    log: list = []
    monkeypatch.setattr(bb, "host_psql", lambda pg, database: FakePsql(log, database, answers, fail_on))
    return log


class FakeRun:
    """bb.run of the fakes: records each command with its environment, answers by the command's words."""

    def __init__(self, answers: dict[str, bytes] | None = None) -> None:
        self.calls: list[tuple[list[str], dict | None]] = []
        self.answers = answers or {}

    def __call__(self, argv: list[str], what: str, *, env: dict | None = None, stdout: object = None,
                 check: bool = True, **kwargs: object) -> object:
        self.calls.append((list(argv), env))
        if "--rdb" in argv:
            Path(argv[argv.index("--rdb") + 1]).write_bytes(b"REDIS0011 fake")
        if argv[:5] == ["runuser", "-u", "postgres", "--", "pg_dump"] and hasattr(stdout, "write"):
            stdout.write(b"PGDMP fake")
        reply = next((answer for words, answer in self.answers.items() if words in " ".join(argv)), b"")
        return type("Done", (), {"returncode": 0, "stdout": reply, "stderr": b""})()

    def argvs(self) -> list[list[str]]:
        return [argv for argv, _env in self.calls]


PG_ANSWERS = {
    "SELECT pg_export_snapshot()": [["00000003-0000001B-1"]],
    "SELECT format(": [["public.visits"]],
    "SELECT count(*)": [["3", "-42"]],
    # size, user, database, owner, server version
    "SELECT pg_database_size(current_database()), ": [["8000000", "postgres", "shop", "shop",
                                                        "17.6 (Debian 17.6-0+deb13u1)"]],
    "SELECT pg_database_size(current_database());": [["8000000"]],
}


def test_a_db_host_backup_runs_as_postgres_passes_no_password_and_never_calls_docker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """collect() of an app of the db host: the space check, pg_dump as the local superuser postgres inside the
    snapshot the table figures are read in, redis-cli --rdb of the app's instance with its password in the
    environment only; no docker command at all (the db host has no engine)."""
    password = tmp_path / "redis-password"
    password.write_text("s3cretRedisPassw0rd\n")
    staging = tmp_path / "staging"
    staging.mkdir()
    log = fake_psql(monkeypatch, PG_ANSWERS)
    fake = FakeRun({"INFO keyspace": b"# Keyspace\r\ndb0:keys=5,expires=0,avg_ttl=0\r\n",
                    "INFO memory": b"used_memory:1048576\r\n", "CONFIG GET appendonly": b"appendonly\nyes",
                    "CONFIG GET dbfilename": b"dbfilename\ndump.rdb", "INFO server": b"redis_version:8.0.2\r\n"})
    monkeypatch.setattr(bb, "run", fake)
    cfg = config(tmp_path, ())
    manifest = bb.collect(cfg, db_app("shop", 21000, password_file=str(password)), staging)

    assert not [argv for argv in fake.argvs() if "docker" in argv]
    assert ["runuser", "-u", "postgres", "--", "pg_dump", "-p", "5432", "-d", "shop", "--format=custom",
            "--compress=0", "--snapshot=00000003-0000001B-1"] in fake.argvs()
    # The dump's snapshot was exported in the transaction the table figures are read in, before the dump.
    statements = [sql for database, sql in log if database == "shop"]
    assert statements.index("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;") < statements.index(
        "SELECT pg_export_snapshot();") < statements.index("COMMIT;")
    assert manifest["postgres"] | {"seconds": 0} == {
        "kind": "host", "database": "shop", "owner": "shop", "user": "postgres", "port": 5432,
        "server_version": "17.6 (Debian 17.6-0+deb13u1)", "database_bytes": 8000000,
        "dump": "postgres/database.dump", "rows": 3, "seconds": 0,
        "tables": {"public.visits": {"rows": 3, "checksum": "-42"}}}
    rdb = [argv for argv in fake.argvs() if "--rdb" in argv]
    assert rdb == [["redis-cli", "--no-auth-warning", "-h", "127.0.0.1", "-p", "21000", "--rdb",
                    str(staging / "redis" / "dump.rdb")]]
    assert all("s3cretRedisPassw0rd" not in " ".join(argv) for argv in fake.argvs())
    assert {env["REDISCLI_AUTH"] for argv, env in fake.calls if argv[0] == "redis-cli"} == {"s3cretRedisPassw0rd"}
    assert manifest["redis"] | {"seconds": 0} == {
        "kind": "host", "unit": "redis-server@shop", "port": 21000, "dir": "/var/lib/redis/shop",
        "dbfilename": "dump.rdb", "appendonly": "yes", "server_version": "8.0.2", "rdb": "redis/dump.rdb", "keys": 5,
        "keys_exact": True, "seconds": 0}
    assert sorted(manifest["files"]) == ["postgres/database.dump", "redis/dump.rdb"]
    assert (manifest["volumes"], manifest["paths"]) == ([], [])


def test_the_swap_ends_the_apps_sessions_then_renames_both_in_one_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_psql(monkeypatch, {"SELECT 1 FROM pg_database": [["1"]]})
    pg = bb.Postgres("host", database="shop")
    assert bb.swap_host_database(pg, "shop_restoring", "shop_before_restore_20261127_010203") is True
    assert [sql for _db, sql in log] == [
        "SELECT 1 FROM pg_database WHERE datname = 'shop';",
        'ALTER DATABASE "shop" ALLOW_CONNECTIONS false;',
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = 'shop' "
        "AND pid <> pg_backend_pid();",
        "BEGIN;",
        'ALTER DATABASE "shop" RENAME TO "shop_before_restore_20261127_010203";',
        'ALTER DATABASE "shop_restoring" RENAME TO "shop";',
        "COMMIT;",
    ]
    assert {db for db, _sql in log} == {"postgres"}


def test_a_failed_swap_opens_the_live_database_again(monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_psql(monkeypatch, {"SELECT 1 FROM pg_database": [["1"]]}, fail_on="RENAME TO \"shop_before")
    with pytest.raises(bb.BackupError, match="RENAME TO"):
        bb.swap_host_database(bb.Postgres("host", database="shop"), "shop_restoring", "shop_before_restore_x")
    statements = [sql for _db, sql in log]
    assert 'ALTER DATABASE "shop_restoring" RENAME TO "shop";' not in statements
    assert statements[-1] == 'ALTER DATABASE "shop" ALLOW_CONNECTIONS true;'


def test_a_lost_live_database_is_replaced_without_keeping_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_psql(monkeypatch, {})
    assert bb.swap_host_database(bb.Postgres("host", database="shop"), "shop_restoring", "unused") is False
    assert [sql for _db, sql in log] == ["SELECT 1 FROM pg_database WHERE datname = 'shop';", "BEGIN;",
                                         'ALTER DATABASE "shop_restoring" RENAME TO "shop";', "COMMIT;"]


def test_a_db_host_restore_swaps_only_a_database_that_matched_the_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bb, "host_pg_ready", lambda pg: True)
    dropped: list[str] = []
    swapped: list[tuple] = []
    monkeypatch.setattr(bb, "drop_host_database", lambda pg, name: dropped.append(name))
    monkeypatch.setattr(bb, "swap_host_database", lambda pg, restored, kept: swapped.append((restored, kept)) or True)

    def differs(pg: object, work: Path, item: dict, name: str) -> dict:
        raise bb.BackupError("the restored database differs from the backup: public.visits: 2 rows, expected 3")

    monkeypatch.setattr(bb, "host_checked_restore", differs)
    touched: list[str] = []
    cfg = config(tmp_path, ())
    with pytest.raises(bb.BackupError, match="differs"):
        bb.restore_host_postgres(cfg, db_app("shop", 21000), {}, tmp_path, touched)
    assert (touched, swapped, dropped) == ([], [], ["shop_restoring"])

    monkeypatch.setattr(bb, "host_checked_restore", lambda pg, work, item, name: {"tables": 1, "rows": 3,
                                                                                 "matches_manifest": True})
    monkeypatch.setattr(bb.time, "time", lambda: 1795741323.0)  # 2026-11-27 01:02:03 UTC
    result = bb.restore_host_postgres(cfg, db_app("shop", 21000), {}, tmp_path, touched)
    assert touched == ["postgres"]
    assert swapped == [("shop_restoring", "shop_before_restore_20261127_010203")]
    assert (result["database"], result["kept"], result["matches_manifest"]) == (
        "shop", "shop_before_restore_20261127_010203", True)


def test_the_restore_test_database_is_dropped_whatever_the_outcome(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list[str] = []
    monkeypatch.setattr(bb, "drop_host_database", lambda pg, name: dropped.append(name))

    def differs(pg: object, work: Path, item: dict, name: str) -> dict:
        raise bb.BackupError("the restored database differs from the backup")

    monkeypatch.setattr(bb, "host_checked_restore", differs)
    cfg = config(tmp_path, ())
    item = {"kind": "host", "database": "shop_admin", "port": 5432}
    with pytest.raises(bb.BackupError, match="differs"):
        bb.verify_postgres(cfg, db_app("shop-admin", 21002), item, tmp_path)
    monkeypatch.setattr(bb, "host_checked_restore", lambda pg, work, item, name: {"tables": 1})
    assert bb.verify_postgres(cfg, db_app("shop-admin", 21002), item, tmp_path) == {
        "database": "berth_restore_test_shop_admin", "tables": 1}
    assert dropped == ["berth_restore_test_shop_admin"] * 2


def test_a_restored_database_is_made_as_db_host_makes_the_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_psql(monkeypatch, {"SELECT 1 FROM pg_roles": [["1"]]})
    bb.create_host_database(bb.Postgres("host", database="shop"), "shop_restoring")
    assert [sql for _db, sql in log] == [
        "SELECT 1 FROM pg_roles WHERE rolname = 'shop';",
        'DROP DATABASE IF EXISTS "shop_restoring" WITH (FORCE);',
        'CREATE DATABASE "shop_restoring" TEMPLATE template0 OWNER "shop";',
        'REVOKE CONNECT, TEMPORARY ON DATABASE "shop_restoring" FROM PUBLIC;',
    ]
    log = fake_psql(monkeypatch, {})
    with pytest.raises(bb.BackupError, match="no role shop: apply the data layer"):
        bb.create_host_database(bb.Postgres("host", database="shop"), "shop_restoring")
    assert len(log) == 1


def test_what_a_restore_keeps_is_named_by_its_utc_time_and_fits_postgres() -> None:
    ts = 1795741323.0  # 2026-11-27 01:02:03 UTC
    assert bb.kept_database_name("shop", ts) == "shop_before_restore_20261127_010203"
    assert len(bb.kept_database_name("a" * 30, ts)) <= 63  # the longest db_name (app names: 30 characters)
    with pytest.raises(bb.BackupError, match="longer than PostgreSQL's 63 bytes"):
        bb.kept_database_name("a" * 40, ts)
    assert bb.kept_redis_dir("/var/lib/redis/shop", ts) == Path("/var/lib/redis/shop.before-restore-20261127_010203")
    assert bb.restore_test_database_name("shop") == "berth_restore_test_shop"


def test_a_db_host_redis_restore_keeps_the_old_data_and_converts_to_the_append_only_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "redis" / "shop"
    data.mkdir(parents=True)
    (data / "appendonlydir").mkdir()
    work = tmp_path / "work"
    (work / "redis").mkdir(parents=True)
    (work / "redis" / "dump.rdb").write_bytes(b"REDIS0011 snapshot")
    events: list = []
    fake = FakeRun()
    monkeypatch.setattr(bb, "run", fake)
    monkeypatch.setattr(bb, "chown_to", lambda path, user: events.append(("chown", Path(path).name, user)))

    @bb.contextlib.contextmanager
    def scratch(directory: Path, dbfilename: str, timeout: float) -> object:
        events.append(("scratch", sorted(p.name for p in directory.iterdir()), dbfilename))
        yield "scratch-cli"

    monkeypatch.setattr(bb, "scratch_redis_server", scratch)
    monkeypatch.setattr(bb, "rewrite_aof", lambda cli, timeout: events.append(("rewrite", cli)))
    monkeypatch.setattr(bb, "host_redis", lambda redis: "instance-cli")
    monkeypatch.setattr(bb, "wait_redis_loaded", lambda cli, timeout: events.append(("loaded", cli)))
    monkeypatch.setattr(bb, "redis_keys", lambda cli: 5)
    monkeypatch.setattr(bb.time, "time", lambda: 1795741323.0)
    shop = bb.App("shop", "shop", None, bb.Redis("host", unit="redis-server@shop", port=21000, dir=str(data)),
                  (), (), ())
    touched: list[str] = []
    item = {"kind": "host", "rdb": "redis/dump.rdb", "dbfilename": "dump.rdb", "appendonly": "yes", "keys": 5,
            "keys_exact": True}
    result = bb.restore_host_redis(config(tmp_path, ()), shop, item, work, touched)

    kept = tmp_path / "redis" / "shop.before-restore-20261127_010203"
    assert result["kept"] == str(kept) and result["keys"] == 5 and touched == ["redis"]
    assert (kept / "appendonlydir").is_dir()
    assert (data / "dump.rdb").read_bytes() == b"REDIS0011 snapshot"
    assert fake.argvs() == [["systemctl", "stop", "redis-server@shop"], ["systemctl", "start", "redis-server@shop"]]
    assert events == [("chown", "shop", "redis"), ("chown", "dump.rdb", "redis"),
                      ("scratch", ["dump.rdb"], "dump.rdb"), ("rewrite", "scratch-cli"), ("loaded", "instance-cli")]
    # A key count that differs fails the restore (after the instance started on the snapshot).
    monkeypatch.setattr(bb, "redis_keys", lambda cli: 4)
    with pytest.raises(bb.BackupError, match="Redis has 4 keys after the restore, the backup recorded 5"):
        bb.restore_host_redis(config(tmp_path, ()), shop, item | {"appendonly": "no"}, work, [])
    # (a second restore within the same second keeps the directory under the next free name)
    assert (tmp_path / "redis" / "shop.before-restore-20261127_010203.2" / "dump.rdb").is_file()


def test_a_scratch_redis_listens_on_a_socket_only_and_saves_nothing() -> None:
    text = bb.scratch_redis_config(Path("/var/lib/redis/x"), "dump.rdb", Path("/var/lib/redis/s/redis.sock"))
    assert text.splitlines() == ["port 0", "unixsocket /var/lib/redis/s/redis.sock", "unixsocketperm 700",
                                 "dir /var/lib/redis/x", "dbfilename dump.rdb", "appendonly no", 'save ""',
                                 "daemonize no", 'logfile ""']


def test_a_db_host_restore_leaves_the_running_apps_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No docker on the db host: the apps keep running while their database is swapped and Redis restarts."""
    monkeypatch.setattr(bb, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(bb, "resolve_snapshot", lambda cfg, repo, one, wanted: {"id": "s1", "short_id": "s1",
                                                                                 "time": "t"})
    monkeypatch.setattr(bb, "fetch", lambda cfg, repo, snapshot, work: {"postgres": {}, "redis": {}, "volumes": [],
                                                                        "paths": []})

    def no_docker(one: object) -> set:
        raise AssertionError("docker ps on the db host")

    monkeypatch.setattr(bb, "running_services", no_docker)
    done: list[str] = []
    monkeypatch.setattr(bb, "restore_host_postgres", lambda cfg, one, item, work, touched: done.append("pg") or {})
    monkeypatch.setattr(bb, "restore_host_redis", lambda cfg, one, item, work, touched: done.append("redis") or {})
    args = argparse.Namespace(components="postgres,redis,volumes", app="shop", repository=None, snapshot="latest")
    record: dict = {}
    bb.restore(config(tmp_path, (db_app("shop", 21000),)), args, record, [])
    assert done == ["pg", "redis"] and record["files"] == {}
    args = argparse.Namespace(components="redis", app="blog", repository=None, snapshot="latest")
    with pytest.raises(bb.BackupError, match="app blog has no redis on this host"):
        bb.restore(config(tmp_path, (db_app("blog", 21004, redis=False),)), args, {}, [])


def test_after_boot_a_data_service_that_never_answers_holds_back_only_its_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run at boot waits for the apps' servers; one that never answers is left to its app's backup (which then
    fails naming it), and the others are still waited for."""
    monkeypatch.setattr(bb, "seconds_since_boot", lambda: bb.BOOT_SETTLE - 1)
    waited: list[tuple[str, str]] = []

    def redis_up(one: object, redis: object, timeout: float) -> None:
        waited.append((one.name, "redis"))
        raise bb.BackupError("Redis redis-server@shop answering after boot: not reached after 1 s")

    monkeypatch.setattr(bb, "wait_redis_up", redis_up)
    monkeypatch.setattr(bb, "wait_postgres_up", lambda one, pg, timeout: waited.append((one.name, "postgres")))
    bb.settle_after_boot(config(Path("/nonexistent"), (db_app("shop", 21000), db_app("blog", 21004, redis=False))))
    assert waited == [("shop", "postgres"), ("shop", "redis"), ("blog", "postgres")]


# --- managed databases (data: external): dumped from the first app host -------------------------

MANAGED = {"image": "postgres:17", "url_file": "/etc/berth/backup/database-urls.json"}


def test_the_first_app_host_dumps_each_managed_database_and_no_other_host_does() -> None:
    groups = {"app": ["app1", "app2"], "db": ["db1"]}
    assert [filters.backup_dumps_managed_databases(groups, h) for h in ("app1", "app2", "db1")] == [
        True, False, False]
    assert filters.backup_dumps_managed_databases({"berth": ["web1"]}, "web1") is False
    first = {a["name"]: a for a in filters.backup_apps(TOPOLOGY_PLAN, [], [], "app", MANAGED)}
    other = {a["name"]: a for a in filters.backup_apps(TOPOLOGY_PLAN, [], [], "app")}
    assert first["news"]["postgres"] == {"kind": "external", **MANAGED}
    assert other["news"]["postgres"] is None
    # Its files as any app's, on every app host; restore.yml restores no managed database, and the
    # managed Redis is not backed up.
    assert first["news"]["components"] == other["news"]["components"] == ["paths"]
    assert first["news"]["redis"] is None and first["news"]["paths"] == ["/opt/news"]
    # The other apps are the same on both hosts; the db host has no managed database.
    assert {n: a for n, a in first.items() if n != "news"} == {n: a for n, a in other.items() if n != "news"}
    assert "news" not in {a["name"] for a in filters.backup_apps(TOPOLOGY_PLAN, [], [], "db", MANAGED)}
    loaded = bb.App.load(first["news"])
    assert (loaded.postgres.kind, loaded.postgres.image, loaded.in_docker) == ("external", "postgres:17", True)
    # Without PostgreSQL, nothing to dump.
    assert filters.backup_apps([{**TOPOLOGY_PLAN[3], "postgres": False}], [], [], "app", MANAGED)[0]["postgres"] is None


def test_the_urls_file_holds_exactly_the_managed_databases() -> None:
    plan = [{**TOPOLOGY_PLAN[3], "database_url": "postgresql://news:pw@db.example:25060/news?sslmode=require"},
            {**TOPOLOGY_PLAN[3], "name": "cache-only", "postgres": False, "database_url": ""},
            {**TOPOLOGY_PLAN[0], "database_url": ""}]
    assert filters.backup_database_urls(plan) == {"news": "postgresql://news:pw@db.example:25060/news?sslmode=require"}


@pytest.mark.parametrize(
    ("url", "env"),
    [
        ("postgresql://news:p%40ss%2Fw0rd@db.example.com:25060/news?sslmode=require&connect_timeout=5",
         {"PGHOST": "db.example.com", "PGPORT": "25060", "PGUSER": "news", "PGPASSWORD": "p@ss/w0rd",
          "PGDATABASE": "news", "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "5"}),
        ("postgres://u@10.0.0.5/app?sslmode=verify-full&sslrootcert=system",
         {"PGHOST": "10.0.0.5", "PGPORT": "5432", "PGUSER": "u", "PGDATABASE": "app", "PGSSLMODE": "verify-full",
          "PGSSLROOTCERT": "system"}),
        ("postgresql://u:pw@[2001:db8::5]:5433/app", {"PGHOST": "2001:db8::5", "PGPORT": "5433", "PGUSER": "u",
                                                      "PGPASSWORD": "pw", "PGDATABASE": "app"}),
    ],
)
def test_a_database_url_becomes_libpqs_environment(url: str, env: dict[str, str]) -> None:
    assert bb.pg_url_env(url) == env


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u:s3cret@h/db", "must start with postgresql://"),
        ("postgresql://u:s3cret@h1,h2/db", "names several hosts"),
        ("postgresql://u:s3cret@h:port/db", "port is not a number"),
        ("postgresql://u:s3cret@/db", "names no host"),
        ("postgresql://u:s3cret@h/db?sslmode=verify-ca&sslrootcert=/etc/ca.pem", "sslrootcert names a file"),
        ("postgresql://u:s3cret@h/db?sslcert=/c.pem", "parameter sslcert is not one"),
    ],
)
def test_a_database_url_berth_cannot_pass_on_is_refused_without_its_password(url: str, says: str) -> None:
    with pytest.raises(bb.BackupError, match=says) as error:
        bb.pg_url_env(url)
    assert "s3cret" not in str(error.value)


def test_the_database_url_is_read_from_the_roles_file(tmp_path: Path) -> None:
    urls = tmp_path / "database-urls.json"
    urls.write_text(json.dumps({"news": "postgresql://news:pw@h/news?sslmode=require"}))
    app = bb.App.load({"name": "news", "postgres": {"kind": "external", "image": "postgres:17",
                                                    "url_file": str(urls)}})
    assert bb.database_url(app) == "postgresql://news:pw@h/news?sslmode=require"
    other = bb.App.load({"name": "blog", "postgres": {"kind": "external", "image": "postgres:17",
                                                      "url_file": str(urls)}})
    with pytest.raises(bb.BackupError, match="has no database URL for app blog"):
        bb.database_url(other)
    missing = bb.App.load({"name": "news", "postgres": {"kind": "external", "url_file": str(tmp_path / "none")}})
    with pytest.raises(bb.BackupError, match="cannot read the database URLs"):
        bb.database_url(missing)
