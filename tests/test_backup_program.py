"""Unit tests of the pure parts of the backup role's program (roles/backup/files/berth_backup.py).

Its runs against real PostgreSQL, Redis, restic and an SFTP host are in the role's Molecule scenario;
these pin the rules that must hold whatever the data: a failure never moves the last success, the
metrics file has exactly the names alerts use, retention can never be empty.
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


bb = load_program()


def record(finished: float, **repositories: dict) -> dict:
    return {"finished_ts": finished, "seconds": 12.5, "repositories": repositories}


def test_a_failed_run_keeps_the_last_success_and_size() -> None:
    state: dict = {}
    bb.update_state(state, "backup", record(1000.0, local={"status": "ok", "bytes": 4096, "snapshot_id": "abc"}))
    bb.update_state(state, "backup", record(2000.0, local={"status": "failed", "error": "db down"}))
    entry = state["backup"]["local"]
    assert entry["last_success"] == 1000.0
    assert entry["size"] == 4096
    assert entry["snapshot"] == "abc"
    assert entry["last_run"] == 2000.0
    assert entry["last_run_success"] is False


def test_metrics_have_the_alerting_names_and_one_line_per_repository() -> None:
    state: dict = {}
    bb.update_state(state, "backup", record(1700000000.5, local={"status": "ok", "bytes": 10, "duration": 3.25}))
    text = bb.render_metrics(state, "backup", ["local", "offsite"])
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == [
        'berth_backup_last_success_timestamp_seconds{repository="local"} 1700000000.5',
        'berth_backup_last_success_timestamp_seconds{repository="offsite"} 0',
        'berth_backup_last_run_success{repository="local"} 1',
        'berth_backup_last_run_success{repository="offsite"} 0',
        'berth_backup_duration_seconds{repository="local"} 3.25',
        'berth_backup_duration_seconds{repository="offsite"} 0',
        'berth_backup_size_bytes{repository="local"} 10',
        'berth_backup_size_bytes{repository="offsite"} 0',
    ]
    assert "# TYPE berth_backup_size_bytes gauge" in text
    assert text.endswith("\n")


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
                "project": "demo",
                "host": "web1",
                "postgres_service": "postgres",
                "redis_service": None,
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
    assert cfg.redis_service is None
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
