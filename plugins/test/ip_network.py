"""Jinja test `berth_ip_network`: an IPv4 or IPv6 address or network in CIDR notation, no host names.

    nginx_rate_limit_exempt | reject('berth_ip_network') | list   # the entries that are not

Python's ipaddress module decides (host bits are allowed: 10.0.0.5/8 is the network 10.0.0.0/8).
The prefix must be a length: netmask forms (10.0.0.0/255.0.0.0) and IPv6 zones (fe80::1%eth0), which
ipaddress would take, are refused, since nftables and nginx would not read them.
"""

from __future__ import annotations

import ipaddress


def ip_network(value: object) -> bool:
    if not isinstance(value, str) or "%" in value:
        return False
    _, slash, prefix = value.partition("/")
    if slash and not (prefix.isascii() and prefix.isdigit()):
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


class TestModule:
    def tests(self) -> dict:
        return {"berth_ip_network": ip_network}
