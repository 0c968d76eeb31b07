"""The backup role refuses bad input before it changes anything (its tasks/check_input.yml and
check_host.yml, run on the controller).

Each case starts from valid input and spoils one thing; the valid inputs themselves must pass, so a check
that always fails cannot hide here. The run's output must never show the repository password, neither
a good one nor a refused one: the messages name the variable and the rule.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_input_cases

GOOD_PASSWORD = "bk-Good$secret#3/@:%z-restic"
KNOWN_HOST = "backup.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
GOOD = {
    "backup_password": GOOD_PASSWORD,
    "backup_local_enabled": True,
    "backup_local_repository": "/var/backups/berth-input-test/restic",
    "backup_offsite_enabled": False,
    "backup_offsite_sftp_host": "",
    "backup_offsite_sftp_user": "",
    "backup_offsite_known_hosts": [],
    "backup_offsite_repository": "",
    "backup_offsite_env": {},
    "backup_keep_hourly": 24,
    "backup_keep_daily": 7,
    "backup_keep_weekly": 4,
    "backup_keep_monthly": 6,
    "backup_schedule": "*:17",
    "backup_restore_test_schedule": "04:47",
    "backup_timeout_minutes": 360,
    "backup_staging_reserve_mb": 1024,
    "backup_paths": ["/opt/app"],
    "backup_volumes": [],
    "backup_restore_test_repository": "",
}
OFFSITE = {
    "backup_offsite_enabled": True,
    "backup_offsite_sftp_host": "backup.example.com",
    "backup_offsite_sftp_user": "u123456",
    "backup_offsite_known_hosts": [KNOWN_HOST],
}
# /proc/sys is read-only for everyone, root included, on the machines berth is tested on.
READ_ONLY = "/proc/sys"
SPOILT = {
    "valid": {},
    "valid with off-site SFTP": OFFSITE,
    "valid without a scheduled restore test": {"backup_restore_test_schedule": ""},
    "valid off-site only": OFFSITE | {"backup_local_enabled": False},
    "valid other off-site backend": {
        "backup_offsite_enabled": True,
        "backup_offsite_repository": "s3:https://s3.example.com/bucket/web1",
        "backup_offsite_env": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret$value"},
    },
    "missing password": {"backup_password": ""},
    "short password": {"backup_password": "Sh0rt$pw-12"},
    "monotonous password": {"backup_password": "abababababababababababab"},
    "retention zero everywhere": {
        "backup_keep_hourly": 0,
        "backup_keep_daily": 0,
        "backup_keep_weekly": 0,
        "backup_keep_monthly": 0,
    },
    "negative retention": {"backup_keep_daily": -1},
    "no repository at all": {"backup_local_enabled": False},
    "relative repository path": {"backup_local_repository": "backups/restic"},
    "repository inside the backed-up directory": {"backup_local_repository": "/opt/app/restic"},
    "repository path blocked by a file": {"backup_local_repository": "/etc/hostname/restic"},
    "repository on a read-only file system": {"backup_local_repository": f"{READ_ONLY}/berth/restic"},
    "off-site without a host": OFFSITE | {"backup_offsite_sftp_host": ""},
    "off-site without a user": OFFSITE | {"backup_offsite_sftp_user": ""},
    "off-site without a pinned host key": OFFSITE | {"backup_offsite_known_hosts": []},
    "off-site with a malformed host key": OFFSITE | {"backup_offsite_known_hosts": ["backup.example.com AAAA"]},
    "other off-site backend with a bad variable": {
        "backup_offsite_enabled": True,
        "backup_offsite_repository": "s3:https://s3.example.com/bucket/web1",
        "backup_offsite_env": {"aws-key": "x"},
    },
    "bad schedule": {"backup_schedule": "every hour"},
    "cron fields as the schedule": {"backup_schedule": "17 * * * *"},
    "schedule with a line break": {"backup_schedule": "hourly\nOnBootSec=0"},
    "restore-test schedule with a quote": {"backup_restore_test_schedule": "daily'"},
    "no time limit": {"backup_timeout_minutes": 0},
    "negative staging reserve": {"backup_staging_reserve_mb": -1},
    "relative backup path": {"backup_paths": ["opt/app"]},
    "bad volume name": {"backup_volumes": ["up loads"]},
    "restore test from a disabled repository": {"backup_restore_test_repository": "offsite"},
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    outcomes, printed = run_input_cases("backup", SPOILT, GOOD, tmp_path_factory.mktemp("backup"))
    for secret in (GOOD_PASSWORD, "Sh0rt$pw-12", "abababababababababababab"):
        assert secret not in printed
    assert "secret$value" not in printed
    assert not Path("/var/backups/berth-input-test").exists(), "the checks must not create anything"
    return outcomes


@pytest.mark.parametrize("case", [name for name in SPOILT if name.startswith("valid")])
def test_valid_input_passes(outcomes: dict[str, dict], case: str) -> None:
    assert outcomes[case] == {"failed": False, "msg": ""}


def test_read_only_case_is_read_only() -> None:
    """The read-only case below means something only where /proc/sys cannot be written."""
    assert not os.access(READ_ONLY, os.W_OK)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing password", "backup_password is empty"),
        ("short password", "backup_password is shorter than 20 characters"),
        ("monotonous password", "backup_password uses fewer than 8 different characters"),
        ("retention zero everywhere", "at least one above 0"),
        ("negative retention", "must be 0 or more"),
        ("no repository at all", "Enable backup_local_enabled, backup_offsite_enabled or both"),
        ("relative repository path", "must be an absolute, normalised path"),
        ("repository inside the backed-up directory", "outside the directory it backs up"),
        ("repository path blocked by a file", "/etc/hostname is not a directory"),
        ("repository on a read-only file system", f"{READ_ONLY} is not writable"),
        ("off-site without a host", "backup_offsite_sftp_host must be the host name or address"),
        ("off-site without a user", "backup_offsite_sftp_user must be the SFTP login"),
        ("off-site without a pinned host key", "backup_offsite_known_hosts must hold the SFTP host's key lines"),
        ("off-site with a malformed host key", "Each line of backup_offsite_known_hosts must be a key line"),
        ("other off-site backend with a bad variable", "must be upper-case environment variable names"),
        ("bad schedule", "must be systemd calendar expressions"),
        ("cron fields as the schedule", "Failed to parse calendar specification '17 * * * *'"),
        ("schedule with a line break", "backup_schedule must be a systemd calendar expression"),
        ("restore-test schedule with a quote", "backup_restore_test_schedule must be a systemd calendar expression"),
        ("no time limit", "backup_timeout_minutes must be above 0"),
        ("negative staging reserve", "backup_staging_reserve_mb must be 0 or more"),
        ("relative backup path", "Each of backup_paths must be an absolute path"),
        ("bad volume name", "must be a Docker volume name"),
        ("restore test from a disabled repository", "which is not enabled"),
    ],
)
def test_bad_input_fails_with_a_clear_message(outcomes: dict[str, dict], case: str, says: str) -> None:
    assert outcomes[case]["failed"] is True
    assert says in outcomes[case]["msg"]
