#!/usr/bin/python3
"""berth-job: run one scheduled job of a berth app in a one-off container of the app's live image.

Installed by the berth `app_jobs` role as /usr/local/sbin/berth-job. Each job of `berth_apps` has a
configuration /etc/berth/jobs/<unit>.json (written by the role) and a systemd service and timer
<unit>.service and <unit>.timer, e.g. berth-job-shop-summary. Python standard library only; it drives
`docker compose` and `systemd-analyze`.

    berth-job run UNIT       What the job's service runs. Takes the job's lock (flock, non-blocking: a run
                             that finds it held is refused and counted as skipped), reads the app's live
                             colour (its live-colour file; blue before the first release), runs the command
                             with `docker compose run --rm --no-deps -T` in a one-off container of that
                             colour's web service (its image, environment and networks), stops it after the
                             job's timeout, and records the run: the state and the node_exporter metrics.
    berth-job publish UNIT   Write the job's metrics from its state (the role runs it when a job is added or
                             changed, so that a job that never ran can be told apart from one not scheduled).

Its log is the unit's journal (journalctl -u UNIT.service): a line when the run starts and one with the
result and duration, with the command's own output between them. State: /var/lib/berth/jobs/<unit>.json.
Exit status: 0 the command succeeded; 1 it failed, timed out, was stopped or could not be started;
75 another run held the job's lock (skipped: the unit counts it as a success, the metrics as a skip).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CONFIG_DIR = Path("/etc/berth/jobs")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_LOCKED = 75
COLOURS = ("blue", "green")
# Seconds `docker stop` gives a timed-out job between SIGTERM and SIGKILL.
STOP_GRACE = 10
# Elapses of the schedule read to find its longest gap (enough to see a weekend or a short month).
ITERATIONS = 12
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class JobError(Exception):
    """The run could not be made (no live colour, docker missing, …). The message says why."""


class StopSignalError(Exception):
    """systemd (or a user) asked the run to stop: SIGTERM or SIGINT."""


@dataclass(frozen=True)
class Config:
    app: str
    job: str
    unit: str
    project_dir: str
    live_colour_file: str
    services: dict[str, str]
    command: tuple[str, ...]
    schedule: str
    timeout: int
    lock: str
    state_file: Path
    metrics_file: Path

    @classmethod
    def load(cls, path: Path) -> Config:
        data = json.loads(path.read_text())
        return cls(
            app=data["app"],
            job=data["job"],
            unit=data["unit"],
            project_dir=data["project_dir"],
            live_colour_file=data["live_colour_file"],
            services=dict(data["services"]),
            command=tuple(str(part) for part in data["command"]),
            schedule=data["schedule"],
            timeout=int(data["timeout"]),
            lock=data["lock"],
            state_file=Path(data["state_file"]),
            metrics_file=Path(data["metrics_file"]),
        )


def log(cfg: Config, message: str) -> None:
    """One line to stderr: the unit's journal."""
    print(f"berth-job {cfg.app}/{cfg.job}: {message}", file=sys.stderr, flush=True)


# --- decisions (unit-tested in tests/test_job_program.py) ----------------------------------------


def live_colour(text: str | None) -> str:
    """The colour in a live-colour file's text; blue when the file does not exist yet (no release)."""
    if text is None:
        return "blue"
    colour = text.strip()
    if colour not in COLOURS:
        raise JobError(f"the live-colour file says {colour[:40]!r}, not blue or green")
    return colour


