"""The backup role refuses bad input before it changes anything (its tasks/check_input.yml and
check_host.yml, run on the controller).

Each case starts from valid input and spoils one thing; the valid inputs themselves must pass, so a check
that always fails cannot hide here. The run's output must never show the repository password, neither
a good one nor a refused one: the messages name the variable and the rule.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_input_cases

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
    "backup_exclude": [],
    "backup_volumes": ["shop_uploads", "blog-media"],
    # The apps come from berth_apps (role berth_apps): each app's /opt/<app> is backed up.
    "berth_apps": [
        {"name": "shop", "image": "registry.example.com/shop:1.0"},
        {"name": "blog", "image": "registry.example.com/blog:1.0", "redis": False},
    ],
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
    "repository inside an app's directory": {"backup_local_repository": "/opt/blog/restic"},
    "valid repository beside an app's directory": {"backup_local_repository": "/opt/blog-backups/restic"},
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
    "exclude pattern with a line break": {"backup_exclude": ["*.tmp\n/etc"]},
    "bad volume name": {"backup_volumes": ["up loads"]},
    "volume named after no app": {"backup_volumes": ["shop_uploads", "uploads"]},
    "valid without apps": {"berth_apps": [], "backup_volumes": []},
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
        ("repository inside an app's directory", "outside the directories it backs up (the apps' /opt/shop, "
         "/opt/blog; it is inside /opt/blog)"),
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
        ("exclude pattern with a line break", "The patterns in backup_exclude may not contain control characters"),
        ("bad volume name", "must be a Docker volume name"),
        ("volume named after no app", "must start with an app's name and _ or - (the apps: shop, blog), e.g. "
         'shop_uploads; got [\\"uploads\\"]'),  # (the message as JSON: quotes escaped)
        ("restore test from a disabled repository", "which is not enabled"),
    ],
)
def test_bad_input_fails_with_a_clear_message(outcomes: dict[str, dict], case: str, says: str) -> None:
    assert outcomes[case]["failed"] is True
    assert says in outcomes[case]["msg"]


RESTORE_PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    berth_apps:
      - {name: shop, image: "registry.example.com/shop:1.0"}
      - {name: blog, image: "registry.example.com/blog:1.0", redis: false}
    backup_restore_confirm: localhost
  tasks:
    - ansible.builtin.include_role:
        name: backup
        tasks_from: restore
"""


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "Name the app to restore with -e app=NAME: this host has 2 apps (shop, blog)."),
        (["-e", "app=news"], 'There is no app \\"news\\" on this host; its apps: shop, blog (-e app=NAME).'),
        (["-e", "app=blog", "-e", '{"backup_restore_components": ["redis"]}'],
         "App blog has none of the components asked for (redis): it has postgres, paths."),
    ],
)
def test_restore_refuses_a_missing_or_unknown_app_before_any_change(tmp_path: Path, extra: list, says: str) -> None:
    """playbooks/restore.yml's first checks (tasks/restore.yml), on the controller: they fail before the
    task that would look for the program on the host."""
    (tmp_path / "play.yml").write_text(RESTORE_PLAY)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_CACHE_PLUGIN="memory")
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(ROOT / "tests/fixtures/input-inventory.yml"),
            str(tmp_path / "play.yml"),
            "-e", f"ansible_python_interpreter={sys.executable}", *extra]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert says in done.stdout
    assert "Look for the backup program" not in done.stdout


DB_INVENTORY = """
all:
  children:
    berth:
      children:
        app:
          hosts:
            app1: {ansible_host: 192.0.2.10, berth_private_address: 192.0.2.10}
        db:
          hosts:
            localhost: {ansible_connection: local}
"""
DB_RESTORE_PLAY = RESTORE_PLAY.replace(
    '      - {name: shop, image: "registry.example.com/shop:1.0"}\n',
    '      - {name: shop, image: "registry.example.com/shop:1.0", data: host}\n',
)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["-e", "app=blog"], "App blog has nothing on the db host localhost: its data is in containers on the app "
                             "hosts (data: local): restore it there, -l <an app host>."),
        (["-e", "app=shop", "-e", '{"backup_restore_components": ["volumes", "paths"]}'],
         "App shop has none of the components asked for (volumes, paths) on the db host localhost: it has postgres, "
         "redis."),
    ],
)
def test_restore_on_the_db_host_refuses_what_is_not_there_before_any_change(tmp_path: Path, extra: list,
                                                                           says: str) -> None:
    """The db host (group db) restores only the database and Redis of apps with data: host."""
    assert "data: host" in DB_RESTORE_PLAY
    (tmp_path / "play.yml").write_text(DB_RESTORE_PLAY)
    (tmp_path / "inventory.yml").write_text(DB_INVENTORY)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_CACHE_PLUGIN="memory")
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(tmp_path / "inventory.yml"),
            str(tmp_path / "play.yml"), "-e", f"ansible_python_interpreter={sys.executable}", *extra]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stdout
    assert "Look for the backup program" not in done.stdout
