"""docs/first-hour.md stays true: it shows exactly the commands the whole-site scenario runs
(molecule/site/run_example.py), the README's production path uses the same ones, and the inventory
graph it shows is what ansible-inventory prints for a filled copy of the production example. (The
output of the runs themselves is compared in molecule/site/tests/test_site.py.)"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import example_inventory
import pytest
from conftest import ROOT

DOC = ROOT / "docs" / "first-hour.md"
spec = importlib.util.spec_from_file_location("run_example", ROOT / "molecule" / "site" / "run_example.py")
assert spec and spec.loader
run_example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_example)


def shown_output() -> dict[str, str]:
    blocks = re.finditer(r"<!-- output: (\S+) -->\n```text\n(.*?)```", DOC.read_text(), re.DOTALL)
    return {match[1]: match[2] for match in blocks}


@pytest.mark.parametrize("step", list(run_example.COMMANDS))
def test_the_walkthrough_shows_the_tested_commands(step: str) -> None:
    assert run_example.doc_command(step) in DOC.read_text()


@pytest.mark.parametrize("step", ["first-run", "later-run"])
def test_the_readme_uses_the_same_commands(step: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert run_example.doc_command(step) in readme
    assert "docs/first-hour.md" in readme


def test_the_shown_graph_is_ansible_inventorys(tmp_path: Path) -> None:
    inventory, password = example_inventory.fill_offline(tmp_path)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_VAULT_PASSWORD_FILE=str(password))
    graph = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-inventory"), "-i", str(inventory), "--graph"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert graph == shown_output()["graph"]


def test_a_change_in_check_mode_is_named() -> None:
    output = (
        "TASK [common : Install the base packages] ***\nok: [app1]\n"
        "TASK [node_exporter : Enable the timer] ***\nchanged: [app1]\n"
        "RUNNING HANDLER [nginx : Reload nginx] ***\nchanged: [app1]\nchanged: [app2]\n"
        "PLAY RECAP ***\napp1 : ok=3 changed=2 unreachable=0 failed=0\n"
    )
    assert run_example.changed_tasks(output) == ["node_exporter : Enable the timer", "nginx : Reload nginx"]
    assert run_example.changed_tasks("TASK [a] ***\nok: [app1]\n") == []