def colour_image(env_text: str | None, colour: str) -> str:
    """The image of a colour, from the project's .env (BLUE_IMAGE=…); '?' when it cannot be read."""
    for line in (env_text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == f"{colour.upper()}_IMAGE":
            return value.strip().strip("'\"") or "?"
    return "?"


def compose_argv(cfg: Config, colour: str) -> list[str]:
    """The one-off container of the colour's web service: its image, environment and networks, no ports,
    no dependencies started, no TTY; named after the unit, so a leftover can be found and removed."""
    return [
        "docker", "compose", "--project-directory", cfg.project_dir,
        "run", "--rm", "--no-deps", "-T", "--name", cfg.unit,
        "--env", f"APP_PROCESS=job-{cfg.job}",
        cfg.services[colour], *cfg.command,
    ]


def outcome(returncode: int | None, timed_out: bool, timeout: int) -> tuple[str, str]:
    """(status, what happened) of a finished command."""
    if timed_out:
        return "failed", f"stopped after its timeout of {timeout} s"
    if returncode == 0:
        return "ok", "exit 0"
    return "failed", f"exit {returncode}"


_ELAPSE = re.compile(r"^\s*(Next elapse|Iter(?:\.|ation) #\d+|\(in UTC\)):\s*(.*?)\s*$")


def parse_elapses(text: str) -> list[float]:
    """The elapses `systemd-analyze calendar --iterations=N` prints, as Unix times. Each is printed in the
    local time zone, followed by an "(in UTC)" line when that zone is not UTC; the UTC form is read."""
    found: list[str] = []
    for line in text.splitlines():
        match = _ELAPSE.match(line)
        if not match:
            continue
        label, value = match.groups()
        if label == "(in UTC)":
            if found:
                found[-1] = value
        elif value != "never":
            found.append(value)
    times = []
    for value in found:
        # "Fri 2026-11-27 08:00:00 UTC": the weekday and the zone's name are left out.
        parts = value.split()
        stamp = datetime.strptime(" ".join(parts[1:3]), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        times.append(stamp.timestamp())
    return times


def longest_gap(elapses: list[float]) -> float | None:
    """The longest time between two consecutive elapses; None with fewer than two (a one-off or never)."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(elapses)]
    return max(gaps) if gaps else None


def new_state(now: float) -> dict[str, Any]:
    return {"scheduled": now, "runs": 0, "failures": 0, "skipped": 0}


def record_run(state: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Fold a finished run into the state: a failure never moves the last success."""
    state["runs"] = state.get("runs", 0) + 1
    state["last_run"] = run
    if run["status"] == "ok":
        state["last_success"] = run["finished"]
    else:
        state["failures"] = state.get("failures", 0) + 1
    return state


def record_skip(state: dict[str, Any], now: float) -> dict[str, Any]:
    """A start refused by the lock: counted apart, neither a run nor a failure."""
    state["skipped"] = state.get("skipped", 0) + 1
    state["last_skip"] = now
    return state


# The metrics of a job (name, type, help). Before the first run only the schedule's and the counters
# are written, so an alert can tell a job that never ran from one that ran and failed.
METRICS = [
    ("berth_job_scheduled_timestamp_seconds", "gauge",
     "Unix time this host first scheduled the job (the start of the wait for a job that never ran)."),
    ("berth_job_expected_interval_seconds", "gauge",
     "Longest time between two runs of the job's schedule (absent when it runs once or never)."),
    ("berth_job_last_run_timestamp_seconds", "gauge", "Unix time the job's last run started."),
    ("berth_job_last_run_success", "gauge", "1 if the job's last run succeeded, else 0."),
    ("berth_job_last_duration_seconds", "gauge", "Seconds the job's last run took."),
    ("berth_job_last_success_timestamp_seconds", "gauge", "Unix time the job's last successful run ended."),
    ("berth_job_runs_total", "counter", "Runs of the job that ended, succeeded or failed."),
    ("berth_job_failures_total", "counter",
     "Runs of the job that failed (exit status, timeout, stopped, could not start)."),
    ("berth_job_skipped_total", "counter", "Starts of the job refused because another run held its lock."),
]


def metric_values(state: dict[str, Any], interval: float | None) -> dict[str, float | int | None]:
    """The value of each metric; None leaves its line out."""
    last = state.get("last_run")
    return {
        "berth_job_scheduled_timestamp_seconds": state.get("scheduled"),
        "berth_job_expected_interval_seconds": interval,
        "berth_job_last_run_timestamp_seconds": last["started"] if last else None,
        "berth_job_last_run_success": int(last["status"] == "ok") if last else None,
        "berth_job_last_duration_seconds": last["seconds"] if last else None,
        "berth_job_last_success_timestamp_seconds": state.get("last_success"),
        "berth_job_runs_total": state.get("runs", 0),
        "berth_job_failures_total": state.get("failures", 0),
        "berth_job_skipped_total": state.get("skipped", 0),
    }


def render_metrics(app: str, job: str, state: dict[str, Any], interval: float | None) -> str:
    """node_exporter textfile lines of one job. The HELP and TYPE lines are the same in every job's file,
    as node_exporter needs to merge one metric from several files."""
    labels = f'{{app="{app}",job_name="{job}"}}'
    lines = []
    values = metric_values(state, interval)
    for name, kind, help_text in METRICS:
        value = values[name]
        if value is None:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{labels} {value}"]
    return "\n".join(lines) + "\n"


# --- the host -----------------------------------------------------------------------------------


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Readers see the old or the new content, never a part (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def job_lock(path: str) -> Iterator[bool]:
    """The job's lock (flock, released when the process ends): yields False when another run holds it."""
    with Path(path).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@contextlib.contextmanager
def state_of(cfg: Config) -> Iterator[dict[str, Any]]:
    """The job's state for an update, then saved with its metrics. A held run and a refused start may
    record at the same moment: the state directory's lock (blocking, short) keeps their updates apart."""
    cfg.state_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(cfg.state_file.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = read_text(cfg.state_file)
        state = json.loads(text) if text else new_state(time.time())
        yield state
        write_atomic(cfg.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")
        write_atomic(cfg.metrics_file, render_metrics(cfg.app, cfg.job, state, expected_interval(cfg)))
    finally:
        os.close(fd)


def expected_interval(cfg: Config) -> float | None:
    """The longest gap of the schedule, as systemd computes it (None when it cannot be asked)."""
    try:
        proc = subprocess.run(
            ["systemd-analyze", "calendar", f"--iterations={ITERATIONS}", "--", cfg.schedule],
            capture_output=True, text=True, timeout=30, check=False, env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(cfg, f"warning: systemd-analyze calendar could not be run: {exc}")
        return None
    if proc.returncode != 0:
        log(cfg, f"warning: systemd-analyze calendar refused the schedule: {proc.stderr.strip()}")
        return None
    return longest_gap(parse_elapses(proc.stdout))


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def remove_container(name: str) -> None:
    """Stop (SIGTERM, then SIGKILL after STOP_GRACE) and remove the job's container, if it exists."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        docker("stop", "--time", str(STOP_GRACE), name, timeout=STOP_GRACE + 30)
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        docker("rm", "--force", name)


def run_container(cfg: Config, colour: str) -> tuple[int | None, bool]:
    """Run the command; (exit status, timed out). Its output goes to ours (the journal)."""
    try:
        proc = subprocess.Popen(compose_argv(cfg, colour), stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise JobError(f"docker compose could not be started: {exc}") from exc
    try:
        return proc.wait(timeout=cfg.timeout), False
    except subprocess.TimeoutExpired:
        remove_container(cfg.unit)
        return wait_briefly(proc), True
    except StopSignalError:
        remove_container(cfg.unit)
        wait_briefly(proc)
        raise


def wait_briefly(proc: subprocess.Popen[bytes]) -> int | None:
    """Once its container is gone, docker compose ends at once; if it does not, it is killed."""
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def stop_on_signal(signum: int, frame: object) -> None:
    """The first SIGTERM or SIGINT ends the run (its container is removed and the failure recorded); later
    ones are ignored, so that nothing interrupts that (systemd SIGKILLs a run that takes too long)."""
    for other in (signal.SIGTERM, signal.SIGINT):
        signal.signal(other, signal.SIG_IGN)
    raise StopSignalError(signal.Signals(signum).name)


def cmd_run(cfg: Config) -> int:
    with job_lock(cfg.lock) as held:
        if not held:
            log(cfg, f"not started: another run of this job holds its lock {cfg.lock} (counted as skipped)")
            with state_of(cfg) as state:
                record_skip(state, time.time())
            return EXIT_LOCKED
        started = time.time()
        run: dict[str, Any] = {"started": started, "exit_code": None}
        try:
            colour = live_colour(read_text(cfg.live_colour_file))
            image = colour_image(read_text(Path(cfg.project_dir) / ".env"), colour)
            run.update(colour=colour, image=image, service=cfg.services[colour])
            log(cfg, f"started: {' '.join(cfg.command)} in a one-off container of {cfg.services[colour]} "
                     f"({image}), timeout {cfg.timeout} s")
            # A container left by a run that was killed outright (the lock says none is running now).
            remove_container(cfg.unit)
            returncode, timed_out = run_container(cfg, colour)
            run["exit_code"] = returncode
            status, what = outcome(returncode, timed_out, cfg.timeout)
        except JobError as exc:
            status, what = "failed", f"not run: {exc}"
        except StopSignalError as exc:
            status, what = "failed", f"stopped by {exc} before it ended"
        finished = time.time()
        run.update(finished=finished, seconds=round(finished - started, 3), status=status, result=what)
        with state_of(cfg) as state:
            record_run(state, run)
        log(cfg, f"{'succeeded' if status == 'ok' else 'FAILED'}: {what}, {run['seconds']:.1f} s")
        return EXIT_OK if status == "ok" else EXIT_FAILED


def cmd_publish(cfg: Config) -> int:
    with state_of(cfg):
        pass
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="berth-job", description=__doc__.split("\n\n")[0])
    top.add_argument("action", choices=["run", "publish"], help="run the job now, or write its metrics")
    top.add_argument("unit", help="the job's unit name, e.g. berth-job-shop-summary")
    args = top.parse_args(argv)
    os.environ.setdefault("PATH", DEFAULT_PATH)
    if not re.fullmatch(r"berth-job-[a-z0-9-]+", args.unit):
        print(f"berth-job: {args.unit!r} is no job unit (berth-job-<app>-<job>)", file=sys.stderr)
        return EXIT_FAILED
    try:
        cfg = Config.load(CONFIG_DIR / f"{args.unit}.json")
    except (OSError, ValueError, KeyError) as exc:
        print(f"berth-job: the configuration of {args.unit} cannot be read: {exc}", file=sys.stderr)
        return EXIT_FAILED
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    try:
        return cmd_run(cfg) if args.action == "run" else cmd_publish(cfg)
    except OSError as exc:
        log(cfg, f"FAILED: {exc}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
