#!/usr/bin/env python3
"""berth's test command: set up, build test images, lint, unit tests, every Molecule scenario.

    scripts/test.py                      # everything (what CI runs)
    scripts/test.py -s common            # only scenarios whose name contains "common"
    scripts/test.py --no-molecule        # setup, lint and pytest only
    scripts/test.py --jobs 1             # scenarios one at a time (default: two at a time)

The linters and pytest run as one job beside the first (slowest) scenario, so that both cores work
from the start; their output goes to artifacts/lint.log and artifacts/pytest.log, Molecule's to
artifacts/molecule/<scenario>.log (a failure prints the log's tail). The last line is the summary
"tests: N passed, N failed" (lint tools, pytest tests and scenarios each counted).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from _lib import ROOT, VENV_BIN, Timer, log, run, venv_env

ARTIFACTS = ROOT / "artifacts"
PY_PATHS = ["scripts", "tests", "roles", "molecule"]
# Scenarios that take longest start first, so that two at a time end close together (measured order).
SLOWEST_FIRST = ("site/topology", "site/site", "release/", "hardening/", "db_host/", "backup/", "monitoring/",
                 "nginx/", "app_stack/")


@dataclass
class Scenario:
    """A Molecule scenario: the project directory Molecule runs in, and the scenario's name."""

    project: Path
    name: str

    @property
    def label(self) -> str:
        where = self.project.name if self.project != ROOT else "site"
        return f"{where}/{self.name}"


@dataclass
class Result:
    label: str
    ok: bool
    seconds: float
    detail: str = ""


def scenarios(pattern: str | None) -> list[Scenario]:
    role_files = sorted(ROOT.glob("roles/*/molecule/*/molecule.yml"))
    found = [Scenario(f.parent.parent.parent, f.parent.name) for f in role_files]
    found += [Scenario(ROOT, f.parent.name) for f in sorted(ROOT.glob("molecule/*/molecule.yml"))]
    chosen = [s for s in found if pattern is None or pattern in s.label]
    return sorted(chosen, key=lambda s: next((i for i, p in enumerate(SLOWEST_FIRST) if s.label.startswith(p)), 99))


def run_logged(name: str, cmd: list[str], logfile: Path) -> Result:
    """Run a command with its output appended to logfile; print the log's tail if it fails."""
    start = time.monotonic()
    with logfile.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.run(cmd, cwd=ROOT, env=venv_env(), stdout=out, stderr=subprocess.STDOUT, check=False)
    result = Result(name, code.returncode == 0, time.monotonic() - start)
    log(f"{name}: {'passed' if result.ok else 'FAILED'} in {result.seconds:.0f} s (log: {logfile.relative_to(ROOT)})")
    if not result.ok:
        tail = logfile.read_text().splitlines()[-60:]
        print("\n".join(f"    {line}" for line in tail), flush=True)
    return result


def lint() -> list[Result]:
    logfile = ARTIFACTS / "lint.log"
    logfile.write_text("")
    return [
        run_logged("yamllint", [str(VENV_BIN / "yamllint"), "--strict", "."], logfile),
        run_logged("ansible-lint", [str(VENV_BIN / "ansible-lint"), "--profile", "production", "--strict"], logfile),
        run_logged("ruff", [str(VENV_BIN / "ruff"), "check", *PY_PATHS], logfile),
    ]


def pytest() -> tuple[int, int, Result]:
    """Run the unit tests; return (passed, failed, result) as counted in pytest's JUnit report."""
    junit = ARTIFACTS / "pytest.xml"
    junit.unlink(missing_ok=True)
    logfile = ARTIFACTS / "pytest.log"
    logfile.write_text("")
    cmd = [str(VENV_BIN / "pytest"), "-q", "tests", f"--junitxml={junit}"]
    ran = run_logged("pytest", cmd, logfile)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if junit.exists() and (suite := re.search(r"<testsuite [^>]*>", junit.read_text())):
        for key in counts:
            if found := re.search(rf'\b{key}="(\d+)"', suite.group(0)):
                counts[key] = int(found.group(1))
    failed = counts["failures"] + counts["errors"]
    passed = counts["tests"] - failed - counts["skipped"]
    # pytest exits 5 when it collected nothing: that is a failure here, never a pass.
    ok = ran.ok and passed > 0
    return passed, max(failed, 0 if ok else 1), Result("pytest", ok, ran.seconds)


