"""Jinja filter `berth_operator`: who is running berth, for the records others read (the release lock's
holder.json, the audit log, notifications, the maintenance flag). The one place of its default.

    {{ berth_operator | default('') | berth_operator }}

The value given (the inventory's or -e berth_operator=...) wins; else the controller's environment:
BERTH_OPERATOR (CI sets it to the person or pipeline), then USER, then the login name of the process
(a shell without USER, cron, a container); else "unknown". Filters run on the
controller, so these are the controller's variables, never a host's.
"""

from __future__ import annotations

import getpass
import os
from typing import Any


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the process's user id
        return ""


def berth_operator(given: Any = "") -> str:
    for value in (given, os.environ.get("BERTH_OPERATOR"), os.environ.get("USER"), _login()):
        if value is not None and str(value).strip():
            return str(value).strip()
    return "unknown"


class FilterModule:
    def filters(self) -> dict:
        return {"berth_operator": berth_operator}
