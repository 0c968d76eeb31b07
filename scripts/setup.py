#!/usr/bin/env python3
"""Set up a machine for berth: the controller virtualenv, the collections, and (with --engine)
the system packages and a running Docker engine for local test hosts.

Re-runnable: every step checks first and does nothing when already done (a warm run takes ~1 s).

    scripts/setup.py            # .venv, collections and .venv/bin/berth (what a user needs to run site.yml)
    scripts/setup.py --engine   # also debootstrap, Docker engine installed and started (tests, demo)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from _lib import CACHE, ROOT, VENV, VENV_BIN, digest, have, log, output, run

REQUIREMENTS = ROOT / "scripts" / "requirements.txt"
COLLECTIONS_REQ = ROOT / "collections" / "requirements.yml"
COLLECTIONS_DIR = ROOT / "collections" / "ansible_collections"
# The PyPI bundle that carries the same collection versions as collections/requirements.yml.
BUNDLE = "ansible==12.3.0"
APT_PACKAGES = ("docker.io", "debootstrap", "iptables", "gzip", "openssh-client")


def stamp_ok(stamp: Path, key: str) -> bool:
    return stamp.exists() and stamp.read_text() == key


def ensure_venv() -> str:
    stamp = VENV / ".berth-requirements"
    key = digest(REQUIREMENTS)
    if stamp_ok(stamp, key):
        return "up to date"
    if not (VENV_BIN / "python").exists():
        run([sys.executable, "-m", "venv", str(VENV)])
    pip = [str(VENV_BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "install", "-r", str(REQUIREMENTS)])
    stamp.write_text(key)
    return "installed"


def ensure_command() -> str:
    """.venv/bin/berth: the command-line entry (scripts/berth.py) with the venv's Python."""
    entry = VENV_BIN / "berth"
    text = (
        "#!/bin/sh\n# berth's command-line entry (written by scripts/setup.py)\n"
        f'exec "{VENV_BIN / "python"}" "{ROOT / "scripts" / "berth.py"}" "$@"\n'
    )
    if entry.exists() and entry.read_text() == text:
        return "up to date"
    entry.write_text(text)
    entry.chmod(0o755)
    return "installed"


def wanted_collections() -> list[str]:
    """namespace/name of every collection in collections/requirements.yml (no YAML parser needed)."""
    names = []
    for line in COLLECTIONS_REQ.read_text().splitlines():
        line = line.strip()
        if line.startswith("- name:"):
            names.append(line.split(":", 1)[1].strip().replace(".", "/"))
    return names


def from_galaxy() -> bool:
    galaxy = str(VENV_BIN / "ansible-galaxy")
    cmd = [galaxy, "collection", "install", "-r", str(COLLECTIONS_REQ), "-p", str(ROOT / "collections")]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def from_bundle() -> None:
    cache = CACHE / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    name, version = BUNDLE.split("==")
    wheel = cache / f"{name}-{version}-py3-none-any.whl"
    if not wheel.exists():
        run([str(VENV_BIN / "python"), "-m", "pip", "download", "-q", "--no-deps", BUNDLE, "-d", str(cache)])
    prefixes = tuple(f"ansible_collections/{c}/" for c in wanted_collections())
    with zipfile.ZipFile(wheel) as bundle:
        members = [m for m in bundle.namelist() if m.startswith(prefixes)]
        bundle.extractall(ROOT / "collections", members)


def ensure_collections() -> str:
    stamp = COLLECTIONS_DIR / ".berth-requirements"
    key = digest(COLLECTIONS_REQ, Path(__file__))
    if stamp_ok(stamp, key):
        return "up to date"
    source = "Galaxy"
    if os.environ.get("BERTH_NO_GALAXY") or not from_galaxy():
        from_bundle()
        source = f"the PyPI bundle {BUNDLE}"
    stamp.write_text(key)
    return f"installed from {source}"


def ensure_apt() -> str:
    missing = [p for p in APT_PACKAGES if output(["dpkg-query", "-W", "-f=${Status}", p]) != "install ok installed"]
    if not missing:
        return "present"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, stdout=subprocess.DEVNULL)
    return "installed " + " ".join(missing)


def engine_up() -> bool:
    return subprocess.run(["docker", "info"], check=False, capture_output=True).returncode == 0


def ensure_engine() -> str:
    if engine_up():
        return "running"
    if output(["ps", "-p", "1", "-o", "comm="]) == "systemd":
        run(["systemctl", "start", "docker"])
    else:
        # No systemd on this machine (a CI container, a sandbox): run dockerd in the background.
        logfile = Path("/var/log/berth-dockerd.log").open("ab")  # noqa: SIM115 - stays open for dockerd
        subprocess.Popen(["dockerd"], stdout=logfile, stderr=logfile, start_new_session=True)
    for _ in range(60):
        if engine_up():
            return "started"
        time.sleep(1)
    sys.exit("berth: the Docker engine did not start; see /var/log/berth-dockerd.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", action="store_true", help="also install and start the Docker engine")
    args = parser.parse_args()
    if args.engine:
        if os.geteuid() != 0:
            sys.exit("berth: --engine installs packages and starts dockerd: run it as root")
        log(f"system packages: {ensure_apt()}")
        log(f"docker engine: {ensure_engine()}")
    if not have("python3"):
        sys.exit("berth: python3 is required")
    log(f"virtualenv {VENV.relative_to(ROOT)}: {ensure_venv()}")
    log(f"collections: {ensure_collections()}")
    log(f"command {(VENV_BIN / 'berth').relative_to(ROOT)}: {ensure_command()}")


if __name__ == "__main__":
    main()
