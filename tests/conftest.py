"""Shared fixtures and helpers for berth's unit tests."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())
sys.path.insert(0, str(ROOT / "scripts"))


def load_module(name: str, path: str) -> Any:
    """A Python file of the project (a filter plugin, a role's program) as a module, by its path from ROOT."""
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_input_cases(role: str, cases: dict[str, dict], good: dict, out_dir: Path) -> tuple[dict[str, dict], str]:
    """Run a role's input checks (tests/playbooks/input_cases.yml with tasks/<role>_case.yml) in check mode
    on the controller, once per case (good input with the case's changes); return each case's outcome and
    everything the run printed."""
    out = out_dir / "outcomes.json"
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_CACHE_PLUGIN": "memory"}
    extra = {
        "cases": [{"name": name, "vars": good | change} for name, change in cases.items()],
        "out": str(out),
        "input_role": role,
        "ansible_python_interpreter": sys.executable,
    }
    playbook_path = ROOT / "tests" / "playbooks" / "input_cases.yml"
    inventory = ROOT / "tests" / "fixtures" / "input-inventory.yml"
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "--check", "-i", str(inventory), str(playbook_path)]
    proc = subprocess.run([*cmd, "-e", json.dumps(extra)], capture_output=True, text=True, env=env, check=False)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed
    return json.loads(out.read_text()), printed
