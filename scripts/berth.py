#!/usr/bin/env python3
"""berth: one command for berth's playbooks, on ansible-runner (installed by scripts/setup.py as .venv/bin/berth).

    berth -i inventories/production site                    # site.yml
    berth -i inventories/production deploy shop 1.4.2       # playbooks/deploy.yml -e app=shop -e app_version=1.4.2
    berth -i inventories/production rollback shop [1.4.1]   # playbooks/rollback.yml
    berth -i inventories/production status [--json]         # playbooks/status.yml
    berth -i inventories/production audit [--lines 50]      # playbooks/audit.yml
    berth -i inventories/production logs shop [--worker [NAME] | --job NAME] [--since 10m] [--tail 100] [--follow]
    berth -i inventories/production exec shop -- python3 manage.py check
    berth -i inventories/production lock hold shop --why "db upgrade" [--until 2026-11-28T10:00:00Z]
    berth -i inventories/production lock show|release shop
    berth -i inventories/production maintenance on|off shop [--why "..."]
    berth -i inventories/production backup                  # playbooks/backup-now.yml
    berth -i inventories/production run PLAYBOOK [-e KEY=VALUE ...]   # any playbook (the CI entry)

Every command is one playbook run (the table in docs/operations.md). Commands that change something print
one line per task result (host, task, status); the read commands (status, audit, logs, exec) print what
their playbook reports instead, and task lines only for failures. Every run writes `summary.json` and
`junit.xml` under --artifacts, masks the values of the named secret environment variables (and of
`-e` values whose key looks secret) in everything it prints or writes, and exits: 0 all hosts ok, 2 a
task failed, 3 a host was unreachable, 4 ansible-runner itself failed or no task ran at all (an empty
group or --limit: a deploy that did nothing is not a success). `exec` exits with the command's own exit
code when the command ran. The inventory comes from -i or the BERTH_INVENTORY environment variable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
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
DEBUG_ACTIONS = {"debug", "ansible.builtin.debug", "ansible.legacy.debug"}


@dataclass
class Outcome:
    """One task on one host."""

    host: str
    task: str
    status: str  # ok, changed, failed, unreachable, skipped
    seconds: float
    message: str = ""
    action: str = ""
    result: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Progress:
    """Turns ansible-runner events into progress lines, counts and a record of every task result.

    quiet: print only failed and unreachable results (the read commands print their report instead).
    """

    secrets: list[str] = field(default_factory=list)
    out: Any = sys.stdout
    quiet: bool = False
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
        outcome = Outcome(
            host, self.mask(task), status, float(data.get("duration") or 0.0), message, data.get("task_action", ""), res
        )
        self.outcomes.append(outcome)
        self.counts[host][status] += 1
        if not self.quiet or status in {"failed", "unreachable"}:
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

    def reports(self) -> list[str]:
        """What the playbook's debug tasks printed, in order, masked (the read commands' output)."""
        found = []
        for outcome in self.outcomes:
            if outcome.action in DEBUG_ACTIONS and outcome.status == "ok" and "msg" in outcome.result:
                msg = outcome.result["msg"]
                text = "\n".join(map(str, msg)) if isinstance(msg, list) else msg if isinstance(msg, str) else (
                    json.dumps(msg, indent=2)
                )
                found.append(self.mask(text))
        return found

    def summary(self, playbook: str, runner_status: str, seconds: float) -> dict[str, Any]:
        return {
            "playbook": playbook,
            "status": runner_status,
            "exit_code": self.exit_code(runner_status),
            "seconds": round(seconds, 1),
            "hosts": {host: dict(counts) for host, counts in sorted(self.counts.items())},
            "failures": [
                {k: v for k, v in vars(o).items() if k not in {"result", "action"}}
                for o in self.outcomes
                if o.status in {"failed", "unreachable"}
            ],
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


def parse_extravars(items: list[str]) -> dict[str, Any]:
    """-e values as ansible-playbook takes them: KEY=VALUE, @FILE (YAML or JSON) or a JSON object."""
    extravars: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            import yaml  # ansible's own dependency: in the venv

            try:
                loaded = yaml.safe_load(Path(item[1:]).read_text())
            except (OSError, yaml.YAMLError) as error:
                raise SystemExit(f"berth: -e {item}: {error}") from None
            if not isinstance(loaded, dict):
                raise SystemExit(f"berth: -e {item}: the file must hold a mapping of variables")
            extravars.update(loaded)
        elif item.lstrip().startswith("{"):
            try:
                loaded = json.loads(item)
            except json.JSONDecodeError as error:
                raise SystemExit(f"berth: -e expects key=value, @file or a JSON object: {error}") from None
            extravars.update(loaded)
        else:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SystemExit(f"berth: -e expects key=value, @file or a JSON object, got {item!r}")
            extravars[key] = value
    return extravars


def write_artifacts(directory: Path, progress: Progress, playbook: str, status: str, seconds: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    summary = progress.summary(playbook, status, seconds)
    (directory / "summary.json").write_text(progress.mask(json.dumps(summary, indent=2)) + "\n")
    tree = ET.ElementTree(progress.junit(playbook))
    ET.indent(tree)
    tree.write(directory / "junit.xml", encoding="unicode", xml_declaration=True)


@dataclass
class Run:
    """One playbook run: what a command maps to."""

    playbook: str
    extravars: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False  # a read command: print the playbook's report, not its task lines


def plan(args: argparse.Namespace) -> Run:
    """The playbook and extra variables of a command (one command, one playbook)."""
    app = {"app": args.app} if getattr(args, "app", None) else {}
    match args.command:
        case "run":
            return Run(args.playbook)
        case "site":
            return Run("site.yml")
        case "deploy":
            found = {**app, "app_version": args.version}
            if args.image:
                found["release_image"] = args.image
            if args.archive:
                found["release_image_archive"] = str(Path(args.archive).resolve())
            return Run("playbooks/deploy.yml", found)
        case "rollback":
            return Run("playbooks/rollback.yml", {**app, **({"app_version": args.version} if args.version else {})})
        case "status":
            return Run("playbooks/status.yml", {**app, "status_format": "json" if args.json else "text"}, quiet=True)
        case "audit":
            return Run(
                "playbooks/audit.yml",
                {**app, "audit_lines": args.lines, "audit_format": "json" if args.json else "text"},
                quiet=True,
            )
        case "logs":
            found = {**app, "logs_tail": args.tail}
            if args.since:
                found["logs_since"] = args.since
            if args.worker is not None:
                found["logs_process"] = "worker"
                if args.worker:
                    found["logs_worker"] = args.worker
            if args.job is not None:
                found["logs_process"] = "job"
                if args.job:
                    found["logs_job"] = args.job
            return Run("playbooks/logs.yml", found, quiet=True)
        case "exec":
            if not args.argv:
                raise SystemExit("berth exec: give the command after --: berth exec shop -- python3 manage.py check")
            return Run("playbooks/exec.yml", {**app, "exec_command": args.argv}, quiet=True)
        case "lock":
            found = {**app, "lock_action": args.action}
            if args.why:
                found["lock_why"] = args.why
            if args.until:
                found["lock_until"] = args.until
            return Run("playbooks/lock.yml", found, quiet=args.action == "show")
        case "maintenance":
            found = {**app, "maintenance": args.state}
            if args.why:
                found["maintenance_why"] = args.why
            return Run("playbooks/maintenance.yml", found)
        case "backup":
            return Run("playbooks/backup-now.yml")
    raise SystemExit(f"berth: unknown command {args.command!r}")


def run_playbook(
    run: Run,
    *,
    inventory: str,
    limit: str | None,
    extravars: dict[str, Any],
    check: bool,
    diff: bool,
    progress: Progress,
    vault_password_file: str | None = None,
) -> tuple[str, str]:
    """Run a playbook through ansible-runner with the project's ansible.cfg; return (status, its stdout)."""
    import ansible_runner  # imported here so that --help works outside the venv

    flags = [flag for flag, on in (("--check", check), ("--diff", diff)) if on]
    if vault_password_file:
        flags += ["--vault-password-file", shlex.quote(str(Path(vault_password_file).resolve()))]
    cmdline = " ".join(flags)
    with tempfile.TemporaryDirectory(prefix="berth-runner-") as private:
        result = ansible_runner.run(
            private_data_dir=private,
            project_dir=str(ROOT),
            playbook=run.playbook,
            inventory=str(Path(inventory).resolve()),
            limit=limit,
            extravars={**run.extravars, **extravars},
            cmdline=cmdline or None,
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
        return result.status, result.stdout.read()


def exec_exit_code(progress: Progress) -> int | None:
    """The exit code of exec's command, when it ran (the result that carries rc)."""
    codes = [o.result["rc"] for o in progress.outcomes if isinstance(o.result.get("rc"), int) and o.action != "debug"]
    return codes[-1] if codes else None


def options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes, before or after its name (after it, they have no defaults of their
    own, so that `berth -i X status` keeps X)."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "-i", "--inventory", default=default(os.environ.get("BERTH_INVENTORY")), help="default: $BERTH_INVENTORY"
    )
    parser.add_argument("-l", "--limit", default=default(None), help="only these hosts (Ansible's --limit)")
    parser.add_argument("-e", "--extra-var", action="append", default=default([]), metavar="KEY=VALUE")
    parser.add_argument("--check", action="store_true", default=default(False), help="check mode: change nothing")
    parser.add_argument("--diff", action="store_true", default=default(False), help="show changed files' differences")
    parser.add_argument(
        "--vault-password-file", default=default(None), help="(or ANSIBLE_VAULT_PASSWORD_FILE; berth cannot prompt)"
    )
    parser.add_argument(
        "--secret-env", action="append", default=default([]), metavar="NAME", help="mask this variable's value"
    )
    parser.add_argument(
        "--artifacts", default=default(ROOT / "artifacts" / "berth"), type=Path, help="summary.json and junit.xml here"
    )


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    options(common, defaults=False)
    top = argparse.ArgumentParser(
        prog="berth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options(top, defaults=True)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    command("run", "run any playbook (site.yml, playbooks/NAME.yml): the CI entry").add_argument("playbook")
    command("site", "converge every host (site.yml)")
    deploy = command("deploy", "deploy a version of an app, blue/green (playbooks/deploy.yml)")
    deploy.add_argument("app")
    deploy.add_argument("version", help="the image tag")
    deploy.add_argument("--image", help="full image reference instead of <the app's repository>:<version>")
    deploy.add_argument("--archive", help="image archive (docker save) on this machine to load instead of pulling")
    rollback = command("rollback", "roll an app back: to the previous release, or to VERSION (playbooks/rollback.yml)")
    rollback.add_argument("app")
    rollback.add_argument("version", nargs="?")
    status = command("status", "what runs where: versions, workers, locks, backups, certificates, headroom")
    status.add_argument("app", nargs="?", help="only this app")
    status.add_argument("--json", action="store_true")
    audit = command("audit", "the last releases, rollbacks, failures and locks of every host, by time")
    audit.add_argument("app", nargs="?", help="only this app")
    audit.add_argument("--lines", type=int, default=20)
    audit.add_argument("--json", action="store_true")
    logs = command("logs", "an app's logs: its live web (default), workers or a job")
    logs.add_argument("app")
    logs.add_argument("--worker", nargs="?", const="", help="the workers' logs (all, or the worker NAME)")
    logs.add_argument("--job", nargs="?", const="", help="the jobs' logs (all, or the job NAME)")
    logs.add_argument("--since", help="e.g. 10m, 2h, or a timestamp")
    logs.add_argument("--tail", type=int, default=100, help="last lines of each container (default 100)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (one host)")
    run_exec = command("exec", "run a command in a new container of the app's live image, with its environment")
    run_exec.add_argument("app")
    run_exec.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    lock = command("lock", "hold, show or release an app's release lock")
    lock.add_argument("action", choices=["hold", "show", "release"])
    lock.add_argument("app", nargs="?", help="the app (may be left out when the hosts have one)")
    lock.add_argument("--why", help="why (required to hold)")
    lock.add_argument("--until", help="until when (ISO 8601 UTC, e.g. 2026-11-28T10:00:00Z)")
    maintenance = command("maintenance", "serve an app's maintenance page (503), or stop serving it")
    maintenance.add_argument("state", choices=["on", "off"])
    maintenance.add_argument("app", nargs="?", help="the app (may be left out when the hosts have one)")
    maintenance.add_argument("--why")
    command("backup", "back up every app now, with its restore test (playbooks/backup-now.yml)")
    return top


def run_once(args: argparse.Namespace, run: Run, extravars: dict[str, Any], secrets: list[str]) -> tuple[int, Progress]:
    progress = Progress(secrets=secrets, quiet=run.quiet)
    start = time.monotonic()
    status, stdout = run_playbook(
        run, inventory=args.inventory, limit=args.limit, extravars=extravars, check=args.check, diff=args.diff,
        progress=progress, vault_password_file=args.vault_password_file,
    )
    if not progress.outcomes:
        # Nothing ran (a syntax error, a missing playbook, no host matched): show what ansible-playbook said.
        print(progress.mask(stdout)[-3000:], file=sys.stderr)
    seconds = time.monotonic() - start
    write_artifacts(args.artifacts, progress, run.playbook, status, seconds)
    code = progress.exit_code(status)
    for report in progress.reports():
        print(report, flush=True)
    if not run.quiet or code != EXIT_OK:
        totals: dict[str, int] = defaultdict(int)
        for counts in progress.counts.values():
            for name, n in counts.items():
                totals[name] += n
        print(
            f"{run.playbook}: {status} in {seconds:.0f} s; "
            + ", ".join(f"{n} {s}" for s, n in sorted(totals.items()))
            + f"; artifacts in {args.artifacts}",
            file=sys.stdout if not run.quiet else sys.stderr,
            flush=True,
        )
    return code, progress


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.inventory:
        raise SystemExit("berth: say which inventory: -i inventories/NAME (or set BERTH_INVENTORY)")
    if getattr(args, "argv", None) and args.argv[0] == "--":
        args.argv = args.argv[1:]
    run = plan(args)
    extravars = parse_extravars(args.extra_var)
    secrets = [os.environ.get(name, "") for name in args.secret_env]
    secrets += [str(value) for key, value in {**run.extravars, **extravars}.items() if SECRET_KEY.search(key)]
    if args.command == "logs" and args.follow:
        return follow_logs(args, run, extravars, secrets)
    code, progress = run_once(args, run, extravars, secrets)
    if args.command == "exec" and (rc := exec_exit_code(progress)) is not None:
        return rc
    return code


# The time at the start of a log line: docker's (…Z, nanoseconds) or journalctl's short-iso-precise (…+00:00).
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]00:00)")


