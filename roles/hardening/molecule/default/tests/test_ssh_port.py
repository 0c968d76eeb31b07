"""A run over SSH that moves sshd to another port keeps the play connected, and the old port closes.

Molecule's own runs use docker exec; here the controller runs ssh-port.yml the way a user runs berth
after first contact: ansible_connection=ssh to the container's address, as the admin with the admin's
key, the host key pinned. bookworm (on 2222 after converge) moves to 2223, fails to move to a port a
firewall in front of it refuses, and at the end moves back to 2222, the port the other tests expect.
The tests run in this order and depend on it; this file runs after the scenario's other tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra
from conftest import BOOKWORM, EPHEMERAL, PROJECT, SCENARIO, SSH_OPTS, SSH_PORT, get_host

testinfra_hosts = ["berth-hardening-probe"]
NEW_PORT = 2223
KNOWN_HOSTS = EPHEMERAL / "ssh-port-known_hosts"
# A port a firewall in front of the host refuses (the lockout guard must catch it).
BLOCKED_PORT = 2224
PROVIDER_FIREWALL = f"""table inet berth_test_provider {{
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        tcp dport {BLOCKED_PORT} reject with tcp reset
    }}
}}"""


@pytest.fixture(scope="module")
def target() -> testinfra.host.Host:
    return get_host(BOOKWORM)


def sshd_port(target: testinfra.host.Host) -> int:
    """The port in sshd's effective configuration on the host (read over docker exec)."""
    out = target.check_output("sshd -T -C user=root,host=localhost,addr=127.0.0.1")
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith("port ")))


def write_inventory(target: testinfra.host.Host, port: int) -> Path:
    """An inventory as a user has it: the host's address and SSH port, the admin and the admin's key."""
    address = target.check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'").split("/")[0]
    # The host key, pinned by name whatever the port (read over docker exec, not over the network).
    KNOWN_HOSTS.write_text(f"{BOOKWORM} {target.file('/etc/ssh/ssh_host_ed25519_key.pub').content_string}")
    host = {
        "ansible_connection": "ssh",
        "ansible_host": address,
        "ansible_port": port,
        "ansible_user": "alice",
        "ansible_ssh_private_key_file": str(EPHEMERAL / "admin_ed25519"),
        "ansible_ssh_common_args": (
            f"-o IdentitiesOnly=yes -o HostKeyAlias={BOOKWORM} -o UserKnownHostsFile={KNOWN_HOSTS}"
            " -o StrictHostKeyChecking=yes"
        ),
    }
    inventory = EPHEMERAL / "ssh-port-inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {BOOKWORM: host}}}, indent=2))
    return inventory


