#!/usr/bin/env python3
"""Fill a copy of an example inventory the way a new user does, from a fixture.

    example_inventory.py inventories/production DEST --fixture tests/fixtures/production-fill.yml \\
        --vault-password-file PW --set admin_public_key="ssh-ed25519 AAAA…" --set app_address=10.0.0.5 …

Only the lines the example marks "# must set" get a value (hosts.yml: the hosts' addresses;
group_vars/berth/vars.yml: top-level settings), and vault.yml is written with a value for every secret
vault.yml.example names, then encrypted with ansible-vault. Everything else is the example as it is.
The fixture must give exactly the marked settings and secrets: a line newly marked in the example, or
a fixture value for a line that is not marked, is an error (so the test that uses this notices when
the example and its users' duties change). The fixture's `environment` settings, which say what this
test machine lacks (a registry, Let's Encrypt, NTP servers), go to host_vars/<host>.yml of each
berth host, so that they are visibly separate from what a user fills in.

The examples of the cloud providers (inventories/hcloud, inventories/digitalocean) take their hosts
from the provider's API and have settings of other groups too: there the fixture's `static_inventory`
(the file it `replaces` and the `hosts` written to hosts.yml instead, since no cloud API is reached)
stands in for the dynamic inventory, and `group_settings` fills the marked lines of
group_vars/<group>/vars.yml of the groups other than berth.

Values in the fixture may hold $name placeholders (string.Template), given with --set name=value.
"""

from __future__ import annotations

import argparse
import re
import shutil
import string
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "production-fill.yml"
MARK = "# must set"
VARS = Path("group_vars") / "berth" / "vars.yml"
VAULT_EXAMPLE = Path("group_vars") / "berth" / "vault.yml.example"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:][^:#]*):(\s|$)")


class FillError(Exception):
    """The example and the fixture do not agree on what must be set."""


def marked(path: Path) -> list[tuple[str, ...]]:
    """The key paths of the lines marked "# must set", e.g. ("berth_apps",) or
    ("all", "children", …, "app1.example.com", "ansible_host")."""
    found: list[tuple[str, ...]] = []
    stack: list[tuple[int, str]] = []
    for line in path.read_text().splitlines():
        match = _KEY.match(line)
        if not match:
            continue
        indent, key = len(match["indent"]), match["key"].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if line.rstrip().endswith(MARK) or f"{MARK}:" in line:
            found.append(tuple(k for _, k in stack))
    return found


def substitute(value: Any, values: Mapping[str, str]) -> Any:
    """The value with $placeholders replaced everywhere in it (strings in lists and dicts too)."""
    if isinstance(value, str):
        return string.Template(value).substitute(values)
    if isinstance(value, list):
        return [substitute(item, values) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, values) for key, item in value.items()}
    return value


def _compare(what: str, example: set[str], fixture: set[str]) -> None:
    if example - fixture:
        raise FillError(f"{what}: the example marks {sorted(example - fixture)} but the fixture gives no value")
    if fixture - example:
        raise FillError(f"{what}: the fixture fills {sorted(fixture - example)}, which the example does not mark")


def _dump(path: Path, data: Any, header: str) -> None:
    path.write_text(f"---\n# {header}\n" + yaml.safe_dump(data, sort_keys=False, width=120))


def fill_hosts(path: Path, addresses: Mapping[str, str]) -> None:
    paths = marked(path)
    wrong = [p for p in paths if p[-1] != "ansible_host"]
    if wrong:
        raise FillError(f"{path}: only host addresses may be marked there, not {wrong}")
    _compare(str(path), {p[-2] for p in paths}, set(addresses))
    data = yaml.safe_load(path.read_text())
    for marked_path in paths:
        node = data
        for key in marked_path[:-1]:
            node = node[key]
        node["ansible_host"] = addresses[marked_path[-2]]
    _dump(path, data, "filled from the example by tests/example_inventory.py")


def fill_vars(path: Path, settings: Mapping[str, Any]) -> None:
    paths = marked(path)
    if not paths and not settings:
        return  # nothing to fill: the file stays as it is, comments and all
    nested = [p for p in paths if len(p) != 1]
    if nested:
        raise FillError(f"{path}: mark whole top-level settings, not {nested}")
    _compare(str(path), {p[0] for p in paths}, set(settings))
    data = yaml.safe_load(path.read_text())
    data.update(settings)
    _dump(path, data, "filled from the example by tests/example_inventory.py")


