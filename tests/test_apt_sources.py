"""The hardening role's reader of APT sources (roles/hardening/library/hardening_apt_sources.py), run as Ansible
runs it, on temporary /etc/apt trees in the forms hosts have them.

On real hosts (a debootstrap-built one without the suite, the file it then gets) the hardening scenario tests it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

MODULE = ROOT / "roles" / "hardening" / "library" / "hardening_apt_sources.py"
PYTHON = ROOT / ".venv" / "bin" / "python"
BERTH = "sources.list.d/berth-security.sources"

# What debootstrap writes: the main suite only.
DEBOOTSTRAP = "deb http://deb.debian.org/debian trixie main\n"
# Debian 12/13 cloud images (deb822), with the security suite in its own stanza.
CLOUD_DEB822 = """\
Types: deb deb-src
URIs: mirror+file:///etc/apt/mirrors/debian.list
Suites: trixie trixie-updates trixie-backports
Components: main

Types: deb deb-src
URIs: mirror+file:///etc/apt/mirrors/debian-security.list
Suites: trixie-security
Components: main
"""
SECURITY_STANZA = CLOUD_DEB822.split("\n\n")[1]
# The installer's one-line sources.list, with comments and options.
INSTALLER_ONE_LINE = """\
#deb cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_ - Official amd64 NETINST]/ bookworm main

deb http://deb.debian.org/debian/ bookworm main non-free-firmware
deb-src http://deb.debian.org/debian/ bookworm main non-free-firmware

deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
http://security.debian.org/debian-security bookworm-security main non-free-firmware  # security
"""
UBUNTU_DEB822 = """\
## See the sources.list(5) manual page.
Types: deb
URIs: http://archive.ubuntu.com/ubuntu/
Suites: noble noble-updates noble-backports
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

