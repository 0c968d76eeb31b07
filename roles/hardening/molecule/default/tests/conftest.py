"""Shared helpers of the hardening scenario's tests (run by Molecule's testinfra verifier)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import testinfra

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO = Path(__file__).resolve().parent.parent
PROJECT = SCENARIO.parents[3]

TRIXIE = "berth-hardening-trixie"
BOOKWORM = "berth-hardening-bookworm"
PROBE = "berth-hardening-probe"
# The SSH port each target ends up with (converge.yml moves bookworm's).
SSH_PORT = {TRIXIE: 22, BOOKWORM: 2222}
# ssh-audit's built-in policy for each target's distribution.
POLICY = {TRIXIE: "Hardened Debian 13 (version 1)", BOOKWORM: "Hardened Debian 12 (version 3)"}
ADMIN_KEY = "/root/admin_ed25519"
STRANGER_KEY = "/root/stranger_ed25519"
SSH_OPTS = (
    "-o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
)


def get_host(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def probe() -> testinfra.host.Host:
    return get_host(PROBE)


def ssh(probe: testinfra.host.Host, target: str, user: str, command: str, key: str = ADMIN_KEY, source: str = ""):
    """Log in from the probe with a key (optionally from one of its extra source addresses)."""
    bind = f"-b {source}" if source else ""
    return probe.run(f"ssh {SSH_OPTS} {bind} -i {key} -p {SSH_PORT[target]} {user}@{target} {command}")


@pytest.fixture(scope="session")
def source_address() -> Callable[[testinfra.host.Host, int], str]:
    """An extra address of the probe, so that each attack has a source of its own (bans stay apart)."""

    def add(probe: testinfra.host.Host, offset: int) -> str:
        own = probe.check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'")
        network = ipaddress.ip_interface(own).network
        address = str(network.network_address + offset)
        if address not in probe.check_output("ip -4 -o addr show dev eth0"):
            probe.check_output(f"ip addr add {address}/{network.prefixlen} dev eth0")
        return address

    return add
