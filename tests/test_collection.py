"""berth as an installed collection (galaxy.yml, docs/collection.md).

The collection is built from the repository root as a user builds it, installed offline into a
scratch project whose ansible.cfg sets collections_path only (the community collections it depends on
come from the repository's collections/, as `ansible-galaxy collection install --offline` finds them
there), and run from that project: every playbook of the collection passes --syntax-check, the whole
site (berth.server.site) checks every layer's settings of the filled production example with the hosts
unreachable (as tests/test_preflight.py does from the repository: nothing is sent anywhere), a bad
setting is refused, and a play of the project uses the collection's filter and test by their names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import example_inventory
import pytest
import yaml
from conftest import ROOT

BIN = Path(sys.executable).parent
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())
FQCN = f"{GALAXY['namespace']}.{GALAXY['name']}"
UNREACHABLE = ["-e", "ansible_host=127.0.0.1", "-e", "ansible_port=1", "-e", "berth_ssh_user=root"]
# In the tarball: the collection's metadata and a sample of each kind of content; never: the repository's
# tests and tooling, a user's inventories and secrets, what is installed or cached (parts of a path).
WANTED = ["LICENSE", "CHANGELOG.md", "README.md", "site.yml", "meta/runtime.yml", "playbooks/site.yml",
          "playbooks/filter_plugins", "plugins/modules/release_host.py", "plugins/filter/apps.py",
          "plugins/filter/release.py", "plugins/test/ip_network.py", "docs/collection.md"]  # fmt: skip
UNWANTED = ["/tests/", "/molecule/", "/inventories/", "/scripts/", "/collections/", "/.venv/", "/.cache/",
            "/artifacts/", "vault.yml", "/__pycache__/", "/.git", "/ansible.cfg/", "/.github/"]  # fmt: skip
_RECAP = re.compile(r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)")


@dataclass(frozen=True)
class Project:
    """A user's project: its directory, the built tarball, the filled inventory and its vault password."""

    path: Path
    tarball: Path
    inventory: Path
    vault_password: Path

    def env(self) -> dict[str, str]:
        # Nothing of the repository's configuration may leak in: no ANSIBLE_* but the project's file.
        env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
        return env | {"ANSIBLE_CONFIG": str(self.path / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1",
                      "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}  # fmt: skip

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=self.path, env=self.env(), capture_output=True, text=True, check=False)

    def playbook(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "ansible-playbook"), *argv)

    def site(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.playbook("-i", str(self.inventory), f"{FQCN}.site", "--vault-password-file",
                             str(self.vault_password), *UNREACHABLE, *extra)  # fmt: skip


def recap(output: str) -> dict[str, dict[str, int]]:
    return {
        m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable")}
        for m in map(_RECAP.match, output.splitlines())
        if m
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The collection built from the repository, installed into a new project with the filled example."""
    built = tmp_path_factory.mktemp("built")
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    build = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", str(ROOT), "--output-path", str(built)],
                           cwd=built, env=env, capture_output=True, text=True, check=False)  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    tarball = built / f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz"
    assert tarball.is_file(), build.stdout

    path = tmp_path_factory.mktemp("project")
    (path / "ansible.cfg").write_text(f"[defaults]\ncollections_path = collections:{ROOT / 'collections'}\n")
    inventory, vault_password = example_inventory.fill_offline(path / "inventories")
    made = Project(path, tarball, inventory, vault_password)
    install = made.run(str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "-p", "collections",
                       str(tarball))  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    assert (path / "collections" / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]).is_dir()
    return made


def test_the_tarball_holds_the_collection_and_nothing_of_the_repository_s_own(project: Project) -> None:
    with tarfile.open(project.tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    roles = {p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir()}
    assert {name.split("/")[1] for name in names if name.startswith("roles/")} == roles
    playbooks = {str(p.relative_to(ROOT)) for p in (ROOT / "playbooks").rglob("*.yml")}
    assert playbooks <= names
    for wanted in WANTED:
        assert wanted in names, wanted
    for unwanted in UNWANTED:
        assert not [name for name in names if unwanted in f"/{name}/"], unwanted
    assert manifest["collection_info"]["version"] == GALAXY["version"]
    assert manifest["collection_info"]["license"] == ["MIT"]
    assert project.tarball.stat().st_size < 1_000_000


def test_every_playbook_of_the_collection_passes_the_syntax_check(project: Project) -> None:
    # A playbook's name in a collection is made of identifiers: backup-now.yml has backup_now.yml.
    files = [p.relative_to(ROOT / "playbooks").with_suffix("") for p in (ROOT / "playbooks").rglob("*.yml")]
    names = sorted(f"{FQCN}.{'.'.join(p.parts)}" for p in files if all(part.isidentifier() for part in p.parts))
    assert {f"{FQCN}.{'.'.join(p.parts).replace('-', '_')}" for p in files} == set(names)
    assert f"{FQCN}.site" in names and f"{FQCN}.deploy" in names and f"{FQCN}.layers.base" in names
    done = project.playbook("--syntax-check", "-i", str(project.inventory), *names)
    assert done.returncode == 0, done.stdout + done.stderr
    checked = re.findall(r"^playbook: (\S+)", done.stdout, re.MULTILINE)
    installed = project.path / "collections" / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    assert len(checked) == len(names)
    assert all(Path(p).is_relative_to(installed) for p in checked), checked


def test_the_site_from_the_collection_checks_every_layer_before_the_hosts(project: Project) -> None:
    # Every role's input checks (their filters and tests included) pass on the controller; the run stops
    # only where it must reach the (unreachable) hosts, as the repository's own site.yml does.
    done = project.site()
    output = done.stdout + done.stderr
    assert done.returncode == 4, output[-3000:]  # 4: a host was unreachable
    assert "Check what the settings ask of each host" in output
    assert "No filter named" not in output and "No test named" not in output
    counts = recap(output)
    assert counts["app1.example.com"]["unreachable"] == 1 and counts["app1.example.com"]["ok"] >= 30, counts
    assert all(count["changed"] == 0 for count in counts.values()), counts


def test_the_site_from_the_collection_refuses_a_bad_setting(project: Project) -> None:
    done = project.site("-e", json.dumps({"backup_password": ""}))
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]  # 2: a task failed
    assert "backup_password is empty" in output
    assert "UNREACHABLE" not in output  # refused on the controller, before any connection


def test_a_play_of_the_project_uses_the_collection_s_filter_and_test(project: Project) -> None:
    (project.path / "uses.yml").write_text(f"""---
- name: The collection's filter and test, by their full names
  hosts: localhost
  gather_facts: false
  vars:
    layers: [{{role: common, hosts: [berth]}}, {{role: nginx, hosts: [app]}}]
  tasks:
    - name: Use them
      ansible.builtin.assert:
        that:
          - (layers | {FQCN}.berth_layer_roles(['berth'])) == ['common']
          - "'10.0.0.0/24' is {FQCN}.berth_ip_network"
          - "'10.0.0.300/24' is not {FQCN}.berth_ip_network"
""")
    done = project.playbook("--check", "-i", "localhost,", "uses.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert recap(done.stdout)["localhost"] == {"ok": 1, "changed": 0, "unreachable": 0}


def test_every_module_of_the_collection_is_documented(project: Project) -> None:
    # ansible-doc reads each module's DOCUMENTATION as YAML (a ": " in its prose breaks it).
    modules = sorted(f"{FQCN}.{p.stem}" for p in (ROOT / "plugins" / "modules").glob("*.py"))
    assert len(modules) >= 4
    done = project.run(str(BIN / "ansible-doc"), "--json", *modules)
    assert done.returncode == 0, done.stdout + done.stderr
    docs = json.loads(done.stdout)
    assert sorted(docs) == modules
    assert all(docs[name]["doc"]["short_description"] for name in modules)


# --- The collection's metadata, kept in step with the repository ----------------------------------


def test_the_dependencies_are_the_collections_berth_uses_at_their_pinned_versions() -> None:
    pinned = {c["name"]: c["version"] for c in yaml.safe_load((ROOT / "collections" / "requirements.yml").read_text())
              ["collections"]}  # fmt: skip
    sources = [p for p in (ROOT / "roles").rglob("*") if p.suffix in {".yml", ".j2"} and "molecule" not in p.parts]
    sources += list((ROOT / "playbooks").rglob("*.yml"))
    used = {m for p in sources for m in re.findall(r"\b((?:community|ansible)\.[a-z0-9_]+)\.[a-z0-9_]+", p.read_text())}
    used -= {"ansible.builtin", "ansible.legacy"}
    assert used == set(GALAXY["dependencies"])
    for name, spec in GALAXY["dependencies"].items():
        low, high = re.fullmatch(r">=([\d.]+),<([\d.]+)", spec).groups()  # type: ignore[union-attr]
        version = tuple(map(int, pinned[name].split(".")))
        assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split("."))), name


def test_the_roles_modules_and_filters_are_the_collection_s_too() -> None:
    # A role of an installed collection gets no plugins from its own library/ or filter_plugins/: the
    # collection's plugins/modules and plugins/filter link to them (the repository's own runs use both).
    for kind, subdir in (("library", "modules"), ("filter_plugins", "filter")):
        files = {p.name: p.resolve() for p in (ROOT / "roles").glob(f"*/{kind}/*.py")}
        linked = {p.name: p.resolve() for p in (ROOT / "plugins" / subdir).iterdir() if p.is_symlink()}
        assert linked == files, kind
    for name in ("filter", "test"):
        assert (ROOT / "playbooks" / f"{name}_plugins").resolve() == (ROOT / "plugins" / name)


def test_the_version_is_set_once_and_has_its_changelog_section() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", GALAXY["version"])
    sections = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert sections and sections[0] == GALAXY["version"]
    for meta in (ROOT / "roles").glob("*/meta/main.yml"):
        assert yaml.safe_load(meta.read_text())["galaxy_info"]["license"] == GALAXY["license"][0], meta
    assert "MIT License" in (ROOT / "LICENSE").read_text()