def run_playbook(target: testinfra.host.Host, port: int) -> subprocess.CompletedProcess[str]:
    """Run ssh-port.yml over SSH, from the port sshd listens on now, to move sshd to `port`."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(PROJECT / "collections"),
        ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
        # No fact cache: facts are gathered over SSH, never taken from Molecule's docker runs.
        ANSIBLE_CACHE_PLUGIN="memory",
        ANSIBLE_NOCOLOR="1",
    )
    # Molecule forces colours, which would win over ANSIBLE_NOCOLOR: the output is parsed.
    env.pop("ANSIBLE_FORCE_COLOR", None)
    inventory = write_inventory(target, sshd_port(target))
    playbook = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run(
        [
            str(playbook),
            "-i",
            str(inventory),
            str(SCENARIO / "ssh-port.yml"),
            "-e",
            json.dumps({"hardening_ssh_port": port}),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def run_over_ssh(target: testinfra.host.Host, port: int) -> tuple[str, dict[str, int]]:
    """A successful run of ssh-port.yml: (its output, the host's recap)."""
    result = run_playbook(target, port)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    recap = re.search(rf"^{BOOKWORM}\s+:\s+(.*)$", result.stdout, re.M)
    assert recap, output[-4000:]
    return output, {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", recap.group(1))}


def reported(output: str) -> list[str]:
    """The "berth-ssh-port: ..." lines the plays printed."""
    # The YAML callback may quote them and fold them over several lines.
    return [" ".join(line.split()) for line in re.findall(r"berth-ssh-port: [^'\"]*", output)]


def can_connect(probe: testinfra.host.Host, port: int) -> bool:
    """A TCP connection from the probe, another host on the network, to bookworm's port."""
    script = f"import socket; s = socket.socket(); s.settimeout(3); s.connect(('{BOOKWORM}', {port}))"
    return probe.run(f'python3 -c "{script}"').rc == 0


def test_moving_ssh_over_ssh_keeps_the_play_connected(target):
    assert sshd_port(target) == SSH_PORT[BOOKWORM]
    output, recap = run_over_ssh(target, NEW_PORT)
    assert recap["changed"] > 0 and recap["unreachable"] == 0 and recap["failed"] == 0, recap
    old = SSH_PORT[BOOKWORM]
    # Play 1 started on the old port, its tasks after the role ran on the new one and no connection to
    # the old port was left open; play 2 ran on the new port too.
    assert reported(output) == [
        (
            f"berth-ssh-port: play=1 start={old} after={NEW_PORT} ansible_port={NEW_PORT} open_on_start=0"
            f" sshd={NEW_PORT}"
        ),
        f"berth-ssh-port: play=2 port={NEW_PORT}",
    ], output[-4000:]


def test_second_run_on_the_new_port_changes_nothing(target):
    output, recap = run_over_ssh(target, NEW_PORT)
    assert recap["changed"] == 0 and recap["unreachable"] == 0 and recap["failed"] == 0, recap
    assert reported(output) == [
        (
            f"berth-ssh-port: play=1 start={NEW_PORT} after={NEW_PORT} ansible_port={NEW_PORT} open_on_start=-"
            f" sshd={NEW_PORT}"
        ),
        f"berth-ssh-port: play=2 port={NEW_PORT}",
    ], output[-4000:]


def test_old_port_is_closed_and_the_firewall_follows(host, target):
    old = SSH_PORT[BOOKWORM]
    # sshd listens on the new port only.
    assert target.socket(f"tcp://0.0.0.0:{NEW_PORT}").is_listening
    assert not target.socket(f"tcp://0.0.0.0:{old}").is_listening
    # The running firewall, its file and fail2ban's jail name the new port, never the old one.
    chain = target.check_output("nft list chain inet berth input")
    assert f"tcp dport {NEW_PORT} accept" in chain
    assert not re.search(rf"\b{old}\b", chain), chain
    conf = target.file("/etc/nftables.conf").content_string
    assert f"tcp dport {NEW_PORT} accept" in conf and not re.search(rf"\b{old}\b", conf)
    assert re.search(rf"^port = {NEW_PORT}$", target.file("/etc/fail2ban/jail.d/berth.local").content_string, re.M)
    # From another host: the old port does not answer, the new one does, and the admin gets in there.
    assert not can_connect(host, old)
    assert can_connect(host, NEW_PORT)
    login = host.run(f"ssh {SSH_OPTS} -i /root/admin_ed25519 -p {NEW_PORT} alice@{BOOKWORM} sudo -n id -u")
    assert login.rc == 0, login.stderr
    assert login.stdout.strip() == "0"


def test_a_port_the_admin_cannot_reach_is_rolled_back_and_stays_closed(host, target):
    """A firewall in front of the host refuses the new port: the lockout guard's login there fails, sshd
    goes back to its port, and berth's running firewall does not keep the new port open either."""
    port = sshd_port(target)
    # The provider's firewall, simulated on the host by a table of its own: a packet must pass every
    # base chain of its hook, whatever berth's table accepts.
    target.check_output(f"nft -f - <<'EOF'\n{PROVIDER_FIREWALL}\nEOF")
    try:
        result = run_playbook(target, BLOCKED_PORT)
    finally:
        target.check_output("nft delete table inet berth_test_provider")
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output[-4000:]
    assert f"LOCKOUT GUARD: after the sshd change the key login as alice on port {BLOCKED_PORT} failed" in output
    assert sshd_port(target) == port
    assert target.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not target.socket(f"tcp://0.0.0.0:{BLOCKED_PORT}").is_listening
    chain = target.check_output("nft list chain inet berth input")
    assert f"tcp dport {port} accept" in chain and not re.search(rf"\b{BLOCKED_PORT}\b", chain), chain
    assert not can_connect(host, BLOCKED_PORT)
    login = host.run(f"ssh {SSH_OPTS} -i /root/admin_ed25519 -p {port} alice@{BOOKWORM} sudo -n true")
    assert login.rc == 0, login.stderr


def test_moving_back_over_ssh_restores_the_converged_port(host, target):
    """Back to 2222 the same way (whatever port the tests above left): the port the other tests expect."""
    old = SSH_PORT[BOOKWORM]
    output, recap = run_over_ssh(target, old)
    assert recap["unreachable"] == 0 and recap["failed"] == 0, recap
    assert reported(output)[-1] == f"berth-ssh-port: play=2 port={old}", output[-4000:]
    assert sshd_port(target) == old
    assert target.socket(f"tcp://0.0.0.0:{old}").is_listening
    assert not target.socket(f"tcp://0.0.0.0:{NEW_PORT}").is_listening
    chain = target.check_output("nft list chain inet berth input")
    assert f"tcp dport {old} accept" in chain and not re.search(rf"\b{NEW_PORT}\b", chain), chain
    assert not can_connect(host, NEW_PORT)
    assert can_connect(host, old)