def molecule(scenario: Scenario) -> Result:
    logfile = ARTIFACTS / "molecule" / f"{scenario.label.replace('/', '-')}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(VENV_BIN / "molecule"),
        "--base-config",
        str(ROOT / "molecule" / "base.yml"),
        "test",
        "--scenario-name",
        scenario.name,
    ]
    log(f"molecule {scenario.label}: started (log: {logfile.relative_to(ROOT)})")
    start = time.monotonic()
    env = venv_env() | {"ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0", "NO_COLOR": "1"}
    with logfile.open("w") as out:
        code = subprocess.run(cmd, cwd=scenario.project, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - start
    ok = code.returncode == 0
    log(f"molecule {scenario.label}: {'passed' if ok else 'FAILED'} in {seconds:.0f} s")
    if not ok:
        tail = logfile.read_text().splitlines()[-60:]
        print("\n".join(f"    {line}" for line in tail), flush=True)
    return Result(f"molecule {scenario.label}", ok, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--scenario", help="run only scenarios whose label contains this")
    parser.add_argument("--jobs", type=int, default=2, help="scenarios run at once (default 2)")
    parser.add_argument("--no-molecule", action="store_true", help="skip the Molecule scenarios")
    parser.add_argument("--no-lint", action="store_true", help="skip the linters")
    args = parser.parse_args()

    timer = Timer()
    ARTIFACTS.mkdir(exist_ok=True)
    with timer.step("setup"):
        run([sys.executable, str(ROOT / "scripts" / "setup.py"), "--engine"])
    counts = {"passed": 0, "failed": 0}

    def checks() -> list[Result]:
        """The linters, then pytest (one job: they are light beside a scenario)."""
        found = [] if args.no_lint else lint()
        counts["passed"], counts["failed"], result = pytest()
        return [*found, result]

    jobs: list[Callable[[], list[Result]]] = [checks]
    if not args.no_molecule:
        chosen = scenarios(args.scenario)
        if not chosen:
            sys.exit(f"berth: no Molecule scenario matches {args.scenario!r}")
        with timer.step("test images"):
            run([sys.executable, str(ROOT / "scripts" / "images.py")])
        # The slowest scenario first, the checks beside it, then the other scenarios as workers free up.
        runs = [lambda s=s: [molecule(s)] for s in chosen]
        jobs = [runs[0], checks, *runs[1:]]
    label = f"checks and molecule ({len(jobs) - 1} scenarios, {args.jobs} at a time)" if len(jobs) > 1 else "checks"
    with timer.step(label), ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = [r for found in pool.map(lambda job: job(), jobs) for r in found]
    passed, failed = counts["passed"], counts["failed"]

    print("\n" + "=" * 72)
    for res in results:
        print(f"  {'ok  ' if res.ok else 'FAIL'}  {res.label:<40} {res.seconds:7.1f} s")
    print(f"  pytest: {passed} tests passed, {failed} failed")
    for name, seconds in timer.figures:
        print(f"  time  {name:<40} {seconds:7.1f} s")
    others = [r for r in results if r.label != "pytest"]
    total_passed = passed + sum(r.ok for r in others)
    total_failed = failed + sum(not r.ok for r in others)
    print("=" * 72)
    print(f"tests: {total_passed} passed, {total_failed} failed")
    sys.exit(0 if all(r.ok for r in results) and total_failed == 0 else 1)


if __name__ == "__main__":
    main()
