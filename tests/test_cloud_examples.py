"""The examples of the two multi-host shapes (inventories/hcloud: app hosts behind a Hetzner Cloud Load
Balancer and a database host; inventories/digitalocean: app droplets behind a DigitalOcean Load Balancer
and managed databases) are usable as written: filled in on their "# must set" lines only
(tests/example_inventory.py, tests/fixtures/<provider>-fill.yml), their settings pass every layer's
checks of the settings for every host in site.yml, and a broken shape is refused before any connection.

No cloud API is reached: the dynamic inventory config is replaced by a static hosts.yml with the hosts
the plugin finds for the shape (tests/test_inventories.py runs the plugins against a fake API and
compares). Every host is 127.0.0.1 on a port that refuses SSH (-e ansible_port=1): nothing is sent
anywhere, and the run must stop only there, each host unreachable.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bad_settings
import example_inventory
import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from bad_settings import Case, Outcome
from conftest import ROOT

EXAMPLES = ("hcloud", "digitalocean")
UNREACHABLE = ["-e", "ansible_port=1", "-e", "berth_ssh_user=root"]
_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)\s"
)
_TASK = re.compile(r"^TASK \[(?:(?P<role>\w+) : )?(?P<name>.*?)\] \**$", re.MULTILINE)


def example(name: str) -> Path:
    return ROOT / "inventories" / name


def fixture(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "tests" / "fixtures" / f"{name}-fill.yml").read_text())


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def fill(name: str, directory: Path, spoil: Any = None) -> tuple[Path, Path]:
    """The example filled in from its fixture (spoilt first by `spoil`, if given): (inventory, password file)."""
    directory.mkdir(parents=True, exist_ok=True)
    password = directory / "vault-password"
    password.write_text("berth-cloud-example-vault\n")
    data = fixture(name)
    if spoil:
        spoil(data)
    inventory = directory / "mysite"
    example_inventory.fill(example(name), inventory, data, example_inventory.offline_values(directory), password)
    return inventory, password


def stand_in_groups(data: dict[str, Any]) -> dict[str, set[str]]:
    """The berth groups of the fixture's static stand-in, and their hosts."""
    children = data["static_inventory"]["hosts"]["all"]["children"]["berth"]["children"]
    return {group: set(spec["hosts"]) for group, spec in children.items()}


