"""What the probe, another host on the network, observes: a user with the admin key and an attacker.

The attacks come from extra addresses of the probe (one per attack), so that a ban or a rate limit
hits only the attack that caused it."""

from __future__ import annotations

import re
import time

import pytest
from conftest import BOOKWORM, POLICY, SSH_PORT, STRANGER_KEY, TRIXIE, get_host, ssh

testinfra_hosts = ["berth-hardening-probe"]
TARGETS = [TRIXIE, BOOKWORM]
# What must be open from outside: SSH, and on trixie the container published on the allowed port 8443.
OPEN = {TRIXIE: {22, 8443}, BOOKWORM: {2222}}


# The well-known ports, this scenario's ports, and the usual suspects of a Docker host
# (Docker's API, databases, caches, app and metrics ports).
PORTS = "1-1024,2222,2375,2376,3000,3306,5000,5432,6379,8000,8080,8443,9000,9090,9100,27017"


def scan(probe, targets: list[str], ports: str = PORTS) -> dict[str, dict[int, str]]:
    """TCP connect scan: {target: {port: state}} for the ports that answered (not filtered)."""
    out = probe.check_output(f"nmap -Pn -sT -n -T4 --max-retries 1 -p {ports} -oG - " + " ".join(targets))
    found: dict[str, dict[int, str]] = {}
    for target, line in zip(targets, [line for line in out.splitlines() if "Ports:" in line], strict=True):
        found[target] = {int(port): state for port, state in re.findall(r"(\d+)/(\w+)/tcp", line)}
    return found


