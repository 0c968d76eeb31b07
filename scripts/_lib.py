"""Small helpers shared by berth's scripts (standard library only: they run before the venv exists)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VENV_BIN = VENV / "bin"
CACHE = Path(os.environ.get("BERTH_CACHE", Path.home() / ".cache" / "berth"))


def log(message: str) -> None:
    """Print a progress line that stands out from tool output."""
    print(f"==> {message}", flush=True)


def run(cmd: list[str], *, check: bool = True, quiet: bool = False, **kwargs: object) -> int:
    """Run a command; on failure exit with its code after saying which command failed."""
    if not quiet:
        print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, check=False, **kwargs)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        sys.exit(f"berth: command failed ({proc.returncode}): {' '.join(cmd)}")
    return int(proc.returncode)


def output(cmd: list[str]) -> str:
    """Return a command's stdout, or '' when it fails."""
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def digest(*paths: Path) -> str:
    """A short content hash of files, used as a cache key."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def venv_env() -> dict[str, str]:
    """The environment for tools from the project's virtualenv."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    return env


def have(program: str) -> bool:
    return shutil.which(program) is not None


class Timer:
    """Measure a step and remember the figure for the summary."""

    def __init__(self) -> None:
        self.figures: list[tuple[str, float]] = []

    def step(self, name: str) -> _Step:
        return _Step(self, name)


class _Step:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name, self.start = timer, name, 0.0

    def __enter__(self) -> None:
        log(self.name)
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self.start
        self.timer.figures.append((self.name, elapsed))
        log(f"{self.name}: {elapsed:.1f} s")
