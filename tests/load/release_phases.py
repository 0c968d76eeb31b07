"""Releases under load: run deploy.yml / rollback.yml against a test host while two real clients send
steady HTTPS traffic through its nginx, and measure what they saw.

Used by the release scenario's tests (roles/release/molecule/default/tests) and by scripts/bench.py.
Both clients run on the test host itself (loopback only), on each site (one per app: the first is the
one released, the others must not notice):
- keepalive.py: keep-alive connections at a fixed rate that never retry; records the version served;
- wrk (Debian package): as fast as it can on a few keep-alive connections; counts socket errors and
  non-2xx/3xx answers.
Optionally a third client enqueues jobs on the first site (keepalive.py on /enqueue?id=<phase>-<n>, one
unique id per request), so that the workers' handover can be counted job by job.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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


def wrk_failures(wrk: dict) -> int:
    return sum(wrk.get(k, 0) for k in ("connect", "read", "write", "timeout", "non2xx3xx"))


@dataclass
class Phase:
    """One playbook run under load, and what the clients saw (load, wrk: the first site's)."""

    name: str
    rc: int
    output: str
    seconds: float
    started: float
    load: dict = field(default_factory=dict)
    wrk: dict = field(default_factory=dict)
    # Per site: the keep-alive client's summary and wrk's figures; the job client's summary ({} if none).
    loads: dict[str, dict] = field(default_factory=dict)
    wrks: dict[str, dict] = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)

    @property
    def wrk_failed(self) -> int:
        return wrk_failures(self.wrk)

    @property
    def failed(self) -> int:
        """Failed requests of every client on every site."""
        loads = self.loads or {"": self.load}
        wrks = self.wrks or {"": self.wrk}
        return (
            sum(load.get("failed", 0) for load in loads.values())
            + sum(wrk_failures(wrk) for wrk in wrks.values())
            + self.jobs.get("failed", 0)
        )

    def site_failed(self, site: str) -> int:
        return self.loads[site].get("failed", 0) + wrk_failures(self.wrks.get(site, {}))

    def switched_after(self, version: str) -> float | None:
        """Seconds from the command's start to the first answer from `version` (None: never seen)."""
        seen = self.load.get("first_seen", {}).get(version)
        return None if seen is None else seen - self.started

    def version_changes(self, site: str = "") -> list[list[str]]:
        """Per keep-alive connection (of the first site, or `site`), the versions it saw in order (one
        entry per change)."""
        load = self.loads[site] if site else self.load
        return [[version for _, version in conn] for conn in load.get("connections", [])]

    def switched_during_the_run(self) -> bool:
        """Every keep-alive connection saw its version change while the playbook ran (not before, not
        after it ended): the switch is the run's doing."""
        ended = self.started + self.seconds
        changes = [when for conn in self.load.get("connections", []) for when, _ in conn[1:]]
        return bool(changes) and all(self.started <= when <= ended for when in changes)


class LoadedHost:
    """A test host with nginx serving `site` (and the `also` sites), reached with docker exec (container
    `name`). With `enqueue_rate`, a third client enqueues that many jobs a second on `site`."""

    def __init__(
        self,
        name: str,
        site: str,
        inventory: str,
        rate: float = 40.0,
        wrk_connections: int = 4,
        limit: str = "",
        also: tuple[str, ...] = (),
        enqueue_rate: float = 0.0,
    ) -> None:
        self.name = name
        # Run the playbooks on this host only (--limit), when the inventory has others.
        self.limit = limit
        self.site = site
        self.sites = [site, *also]
        self.inventory = inventory
        self.rate = rate
        self.wrk_connections = wrk_connections
        self.enqueue_rate = enqueue_rate
        # Settings added to the playbooks' environment (scripts/bench.py's profiles).
        self.extra_env: dict[str, str] = {}
        # A response header the keep-alive clients record for every request (e.g. the server a load
        # balancer chose).
        self.record_header = ""

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
        self.docker("sh", "-c", f"rm -f /tmp/{tag}-*")
        for site in self.sites:
            self._start_client(f"{tag}-{site}", site, "/version", self.rate, 4)
            if self.wrk_connections:
                self.docker(
                    "sh",
                    "-c",
                    f"nohup wrk -t1 -c{self.wrk_connections} -d900s --timeout 10s https://{site}/version "
                    f">/tmp/{tag}-{site}.wrk 2>&1 &",
                )
        if self.enqueue_rate:
            self._start_client(f"{tag}-jobs", self.site, f"/enqueue?id={tag}-{{n}}", self.enqueue_rate, 1)

    def _start_client(self, out: str, site: str, path: str, rate: float, connections: int) -> None:
        self.docker(
            "sh",
            "-c",
            f"nohup python3 {REMOTE_CLIENT} --host {site} --path '{path}' --rate {rate} --connections {connections} "
            f"--duration 900 --out /tmp/{out}.json"
            + (f" --record-header {self.record_header}" if self.record_header else "")
            + f" >/tmp/{out}.log 2>&1 &",
        )

    def stop_load(self, tag: str) -> tuple[dict[str, dict], dict[str, dict], dict]:
        """Stop every client; per site the keep-alive summary and wrk's figures, and the job client's."""
        self.docker("pkill", "-INT", "-f", REMOTE_CLIENT, check=False)
        self.docker("pkill", "-INT", "-x", "wrk", check=False)
        outs = [f"{tag}-{site}" for site in self.sites] + ([f"{tag}-jobs"] if self.enqueue_rate else [])
        for _ in range(100):
            if all(self._exists(f"/tmp/{out}.json") for out in outs):
                break
            time.sleep(0.2)
        loads = {site: json.loads(self.docker("cat", f"/tmp/{tag}-{site}.json")) for site in self.sites}
        wrks = {}
        for site in self.sites if self.wrk_connections else []:
            wrk_text = self.docker("cat", f"/tmp/{tag}-{site}.wrk")
            wrk = {k: int(m.group(1)) if (m := re.search(p, wrk_text)) else 0 for k, p in WRK_PATTERNS.items()}
            wrk["text"] = wrk_text
            wrks[site] = wrk
        jobs = json.loads(self.docker("cat", f"/tmp/{tag}-jobs.json")) if self.enqueue_rate else {}
        return loads, wrks, jobs

    def _exists(self, path: str) -> bool:
        return subprocess.run(["docker", "exec", self.name, "test", "-s", path], check=False).returncode == 0

    def phase(
        self, name: str, playbook: str, *extra: str, settle: float = 2.0, during: Callable[[], None] | None = None
    ) -> Phase:
        """Start the load, wait `settle` s, run the playbook (and `during`, in a thread, while it runs),
        wait `settle` s, stop the load."""
        tag = f"load-{name}"
        self.start_load(tag)
        time.sleep(settle)
        started = time.time()
        helper = threading.Thread(target=during, daemon=True) if during else None
        if helper:
            helper.start()
        rc, output = self.playbook(playbook, *extra)
        seconds = time.time() - started
        if helper:
            helper.join(timeout=60)
        time.sleep(settle)
        loads, wrks, jobs = self.stop_load(tag)
        first = self.sites[0]
        return Phase(name, rc, output, seconds, started, loads[first], wrks.get(first, {}), loads, wrks, jobs)
