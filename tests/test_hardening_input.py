"""hardening refuses bad input before it changes anything (its tasks/check_input.yml, run on the controller).

Each case starts from valid input and spoils one thing; the valid input itself must pass, so a check
that always fails cannot hide here.
"""

from __future__ import annotations

import pytest
from conftest import run_input_cases

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"
RULE = {"port": 9100, "sources": ["192.0.2.10", "10.0.0.0/8", "2001:db8::/32"], "comment": "Prometheus"}
GOOD = {"hardening_admin_users": [{"name": "alice", "keys": [KEY]}], "hardening_firewall_source_rules": [RULE]}


def rule(**change: object) -> dict:
    return {"hardening_firewall_source_rules": [RULE | change]}


SPOILT: dict[str, dict] = {
    "valid": {},
    "valid without source rules": {"hardening_firewall_source_rules": []},
    "valid udp rule with a host address in a network": rule(proto="udp", sources=["10.0.0.5/8"]),
    "admin without a key": {"hardening_admin_users": [{"name": "alice", "keys": []}]},
    "admin named root": {"hardening_admin_users": [{"name": "root", "keys": [KEY]}]},
    "upper-case admin name": {"hardening_admin_users": [{"name": "Alice", "keys": [KEY]}]},
    "ssh port out of range": {"hardening_ssh_port": 70000},
    "extra tcp port 0": {"hardening_firewall_allowed_tcp_ports_extra": [0]},
    "bad reboot time": {"hardening_unattended_upgrades_reboot_time": "4am"},
    "valid security archive URI": {"hardening_apt_security_uri": "mirror+file:///etc/apt/mirrors/debian-security.list"},
    "two security archive URIs": {"hardening_apt_security_uri": "http://a.example/debian-security http://b.example/ds"},
    "security archive without a scheme": {"hardening_apt_security_uri": "security.debian.org/debian-security"},
    "source rule port 0": rule(port=0),
    "valid source rule port range": rule(port="20000-27999"),
    "source rule reversed range": rule(port="27999-20000"),
    "source rule proto icmp": rule(proto="icmp"),
    "source rule without sources": rule(sources=[]),
    "host name as source": rule(sources=["monitoring.example.com"]),
    "netmask as prefix": rule(sources=["10.0.0.0/255.0.0.0"]),
    "prefix too long": rule(sources=["10.0.0.0/33"]),
    "IPv6 zone": rule(sources=["fe80::1%eth0"]),
    "quote in comment": rule(comment='say "hi"'),
    "comment too long": rule(comment="x" * 101),
    "backslash in comment": rule(comment="a\\b"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    outcomes, _ = run_input_cases("hardening", SPOILT, GOOD, tmp_path_factory.mktemp("hardening"))
    return outcomes


@pytest.mark.parametrize("case", [name for name in SPOILT if name.startswith("valid")])
def test_valid_input_passes(outcomes: dict[str, dict], case: str) -> None:
    assert outcomes[case] == {"failed": False, "msg": ""}


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("admin without a key", "would lock everybody out"),
        ("admin named root", "hardening_admin_users must not include root"),
        ("upper-case admin name", "must be a user name of lower-case letters"),
        ("ssh port out of range", "hardening_ssh_port must be a port number 1-65535, e.g. 22 or 2222; got 70000"),
        ("extra tcp port 0", "hardening_firewall_allowed_tcp_ports_extra must hold port numbers 1-65535"),
        ("bad reboot time", "hardening_unattended_upgrades_reboot_time must be a time HH:MM (24-hour clock)"),
        (
            "two security archive URIs",
            "one archive URI without spaces, e.g. http://security.debian.org/debian-security",
        ),
        ("security archive without a scheme", "hardening_apt_security_uri must be empty (the distribution's security"),
        ("source rule port 0", "Each port in hardening_firewall_source_rules must be a port number 1-65535"),
        ("source rule reversed range", "must be a port number 1-65535 or a range of them, e.g. port: 9100 or port:"),
        ("source rule proto icmp", "value of proto must be one of: tcp, udp"),
        (
            "source rule without sources",
            "needs at least one source, e.g. sources: [192.0.2.10]; got none for port 9100",
        ),
        (
            "host name as source",
            "(CIDR, no host names), e.g. 192.0.2.10, 10.0.0.0/8 or 2001:db8::/32; got monitoring.example.com",
        ),
        ("netmask as prefix", "got 10.0.0.0/255.0.0.0."),
        ("prefix too long", "got 10.0.0.0/33."),
        ("IPv6 zone", "got fe80::1%eth0."),
        ("quote in comment", "without quotes"),
        ("comment too long", "at most 100 characters"),
        ("backslash in comment", "without quotes, backslashes or line breaks"),
    ],
)
def test_bad_input_fails_with_a_clear_message(outcomes: dict[str, dict], case: str, says: str) -> None:
    assert outcomes[case]["failed"] is True
    assert says in outcomes[case]["msg"]
