#!/usr/bin/python3
"""Ansible module (runs on the host): switch live traffic by replacing the live colour file atomically.

The same effect as ansible.builtin.copy with content, in one round trip instead of five (copy stages
a file through a temporary directory), which keeps a rollback to a warm colour within seconds.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_switch
short_description: Write the live colour file that nginx reads per request, atomically
description:
  - Writes O(colour) and a newline to O(path) through a temporary file in the same directory and a
    rename, so nginx (njs, reading the file per request) sees either the old or the new colour, never
    a partial file. The file ends up owned by root, mode 0644.
  - Changes nothing when the file already says O(colour). Supports check mode and diff.
options:
  path:
    description: The live colour file. Its directory must exist.
    type: path
    required: true
  colour:
    description: The colour to send traffic to.
    type: str
    required: true
    choices: [blue, green]
"""

RETURN = r"""
previous:
  description: What the file said before (stripped), or an empty string when it did not exist.
  type: str
  returned: success
"""

import tempfile  # noqa: E402 - after the documentation, as Ansible expects
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "colour": {"type": "str", "required": True, "choices": ["blue", "green"]},
        },
        supports_check_mode=True,
    )
    path, content = Path(module.params["path"]), module.params["colour"] + "\n"
    stat = path.stat() if path.exists() else None
    before = path.read_text(encoding="utf-8") if stat else ""
    changed = before != content or stat is None or (stat.st_mode & 0o7777, stat.st_uid, stat.st_gid) != (0o644, 0, 0)
    diff = {"before": before, "after": content, "before_header": str(path), "after_header": str(path)}
    if changed and not module.check_mode:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".live-colour.", delete=False) as handle:
            temporary = Path(handle.name)
            handle.write(content)
        try:
            temporary.chmod(0o644)
            temporary.replace(path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            module.fail_json(msg=f"cannot write {path}: {error}")
    module.exit_json(changed=changed, previous=before.strip(), diff=diff)


if __name__ == "__main__":
    main()