def run_site(inventory: Path, password: Path, case: Case, cache: Path) -> Outcome:
    """site.yml on the filled example, every host unreachable, the case's settings on top (like
    bad_settings.run, with a fact cache of its own: no facts of another run's hosts of the same name)."""
    argv = [str(bad_settings.ANSIBLE_PLAYBOOK), "-i", str(inventory), "site.yml", "--vault-password-file",
            str(password), *UNREACHABLE, "-e", json.dumps(case.vars)]  # fmt: skip
    env = {**bad_settings.ansible_env(), "ANSIBLE_CACHE_PLUGIN": "jsonfile",
           "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(cache)}
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    return Outcome(case, proc.returncode, time.monotonic() - start, proc.stdout + proc.stderr)


def recap(output: str) -> dict[str, dict[str, int]]:
    return {
        m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
        for m in map(_RECAP.match, output.splitlines())
        if m
    }


def roles_checked(output: str) -> dict[str, set[str]]:
    """Per host, the roles whose tasks ran on it with the result ok (in this run: the checks)."""
    found: dict[str, set[str]] = {}
    tasks = list(_TASK.finditer(output))
    for task, following in zip(tasks, [*tasks[1:], None], strict=True):
        body = output[task.end() : following.start() if following else len(output)]
        for host in re.findall(r"^ok: \[([^\]]+)\]", body, re.MULTILINE):
            if task["role"]:
                found.setdefault(host, set()).add(task["role"])
    return found


def layer_groups() -> list[tuple[str, set[str]]]:
    """Each layer's role and the groups it runs on (playbooks/preflight.yml)."""
    found = []
    for layer in load(ROOT / "playbooks" / "preflight.yml")[0]["vars"]["__berth_layers"]:
        hosts = layer.get("hosts", layer.get("group"))
        found.append((layer["role"], {hosts} if isinstance(hosts, str) else set(hosts)))
    return found


# --- The examples as files -------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_example_has_what_a_user_copies(name: str) -> None:
    files = {str(p.relative_to(example(name))) for p in example(name).rglob("*") if p.is_file()}
    assert {f"{name}.yml", "README.md", "group_vars/berth/vars.yml", "group_vars/berth/vault.yml.example",
            "group_vars/app/vars.yml"} <= files  # fmt: skip
    assert ("group_vars/db/vars.yml" in files) == (name == "hcloud")


def role_specs() -> dict[str, dict[str, Any]]:
    return {
        path.parent.parent.name: load(path)["argument_specs"]["main"]["options"]
        for path in sorted(ROOT.glob("roles/*/meta/argument_specs.yml"))
    }


def group_vars(name: str) -> dict[str, dict[str, Any]]:
    return {p.parent.name: load(p) for p in sorted(example(name).glob("group_vars/*/vars.yml"))}


@pytest.mark.parametrize("name", EXAMPLES)
def test_group_vars_are_role_options(name: str) -> None:
    # A misspelt variable would be ignored silently by Ansible; here it fails.
    specs = role_specs()
    for group, settings in group_vars(name).items():
        unknown = [k for k in settings if not k.startswith("ansible_") and not any(k in o for o in specs.values())]
        assert unknown == [], f"group_vars/{group}: not an option of any role"


@pytest.mark.parametrize("name", EXAMPLES)
def test_group_vars_pass_the_argument_specs(name: str) -> None:
    # Values that are not templates are checked with the same validator the roles use.
    for group, settings in group_vars(name).items():
        for role, options in role_specs().items():
            values = {k: v for k, v in settings.items() if k in options and "{{" not in json.dumps(v)}
            result = ArgumentSpecValidator(options).validate(values)
            assert result.error_messages == [], f"group_vars/{group}, {role}: {result.error_messages}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_vault_reference_has_an_example(name: str) -> None:
    berth = example(name) / "group_vars" / "berth"
    referenced = set(re.findall(r"\bvault_\w+", json.dumps(group_vars(name))))
    assert referenced == set(load(berth / "vault.yml.example"))
    optional = {m for p in example(name).glob("group_vars/*/vars.yml")
                for m in re.findall(r"^#.*\b(vault_\w+)", p.read_text(), re.MULTILINE)}  # fmt: skip
    commented = set(re.findall(r"^# (vault_\w+):", (berth / "vault.yml.example").read_text(), re.MULTILINE))
    assert optional == commented


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_groups_firewalls_repeat_the_monitoring_rule(name: str) -> None:
    # group_vars lists replace each other: every group that sets its own rules keeps Prometheus's.
    settings = group_vars(name)
    monitoring = settings["berth"]["hardening_firewall_source_rules"]
    assert [rule["port"] for rule in monitoring] == [9100]
    for group, values in settings.items():
        rules = values.get("hardening_firewall_source_rules", monitoring)
        assert monitoring[0] in rules, group


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_fixture_fills_exactly_the_marked_lines(name: str, tmp_path: Path) -> None:
    data = fixture(name)
    inventory, _ = fill(name, tmp_path)
    assert not (inventory / f"{name}.yml").exists()
    assert load(inventory / "group_vars" / "app" / "vars.yml")["nginx_load_balancers"] == \
        data["group_settings"]["app"]["nginx_load_balancers"]  # fmt: skip
    assert (inventory / "group_vars" / "berth" / "vault.yml").read_text().startswith("$ANSIBLE_VAULT;")
    # Everything the example did not mark is as it was, comments included where nothing was marked.
    for group, settings in group_vars(name).items():
        filled = load(inventory / "group_vars" / group / "vars.yml")
        given = data["settings"] if group == "berth" else data["group_settings"].get(group, {})
        unmarked = {k: v for k, v in settings.items() if k not in given}
        assert {k: v for k, v in filled.items() if k not in given} == unmarked
        if not given:
            assert (inventory / "group_vars" / group / "vars.yml").read_text() == \
                (example(name) / "group_vars" / group / "vars.yml").read_text()  # fmt: skip


@pytest.mark.parametrize("name", EXAMPLES)
def test_a_fixture_that_misses_a_marked_line_of_a_group_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(example_inventory.FillError, match=re.escape("marks ['nginx_load_balancers'] but the fixture")):
        fill(name, tmp_path, lambda data: data["group_settings"]["app"].pop("nginx_load_balancers"))
    with pytest.raises(example_inventory.FillError, match=re.escape("fills group_vars of ['nowhere']")):
        fill(name, tmp_path, lambda data: data["group_settings"].update(nowhere={}))


# --- site.yml with the filled examples ------------------------------------------------------------


def drop_db_host(data: dict[str, Any]) -> None:
    del data["static_inventory"]["hosts"]["all"]["children"]["berth"]["children"]["db"]


# (example, what is spoilt in the fixture, extra settings, what the refusal says)
BAD = {
    "hcloud without its db host": ("hcloud", drop_db_host, {},
                                   "app shop has data: host, but the inventory group db has no host"),
    "hcloud, app hosts rebooting on their own": ("hcloud", None, {"hardening_unattended_upgrades_reboot": True},
                                                 "hardening_unattended_upgrades_reboot would reboot it on its own"),
    "digitalocean with sslmode=disable": (
        "digitalocean", None,
        {"vault_shop_database_url": "postgresql://shop:ShopDoFill7c1e@db.test:25060/shop?sslmode=disable"},
        "app shop: database_url must ask for TLS"),
    "digitalocean with redis:// in the clear": (
        "digitalocean", None, {"vault_shop_redis_url": "redis://default:ShopDoFill9d2f@redis.test:25061/0"},
        "app shop: redis_url must use TLS (rediss://)"),
}  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """site.yml on every filled example as it is and on every bad case, two at a time (two cores)."""
    runs: dict[str, tuple[str, Any, Case]] = {name: (name, None, Case("none", {}, "")) for name in EXAMPLES}
    runs.update({label: (name, spoil, Case(name, extra, says)) for label, (name, spoil, extra, says) in BAD.items()})

    def one(label: str) -> tuple[str, Outcome]:
        name, spoil, case = runs[label]
        directory = tmp_path_factory.mktemp(re.sub(r"\W+", "-", label))
        inventory, password = fill(name, directory, spoil)
        return label, run_site(inventory, password, case, directory / "facts")

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, runs))


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_filled_example_passes_every_check_of_the_settings(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    tail = outcome.output[-3000:]
    assert outcome.returncode == 4, tail  # 4: a host was unreachable, and nothing failed
    assert "Check what the settings ask of each host" in outcome.output
    assert "A setting of" not in outcome.output and "is refused" not in outcome.output, tail
    groups = stand_in_groups(fixture(name))
    berth = set().union(*groups.values())
    assert recap(outcome.output) == {host: recap(outcome.output)[host] | {"changed": 0, "unreachable": 1, "failed": 0}
                                     for host in berth}, tail  # fmt: skip
    assert outcome.output.count("UNREACHABLE!") == len(berth)
    # Every host went through the checks of each of its layers' roles, and of no other.
    checked = roles_checked(outcome.output)
    for host in berth:
        host_groups = {"berth"} | {group for group, hosts in groups.items() if host in hosts}
        expected = {role for role, on in layer_groups() if on & host_groups}
        assert checked.get(host) == expected, host


@pytest.mark.parametrize("label", list(BAD))
def test_a_broken_shape_is_refused_before_any_connection(outcomes: dict[str, Outcome], label: str) -> None:
    outcome = outcomes[label]
    assert bad_settings.problems(outcome) == [], outcome.output[-3000:]


def test_no_secret_is_printed(outcomes: dict[str, Outcome]) -> None:
    printed = "".join(outcome.output for outcome in outcomes.values())
    secrets = [value for name in EXAMPLES for value in fixture(name)["vault"].values()]
    secrets += ["ShopDoFill7c1e", "ShopDoFill9d2f", "BlogDoFill3a8b"]
    for secret in secrets:
        assert secret not in printed


def test_no_run_left_the_machine() -> None:
    # The stand-ins' hosts are loopback addresses; the private ones only appear in settings.
    for name in EXAMPLES:
        hosts = fixture(name)["static_inventory"]["hosts"]["all"]["children"]
        addresses = [v["ansible_host"] for g in (*hosts["berth"]["children"].values(), hosts["monitoring"])
                     for v in g["hosts"].values()]  # fmt: skip
        assert set(addresses) == {"127.0.0.1"}
