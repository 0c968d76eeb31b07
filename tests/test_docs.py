"""docs/variables.md is generated from the roles (scripts/docs.py) and kept up to date; the example CI
workflow (docs/ci.md) calls the project's scripts with arguments they accept."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import berth
import pytest
import yaml
from conftest import ROOT

import docs

SPECS = """\
argument_specs:
  main:
    short_description: A role made up for the test (uses C(demo_x)).
    options:
      demo_port:
        type: int
        description: Port the demo listens on.
      demo_mode:
        type: str
        choices: [fast, safe]
        description:
          - How it runs,
          - as a C(list | of) lines for /opt/<name>.
      demo_sites:
        type: list
        elements: dict
        description: Sites.
        options:
          domain:
            type: str
            required: true
            description: Main name.
          aliases:
            type: list
            elements: str
            default: []
            description: Other names.
      demo_undefaulted:
        type: str
        description: Has no default in defaults/main.yml.
"""
DEFAULTS = """\
---
# Port.
demo_port: 8080
# Mode.
demo_mode: "{{ 'fast' if demo_port | int > 1024 else 'safe' }}"
# Sites.
demo_sites:
  - domain: example.com
"""


def make_role(root: Path, name: str, specs: str = SPECS, defaults: str = DEFAULTS) -> None:
    role = root / "roles" / name
    (role / "meta").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "meta" / "argument_specs.yml").write_text(specs)
    (role / "defaults" / "main.yml").write_text(defaults)


def test_the_committed_reference_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_every_role_with_argument_specs_has_a_section() -> None:
    text = (ROOT / "docs" / "variables.md").read_text()
    for spec in ROOT.glob("roles/*/meta/argument_specs.yml"):
        role = spec.parent.parent.name
        assert f"\n## {role}\n" in text
        for option in docs.load(spec)["argument_specs"]["main"]["options"]:
            assert f"| `{option}` |" in text


def test_table_rows(tmp_path: Path) -> None:
    make_role(tmp_path, "demo")
    lines = docs.generate(tmp_path).splitlines()
    assert "## demo" in lines
    assert "A role made up for the test (uses `demo_x`). See [roles/demo/README.md](../roles/demo/README.md)." in lines
    assert "| `demo_port` | int | `8080` | Port the demo listens on. |" in lines
    # Choices in the type, list descriptions joined, pipes escaped, <name> kept as text.
    assert (
        "| `demo_mode` | str (fast, safe) | `{{ 'fast' if demo_port \\| int > 1024 else 'safe' }}` "
        "| How it runs, as a `list \\| of` lines for /opt/&lt;name&gt;. |"
    ) in lines
    assert "| `demo_sites` | list of dict | `[{domain: example.com}]` | Sites. |" in lines
    assert "| `demo_sites[].domain` | str, required |  | Main name. |" in lines
    assert "| `demo_sites[].aliases` | list of str | `[]` | Other names. |" in lines
    assert "| `demo_undefaulted` | str |  | Has no default in defaults/main.yml. |" in lines


def test_new_roles_are_picked_up_in_order(tmp_path: Path) -> None:
    make_role(tmp_path, "zeta")
    make_role(tmp_path, "alpha")
    (tmp_path / "roles" / "no_specs" / "tasks").mkdir(parents=True)
    text = docs.generate(tmp_path)
    assert "Roles: [alpha](#alpha), [zeta](#zeta)\n" in text
    assert text.index("## alpha") < text.index("## zeta")
    assert "no_specs" not in text


def test_check_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "variables.md"
    monkeypatch.setattr(docs, "OUTPUT", tmp_path / "variables.md")
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["docs.py", "--check"])
    assert docs.main() == 1  # missing
    output.write_text(docs.generate() + "edited by hand\n")
    assert docs.main() == 1  # stale
    monkeypatch.setattr(sys, "argv", ["docs.py"])
    assert docs.main() == 0
    assert output.read_text() == docs.generate()
    monkeypatch.setattr(sys, "argv", ["docs.py", "--check"])
    assert docs.main() == 0


# --- The example CI workflow (docs/ci.md) --------------------------------------------------------

WORKFLOW = ROOT / ".github" / "workflows" / "deploy.yml"
# What the workflow's ${{ }} expressions stand for in a run: a pushed tag, a rollback's inputs.
SAMPLES = {
    "github.ref_name": "v1.4.2",
    "inputs.app_version": "v1.4.1",
    "inputs.environment || 'production'": "production",
}


class RunnerStartError(Exception):
    """Raised by the stand-in for ansible_runner.run: berth.py accepted its arguments."""


def workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def steps() -> list[dict[str, Any]]:
    return workflow()["jobs"]["release"]["steps"]


def expand(text: str, env: dict[str, str]) -> str:
    text = re.sub(r"\$\{\{\s*(.*?)\s*\}\}", lambda m: SAMPLES.get(m.group(1), f"<{m.group(1)}>"), text)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), text)


def script_commands() -> list[tuple[str, list[str]]]:
    """(step name, argv) of every command of the workflow that calls a script of this project."""
    job = workflow()["jobs"]["release"]
    found = []
    for step in steps():
        env = {k: expand(str(v), {}) for k, v in {**job.get("env", {}), **step.get("env", {})}.items()}
        for line in step.get("run", "").splitlines():
            if "scripts/" in line or ".venv/bin/berth" in line:
                found.append((step["name"], shlex.split(expand(line, env))))
    return found


def script_of(argv: list[str]) -> tuple[Path, list[str]]:
    """The project's script a command runs (.venv/bin/berth is scripts/berth.py) and its arguments."""
    index = next(i for i, word in enumerate(argv) if word.startswith("scripts/") or word == ".venv/bin/berth")
    script = "scripts/berth.py" if argv[index] == ".venv/bin/berth" else argv[index]
    return ROOT / script, argv[index + 1 :]


