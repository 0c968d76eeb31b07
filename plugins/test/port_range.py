"""Jinja test `berth_port`: a port number 1-65535, or a range of them written "first-last".

    hardening_firewall_source_rules | map(attribute='port') | reject('berth_port') | list   # the bad ones
"""

from __future__ import annotations

import re

PORTS = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$")


def port(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 1 <= value <= 65535
    match = PORTS.match(value) if isinstance(value, str) else None
    if not match:
        return False
    first, last = int(match[1]), int(match[2] or match[1])
    return 1 <= first <= last <= 65535 and (first < last or match[2] is None)


class TestModule:
    def tests(self) -> dict:
        return {"berth_port": port}
