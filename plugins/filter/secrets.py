"""Jinja filter `berth_secret_problems`: what is wrong with secrets, by name and rule, never by value.

    {{ {'backup_password': backup_password} | berth_secret_problems(min_length=20, min_unique=8) }}
    {{ backup_offsite_env | berth_secret_problems(prefix='backup_offsite_env.', forbidden="'") }}

It takes a mapping of names to values and returns one sentence per broken rule, naming the variable
and the rule ("backup_password is shorter than 20 characters"). An assert on its result can show its
message without `no_log`: neither the result nor the assertion holds a value, so a failed check
explains itself while the secret stays out of the output. Control characters (line breaks, tabs) are
always refused: every secret ends up on one line of a file; `forbidden` adds characters the file
format cannot hold (a single quote in a quoted environment file). Numbers and booleans are taken as
their text (an environment value may be 8080); a missing value (None) is reported as not set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _problems(name: str, value: Any, min_length: int, min_unique: int, forbidden: str) -> list[str]:
    if value is None:
        return [f"{name} is not set (give it a value, from Ansible Vault for a secret)"]
    if isinstance(value, (Mapping, list, tuple, set)):
        return [f"{name} must be a single value, not a {type(value).__name__}"]
    text = str(value)
    found = []
    if len(text) < min_length:
        found.append(f"{name} is {'empty' if not text else 'shorter than ' + str(min_length) + ' characters'}")
    elif len(set(text)) < min_unique:
        found.append(f"{name} uses fewer than {min_unique} different characters")
    if _CONTROL.search(text):
        found.append(f"{name} contains a control character (a line break or tab)")
    bad = sorted({c for c in text if c in forbidden})
    if bad:
        found.append(f"{name} contains {' or '.join(repr(c) for c in bad)}, which it may not")
    return found


def secret_problems(
    secrets: Mapping[str, Any], min_length: int = 0, min_unique: int = 0, forbidden: str = "", prefix: str = ""
) -> list[str]:
    """One message per broken rule, for every secret of `secrets` (name -> value); [] when all pass."""
    if not isinstance(secrets, Mapping):
        return [f"{prefix.rstrip('.') or 'the secrets'} must be a mapping of names to values"]
    found: list[str] = []
    for name, value in secrets.items():
        found += _problems(f"{prefix}{name}", value, int(min_length), int(min_unique), forbidden)
    return found


class FilterModule:
    def filters(self) -> dict:
        return {"berth_secret_problems": secret_problems}