def test_workflow_triggers() -> None:
    on = workflow()["on"]
    assert on["push"] == {"tags": ["v*"]}
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["app_version"]["required"] is False
    for environment in inputs["environment"]["options"]:
        assert (ROOT / "inventories" / environment / "group_vars" / "berth" / "vars.yml").exists()


def test_workflow_keeps_secrets_out_of_commands() -> None:
    job = workflow()["jobs"]["release"]
    # ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False when it is not set.
    assert job["env"]["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    for step in steps():
        assert "${{" not in step.get("run", ""), f"{step['name']}: pass expressions through env"
    secrets = [v for step in steps() for v in step.get("env", {}).values() if "secrets." in v]
    assert len(secrets) == 3


def test_workflow_calls_existing_scripts() -> None:
    commands = script_commands()
    assert {script_of(argv)[0].name for _, argv in commands} == {"setup.py", "berth.py"}
    for _, argv in commands:
        script, args = script_of(argv)
        assert script.is_file()
        help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
        for option in (a for a in args if a.startswith("-")):
            assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", help_text), f"{script.name} has no {option}"


def run_ci_entry(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """berth.py's own argument parsing, up to the point where it would start ansible-runner."""
    calls: list[dict[str, Any]] = []

    def run(**kwargs: Any) -> None:
        calls.append(kwargs)
        raise RunnerStartError

    monkeypatch.setitem(sys.modules, "ansible_runner", types.SimpleNamespace(run=run))
    with pytest.raises(RunnerStartError):
        berth.main(argv)
    return calls[0]


def test_workflow_ci_runs_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {name: argv for name, argv in script_commands() if script_of(argv)[0].name == "berth.py"}
    assert len(runs) == 3
    seen = {}
    for name, argv in runs.items():
        assert argv[0] == ".venv/bin/berth", "berth needs the virtualenv (ansible_runner): setup.py's .venv/bin/berth"
        kwargs = run_ci_entry(script_of(argv)[1], monkeypatch)
        assert (ROOT / kwargs["playbook"]).is_file()
        assert Path(kwargs["inventory"]) == ROOT / "inventories" / "production"
        seen[kwargs["playbook"], kwargs["extravars"].get("app_version")] = name
    assert set(seen) == {
        ("playbooks/deploy.yml", "v1.4.2"),
        ("playbooks/rollback.yml", None),
        ("playbooks/rollback.yml", "v1.4.1"),
    }
