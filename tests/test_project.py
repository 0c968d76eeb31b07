"""Project-wide checks: collections pinned consistently, Molecule scenarios safe to run in parallel, and the
project stands alone: it cites no document outside itself, and every relative link of its Markdown resolves."""

from __future__ import annotations

import json
import re
import subprocess
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


# --- The project stands alone (docs/design.md, docs/testing.md) ---------------------------------------


def project_files() -> list[Path]:
    """Tracked files and new ones not ignored (what the next commit can hold); symlinks and deleted files left out."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = {ROOT / name for name in listed.split("\0") if name}
    return sorted(p for p in paths if p.is_file() and not p.is_symlink())


def text_of(path: Path) -> str | None:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        return None


# Notes that lived outside the repository; what a contributor needs from them is in docs/.
OUTSIDE_NOTE = re.compile(r"test-hosts\.md")
# A bare design note (design, dot, md) other than the project's own docs/design.md.
BARE_DESIGN = re.compile(r"(?<![\w.-])(?<!docs/)design\.md")
# A relative path climbing into a directory named shared (the outside notes' directory).
UP_TO_SHARED = re.compile(r"(?<![\w.-])((?:\.\./)+shared(?:/[\w.*-]+)*/?)")


def outside_references(path: Path, text: str) -> list[str]:
    """What `text` (the content of `path`) cites outside the repository."""
    found = [m.group(0) for m in OUTSIDE_NOTE.finditer(text)]
    if path.parent != ROOT / "docs":
        found += [m.group(0) for m in BARE_DESIGN.finditer(text)]
    for match in UP_TO_SHARED.finditer(text):
        # molecule/site cites molecule/shared/ as ../shared/: fine while it stays inside and exists.
        target = (path.parent / match.group(1).replace("*", "")).resolve()
        if not target.is_relative_to(ROOT) or not target.exists():
            found.append(match.group(1))
    return found


def test_no_file_cites_documents_outside_the_project() -> None:
    offenders = {}
    # This file's own examples (below) are the patterns themselves.
    for path in (p for p in project_files() if p != Path(__file__).resolve()):
        text = text_of(path)
        if text is not None and (found := outside_references(path, text)):
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}, "cite docs/design.md or docs/testing.md instead"


# The outside notes' names, spelt in pieces so that this file does not cite them itself.
NOTE, DESIGN = "test-hosts" + ".md", "design" + ".md"


@pytest.mark.parametrize(
    ("where", "text", "found"),
    [
        (
            "molecule/shared/create.yml",
            f"# the recipe from ../shared/{NOTE}",
            [NOTE, f"../shared/{NOTE}"],
        ),
        ("roles/nginx/handlers/main.yml", f"# handlers are named so ({DESIGN})", [DESIGN]),
        ("roles/nginx/README.md", "see [the design](../../docs/design.md)", []),
        ("tests/test_roles.py", '"""Conventions (docs/design.md)."""', []),
        ("docs/testing.md", f"[design]({DESIGN})", []),
        ("molecule/site/molecule.yml", "create: ../shared/create.yml", []),
        ("molecule/site/molecule.yml", "create: ../shared/missing.yml", ["../shared/missing.yml"]),
        ("scripts/test.py", "# ../../shared/notes", ["../../shared/notes"]),
        ("README.md", "`molecule/shared/` holds create.yml", []),
    ],
)
def test_outside_references_are_recognised(where: str, text: str, found: list[str]) -> None:
    assert outside_references(ROOT / where, text) == found


def markdown_files() -> list[Path]:
    return [p for p in project_files() if p.suffix == ".md"]


FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)


def relative_links(text: str) -> list[str]:
    """The relative link targets of a Markdown text (code blocks and code spans are not links)."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = [m.group(1).strip("<>") for m in [*INLINE_LINK.finditer(text), *REFERENCE_LINK.finditer(text)]]
    return [t for t in targets if not re.match(r"^[a-zA-Z][\w+.-]*:|^#", t)]


def test_markdown_links_are_found() -> None:
    text = """See [ops](docs/operations.md#deploy), ![img](a/b.png "title") and [site](https://example.com).
[anchor](#x) `[not](a/link.md)` [mail](mailto:ops@example.com) [top](/README.md)
[ref]: ../other.md

```
[not a link](nowhere.md)
```
"""
    assert relative_links(text) == ["docs/operations.md#deploy", "a/b.png", "/README.md", "../other.md"]


def test_docs_and_readme_are_checked() -> None:
    names = {str(p.relative_to(ROOT)) for p in markdown_files()}
    assert {"README.md", "docs/design.md", "docs/testing.md"} <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path: Path) -> None:
    broken = []
    for target in relative_links(path.read_text()):
        # A link starting with / is relative to the repository's root (as GitHub reads it).
        base = ROOT if target.startswith("/") else path.parent
        resolved = (base / re.split(r"[#?]", target)[0].lstrip("/")).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert broken == [], f"{path.relative_to(ROOT)} links to missing or outside files"
