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
from pathlib import Path
from secrets import token_urlsafe

import images
from _lib import ROOT, VENV_BIN, log, output, run, venv_env

HOST = "berth-demo"
HTTPS_PORT, HTTP_PORT = 8443, 8080
PLATFORMS = {
    "molecule_yml": {
        "platforms": [
            {
                "name": HOST,
                "image": "berth-test:trixie",
                "groups": ["nested_docker"],
                # Reachable from this machine only (loopback), like a VPS's 443 and 80.
                "published_ports": [f"127.0.0.1:{HTTPS_PORT}:443", f"127.0.0.1:{HTTP_PORT}:80"],
            }
        ]
    }
}
DEMO = ROOT / ".cache" / "demo"
SECRETS = DEMO / "secrets.yml"


SECRET_NAMES = ("demo_shop_secret_key", "backup_password")


def secrets() -> Path:
    """The demo's stand-in for Ansible Vault: random passwords, made once (missing ones added), mode 0600."""
    DEMO.mkdir(parents=True, exist_ok=True)
    SECRETS.touch(mode=0o600)
    known = SECRETS.read_text()
    missing = [name for name in SECRET_NAMES if f"{name}:" not in known]
    if missing:
        SECRETS.write_text(known + "".join(f"{name}: {token_urlsafe(24)}\n" for name in missing))
    return SECRETS


def admin_key() -> None:
    """The demo admin's SSH key pair (inventories/local names it in hardening_admin_users)."""
    key = DEMO / "admin_ed25519"
    if not key.exists():
        DEMO.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "berth-demo-admin", "-f", str(key)])


def playbook(path: str, *extra: str) -> None:
    run([str(VENV_BIN / "ansible-playbook"), path, *extra], cwd=ROOT, env=venv_env())


def up() -> None:
    began = time.monotonic()
    run([sys.executable, str(ROOT / "scripts" / "setup.py"), "--engine"])
    run([sys.executable, str(ROOT / "scripts" / "images.py"), "trixie", "kit"])
    log(f"demo host {HOST}")
    playbook("molecule/shared/create.yml", "-e", json.dumps(PLATFORMS))
    # What a real VPS does not need: the inner engine's test drop-in, and a local ACME server.
    playbook("molecule/shared/inner-docker.yml", "-i", "inventories/local")
    playbook("molecule/shared/pebble.yml", "-i", "inventories/local")
    admin_key()
    extra = ["-e", f"@{secrets()}", "-e", json.dumps({"app_stack_image_archives": [str(images.kit_tarball())]})]
    log("site.yml")
    start = time.monotonic()
    playbook("site.yml", "-i", "inventories/local", *extra)
    log(f"site.yml took {time.monotonic() - start:.0f} s")
    # The first release of each app: records v1 (which the stack started) as its live release; changes
    # nothing later.
    for app in ("shop", "blog"):
        log(f"first release of {app}")
        release = ["-e", f"app={app}", "-e", "app_version=v1"]
        playbook("playbooks/deploy.yml", "-i", "inventories/local", *extra[:2], *release)
    log(f"demo up took {time.monotonic() - began:.0f} s in all")
    root = DEMO / "pebble-root.pem"
    root.write_text(output(["docker", "exec", HOST, "curl", "-sk", "https://127.0.0.1:15000/roots/0"]) + "\n")
    print(f"""
The demo host {HOST} is provisioned: nginx serves two apps over HTTPS with certificates from Pebble.
  the apps:           curl --cacert {root.relative_to(ROOT)} --resolve shop.localhost:{HTTPS_PORT}:127.0.0.1 \\
                        https://shop.localhost:{HTTPS_PORT}/version        (and blog.localhost)
  queue a job:        curl --cacert {root.relative_to(ROOT)} --resolve shop.localhost:{HTTPS_PORT}:127.0.0.1 \\
                        'https://shop.localhost:{HTTPS_PORT}/enqueue?id=1'  (the worker records it: /jobs)
  shell on it:        docker exec -it {HOST} bash
  SSH as the admin:   ssh -i .cache/demo/admin_ed25519 berth@$(docker inspect -f \\
                        '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' {HOST})
  run site.yml again: .venv/bin/ansible-playbook site.yml -i inventories/local {" ".join(extra[:2])} \\
                        -e '{extra[3]}'   (changes nothing)
  deploy v2 of shop:  .venv/bin/ansible-playbook playbooks/deploy.yml -i inventories/local {" ".join(extra[:2])} \\
                        -e app=shop -e app_version=v2
  roll it back:       .venv/bin/ansible-playbook playbooks/rollback.yml -i inventories/local {" ".join(extra[:2])} \\
                        -e app=shop
  shop's summary job: docker exec {HOST} systemctl start berth-job-shop-summary   (its log: journalctl -u …)
  back up now:        .venv/bin/ansible-playbook playbooks/backup-now.yml -i inventories/local {" ".join(extra[:2])}
  restore shop:       .venv/bin/ansible-playbook playbooks/restore.yml -i inventories/local {" ".join(extra[:2])} \\
                        -e app=shop -e backup_restore_confirm={HOST}
  tear it down:       scripts/demo.py down   (removes the host, its volumes and network)
  faster runs:        put ANSIBLE_STRATEGY=mitogen_linear before a command (Mitogen, docs/performance.md)
""")


def down() -> None:
    run([sys.executable, str(ROOT / "scripts" / "setup.py")])
    playbook("molecule/shared/destroy.yml", "-e", json.dumps(PLATFORMS))
    shutil.rmtree(ROOT / ".cache" / "facts", ignore_errors=True)
    shutil.rmtree(DEMO, ignore_errors=True)
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
