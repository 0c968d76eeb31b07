"""Project-wide checks: collections pinned consistently, Molecule scenarios safe to run in parallel."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import setup as berth_setup
import test as berth_test
import yaml
from conftest import ROOT

SCENARIO_FILES = sorted([*ROOT.glob("roles/*/molecule/*/molecule.yml"), *ROOT.glob("molecule/*/molecule.yml")])


def requirements() -> dict[str, str]:
    data = yaml.safe_load((ROOT / "collections" / "requirements.yml").read_text())
    return {c["name"]: c["version"] for c in data["collections"]}


def test_setup_reads_every_collection() -> None:
    assert berth_setup.wanted_collections() == [name.replace(".", "/") for name in requirements()]


def test_collections_for_the_inventory_plugins_are_required() -> None:
    assert {"hetzner.hcloud", "community.digitalocean", "community.docker"} <= set(requirements())


@pytest.mark.parametrize("name", list(requirements()))
def test_installed_collection_matches_pinned_version(name: str) -> None:
    manifest = ROOT / "collections" / "ansible_collections" / name.replace(".", "/") / "MANIFEST.json"
    assert manifest.exists(), f"{name} is not installed: run scripts/setup.py"
    installed = json.loads(manifest.read_text())["collection_info"]["version"]
    assert installed == requirements()[name], "collections/requirements.yml and the bundle disagree"


def test_scenarios_are_found() -> None:
    labels = [s.label for s in berth_test.scenarios(None)]
    assert "common/default" in labels
    assert len(labels) == len(SCENARIO_FILES)
    assert berth_test.scenarios("no-such-scenario") == []


def platform_names(path: Path) -> list[str]:
    return [p["name"] for p in yaml.safe_load(path.read_text()).get("platforms", [])]


def test_platform_names_are_unique_across_scenarios() -> None:
    # Scenarios run in parallel on one Docker engine: a shared container name would collide.
    names = Counter(name for path in SCENARIO_FILES for name in platform_names(path))
    assert [n for n, count in names.items() if count > 1] == []
    assert all(name.startswith("berth-") for name in names)


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_scenarios_use_local_test_images(path: Path) -> None:
    for platform in yaml.safe_load(path.read_text())["platforms"]:
        assert platform["image"].startswith("berth-"), "only locally built images exist here (no registry)"
