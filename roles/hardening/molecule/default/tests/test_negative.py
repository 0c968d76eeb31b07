"""A misconfigured run (no valid admin key) fails before sshd is touched, and the host stays reachable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EPHEMERAL, INVENTORY, PROJECT, SCENARIO, TRIXIE, get_host, ssh

testinfra_hosts = ["berth-hardening-probe"]


def run_negative(case: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(PROJECT / "collections"),
        ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
        ANSIBLE_CACHE_PLUGIN_CONNECTION=str(EPHEMERAL / "facts"),
        ANSIBLE_NOCOLOR="1",
    )
    playbook = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run(
        [str(playbook), "-i", INVENTORY, str(SCENARIO / "negative.yml"), "-e", f"case={case}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nokeys", "would lock everybody out"),
        ("wrongkey", "LOCKOUT GUARD"),
    ],
)
def test_misconfigured_run_fails_and_changes_nothing(host, case, message):
    target = get_host(TRIXIE)
    files = "/etc/ssh/sshd_config /etc/nftables.conf /home/alice/.ssh/authorized_keys"
    before = target.check_output(f"sha256sum {files}")
    sshd_pid = target.check_output("systemctl show -p MainPID --value ssh")

    result = run_negative(case)

    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output[-2000:]
    assert message in output, output[-2000:]
    # Nothing changed: same files, same sshd process, still on port 22, and the admin still gets in.
    assert target.check_output(f"sha256sum {files}") == before
    assert target.check_output("systemctl show -p MainPID --value ssh") == sshd_pid
    assert target.socket("tcp://0.0.0.0:22").is_listening
    login = ssh(host, TRIXIE, "alice", "sudo -n true")
    assert login.rc == 0, login.stderr