Types: deb
URIs: http://security.ubuntu.com/ubuntu/
Suites: noble-security
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg
"""


def apt_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """An /etc/apt with these files (names relative to it)."""
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


def inspect(
    tmp_path: Path, files: dict[str, str], suite: str = "trixie", lists: tuple[str, ...] = (), **args: object
) -> tuple[dict, Path]:
    """Run the module as Ansible does (arguments in a file), on a tree of these files."""
    etc = apt_tree(tmp_path, files)
    lists_dir = tmp_path / "lists"
    lists_dir.mkdir()
    for name in lists:
        (lists_dir / name).write_text("")
    module_args = {
        "suite": f"{suite}-security",
        "main_suite": suite,
        "path": str(etc),
        "lists": str(lists_dir),
        "ignore": [str(etc / BERTH)],
        **args,
        "_ansible_check_mode": True,
    }
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))
    proc = subprocess.run([PYTHON, MODULE, args_file], capture_output=True, text=True, check=False)
    result = json.loads(proc.stdout)
    assert not result.get("failed"), result
    assert result["changed"] is False
    return result, etc


def test_a_debootstrap_host_lacks_the_suite(tmp_path: Path) -> None:
    result, _ = inspect(tmp_path, {"sources.list": DEBOOTSTRAP})
    assert result["found"] == [] and result["components"] == ["main"] and result["fetched"] is False


def test_a_cloud_images_deb822_sources_has_it_once(tmp_path: Path) -> None:
    result, etc = inspect(tmp_path, {"sources.list.d/debian.sources": CLOUD_DEB822})
    assert result["found"] == [str(etc / "sources.list.d/debian.sources")]


def test_a_one_line_sources_list_with_options_and_comments_has_it(tmp_path: Path) -> None:
    result, etc = inspect(tmp_path, {"sources.list": INSTALLER_ONE_LINE}, suite="bookworm")
    assert result["found"] == [str(etc / "sources.list")]
    # The security suite gets the main suite's components.
    assert result["components"] == ["main", "non-free-firmware"]


def test_both_forms_are_reported_in_apts_order(tmp_path: Path) -> None:
    files = {
        "sources.list": "deb http://deb.debian.org/debian-security trixie-security main\n",
        "sources.list.d/debian.sources": CLOUD_DEB822,
        "sources.list.d/a-mirror.list": "deb http://mirror.example/debian-security trixie-security main\n",
    }
    result, etc = inspect(tmp_path, files)
    order = ("sources.list", "sources.list.d/a-mirror.list", "sources.list.d/debian.sources")
    assert result["found"] == [str(etc / name) for name in order]


def test_berths_own_file_does_not_count(tmp_path: Path) -> None:
    berth = "Types: deb\nURIs: https://security.debian.org/debian-security\nSuites: trixie-security\nComponents: main\n"
    result, _ = inspect(tmp_path, {"sources.list": DEBOOTSTRAP, BERTH: berth})
    assert result["found"] == []


def test_ubuntu_deb822_has_it_with_its_components(tmp_path: Path) -> None:
    files = {"sources.list": "# Ubuntu sources have moved to /etc/apt/sources.list.d/ubuntu.sources\n"}
    result, etc = inspect(tmp_path, files | {"sources.list.d/ubuntu.sources": UBUNTU_DEB822}, suite="noble")
    assert result["found"] == [str(etc / "sources.list.d/ubuntu.sources")]
    assert result["components"] == ["main", "restricted", "universe", "multiverse"]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("sources.list", "# deb http://security.debian.org/debian-security trixie-security main\n"),
        ("sources.list", "deb-src http://security.debian.org/debian-security trixie-security main\n"),
        ("sources.list", "deb http://deb.debian.org/debian trixie main # trixie-security\n"),
        ("sources.list", "deb http://security.debian.org/debian-security bookworm-security main\n"),
        ("sources.list.d/debian.sources", CLOUD_DEB822.replace("Suites: trixie-security", "Suites: trixie-securityx")),
        ("sources.list.d/debian.sources", SECURITY_STANZA + "Enabled: no\n"),
        ("sources.list.d/debian.sources", SECURITY_STANZA.replace("Types: deb deb-src", "Types: deb-src")),
        ("sources.list.d/debian.sources", "#" + CLOUD_DEB822.replace("\n", "\n#")),
        # APT ignores these names: a backup, a disabled file, a name with a space.
        ("sources.list.d/security.list.save", "deb http://security.debian.org/debian-security trixie-security main\n"),
        ("sources.list.d/debian.sources.disabled", CLOUD_DEB822),
        ("sources.list.d/my security.list", "deb http://security.debian.org/debian-security trixie-security main\n"),
        # The format goes by the name: deb822 text in a .list file is no entry.
        ("sources.list.d/debian.list", CLOUD_DEB822),
    ],
    ids=[
        "commented",
        "deb-src only",
        "in a comment after an entry",
        "another release",
        "another suite",
        "stanza disabled",
        "deb822 deb-src only",
        "deb822 commented out",
        "backup file",
        "disabled file",
        "name with a space",
        "deb822 in a .list",
    ],
)
def test_what_apt_does_not_use_does_not_count(tmp_path: Path, name: str, text: str) -> None:
    result, _ = inspect(tmp_path, {"sources.list": DEBOOTSTRAP, name: text})
    assert result["found"] == []


def test_deb822_fields_are_case_insensitive_and_continuation_lines_are_read(tmp_path: Path) -> None:
    text = (
        "types: deb\nuris: https://security.debian.org/debian-security\n"
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mDMEZ...\n -----END PGP PUBLIC KEY BLOCK-----\n"
        "SUITES: trixie-security\nEnabled: yes\nComponents: main\n"
    )
    result, etc = inspect(tmp_path, {"sources.list.d/debian-security.sources": text})
    assert result["found"] == [str(etc / "sources.list.d/debian-security.sources")]


def test_components_default_when_no_source_names_the_main_suite(tmp_path: Path) -> None:
    result, _ = inspect(tmp_path, {}, suite="noble", default_components=["main", "restricted"])
    assert result["found"] == [] and result["components"] == ["main", "restricted"]


def test_a_fetched_index_of_the_suite_is_seen(tmp_path: Path) -> None:
    lists = ("security.debian.org_debian-security_dists_trixie-security_InRelease",)
    result, _ = inspect(tmp_path, {"sources.list": DEBOOTSTRAP}, lists=lists)
    assert result["fetched"] is True
    other = ("deb.debian.org_debian_dists_trixie_InRelease", "x_dists_bookworm-security_InRelease")
    result, _ = inspect(tmp_path / "other", {"sources.list": DEBOOTSTRAP}, lists=other)
    assert result["fetched"] is False
