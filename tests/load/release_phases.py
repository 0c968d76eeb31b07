"""Releases under load: run deploy.yml / rollback.yml against a test host while two real clients send
steady HTTPS traffic through its nginx, and measure what they saw.

Used by the release scenario's tests (roles/release/molecule/default/tests) and by scripts/bench.py.
Both clients run on the test host itself (loopback only):
- keepalive.py: keep-alive connections at a fixed rate that never retry; records the version served;
- wrk (Debian package): as fast as it can on a few keep-alive connections; counts socket errors and
  non-2xx/3xx answers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).resolve().parent / "keepalive.py"
REMOTE_CLIENT = "/usr/local/bin/berth-keepalive"
WRK_PATTERNS = {
    "requests": r"(\d+) requests in",
    "connect": r"Socket errors: connect (\d+)",
    "read": r"Socket errors: .*read (\d+)",
    "write": r"Socket errors: .*write (\d+)",
    "timeout": r"Socket errors: .*timeout (\d+)",
    "non2xx3xx": r"Non-2xx or 3xx responses: (\d+)",
}


@dataclass
class Phase:
    """One playbook run under load, and what the clients saw."""

    name: str
    rc: int
    output: str
    seconds: float
    started: float
    load: dict = field(default_factory=dict)
    wrk: dict = field(default_factory=dict)

    @property
    def wrk_failed(self) -> int:
        return sum(self.wrk.get(k, 0) for k in ("connect", "read", "write", "timeout", "non2xx3xx"))

    @property
    def failed(self) -> int:
        return self.load.get("failed", 0) + self.wrk_failed

    def switched_after(self, version: str) -> float | None:
        """Seconds from the command's start to the first answer from `version` (None: never seen)."""
        seen = self.load.get("first_seen", {}).get(version)
        return None if seen is None else seen - self.started

    def version_changes(self) -> list[list[str]]:
        """Per keep-alive connection, the versions it saw in order (one entry per change)."""
        return [[version for _, version in conn] for conn in self.load.get("connections", [])]

    def switched_during_the_run(self) -> bool:
        """Every keep-alive connection saw its version change while the playbook ran (not before, not
        after it ended): the switch is the run's doing."""
        ended = self.started + self.seconds
        changes = [when for conn in self.load.get("connections", []) for when, _ in conn[1:]]
        return bool(changes) and all(self.started <= when <= ended for when in changes)


class LoadedHost:
    """A test host with nginx serving `site`, reached with docker exec (container `name`)."""

    def __init__(
        self, name: str, site: str, inventory: str, rate: float = 40.0, wrk_connections: int = 4, limit: str = ""
    ) -> None:
        self.name = name
        # Run the playbooks on this host only (--limit), when the inventory has others.
        self.limit = limit
        self.site = site
        self.inventory = inventory
        self.rate = rate
        self.wrk_connections = wrk_connections
        # Settings added to the playbooks' environment (scripts/bench.py's profiles).
        self.extra_env: dict[str, str] = {}

    def docker(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["docker", "exec", self.name, *args], capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker exec {self.name} {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def install_client(self) -> None:
        subprocess.run(["docker", "cp", str(CLIENT), f"{self.name}:{REMOTE_CLIENT}"], check=True)

    def playbook_command(self, playbook: str, *extra: str) -> tuple[list[str], dict[str, str]]:
        """ansible-playbook with the project's configuration against the test host's inventory."""
        env = dict(
            os.environ,
            ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
            ANSIBLE_COLLECTIONS_PATH=str(PROJECT / "collections"),
            ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
            ANSIBLE_NOCOLOR="1",
        )
        env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
        env.update(self.extra_env)
        limit = ["--limit", self.limit] if self.limit else []
        return [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            self.inventory,
            *limit,
            playbook,
            *extra,
        ], env

    def playbook(self, playbook: str, *extra: str) -> tuple[int, str]:
        command, env = self.playbook_command(playbook, *extra)
        done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, check=False)
        return done.returncode, done.stdout + done.stderr

    def start_load(self, tag: str) -> None:
        self.docker("rm", "-f", f"/tmp/{tag}.json", f"/tmp/{tag}.wrk")
        self.docker(
            "sh",
            "-c",
            f"nohup python3 {REMOTE_CLIENT} --host {self.site} --rate {self.rate} --duration 600 "
            f"--out /tmp/{tag}.json >/tmp/{tag}.log 2>&1 &",
        )
        if not self.wrk_connections:
            return
        self.docker(
            "sh",
            "-c",
            f"nohup wrk -t1 -c{self.wrk_connections} -d600s --timeout 10s https://{self.site}/version "
            f">/tmp/{tag}.wrk 2>&1 &",
        )

    def stop_load(self, tag: str) -> tuple[dict, dict]:
        self.docker("pkill", "-INT", "-f", REMOTE_CLIENT, check=False)
        self.docker("pkill", "-INT", "-x", "wrk", check=False)
        for _ in range(100):
            if self._exists(f"/tmp/{tag}.json"):
                break
            time.sleep(0.2)
        load = json.loads(self.docker("cat", f"/tmp/{tag}.json"))
        wrk_text = self.docker("cat", f"/tmp/{tag}.wrk") if self.wrk_connections else ""
        wrk = {k: int(m.group(1)) if (m := re.search(p, wrk_text)) else 0 for k, p in WRK_PATTERNS.items()}
        wrk["text"] = wrk_text
        return load, wrk

    def _exists(self, path: str) -> bool:
        return subprocess.run(["docker", "exec", self.name, "test", "-s", path], check=False).returncode == 0

    def phase(self, name: str, playbook: str, *extra: str, settle: float = 2.0) -> Phase:
        """Start the load, wait `settle` s, run the playbook, wait `settle` s, stop the load."""
        tag = f"load-{name}"
        self.start_load(tag)
        time.sleep(settle)
        started = time.time()
        rc, output = self.playbook(playbook, *extra)
        seconds = time.time() - started
        time.sleep(settle)
        load, wrk = self.stop_load(tag)
        return Phase(name, rc, output, seconds, started, load, wrk)