def write_vault(example: Path, dest: Path, secrets: Mapping[str, str], password_file: Path) -> None:
    names = set(yaml.safe_load(example.read_text()) or {})
    _compare(str(example), names, set(secrets))
    _dump(dest, dict(secrets), "the secrets, as a user writes them before ansible-vault encrypt")
    ansible_vault = Path(sys.executable).parent / "ansible-vault"
    subprocess.run(
        [str(ansible_vault), "encrypt", "--vault-password-file", str(password_file), str(dest)],
        check=True,
        capture_output=True,
    )


def berth_hosts(hosts_file: Path) -> list[str]:
    """The hosts of the group berth (and its children) in a static hosts.yml."""
    groups = yaml.safe_load(hosts_file.read_text())["all"]["children"]

    def walk(group: Mapping[str, Any]) -> list[str]:
        found = list((group.get("hosts") or {}).keys())
        for child in (group.get("children") or {}).values():
            found += walk(child or {})
        return found

    return walk(groups["berth"])


def fill(example: Path, dest: Path, fixture: Mapping[str, Any], values: Mapping[str, str], password_file: Path) -> None:
    """Copy `example` to `dest` and fill it from `fixture` (see the module's docstring)."""
    fixture = substitute(dict(fixture), values)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(example, dest)
    static = fixture.get("static_inventory")
    if static:
        (dest / static["replaces"]).unlink()
        _dump(dest / "hosts.yml", static["hosts"], f"in place of {static['replaces']} (no cloud API is reached)")
    fill_hosts(dest / "hosts.yml", fixture.get("addresses") or {})
    fill_vars(dest / VARS, fixture["settings"])
    group_settings = fixture.get("group_settings") or {}
    for vars_file in sorted(dest.glob("group_vars/*/vars.yml")):
        if vars_file.parent.name != VARS.parent.name:
            fill_vars(vars_file, group_settings.get(vars_file.parent.name) or {})
    missing = sorted(set(group_settings) - {p.parent.name for p in dest.glob("group_vars/*/vars.yml")})
    if missing:
        raise FillError(f"the fixture fills group_vars of {missing}, which the example does not have")
    write_vault(dest / VAULT_EXAMPLE, dest / VARS.parent / "vault.yml", fixture["vault"], password_file)
    host_vars = dest / "host_vars"
    host_vars.mkdir()
    for host in berth_hosts(dest / "hosts.yml") if fixture.get("environment") else []:
        _dump(host_vars / f"{host}.yml", fixture["environment"], "what this test machine lacks (see the fixture)")


def offline_values(directory: Path) -> dict[str, str]:
    """Placeholder values for a copy that reaches no host: loopback addresses (the callers make them
    unreachable, -e ansible_port=1), a made-up admin key, files under `directory` that need not exist."""
    return {
        "admin_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBerthOfflineTestKeyXXXXXXXXXXXXXXXXXXXXXXXX t@t",
        "app_address": "127.0.0.1",
        "monitoring_address": "127.0.0.2",
        "kit_archive": str(directory / "kit.tar.gz"),
        "admin_private_key": str(directory / "admin_ed25519"),
        "known_hosts": str(directory / "known_hosts"),
    }


def fill_offline(directory: Path) -> tuple[Path, Path]:
    """inventories/production filled in from the fixture with offline_values(), under `directory`:
    (the inventory, its vault password file)."""
    directory.mkdir(parents=True, exist_ok=True)
    password = directory / "vault-password"
    password.write_text("berth-offline-test-vault\n")
    inventory = directory / "mysite"
    fill(ROOT / "inventories" / "production", inventory, yaml.safe_load(FIXTURE.read_text()),
         offline_values(directory), password)  # fmt: skip
    return inventory, password


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("example", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--fixture", type=Path, required=True)
    parser.add_argument("--vault-password-file", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    values = dict(item.split("=", 1) for item in args.set)
    try:
        fill(args.example, args.dest, yaml.safe_load(args.fixture.read_text()), values, args.vault_password_file)
    except FillError as error:
        sys.exit(f"example_inventory: {error}")


if __name__ == "__main__":
    main()
