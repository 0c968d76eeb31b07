"""Jinja test `berth_listen_address`: IPv4:port or [IPv6]:port, port 1-65535, no host names.

    db_host_postgres_exporter_listen_address is berth_listen_address

What an exporter's --web.listen-address takes for one address: 127.0.0.1:9187, 0.0.0.0:9187, [::1]:9187,
[fd00::5]:9187. Python's ipaddress decides the address; no prefix, no IPv6 zone, no bare IPv6.
"""

from __future__ import annotations

import ipaddress
import re

_LISTEN = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<port6>[0-9]{1,5})|(?P<v4>[0-9.]+):(?P<port4>[0-9]{1,5})")


def listen_address(value: object) -> bool:
    if not isinstance(value, str):
        return False
    match = _LISTEN.fullmatch(value)
    if not match:
        return False
    port = int(match.group("port6") or match.group("port4"))
    if not 1 <= port <= 65535:
        return False
    try:
        if match.group("v6"):
            ipaddress.IPv6Address(match.group("v6"))
        else:
            ipaddress.IPv4Address(match.group("v4"))
    except ValueError:
        return False
    return True


class TestModule:
    def tests(self) -> dict:
        return {"berth_listen_address": listen_address}
