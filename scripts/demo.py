#!/usr/bin/env python3
"""The local demo: a disposable Debian 13 "VPS" (a systemd container) that site.yml provisions.

    scripts/demo.py up       # set up, start the demo host, run site.yml against it (re-runnable)
    scripts/demo.py down     # remove the demo host, its volumes and network
    scripts/demo.py status   # is it running?

The host is created by the same playbook that makes Molecule's test hosts (molecule/shared/create.yml)
and reached with docker exec through inventories/local.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from _lib import ROOT, VENV_BIN, log, output, run, venv_env

HOST = "berth-demo"
PLATFORMS = {
    "molecule_yml": {
        "platforms": [
            {"name": HOST, "image": "berth-test:trixie", "groups": ["nested_docker"]},
        ]
    }
}


def playbook(path: str, *extra: str) -> None:
    run([str(VENV_BIN / "ansible-playbook"), path, *extra], cwd=ROOT, env=venv_env())


def up() -> None:
    run([sys.executable, str(ROOT / "scripts" / "setup.py"), "--engine"])
    run([sys.executable, str(ROOT / "scripts" / "images.py"), "trixie"])
    log(f"demo host {HOST}")
    playbook("molecule/shared/create.yml", "-e", json.dumps(PLATFORMS))
    log("site.yml")
    start = time.monotonic()
    playbook("site.yml", "-i", "inventories/local")
    log(f"site.yml took {time.monotonic() - start:.0f} s")
    print(f"""
The demo host {HOST} is provisioned.
  shell on it:        docker exec -it {HOST} bash
  run site.yml again: .venv/bin/ansible-playbook site.yml -i inventories/local   (changes nothing)
  tear it down:       scripts/demo.py down
""")


def down() -> None:
    run([sys.executable, str(ROOT / "scripts" / "setup.py")])
    playbook("molecule/shared/destroy.yml", "-e", json.dumps(PLATFORMS))
    shutil.rmtree(ROOT / ".cache" / "facts", ignore_errors=True)
    log("demo host removed")


def status() -> None:
    state = output(["docker", "inspect", "-f", "{{.State.Status}}", HOST]) or "absent"
    print(f"{HOST}: {state}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status"])
    action = parser.parse_args().action
    {"up": up, "down": down, "status": status}[action]()


if __name__ == "__main__":
    main()
