"""The backup role refuses a restic older than its program needs (roles/backup/tasks/check_restic.yml),
run on the controller against a stand-in `restic` that prints the version a host would have."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: backup
        tasks_from: check_restic
"""


def check(tmp_path: Path, version_line: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    restic = bin_dir / "restic"
    restic.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    restic.chmod(0o755)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_CACHE_PLUGIN="memory",
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")  # fmt: skip
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "play.yml"),
            "-e", f"ansible_python_interpreter={sys.executable}"]  # fmt: skip
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("line", ["restic 0.17.3 compiled with go1.24.4 on linux/amd64", "restic 0.18.0 compiled"])
def test_a_recent_restic_passes(tmp_path: Path, line: str) -> None:
    done = check(tmp_path, line)
    assert done.returncode == 0, done.stdout[-2000:]


@pytest.mark.parametrize("line", ["restic 0.14.0 compiled with go1.19.8 on linux/amd64", "restic 0.16.4 compiled"])
def test_an_old_restic_is_refused_with_a_clear_message(tmp_path: Path, line: str) -> None:
    done = check(tmp_path, line)
    assert done.returncode == 2
    old = line.split()[1]
    assert f"restic {old} on this host is older than 0.17.0, which berth's backups need" in done.stdout
