#!/usr/bin/python3
"""Ansible module (runs on the host): show an app's release lock, give it back, or release it.

release_host.py takes the lock (mkdir, holder.json); this module reads and removes it. Both read
holder.json the same way: a lock without one counts as held by an unknown deploy.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_lock
short_description: Show, give back or release an app's release lock
description:
  - C(show) reads the lock (O(lock_dir) and its C(holder.json)); changes nothing.
  - C(give_back) removes C(holder.json) and the directory, only when C(holder.json)'s C(run) is O(run)
    (the lock is this run's own); otherwise it leaves the lock alone and warns.
  - C(release) removes the lock whoever holds it (a hold, or a lock left by a killed deploy) and returns
    whose it was. In check mode it only says so.
  - The directory is removed with rmdir, so anything else somebody put in it stops the module.
options:
  lock_dir:
    description: The lock directory.
    type: path
    required: true
  action:
    description: What to do.
    type: str
    choices: [show, give_back, release]
    required: true
  run:
    description: This run's lock id (release_host's C(run)); required by C(give_back).
    type: str
"""

RETURN = r"""
held:
  description: Whether the lock was held (before this task).
  type: bool
  returned: always
holder:
  description:
    - The holder (C(who), C(why), C(kind), C(since), C(until), C(version), C(run)); C(kind) is C(unknown) for a
      lock without C(holder.json); an empty dict when the lock is free.
  type: dict
  returned: always
expired:
  description: Whether the holder is a hold whose C(until) has passed (the next deploy takes it over).
  type: bool
  returned: always
"""

import json  # noqa: E402 - after the documentation, as Ansible expects
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

HOLDER = "holder.json"
# What a lock without holder.json counts as (as release_host.py).
UNKNOWN = {"who": "unknown", "why": "", "kind": "unknown", "since": "", "until": "", "version": ""}


def read_holder(lock: Path) -> dict:
    try:
        holder = json.loads((lock / HOLDER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dict(UNKNOWN)
    return {**UNKNOWN, **holder} if isinstance(holder, dict) else dict(UNKNOWN)


def expired(holder: dict, now: datetime) -> bool:
    if holder.get("kind") != "hold" or not holder.get("until"):
        return False
    try:
        until = datetime.fromisoformat(str(holder["until"]))
    except ValueError:
        return False
    return (until if until.tzinfo else until.replace(tzinfo=UTC)) <= now


def remove_lock(lock: Path) -> None:
    (lock / HOLDER).unlink(missing_ok=True)
    lock.rmdir()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "lock_dir": {"type": "path", "required": True},
            "action": {"type": "str", "choices": ["show", "give_back", "release"], "required": True},
            "run": {"type": "str"},
        },
        required_if=[("action", "give_back", ("run",))],
        supports_check_mode=True,
    )
    lock, action = Path(module.params["lock_dir"]), module.params["action"]
    if not lock.is_dir():
        module.exit_json(changed=False, held=False, holder={}, expired=False)
    holder = read_holder(lock)
    result = {"held": True, "holder": holder, "expired": expired(holder, datetime.now(UTC))}
    if action == "show":
        module.exit_json(changed=False, **result)
    if action == "give_back" and holder.get("run") != module.params["run"]:
        # Somebody released this run's lock and another run took it: it is not ours to give back.
        module.warn(f"{lock} is no longer this run's lock (held by {holder['who']}, {holder['kind']}): left as it is")
        module.exit_json(changed=False, **result)
    if not module.check_mode:
        try:
            remove_lock(lock)
        except OSError as error:
            module.fail_json(msg=f"cannot remove the lock {lock}: {error}", **result)
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
