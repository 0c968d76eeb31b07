#!/usr/bin/env python3
"""site.yml with one bad setting at a time, on top of a filled example inventory: each must be refused
before any host changes, with its message (the cases: tests/fixtures/bad-settings.yml).

    bad_settings.py --inventory DIR --vault-password-file PW [--container NAME] [--report FILE] [-- -e …]

tests/test_preflight.py uses run() and problems() with every host unreachable: a case that checks the
settings alone must be refused without the host being contacted. molecule/site runs this file against a
fresh test host (--container: its Docker container) with --host-cases-only: the cases that read the host
(`host: true`; the others never reach it, as test_preflight.py shows), with the host's state read before
and after each (packages, users and groups, every file under /etc, running services, and any file
changed elsewhere), which must not differ. It prints one line per case and exits 1 if any
case was not refused as it should be.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "fixtures" / "bad-settings.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
LAYERS = ("base", "harden", "docker", "stack", "edge", "backup", "metrics", "monitoring")
_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s"
)

# The host's state, read in the test host (docker exec). Files that a login or a read-only Ansible run
# writes by itself are left out: logs (lastlog, wtmp, the journal), /run and /tmp, caches, systemd's
# own timestamps, and Ansible's remote temporary directory.
STATE_SCRIPT = r"""
set -e
echo "packages $(dpkg-query -W -f '${Package} ${Version}\n' | sha256sum | cut -c1-16)"
echo "users $(getent passwd | sha256sum | cut -c1-16) groups $(getent group | sha256sum | cut -c1-16)"
echo "etc $(find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum 2>/dev/null | sha256sum | cut -c1-16)"
echo "services $(systemctl list-units --type=service --state=running --no-legend --plain | awk '{print $1}' \
  | sort | sha256sum | cut -c1-16)"
if [ -e /run/berth-state-mark ]; then
  find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/tmp \
    -o -path /var/log -o -path /var/cache -o -path /var/lib/systemd -o -path /root/.ansible \) -prune \
    -o -newer /run/berth-state-mark -print | sed 's/^/changed /'
fi
touch /run/berth-state-mark
"""


@dataclass(frozen=True)
class Case:
    layer: str
    vars: dict[str, Any]
    says: str
    host: bool = False

    @property
    def name(self) -> str:
        return f"{self.layer}: {json.dumps(self.vars)}"


@dataclass
class Outcome:
    case: Case
    returncode: int
    seconds: float
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP's counts per host."""
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable")}
            for m in map(_RECAP.match, self.output.splitlines())
            if m
        }


def load_cases() -> list[Case]:
    return [Case(**item) for item in yaml.safe_load(CASES.read_text())]


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        # Facts of this run only: the project's fact cache may hold a real host's of the same name (the
        # whole-site scenario's app1.example.com), with which the run would get further than a first one.
        ANSIBLE_CACHE_PLUGIN="memory",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PATH=f"{ANSIBLE_PLAYBOOK.parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def run(
    case: Case, inventory: Path, vault_password_file: Path, extra: list[str], playbook: str = "site.yml"
) -> Outcome:
    """Run the playbook with the case's settings on top; time it from the command's start."""
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), playbook, "--vault-password-file", str(vault_password_file)]
    argv += [*extra, "-e", json.dumps(case.vars)]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=ansible_env(), capture_output=True, text=True, check=False)
    return Outcome(case, proc.returncode, time.monotonic() - start, proc.stdout + proc.stderr)


def problems(outcome: Outcome) -> list[str]:
    """What is wrong with how the case was refused ([] when it was refused as it should be)."""
    found = []
    if outcome.returncode != 2:
        found.append(f"exit code {outcome.returncode}, not 2 (a task failed)")
    if outcome.case.says not in outcome.output:
        found.append(f"the output does not say {outcome.case.says!r}")
    changed = {host: counts["changed"] for host, counts in outcome.recap().items() if counts["changed"]}
    if changed or not outcome.recap():
        found.append(f"changed on {changed}" if changed else "no PLAY RECAP")
    contacted = "Gathering Facts" in outcome.output or "UNREACHABLE" in outcome.output
    if not outcome.case.host and contacted:
        found.append("the host was contacted for a check of the settings alone")
    return found


def host_state(container: str) -> dict[str, str]:
    """The state of the test host, and the files changed since the last reading."""
    proc = subprocess.run(
        ["docker", "exec", container, "sh", "-c", STATE_SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    state: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        state[key] = f"{state[key]} {value}" if key in state else value
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", type=Path, required=True)
    parser.add_argument("--vault-password-file", type=Path, required=True)
    parser.add_argument("--container", help="the test host's container: compare its state before and after")
    parser.add_argument("--report", type=Path, help="write every case's outcome here (JSON)")
    parser.add_argument("--host-cases-only", action="store_true", help="only the cases that read the host")
    parser.add_argument("extra", nargs="*", help="more ansible-playbook arguments (after --)")
    args = parser.parse_args()

    report, failures = [], 0
    before = host_state(args.container) if args.container else {}
    for case in [c for c in load_cases() if c.host or not args.host_cases_only]:
        outcome = run(case, args.inventory, args.vault_password_file, args.extra)
        found = problems(outcome)
        after = host_state(args.container) if args.container else {}
        differs = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if differs:
            found.append(f"the host's state changed: {differs} ({after.get('changed', '')})")
        failures += bool(found)
        before = {k: v for k, v in after.items() if k != "changed"}
        verdict = "ok  " if not found else "FAIL"
        print(f"{verdict} {outcome.seconds:5.1f} s  {case.name}  {'; '.join(found)}", flush=True)
        if found:
            print("\n".join(f"    {line}" for line in outcome.output.splitlines()[-40:]), flush=True)
        report.append({**asdict(case), "seconds": round(outcome.seconds, 2), "returncode": outcome.returncode,
                       "state": "unchanged" if args.container and not differs else "not read" if not args.container
                       else "changed", "problems": found})  # fmt: skip
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))
    print(f"bad settings: {len(report) - failures} refused before any change, {failures} not", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
