#!/usr/bin/env python3
"""The commands of docs/first-hour.md, run as written against the filled copy of inventories/production.

    run_example.py --inventory DIR --vault-password-file PW --logs DIR [--check]

The first call is the first contact: site.yml logs in as root, as on a fresh cloud server, then the
first release is recorded; once that succeeded, every later call runs site.yml as the admin (root can
no longer log in) and the same release command again. --check runs them with --check --diff (check
mode on the converged host). Each playbook's whole output goes to DIR/<step>-<n>.log. The last line
printed is a JSON summary: {"changed": …, "failed": …, "unreachable": …, "steps": […]}. Exit 1 when a
run failed, or when a run in check mode would change something.

The commands differ from the document's only where a test must: the inventory's path, the vault
password from a file instead of a prompt, and the version of the demo app (tests/test_docs.py checks
that docs/first-hour.md shows each command with its document values).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# step: the command after ".venv/bin/", with {placeholders}
COMMANDS = {
    "first-run": "ansible-playbook -i {inventory} site.yml -e berth_ssh_user=root {vault}",
    "later-run": "ansible-playbook -i {inventory} site.yml {vault}",
    # The first release of each app of the example (shop, blog).
    "release": "ansible-playbook -i {inventory} playbooks/deploy.yml -e app=shop -e app_version={version} {vault}",
    "release-blog": "ansible-playbook -i {inventory} playbooks/deploy.yml -e app=blog -e app_version={version} {vault}",
}
# The values docs/first-hour.md shows.
DOC_VALUES = {"inventory": "inventories/mysite", "vault": "--ask-vault-pass", "version": "1.0.0"}
_RECAP = re.compile(r"^\S+\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")
_TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]")


def changed_tasks(text: str) -> list[str]:
    """The names of the tasks (and handlers) that reported "changed" in a playbook's output."""
    found, task = [], ""
    for line in text.splitlines():
        if header := _TASK.match(line):
            task = header.group(1)
        elif line.startswith("changed: [") and task not in found:
            found.append(task)
    return found


def doc_command(step: str) -> str:
    """The command as docs/first-hour.md shows it."""
    return ".venv/bin/" + COMMANDS[step].format(**DOC_VALUES)


def run_step(step: str, values: dict[str, str], logs: Path, check: bool) -> dict[str, int | str | float]:
    argv = shlex.split(COMMANDS[step].format(**values))
    argv[0] = str(Path(sys.executable).parent / argv[0])
    if check:
        argv += ["--check", "--diff"]
    logs.mkdir(parents=True, exist_ok=True)
    number = len(list(logs.glob(f"{step}-*.log"))) + 1
    log = logs / f"{step}-{number}.log"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", NO_COLOR="1")
    start = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.monotonic() - start
    text = log.read_text()
    counts = [tuple(map(int, m.groups())) for m in map(_RECAP.match, text.splitlines()) if m]
    result = {
        "step": step + (" (check)" if check else ""),
        "log": str(log),
        "exit": code,
        "seconds": round(seconds, 1),
        "changed": sum(c[0] for c in counts),
        "unreachable": sum(c[1] for c in counts),
        "failed": sum(c[2] for c in counts) + (code != 0 and not counts),
        # named in the summary so that an unexpected change in check mode can be traced after Molecule
        # has removed the logs
        "changed_tasks": changed_tasks(text) if check else [],
    }
    print(json.dumps(result), flush=True)
    if code != 0:
        print(text[-6000:], flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", type=Path, required=True)
    parser.add_argument("--vault-password-file", type=Path, required=True)
    parser.add_argument("--logs", type=Path, required=True)
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args()

    marker = args.logs / "first-contact-done"
    first = not marker.exists()
    values = {"inventory": str(args.inventory), "vault": f"--vault-password-file {args.vault_password_file}",
              "version": "v1"}  # fmt: skip
    steps = ["first-run" if first and not args.check else "later-run", "release", "release-blog"]
    results = []
    for step in steps:
        results.append(run_step(step, values, args.logs, args.check))
        if results[-1]["exit"] != 0:
            break
    ok = all(r["exit"] == 0 for r in results) and len(results) == len(steps)
    if ok and first and not args.check:
        marker.write_text("root logins are off: later runs log in as the admin\n")
    summary = {key: sum(int(r[key]) for r in results) for key in ("changed", "failed", "unreachable")}
    print(json.dumps(summary | {"steps": results}), flush=True)
    sys.exit(0 if ok and not (args.check and summary["changed"]) else 1)


if __name__ == "__main__":
    main()
