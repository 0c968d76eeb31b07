#!/usr/bin/env python3
"""Run a berth playbook from CI through ansible-runner's Python API.

    scripts/ci_run.py site.yml -i inventories/production [--limit web1] [-e app_version=1.2.3]
                      [--secret-env REGISTRY_PASSWORD ...] [--artifacts artifacts/ci]

Streams one concise line per task result (host, task, status), writes `summary.json` and
`junit.xml` under the artifacts directory, masks the values of the named secret environment
variables (and of `-e` values whose key looks secret) in everything it prints or writes, and exits:
0 all hosts ok, 2 a task failed, 3 a host was unreachable, 4 ansible-runner itself failed or no task
ran at all (an empty group or --limit: a deploy that did nothing is not a success).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = re.compile(r"pass|secret|token|key", re.IGNORECASE)
EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_RUNNER = 0, 2, 3, 4
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


@dataclass
class Outcome:
    """One task on one host."""

    host: str
    task: str
    status: str  # ok, changed, failed, unreachable, skipped
    seconds: float
    message: str = ""


@dataclass
class Progress:
    """Turns ansible-runner events into progress lines, counts and a record of every task result."""

    secrets: list[str] = field(default_factory=list)
    out: Any = sys.stdout
    outcomes: list[Outcome] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "********")
        return text

    def __call__(self, event: dict[str, Any]) -> bool:
        status = RESULT_EVENTS.get(event.get("event", ""))
        if status is None:
            return True
        data = event.get("event_data", {})
        res = data.get("res") or {}
        ignored = status == "failed" and data.get("ignore_errors")
        if status == "ok" and res.get("changed"):
            status = "changed"
        if ignored:
            status = "ok"
        host, task = data.get("host", "?"), data.get("task", "?")
        message = self.mask(str(res.get("msg", ""))) if status in {"failed", "unreachable"} else ""
        outcome = Outcome(host, self.mask(task), status, float(data.get("duration") or 0.0), message)
        self.outcomes.append(outcome)
        self.counts[host][status] += 1
        line = f"{status.upper():<11} {host} | {outcome.task}"
        if message:
            line += f" | {message}"
        print(line, file=self.out, flush=True)
        return True

    def exit_code(self, runner_status: str) -> int:
        if any(c.get("unreachable") for c in self.counts.values()):
            return EXIT_UNREACHABLE
        if any(c.get("failed") for c in self.counts.values()):
            return EXIT_FAILED
        if not self.outcomes:
            # No task ran on any host (an empty group, a --limit matching nothing): a deploy that did
            # nothing must not pass as a success.
            return EXIT_RUNNER
        return EXIT_OK if runner_status == "successful" else EXIT_RUNNER

    def summary(self, playbook: str, runner_status: str, seconds: float) -> dict[str, Any]:
        return {
            "playbook": playbook,
            "status": runner_status,
            "exit_code": self.exit_code(runner_status),
            "seconds": round(seconds, 1),
            "hosts": {host: dict(counts) for host, counts in sorted(self.counts.items())},
            "failures": [vars(o) for o in self.outcomes if o.status in {"failed", "unreachable"}],
        }

    def junit(self, playbook: str) -> ET.Element:
        suites = ET.Element("testsuites")
        for host in sorted(self.counts):
            results = [o for o in self.outcomes if o.host == host]
            suite = ET.SubElement(
                suites,
                "testsuite",
                name=f"{playbook} on {host}",
                tests=str(len(results)),
                failures=str(sum(o.status == "failed" for o in results)),
                errors=str(sum(o.status == "unreachable" for o in results)),
                skipped=str(sum(o.status == "skipped" for o in results)),
            )
            for o in results:
                case = ET.SubElement(suite, "testcase", classname=host, name=o.task, time=f"{o.seconds:.3f}")
                if o.status == "failed":
                    ET.SubElement(case, "failure", message=o.message)
                elif o.status == "unreachable":
                    ET.SubElement(case, "error", message=o.message)
                elif o.status == "skipped":
                    ET.SubElement(case, "skipped")
        return suites


def parse_extravars(pairs: list[str]) -> dict[str, str]:
    extravars = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"ci_run: -e expects key=value, got {pair!r}")
        extravars[key] = value
    return extravars


def write_artifacts(directory: Path, progress: Progress, playbook: str, status: str, seconds: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    summary = progress.summary(playbook, status, seconds)
    (directory / "summary.json").write_text(progress.mask(json.dumps(summary, indent=2)) + "\n")
    tree = ET.ElementTree(progress.junit(playbook))
    ET.indent(tree)
    tree.write(directory / "junit.xml", encoding="unicode", xml_declaration=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("playbook", help="site.yml or a playbook under playbooks/")
    parser.add_argument("-i", "--inventory", required=True)
    parser.add_argument("--limit")
    parser.add_argument("-e", "--extra-var", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--secret-env", action="append", default=[], metavar="NAME", help="mask this variable's value")
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts" / "ci"), type=Path)
    args = parser.parse_args(argv)

    import ansible_runner  # imported here so that --help works outside the venv

    extravars = parse_extravars(args.extra_var)
    secrets = [os.environ.get(name, "") for name in args.secret_env]
    secrets += [value for key, value in extravars.items() if SECRET_KEY.search(key)]
    progress = Progress(secrets=secrets)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="berth-runner-") as private:
        result = ansible_runner.run(
            private_data_dir=private,
            project_dir=str(ROOT),
            playbook=args.playbook,
            inventory=str(Path(args.inventory).resolve()),
            limit=args.limit,
            extravars=extravars,
            envvars={
                "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                # ansible-runner turns host key checking off unless told otherwise; ansible.cfg wants it on.
                "ANSIBLE_HOST_KEY_CHECKING": os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "True"),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            },
            event_handler=progress,
            quiet=True,
            suppress_env_files=True,
        )
        if not progress.outcomes:
            # Nothing ran (a syntax error, a missing playbook): show what ansible-playbook said.
            print(progress.mask(result.stdout.read())[-3000:], file=sys.stderr)
    seconds = time.monotonic() - start
    write_artifacts(args.artifacts, progress, args.playbook, result.status, seconds)
    code = progress.exit_code(result.status)
    totals = defaultdict(int)
    for counts in progress.counts.values():
        for status, n in counts.items():
            totals[status] += n
    print(
        f"{args.playbook}: {result.status} in {seconds:.0f} s; "
        + ", ".join(f"{n} {s}" for s, n in sorted(totals.items()))
        + f"; artifacts in {args.artifacts}",
        flush=True,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