def utc_stamp(text: str) -> str:
    """A log line's UTC timestamp as logs_since takes it (…Z), padded so that stamps sort by time."""
    whole, _, fraction = text.removesuffix("Z").removesuffix("+00:00").removesuffix("-00:00").partition(".")
    return f"{whole}.{fraction.ljust(9, '0')}Z"


def follow_logs(args: argparse.Namespace, run: Run, extravars: dict[str, Any], secrets: list[str]) -> int:
    """Follow an app's logs on one host: the logs playbook again every 2 s, from the newest timestamp seen
    (every line carries one); the lines of that same instant that were printed already are skipped."""
    if not args.limit:
        raise SystemExit("berth logs --follow: name one host with --limit")
    since, printed = args.since or "1m", set()
    while True:
        progress = Progress(secrets=secrets, quiet=True)
        status, _ = run_playbook(
            Run(run.playbook, {**run.extravars, "logs_since": since}, quiet=True),
            inventory=args.inventory, limit=args.limit, extravars=extravars, check=False, diff=False, progress=progress,
            vault_password_file=args.vault_password_file,
        )
        if (code := progress.exit_code(status)) != EXIT_OK:
            return code
        lines = [line for report in progress.reports() for line in report.splitlines() if TIMESTAMP.search(line)]
        for line in lines:
            if line not in printed:
                print(line, flush=True)
        stamps = {line: utc_stamp(TIMESTAMP.search(line).group(0)) for line in lines}  # type: ignore[union-attr]
        if stamps:
            since = max(stamps.values())
            printed = {line for line, stamp in stamps.items() if stamp == since}
        time.sleep(2)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
