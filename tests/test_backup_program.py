"""Unit tests of the pure parts of the backup role's program (roles/backup/files/berth_backup.py).

Its runs against real PostgreSQL, Redis, restic and an SFTP host are in the role's Molecule scenario;
these pin the rules that must hold whatever the data: a failure never moves the last success, the
metrics file has exactly the names alerts use (one line per app and repository), retention can never be
empty and never reaches another app's snapshots, one app's failure fails the run and names the app. The
role's filters (roles/backup/filter_plugins/backup.py) decide what each app's snapshot holds.
"""

from __future__ import annotations

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
    return bb.App(name=name, project=name, postgres_service="postgres" if postgres else None,
                  redis_service="redis" if redis else None, paths=(f"/opt/{name}",),
                  exclude=(f"/opt/{name}/images",), volumes=volumes)


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
    {"name": "shop", "project": "shop", "dir": "/opt/shop", "postgres": True, "redis": True},
    {"name": "shop-admin", "project": "shop-admin", "dir": "/opt/shop-admin", "postgres": True, "redis": False},
    {"name": "blog", "project": "blog", "dir": "/opt/blog", "postgres": False, "redis": False},
]


def test_each_app_gets_its_services_directory_and_volumes() -> None:
    volumes = ["shop_uploads", "shop-admin-files", "blog-media", "shop-cache"]
    apps = filters.backup_apps(PLAN, volumes, ["*.tmp"])
    assert apps[0] == {"name": "shop", "project": "shop", "postgres_service": "postgres", "redis_service": "redis",
                       "paths": ["/opt/shop"], "exclude": ["/opt/shop/images", "*.tmp"],
                       "volumes": ["shop_uploads", "shop-cache"]}
    # The longer name owns shop-admin-files.
    assert (apps[1]["volumes"], apps[1]["redis_service"]) == (["shop-admin-files"], None)
    assert (apps[2]["volumes"], apps[2]["postgres_service"], apps[2]["exclude"]) == (
        ["blog-media"], None, ["/opt/blog/images", "*.tmp"])
    # The configuration the program reads back.
    loaded = bb.App.load(apps[1])
    assert (loaded.name, loaded.postgres_service, loaded.redis_service, loaded.volumes) == (
        "shop-admin", "postgres", None, ("shop-admin-files",))
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
                    {"name": "shop", "project": "shop", "postgres_service": "postgres", "redis_service": "redis",
                     "paths": ["/opt/shop"], "exclude": ["/opt/shop/images"], "volumes": []},
                    {"name": "blog", "project": "blog", "postgres_service": "postgres", "redis_service": None,
                     "paths": ["/opt/blog"], "exclude": ["/opt/blog/images"], "volumes": ["blog_media"]},
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
    assert cfg.apps[1].redis_service is None and cfg.apps[1].volumes == ("blog_media",)
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
