#!/usr/bin/python3
"""Ansible module (runs on the host): bcrypt hashes for node_exporter's basic auth users."""

from __future__ import annotations

DOCUMENTATION = r"""
module: node_exporter_bcrypt
short_description: bcrypt hashes of node_exporter's basic auth passwords, stable across runs
description:
  - Returns a bcrypt hash for each user. A hash from the current web config is kept while it still
    matches the user's password, so a second run changes nothing; otherwise a new hash is made.
  - Needs the bcrypt Python module on the host (Debian package python3-bcrypt). Changes nothing on
    the host itself, so it also runs in check mode.
options:
  passwords:
    description: User name to password.
    type: dict
    required: true
  current:
    description: User name to the hash in the current web config.
    type: dict
    default: {}
  rounds:
    description: bcrypt cost factor of new hashes.
    type: int
    default: 12
"""

RETURN = r"""
hashes:
  description: User name to bcrypt hash.
  type: dict
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - after the documentation, as Ansible expects

try:
    import bcrypt
except ImportError:  # reported by main()
    bcrypt = None


def still_valid(password: str, hashed: object) -> bool:
    """Whether hashed is a bcrypt hash of password."""
    if not isinstance(hashed, str) or not hashed.startswith("$2"):
        return False
    try:
        return bcrypt.checkpw(password.encode(), hashed.encode())
    except ValueError:
        return False


def hash_passwords(passwords: dict[str, str], current: dict[str, object], rounds: int) -> dict[str, str]:
    """A hash per user: the current one while it matches, else a new one."""
    hashes = {}
    for name, password in passwords.items():
        old = current.get(name)
        if still_valid(password, old):
            hashes[name] = old
        else:
            hashes[name] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return hashes


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "passwords": {"type": "dict", "required": True, "no_log": True},
            # Not no_log: Ansible would mask these values in the result, i.e. in the kept hashes.
            "current": {"type": "dict", "default": {}},
            "rounds": {"type": "int", "default": 12},
        },
        supports_check_mode=True,
    )
    if bcrypt is None:
        module.fail_json(msg="the bcrypt Python module is missing on the host (Debian: apt install python3-bcrypt)")
    passwords = {str(name): str(password) for name, password in module.params["passwords"].items()}
    hashes = hash_passwords(passwords, module.params["current"] or {}, module.params["rounds"])
    module.exit_json(changed=False, hashes=hashes)


if __name__ == "__main__":
    main()
