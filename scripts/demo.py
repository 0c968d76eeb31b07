#!/usr/bin/env python3
"""The local demo: a disposable Debian 13 "VPS" (a systemd container) that site.yml provisions.

    scripts/demo.py up                # set up, start the demo host, run site.yml against it (re-runnable)
    scripts/demo.py up --monitoring   # the same, plus a monitoring host watching it (Prometheus, alerts)
    scripts/demo.py down              # remove the demo hosts, their volumes and network
    scripts/demo.py status            # are they running?

The hosts are created by the same playbook that makes Molecule's test hosts (molecule/shared/create.yml)
and reached with docker exec through inventories/local (and inventories/local-monitoring for the
monitoring host, whose alerts go to stand-ins for a team's chat and mail on its loopback).
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

HOST, MONITOR = "berth-demo", "berth-demo-monitor"
HTTPS_PORT, HTTP_PORT = 8443, 8080
DEMO_HOST = {
    "name": HOST,
    "image": "berth-test:trixie",
    "groups": ["nested_docker"],
    # Reachable from this machine only (loopback), like a VPS's 443 and 80.
    "published_ports": [f"127.0.0.1:{HTTPS_PORT}:443", f"127.0.0.1:{HTTP_PORT}:80"],
}
# On the demo host's network (the first platform's), which resolves the containers' names.
# NET_ADMIN: the firewall (nftables) in the container's own network namespace; SYS_ADMIN: Debian's
# Prometheus unit runs in a user namespace (PrivateUsers=true), which an unprivileged container refuses.
MONITOR_HOST = {"name": MONITOR, "image": "berth-test:trixie", "groups": [], "capabilities": ["NET_ADMIN", "SYS_ADMIN"]}


def platforms(monitoring: bool) -> dict:
    return {"molecule_yml": {"platforms": [DEMO_HOST, MONITOR_HOST] if monitoring else [DEMO_HOST]}}

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


def up(monitoring: bool) -> None:
    began = time.monotonic()
    run([sys.executable, str(ROOT / "scripts" / "setup.py"), "--engine"])
    run([sys.executable, str(ROOT / "scripts" / "images.py"), "trixie", "kit"])
    log(f"demo host {HOST}" + (f" and monitoring host {MONITOR}" if monitoring else ""))
    playbook("molecule/shared/create.yml", "-e", json.dumps(platforms(monitoring)))
    # What a real VPS does not need: the inner engine's test drop-in, and a local ACME server.
    playbook("molecule/shared/inner-docker.yml", "-i", "inventories/local")
    playbook("molecule/shared/pebble.yml", "-i", "inventories/local")
    inventory = ["-i", "inventories/local"] + (["-i", "inventories/local-monitoring"] if monitoring else [])
    if monitoring:
        # What the internet and the team are in real life: the apps' names resolve to the demo host and
        # Pebble's root is trusted; a webhook receiver and an SMTP sink stand in for chat and mail.
        view = {"outside_app_host": HOST, "outside_domains": ["shop.localhost", "blog.localhost"]}
        playbook("molecule/shared/outside-view.yml", *inventory, "-e", json.dumps(view))
        playbook("molecule/shared/alert-sinks.yml", *inventory)
    admin_key()
    extra = ["-e", f"@{secrets()}", "-e", json.dumps({"app_stack_image_archives": [str(images.kit_tarball())]})]
    log("site.yml")
    start = time.monotonic()
    playbook("site.yml", *inventory, *extra)
    log(f"site.yml took {time.monotonic() - start:.0f} s")
    # The first release of each app: records v1 (which the stack started) as its live release; changes
    # nothing later.
    for app in ("shop", "blog"):
        log(f"first release of {app}")
        release = ["-e", f"app={app}", "-e", "app_version=v1"]
        playbook("playbooks/deploy.yml", *inventory, *extra[:2], *release)
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
  run site.yml again: .venv/bin/berth {" ".join(inventory)} {" ".join(extra[:2])} -e '{extra[3]}' site
                        (changes nothing; the same as .venv/bin/ansible-playbook site.yml with these options)
  what runs where:    .venv/bin/berth {" ".join(inventory)} {" ".join(extra[:2])} status   (--json)
  deploy v2 of shop:  .venv/bin/berth {" ".join(inventory)} {" ".join(extra[:2])} deploy shop v2
  roll it back:       .venv/bin/berth {" ".join(inventory)} {" ".join(extra[:2])} rollback shop
  the history:        .venv/bin/berth {" ".join(inventory)} {" ".join(extra[:2])} audit
  shop's logs:        .venv/bin/berth {" ".join(inventory)} {" ".join(extra[:2])} logs shop --since 10m   (--worker)
  a command in shop:  .venv/bin/berth {" ".join(inventory)} {" ".join(extra[:2])} exec shop -- python3 -c 'print(1)'
  hold shop's deploys: .venv/bin/berth {" ".join(inventory)} {" ".join(extra[:2])} lock hold shop --why "a demo"
                        (berth lock show shop, berth lock release shop)
  maintenance page:   .venv/bin/berth {" ".join(inventory)} {" ".join(extra[:2])} maintenance on shop   (off)
  shop's summary job: docker exec {HOST} systemctl start berth-job-shop-summary   (its log: berth logs shop --job)
  back up now:        .venv/bin/berth {" ".join(inventory)} {" ".join(extra[:2])} backup
  restore shop:       .venv/bin/ansible-playbook playbooks/restore.yml {" ".join(inventory)} {" ".join(extra[:2])} \\
                        -e app=shop -e backup_restore_confirm={HOST}
  tear it down:       scripts/demo.py down   (removes the host, its volumes and network)
  faster runs:        put ANSIBLE_STRATEGY=mitogen_linear before a command (Mitogen, docs/performance.md)
""")
    if monitoring:
        print(f"""The monitoring host {MONITOR} scrapes both hosts and probes https://shop.localhost/healthz and
https://blog.localhost/healthz from outside; alerts go to stand-ins for the team's chat and mail on it.
  alerts now:         docker exec {MONITOR} amtool alert query --alertmanager.url=http://127.0.0.1:9093
  make one:           docker exec {HOST} sh -c 'docker stop $(docker ps -q --filter name=shop-web)'
                        (BerthSiteDown in about 30 s; docker start the same containers to resolve it)
  what chat got:      docker exec {MONITOR} tail -n 3 /var/lib/berth-test-sinks/webhook.jsonl
  what mail got:      docker exec {MONITOR} tail -n 3 /var/lib/berth-test-sinks/mail.jsonl
  Prometheus' pages:  ssh -i .cache/demo/admin_ed25519 -N -L 9090:127.0.0.1:9090 -L 9093:127.0.0.1:9093 \\
                        berth@$(docker inspect -f \\
                        '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' {MONITOR})
                      then http://127.0.0.1:9090/alerts and http://127.0.0.1:9093
""")


def down() -> None:
    run([sys.executable, str(ROOT / "scripts" / "setup.py")])
    playbook("molecule/shared/destroy.yml", "-e", json.dumps(platforms(monitoring=True)))
    shutil.rmtree(ROOT / ".cache" / "facts", ignore_errors=True)
    shutil.rmtree(DEMO, ignore_errors=True)
    log("demo host removed")


def status() -> None:
    for name in (HOST, MONITOR):
        state = output(["docker", "inspect", "-f", "{{.State.Status}}", name]) or "absent"
        print(f"{name}: {state}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--monitoring", action="store_true", help="up: a monitoring host too")
    args = parser.parse_args()
    if args.action == "up":
        up(args.monitoring)
    else:
        {"down": down, "status": status}[args.action]()


if __name__ == "__main__":
    main()
