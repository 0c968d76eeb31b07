"""The docker role's choice of install source and its rendering of Docker's upstream apt source.

The upstream repository cannot be reached here, so this is what can be tested of that path: which
releases use it, and the deb822 source the role writes for them (rendered by Ansible itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

ANSIBLE = ROOT / ".venv" / "bin" / "ansible-playbook"


def render(
    tmp_path: Path, distribution: str, major: str, release: str, architecture: str, source: str = "auto"
) -> dict:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_CACHE_PLUGIN": "memory",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    extra = {
        "distribution": distribution,
        "major": major,
        "release": release,
        "architecture": architecture,
        "docker_install_source": source,
        "out": str(tmp_path / "result.json"),
        "ansible_python_interpreter": sys.executable,
    }
    cmd = [str(ANSIBLE), "-i", "localhost,", str(ROOT / "tests/playbooks/docker_upstream.yml"), "-e", json.dumps(extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((tmp_path / "result.json").read_text())


def test_debian_13_uses_debian_packages(tmp_path: Path) -> None:
    result = render(tmp_path, "Debian", "13", "trixie", "x86_64")
    assert result["source"] == "debian"
    assert "docker-compose" in result["packages"]


@pytest.mark.parametrize(
    ("distribution", "major", "release", "architecture", "uri", "arch"),
    [
        ("Debian", "12", "bookworm", "x86_64", "https://download.docker.com/linux/debian", "amd64"),
        ("Ubuntu", "24", "noble", "aarch64", "https://download.docker.com/linux/ubuntu", "arm64"),
    ],
)
def test_upstream_source_rendering(
    tmp_path: Path, distribution: str, major: str, release: str, architecture: str, uri: str, arch: str
) -> None:
    result = render(tmp_path, distribution, major, release, architecture)
    assert result["source"] == "upstream"
    assert "docker-compose-plugin" in result["packages"]
    lines = [line for line in result["sources"].splitlines() if line and not line.startswith("#")]
    assert lines == [
        "Types: deb",
        f"URIs: {uri}",
        f"Suites: {release}",
        "Components: stable",
        f"Architectures: {arch}",
        "Signed-By: /etc/apt/keyrings/docker.asc",
    ]


def test_upstream_can_be_forced_on_debian_13(tmp_path: Path) -> None:
    assert render(tmp_path, "Debian", "13", "trixie", "x86_64", source="upstream")["source"] == "upstream"