@pytest.fixture(scope="module")
def first_scan(probe):
    return scan(probe, TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_only_allowed_ports_are_open(first_scan, target):
    ports = first_scan[target]
    assert {port for port, state in ports.items() if state == "open"} == OPEN[target]
    # 80 and 443 pass the firewall (nothing listens yet, so the host answers "closed", not silence).
    assert ports.get(80) == "closed" and ports.get(443) == "closed"


@pytest.mark.parametrize("target", TARGETS)
def test_a_listening_service_on_a_forbidden_port_is_unreachable(first_scan, target):
    # prepare.yml runs a web server on 9000 on every target; bookworm's old SSH port 22 is closed too.
    assert 9000 not in first_scan[target]
    if target == BOOKWORM:
        assert 22 not in first_scan[target]


def test_docker_published_port_cannot_bypass_the_firewall(first_scan):
    # Docker publishes containers on 8443 (allowed) and 8080 (not allowed) on trixie.
    assert first_scan[TRIXIE].get(8443) == "open"
    assert 8080 not in first_scan[TRIXIE]
    assert get_host(TRIXIE).socket("tcp://0.0.0.0:8080").is_listening


@pytest.mark.parametrize("target", TARGETS)
def test_admin_logs_in_with_key_and_uses_sudo(probe, target):
    result = ssh(probe, target, "alice", "sudo -n id -u")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "0"


@pytest.mark.parametrize("target", TARGETS)
def test_root_login_refused_even_with_a_key(probe, source_address, target):
    # prepare.yml gave root the admin key, as a provider's image does.
    result = ssh(probe, target, "root", "true", source=source_address(probe, 250))
    assert result.rc == 255
    assert "Permission denied (publickey)" in result.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_password_logins_refused(probe, source_address, target):
    host = get_host(target)
    host.check_output("echo 'alice:Correct-Horse-9' | chpasswd && echo 'root:Correct-Horse-9' | chpasswd")
    source = source_address(probe, 250)
    for user in ("alice", "root"):
        result = probe.run(
            f"sshpass -p Correct-Horse-9 ssh -b {source} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
            " -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive"
            f" -o ConnectTimeout=5 -p {SSH_PORT[target]} {user}@{target} true"
        )
        assert result.rc == 255, (user, result.stderr)
        assert "Permission denied (publickey)" in result.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_user_outside_allowed_groups_refused(probe, source_address, target):
    host = get_host(target)
    host.check_output("id bob || useradd -m bob")
    host.check_output("install -d -o bob -m 700 /home/bob/.ssh && cp /home/alice/.ssh/authorized_keys /home/bob/.ssh/")
    host.check_output("chown bob /home/bob/.ssh/authorized_keys")
    result = ssh(probe, target, "bob", "true", source=source_address(probe, 250))
    assert result.rc == 255
    assert "Permission denied (publickey)" in result.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_ssh_audit_policy_for_the_distribution_passes(probe, target):
    result = probe.run(
        f"cd /opt/ssh-audit && python3 -m ssh_audit -n -p {SSH_PORT[target]} -P '{POLICY[target]}' {target}"
    )
    assert result.rc == 0, result.stdout
    assert "Result: ✔ Passed" in result.stdout


def can_connect(probe, source: str, target: str) -> bool:
    """A TCP connection to the target's SSH port from one of the probe's addresses."""
    script = (
        f"import socket; s = socket.socket(); s.bind(('{source}', 0)); s.settimeout(3);"
        f" s.connect(('{target}', {SSH_PORT[target]}))"
    )
    return probe.run(f'python3 -c "{script}"').rc == 0


def test_repeated_failures_get_banned_then_unbanned(probe, source_address):
    """Failed logins from one address: fail2ban bans it (on both targets at once), then lets it back."""
    source = source_address(probe, 251)
    own = source_address(probe, 254)
    waiting = set(TARGETS)
    for _ in range(8):
        for target in sorted(waiting):
            ssh(probe, target, "mallory", "true", key=STRANGER_KEY, source=source)
        time.sleep(1)
        waiting = {target for target in waiting if can_connect(probe, source, target)}
        if not waiting:
            break
    assert not waiting, f"no ban after 8 failed logins on {waiting}"
    for target in TARGETS:
        assert source in get_host(target).check_output("fail2ban-client status sshd")
        # The ban is per address: another address still gets in.
        assert can_connect(probe, own, target)
    # bantime is 15 s in this scenario: the address must get in again.
    deadline = time.monotonic() + 60
    banned = set(TARGETS)
    while banned:
        assert time.monotonic() < deadline, f"still banned 60 s later on {banned}"
        time.sleep(2)
        banned = {target for target in banned if not can_connect(probe, source, target)}
    for target in TARGETS:
        assert source not in get_host(target).check_output("fail2ban-client status sshd")


def test_firewall_and_docker_rules_survive_a_docker_restart(probe):
    host = get_host(TRIXIE)
    # A firewall reload (as a config change does) must not wipe Docker's rules ...
    host.check_output("systemctl reload nftables")
    assert "8080" in host.check_output("nft list chain ip nat DOCKER")
    # ... and an engine restart must not wipe the firewall.
    host.check_output("systemctl restart docker")
    # Both containers are "restart always": wait until Docker has published them again.
    deadline = time.monotonic() + 60
    while "8080" not in host.check_output("nft list chain ip nat DOCKER 2>/dev/null || true"):
        assert time.monotonic() < deadline
        time.sleep(1)
    assert "table inet berth" in host.check_output("nft list tables")
    after = scan(probe, [TRIXIE], "22,80,443,8080,8443,9000")[TRIXIE]
    assert {port for port, state in after.items() if state == "open"} == OPEN[TRIXIE]


RATE_SCRIPT = """
import socket, sys, threading
source, targets = sys.argv[1], sys.argv[2:]
counts = {}
def burst(target):
    host, port = target.split(":")
    counts[target] = 0
    for _ in range(45):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(0.3)
        try:
            s.connect((host, int(port)))
            counts[target] += 1
        except OSError:
            pass
        s.close()
threads = [threading.Thread(target=burst, args=(t,)) for t in targets]
[t.start() for t in threads]
[t.join() for t in threads]
print(" ".join(str(counts[t]) for t in targets))
"""


def test_new_ssh_connections_are_rate_limited(probe, source_address):
    """45 new connections in a burst from one address: the first ones connect, the rest are dropped."""
    source = source_address(probe, 252)
    probe.check_output(f"cat > /root/burst.py <<'EOF'{RATE_SCRIPT}EOF")
    targets = " ".join(f"{target}:{SSH_PORT[target]}" for target in TARGETS)
    counts = [int(n) for n in probe.check_output(f"python3 /root/burst.py {source} {targets}").split()]
    # burst 20 plus the 30/minute rate over the few seconds of the burst
    for target, connected in zip(TARGETS, counts, strict=True):
        assert 15 <= connected <= 30, (target, connected)
