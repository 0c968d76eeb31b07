"""Conventions every role keeps (docs/design.md): defaults and argument specs agree, templates are marked,
handlers are named "Restart <service>" / "Reload <service>" and every notify names one of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROLES, ROOT


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def spec_options(role: Path) -> dict:
    return load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]


def test_there_are_roles() -> None:
    assert ROLES, "no role found under roles/"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_match_argument_specs(role: Path) -> None:
    defaults = set(load(role / "defaults" / "main.yml"))
    options = set(spec_options(role))
    assert defaults - options == set(), "in defaults/main.yml but not in meta/argument_specs.yml"
    assert options - defaults == set(), "in meta/argument_specs.yml but not in defaults/main.yml"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_variables_are_prefixed_and_documented(role: Path) -> None:
    lines = (role / "defaults" / "main.yml").read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line[0].isspace() and not line.startswith(("#", "---")):
            name = line.split(":", 1)[0]
            # (berth_apps: the role's one variable is named as the role)
            assert name == role.name or name.startswith(f"{role.name}_"), f"{name} lacks the prefix {role.name}_"
            assert lines[index - 1].startswith("#"), f"{name} has no comment line above it"
    for name, option in spec_options(role).items():
        assert option.get("description"), f"{name} has no description in argument_specs"
        assert option.get("type"), f"{name} has no type in argument_specs"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_templates_start_with_ansible_managed(role: Path) -> None:
    for template in (role / "templates").rglob("*.j2"):
        first = template.read_text().splitlines()[0]
        assert first == "{{ ansible_managed | comment }}", f"{template} does not start with ansible_managed"


@pytest.mark.parametrize("role", [r for r in ROLES if (r / "handlers" / "main.yml").exists()], ids=lambda p: p.name)
def test_handlers_are_named_by_convention(role: Path) -> None:
    # "Restart ssh", "Reload nginx": a capital first word, so ansible-lint's name[casing] needs no noqa.
    for handler in load_list(role / "handlers" / "main.yml"):
        first, _, rest = handler["name"].partition(" ")
        assert first in {"Restart", "Reload"}, handler["name"]
        assert rest and rest == rest.strip(), handler["name"]


def notified(tasks: object) -> list[str]:
    """Every handler name a task list notifies, blocks included."""
    found: list[str] = []
    if isinstance(tasks, list):
        for task in tasks:
            found += notified(task)
    elif isinstance(tasks, dict):
        notify = tasks.get("notify", [])
        found += [notify] if isinstance(notify, str) else list(notify)
        for key in ("block", "rescue", "always"):
            found += notified(tasks.get(key))
    return found


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_notify_names_a_handler_of_the_role(role: Path) -> None:
    handlers: set[str] = set()
    for handler in (h for path in (role / "handlers").glob("*.yml") for h in load_list(path)):
        listen = handler.get("listen", [])
        handlers |= {handler["name"], *([listen] if isinstance(listen, str) else listen)}
    for path in sorted((role / "tasks").glob("*.yml")) + sorted((role / "handlers").glob("*.yml")):
        for name in notified(load_list(path)):
            assert name in handlers, f"{path.relative_to(role)} notifies {name!r}, which is no handler of {role.name}"


def load_list(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text()) or []


# --- The preflight (playbooks/preflight.yml): every layer's checks before any change -------------

# Each layer's roles and the group of hosts its play runs on, in site.yml's order.
LAYERS = [
    # "monitoring:&berth": the preflight runs on the group berth only, so its hosts: [monitoring] is the same
    {"role": role["role"], "hosts": [group for group in play["hosts"].split(":") if group != "&berth"]}
    for name in ("base", "harden", "docker", "data", "stack", "edge", "backup", "metrics", "monitoring")
    for play in load_list(ROOT / "playbooks" / "layers" / f"{name}.yml")
    for role in play["roles"]
]
LAYER_ROLES = [layer["role"] for layer in LAYERS]
# The description of the apps (roles/berth_apps) is checked first: several layers read it.
PREFLIGHT_ROLES = ["berth_apps", *LAYER_ROLES]


def test_the_preflight_checks_every_layer_in_order_on_its_hosts() -> None:
    plays = load_list(ROOT / "playbooks" / "preflight.yml")
    assert all(play["vars"]["__berth_layers"] == [{"role": "berth_apps", "hosts": ["berth"]}, *LAYERS]
               for play in plays)
    tasks = [task for play in plays for task in play["tasks"] for task in task.get("block", [task])]
    loops = [task["loop"] for task in tasks if "ansible.builtin.include_role" in task]
    assert len(loops) == 3 and all(loop == "{{ __berth_layer_roles }}" for loop in loops)
    site = load_list(ROOT / "site.yml")
    assert site[0]["ansible.builtin.import_playbook"] == "playbooks/preflight.yml"
    assert [play["ansible.builtin.import_playbook"] for play in site[1:]] == [
        f"playbooks/layers/{name}.yml"
        for name in ("base", "harden", "docker", "data", "stack", "edge", "backup", "metrics", "monitoring")]


@pytest.mark.parametrize("role", PREFLIGHT_ROLES)
def test_a_layer_role_has_check_entry_points_with_its_options(role: str) -> None:
    # The same options as main (the file aliases them), so that the preflight validates the same way.
    specs = load(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]
    for entry in ("check_input", "check_host"):
        assert specs[entry]["options"] == specs["main"]["options"], f"{role}: {entry}"
        assert (ROOT / "roles" / role / "tasks" / f"{entry}.yml").exists()
