"""The bad-input check of a role scenario, shared by its testinfra tests (nginx, monitoring).

The scenario's bad_input.yml runs the role once per bad case against the converged hosts, rescues each
failure and asserts by itself where each case failed and that nothing changed; the test runs it and
checks the recap: no host failed, and every host rescued every case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def check_bad_input(playbook: Path, cases: int | dict[int, int], hosts: int = 1, timeout: int = 900) -> None:
    """cases: the cases each of `hosts` hosts rescues, or {cases: hosts} when kinds of host differ."""
    ansible_playbook = shutil.which("ansible-playbook")
    assert ansible_playbook, "ansible-playbook is not on PATH"
    run = subprocess.run(
        [ansible_playbook, "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    recap = run.stdout[run.stdout.rindex("PLAY RECAP") :]
    assert "failed=0" in recap
    for count, number in (cases if isinstance(cases, dict) else {cases: hosts}).items():
        assert recap.count(f"rescued={count}") == number, recap
