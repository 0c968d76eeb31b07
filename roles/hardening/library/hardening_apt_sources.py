#!/usr/bin/python3
"""Ansible module (runs on the host, read-only): is a suite in the host's APT sources, in either format?

The hardening role adds the distribution's security suite only where no source has it yet (a cloud
image's debian.sources or sources.list usually has it; a debootstrap-built host does not).
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: hardening_apt_sources
short_description: Find a suite in the host's APT sources (one-line and deb822), read-only
description:
  - Reads V(sources.list) and the V(*.list) and V(*.sources) files of V(sources.list.d) under O(path),
    as APT does (file names of letters, digits, C(_), C(-) and C(.) only; comments, stanzas marked
    C(Enabled=no) and V(deb-src) entries do not count), and reports the files with an enabled V(deb)
    entry for O(suite).
  - Files in O(ignore) are not read (the file the role writes itself).
  - Also reports the components to use for O(suite), those of the enabled V(deb) entries for
    O(main_suite), or O(default_components) when there is none.
  - Changes nothing; supports check mode.
options:
  suite:
    description: The suite to look for, e.g. V(trixie-security).
    type: str
    required: true
  main_suite:
    description: The distribution's own suite whose components the result repeats, e.g. V(trixie).
    type: str
    required: true
  default_components:
    description: Components when no source has O(main_suite).
    type: list
    elements: str
    default: [main]
  ignore:
    description: Files not to read.
    type: list
    elements: path
    default: []
  path:
    description: APT's configuration directory.
    type: path
    default: /etc/apt
  lists:
    description: APT's directory of downloaded indexes.
    type: path
    default: /var/lib/apt/lists
"""

RETURN = r"""
found:
  description: Files with an enabled deb entry for O(suite), in the order APT reads them.
  type: list
  elements: str
  returned: success
components:
  description: Components for O(suite) (see the description).
  type: list
  elements: str
  returned: success
fetched:
  description: Whether O(lists) holds the Release or InRelease file of some source's O(suite).
  type: bool
  returned: success
"""

import re  # noqa: E402 - after the documentation, as Ansible expects
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# sources.list(5): "The file names may only contain letters (a-z and A-Z), digits (0-9), underscore
# (_), hyphen (-) and period (.) characters"; others are ignored.
VALID_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.(list|sources)$")
# deb [ option=value ... ] uri suite [component ...]
ONE_LINE = re.compile(r"^(?P<type>deb|deb-src)\s+(?:\[[^\]]*\]\s*)?(?P<uri>\S+)\s+(?P<suite>\S+)(?P<components>.*)$")
FALSE = {"no", "false", "without", "off", "disable", "0"}

Entry = tuple[list[str], list[str], list[str]]  # types, suites, components


def one_line_entries(text: str) -> list[Entry]:
    """The entries of a one-line style file (sources.list, *.list): apt drops everything after a #."""
    entries = []
    for line in text.splitlines():
        match = ONE_LINE.match(line.split("#", 1)[0].strip())
        if match:
            entries.append(([match["type"]], [match["suite"]], match["components"].split()))
    return entries


def deb822_stanzas(text: str) -> list[dict[str, str]]:
    """The stanzas of a deb822 file as {lower-case field: value}; continuation lines are joined."""
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    field = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                stanzas.append(fields)
            fields, field = {}, ""
        elif line[0] in " \t" and field:
            fields[field] += "\n" + line.strip()
        elif ":" in line:
            field, value = (part.strip() for part in line.split(":", 1))
            field = field.lower()
            fields[field] = value
    return stanzas


def deb822_entries(text: str) -> list[Entry]:
    """The enabled entries of a deb822 style file (*.sources)."""
    return [
        (stanza.get("types", "").split(), stanza.get("suites", "").split(), stanza.get("components", "").split())
        for stanza in deb822_stanzas(text)
        if stanza.get("enabled", "yes").lower() not in FALSE
    ]


def source_files(path: Path, ignore: list[str]) -> list[Path]:
    """The files APT reads, in its order: sources.list, then sources.list.d/ by name."""
    parts = path / "sources.list.d"
    files = [path / "sources.list", *sorted(parts.iterdir() if parts.is_dir() else [])]
    skip = {str(Path(name)) for name in ignore}
    return [f for f in files if f.is_file() and str(f) not in skip and (f.parent == path or VALID_NAME.match(f.name))]


def entries(file: Path) -> list[Entry]:
    text = file.read_text(encoding="utf-8", errors="replace")
    return deb822_entries(text) if file.suffix == ".sources" else one_line_entries(text)


def inspect(path: Path, lists: Path, suite: str, main_suite: str, default: list[str], ignore: list[str]) -> dict:
    found: list[str] = []
    components: list[str] = []
    for file in source_files(path, ignore):
        for types, suites, parts in entries(file):
            if "deb" not in types:
                continue
            if suite in suites and str(file) not in found:
                found.append(str(file))
            if main_suite in suites:
                components += [part for part in parts if part not in components]
    pattern = f"*_dists_{suite}_*Release"
    fetched = lists.is_dir() and any(lists.glob(pattern))
    return {"found": found, "components": components or default, "fetched": fetched}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "suite": {"type": "str", "required": True},
            "main_suite": {"type": "str", "required": True},
            "default_components": {"type": "list", "elements": "str", "default": ["main"]},
            "ignore": {"type": "list", "elements": "path", "default": []},
            "path": {"type": "path", "default": "/etc/apt"},
            "lists": {"type": "path", "default": "/var/lib/apt/lists"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = inspect(
            Path(p["path"]), Path(p["lists"]), p["suite"], p["main_suite"], p["default_components"], p["ignore"]
        )
    except OSError as error:
        module.fail_json(msg=f"cannot read the APT sources under {p['path']}: {error}")
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
