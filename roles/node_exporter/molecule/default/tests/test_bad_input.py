"""Bad input fails at the input checks, before any change; the running exporter is left alone."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PLAYBOOK = Path(__file__).resolve().parent.parent / "bad_input.yml"


def test_bad_input_fails_before_changes() -> None:
    # One run over both exporters (bad_input.yml asserts the outcome of each case itself).
    playbook = shutil.which("ansible-playbook")
    assert playbook, "ansible-playbook is not on PATH"
    run = subprocess.run(
        [playbook, "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(PLAYBOOK)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    recap = run.stdout[run.stdout.rindex("PLAY RECAP") :]
    assert "failed=0" in recap
    assert recap.count("rescued=9") == 2, recap
