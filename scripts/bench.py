#!/usr/bin/env python3
"""berth's benchmarks: how fast a host is provisioned, re-run, released and rolled back.

    scripts/bench.py                       # everything, 3 repetitions where a repetition is cheap
    scripts/bench.py --only second,release --repeat 5
    scripts/bench.py --only parallel --hosts 5

Every figure is measured on local test hosts (Debian 13 systemd containers, as in the demo, reached
with docker exec) side by side in three profiles, so that each optimisation shows as a ratio:

    baseline   plain ansible-core defaults: no pipelining, facts gathered by every play, no fact cache,
               5 forks
    berth      berth's ansible.cfg (pipelining, facts once and cached, 20 forks)
    mitogen    berth's ansible.cfg with Mitogen's strategy (ANSIBLE_STRATEGY=mitogen_linear, opt-in)

Phases:

    cold       site.yml on a fresh host (a new host per repetition)
    second     site.yml again on the converged host (must change nothing)
    release    deploy of an image already on the host (a new tag of v2, so a real start of the idle
               colour) and rollback to the warm previous colour, under steady HTTPS load through
               nginx; "switched" is command start -> first answer from the new version
    status     playbooks/status.yml (what `berth status` runs) on the converged host: read-only, one
               module round trip (the target: under 5 s for one host)
    backup     backup-now.yml and restore.yml of a database grown by --backup-mb MB (a lost
               database volume restored; every row compared), berth's profile (scripts/bench_backup.py)
    apps       what each extra app costs a no-change site.yml: one host with one app (the demo's shop:
               a worker, a job, migrations), then the same host with three apps
    parallel   site.yml on N fresh hosts at once versus one (berth and mitogen profiles)
    preflight  site.yml with a bad setting in its first and in its last layer, on the production
               example filled in as a user does and every host unreachable: command start to the
               error (no host is needed; berth's profile)

Prints each figure as it is measured, then a table (median / min / max, tasks, changed, the CPU
seconds each run cost in the test hosts and on the whole machine, slowest tasks) and, for the parallel
phase, the least time the machine's cores allow (the hosts share them); artifacts/bench.json holds
every figure so far (written after each one, so a failed phase keeps what came before).
The hosts are removed at the end (--keep leaves them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import bench_backup
import demo
import images
from _lib import ROOT, VENV_BIN, log, output, run, venv_env

sys.path.insert(0, str(ROOT / "tests" / "load"))
sys.path.insert(0, str(ROOT / "tests"))
import bad_settings
import example_inventory
from release_phases import LoadedHost

INVENTORY = ROOT / ".cache" / "bench-inventory"
OUT = ROOT / "artifacts" / "bench.json"
SITE = "shop.localhost"
PROFILES: dict[str, dict[str, str]] = {
    "berth": {},
    "mitogen": {"ANSIBLE_STRATEGY": "mitogen_linear"},
    "baseline": {
        "ANSIBLE_PIPELINING": "False",
        "ANSIBLE_GATHERING": "implicit",
        "ANSIBLE_CACHE_PLUGIN": "memory",
        "ANSIBLE_FORKS": "5",
    },
}
# The profiles measured (--profiles); the host of the second and release phases is converged with "berth".
SELECTED = list(PROFILES)
PHASES = ("cold", "second", "release", "status", "backup", "apps", "parallel", "preflight")


# --- test hosts -----------------------------------------------------------------------------------


def platforms(names: list[str]) -> str:
    return json.dumps(
        {
            "molecule_yml": {
                "platforms": [{"name": n, "image": "berth-test:trixie", "groups": ["nested_docker"]} for n in names]
            }
        }
    )


def write_inventory(names: list[str]) -> Path:
    """An inventory like inventories/local (same group_vars) naming the bench hosts."""
    INVENTORY.mkdir(parents=True, exist_ok=True)
    # "docker" (community.docker.docker for Ansible) lets Mitogen use its own docker exec transport.
    hosts = {n: {"ansible_connection": "docker"} for n in names}
    doc = {"all": {"children": {"berth": {"children": {"app": {"hosts": hosts}}},
                                "nested_docker": {"hosts": dict.fromkeys(names)}}}}
    (INVENTORY / "hosts.yml").write_text(json.dumps(doc, indent=2))
    link = INVENTORY / "group_vars"
    if not link.exists():
        link.symlink_to(ROOT / "inventories" / "local" / "group_vars")
    return INVENTORY


def playbook_quiet(path: str, *extra: str) -> None:
    run([str(VENV_BIN / "ansible-playbook"), path, *extra], cwd=ROOT, env=venv_env(), stdout=subprocess.DEVNULL)


def create(names: list[str]) -> Path:
    """Fresh hosts with what a test host needs (inner engine drop-in, Pebble) and the load tools."""
    destroy(names)
    # A new host gets a new address: facts cached for an earlier host of the same name would send the
    # lockout guard to the old one.
    shutil.rmtree(ROOT / ".cache" / "facts", ignore_errors=True)
    playbook_quiet("molecule/shared/create.yml", "-e", platforms(names))
    inventory = write_inventory(names)
    playbook_quiet("molecule/shared/inner-docker.yml", "-i", str(inventory))
    playbook_quiet("molecule/shared/pebble.yml", "-i", str(inventory))
    for name in names:
        subprocess.run(
            [
                "docker",
                "exec",
                name,
                "sh",
                "-c",
                f"apt-get install -y -q wrk >/dev/null && echo '127.0.0.1 {SITE}' >> /etc/hosts",
            ],
            check=True,
        )
    return inventory


def destroy(names: list[str]) -> None:
    playbook_quiet("molecule/shared/destroy.yml", "-e", platforms(names))


# --- CPU time: the test hosts share this machine's cores ----------------------------------------


def host_cpu(name: str) -> float | None:
    """CPU seconds a test host has used: its services, the modules Ansible runs in it, its inner engine.

    Read from the container's cgroup: cgroup v1 (cpuacct.usage, ns) or v2 (cpu.stat usage_usec), with
    the cgroupfs or the systemd driver. None when no such file is found. The containers the host's own
    engine runs (the app, PostgreSQL, Redis) are not in it: sharing the machine's cgroup namespace,
    they get cgroups of their own next to the host's. machine_cpu() counts them.
    """
    cid = output(["docker", "inspect", "-f", "{{.Id}}", name])
    if not cid:
        return None
    for v1 in (f"cpuacct/docker/{cid}", f"cpuacct/system.slice/docker-{cid}.scope"):
        usage = Path("/sys/fs/cgroup") / v1 / "cpuacct.usage"
        if usage.exists():
            return int(usage.read_text()) / 1e9
    for v2 in (f"docker/{cid}", f"system.slice/docker-{cid}.scope"):
        stat = Path("/sys/fs/cgroup") / v2 / "cpu.stat"
        if stat.exists():
            return int(dict(line.split() for line in stat.read_text().splitlines())["usage_usec"]) / 1e6
    return None


def machine_cpu() -> float:
    """CPU seconds this machine has been busy (all cores: controller, Docker engine and test hosts)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def cpu_snapshot(hosts: list[str]) -> tuple[float | None, float]:
    used = [host_cpu(h) for h in hosts]
    return (None if None in used else sum(u for u in used if u is not None)), machine_cpu()


# --- running playbooks and reading what they did -------------------------------------------------


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ansible(profile: str, inventory: Path, playbook: str, *extra: str) -> dict:
    """Run a playbook with a profile's settings; return its time, task counts and slowest tasks."""
    env = (
        venv_env()
        | PROFILES[profile]
        # JSON on stdout (task timings included); profile_tasks would print into it, so the enabled
        # callbacks are replaced by one that prints nothing (an empty list is refused by ansible-core).
        | {
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.junit",
            "JUNIT_OUTPUT_DIR": str(ROOT / ".cache" / "bench-junit"),
        }
    )
    if profile == "baseline":
        env["ANSIBLE_CACHE_PLUGIN_CONNECTION"] = ""
    groups = json.loads((inventory / "hosts.yml").read_text())["all"]["children"]
    hosts = list(groups["berth"]["children"]["app"]["hosts"])
    hosts_before, machine_before = cpu_snapshot(hosts)
    start = time.monotonic()
    done = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), playbook, *site_vars(), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - start
    hosts_after, machine_after = cpu_snapshot(hosts)
    if done.returncode != 0:
        sys.exit(f"bench: {playbook} failed ({profile}):\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    durations: dict[str, float] = {}
    tasks = 0
    for play in report["plays"]:
        for task in play["tasks"]:
            tasks += 1
            span = task["task"].get("duration", {})
            if span.get("start") and span.get("end"):
                name = task["task"]["name"] or "(unnamed)"
                durations[name] = durations.get(name, 0.0) + parse_time(span["end"]) - parse_time(span["start"])
    stats = report["stats"]
    slowest = sorted(durations.items(), key=lambda kv: -kv[1])[:5]
    return {
        "seconds": round(seconds, 2),
        "tasks": tasks,
        "changed": sum(s.get("changed", 0) for s in stats.values()),
        "ok": sum(s.get("ok", 0) for s in stats.values()),
        "slowest": [[name, round(t, 2)] for name, t in slowest],
        # CPU seconds the run cost: in the test hosts, and on the whole machine (hosts, controller and
        # Docker engine). -1 when a host's cgroup could not be read.
        "host_cpu": -1 if hosts_before is None or hosts_after is None else round(hosts_after - hosts_before, 1),
        "machine_cpu": round(machine_after - machine_before, 1),
    }


def site_vars() -> list[str]:
    """What demo.py passes to site.yml: the demo secrets and the test kit's image archive."""
    return ["-e", f"@{demo.secrets()}", "-e", json.dumps({"app_stack_image_archives": [str(images.kit_tarball())]})]


# --- phases (each appends to RESULTS as it measures: see record()) -------------------------------

RESULTS: dict = {}


def record(phase: str, measure: str, profile: str, figures: dict) -> None:
    """Keep one measurement, print it at once and write everything so far to artifacts/bench.json."""
    RESULTS.setdefault(phase, {}).setdefault(measure, {}).setdefault(profile, []).append(figures)
    shown = {k: v for k, v in figures.items() if k != "slowest"}
    log(f"{measure} ({profile}): {json.dumps(shown)}")
    OUT.parent.mkdir(exist_ok=True)
    when = datetime.now().isoformat(timespec="seconds")
    OUT.write_text(json.dumps({"when": when, "cpus": os.cpu_count(), "results": RESULTS}, indent=2))


def cold(repeat: int) -> None:
    for i in range(repeat):
        for profile in SELECTED:
            name = f"berth-bench-cold-{profile}"
            inventory = create([name])
            log(f"cold site.yml ({profile}, {i + 1}/{repeat})")
            record("cold", "cold site.yml", profile, ansible(profile, inventory, "site.yml"))
            destroy([name])


def converged() -> Path:
    """The host of the second and release phases: site.yml and a first release, once."""
    name = "berth-bench-1"
    inventory = create([name])
    log("site.yml and the first release, to converge the host")
    ansible("berth", inventory, "site.yml")
    for app in ("shop", "blog"):
        ansible("berth", inventory, "playbooks/deploy.yml", "-e", f"app={app}", "-e", "app_version=v1")
    return inventory


def second(repeat: int, inventory: Path) -> None:
    for i in range(repeat):
        for profile in SELECTED:
            log(f"second site.yml ({profile}, {i + 1}/{repeat})")
            record("second", "second site.yml", profile, ansible(profile, inventory, "site.yml"))


def release(repeat: int, inventory: Path, wrk: int) -> None:
    """Deploy (a new tag of an image on the host) and rollback (to the warm colour), under load."""
    # The steady keep-alive client only by default: wrk floods as fast as it can and would take the
    # machine's CPUs from the deploy being timed (--wrk adds it, as the release scenario's tests do).
    host = LoadedHost("berth-bench-1", SITE, str(inventory / "hosts.yml"), wrk_connections=wrk)
    host.install_client()
    for i in range(repeat):
        for profile in SELECTED:
            tag = f"bench-{profile}-{i}"
            host.docker("docker", "tag", "berth-demo-app:v2", f"berth-demo-app:{tag}")
            for kind, playbook, extra, version in (
                ("deploy", "playbooks/deploy.yml", ["-e", "app=shop", "-e", f"app_version={tag}"], "v2"),
                ("rollback", "playbooks/rollback.yml", ["-e", "app=shop"], "v1"),
            ):
                log(f"{kind} under load ({profile}, {i + 1}/{repeat})")
                host.extra_env = PROFILES[profile]
                phase = host.phase(f"{kind}-{profile}-{i}", playbook, *extra)
                if phase.rc != 0:
                    sys.exit(f"bench: {kind} failed:\n{phase.output[-4000:]}")
                figures = {
                    "seconds": round(phase.seconds, 2),
                    "switched": round(phase.switched_after(version) or -1, 2),
                    "sent": phase.load["sent"] + phase.wrk["requests"],
                    "failed": phase.failed,
                    # the machine's 1-minute load average after the phase (other work skews figures)
                    "load": round(os.getloadavg()[0], 1),
                }
                record("release", kind, profile, figures)


def status(repeat: int, inventory: Path) -> None:
    """playbooks/status.yml on the converged host: what `berth status` runs (two apps, one host)."""
    for i in range(repeat):
        for profile in SELECTED:
            log(f"status ({profile}, {i + 1}/{repeat})")
            record("status", "status.yml", profile, ansible(profile, inventory, "playbooks/status.yml"))


def backup(inventory: Path, size_mb: int) -> None:
    log(f"backup and restore of a database grown by {size_mb} MB")
    figures = bench_backup.measure("berth-bench-1", size_mb, inventory, project="shop", extra=tuple(site_vars()))
    database = {"database_mib": round(figures["database_bytes"] / 2**20), "rows": figures["rows"]}
    record("backup", "backup-now.yml", "berth", {"seconds": figures["backup_now_playbook_seconds"], **database})
    record("backup", "restore.yml", "berth", {"seconds": figures["restore_playbook_seconds"], **database})
    record("backup", "details", "berth", figures)


# The apps phase: what each extra app costs a no-change site.yml. shop is the demo's (a worker, a job,
# migrations, PostgreSQL and Redis); the two others are plain web apps with PostgreSQL and Redis.
SHOP = {
    "name": "shop", "image": "berth-demo-app:v1", "domains": ["shop.localhost"],
    "workers": [{"name": "default", "command": ["python3", "/app/app.py", "worker"], "stop_grace_period": 15}],
    "jobs": [{"name": "summary", "schedule": "*:0/15", "command": ["python3", "/app/app.py", "summary"]}],
    "migrate": ["python3", "/app/app.py", "migrate"],
}  # fmt: skip
PLAIN = [{"name": name, "image": "berth-demo-app:v1", "domains": [f"{name}.localhost"]} for name in ("blog", "wiki")]


def apps(repeat: int, keep: bool) -> None:
    """A no-change site.yml on one host with one app, then with three (the same host, two apps added)."""
    name = "berth-bench-apps"
    inventory = create([name])
    for described in ([SHOP], [SHOP, *PLAIN]):
        extra = ["-e", json.dumps({"berth_apps": described})]
        log(f"site.yml with {len(described)} app(s), to converge")
        ansible("berth", inventory, "site.yml", *extra)
        for i in range(repeat):
            for profile in SELECTED:
                log(f"second site.yml, {len(described)} app(s) ({profile}, {i + 1}/{repeat})")
                figures = ansible(profile, inventory, "site.yml", *extra)
                record("apps", f"second site.yml, {len(described)} app(s)", profile, figures)
    if not keep:
        destroy([name])


def parallel(count: int, keep: bool) -> None:
    names = [f"berth-bench-p{i}" for i in range(1, count + 1)]
    for profile in [p for p in ("berth", "mitogen") if p in SELECTED]:
        for group in ([names[0]], names):
            inventory = create(group)
            log(f"site.yml on {len(group)} host(s) at once ({profile})")
            record("parallel", f"{len(group)} host(s) at once", profile, ansible(profile, inventory, "site.yml"))
            if not keep:
                destroy(group)


def preflight(repeat: int) -> None:
    first, last = bad_settings.LAYERS[0], bad_settings.LAYERS[-1]
    cases = [c for c in bad_settings.load_cases() if not c.host and c.layer in (first, last)]
    chosen = {"first layer": next(c for c in cases if c.layer == first), "last layer": cases[-1]}
    inventory, password = example_inventory.fill_offline(ROOT / ".cache" / "bench-preflight")
    unreachable = ["-e", "ansible_host=127.0.0.1", "-e", "ansible_port=1", "-e", "berth_ssh_user=root"]
    for i in range(repeat):
        for where, case in chosen.items():
            log(f"preflight: a bad setting in the {where} ({case.name}), {i + 1}/{repeat}")
            outcome = bad_settings.run(case, inventory, password, unreachable)
            if problems := bad_settings.problems(outcome):
                sys.exit(f"bench: {case.name} was not refused as it should be: {problems}")
            record("preflight", f"bad setting, {where} ({case.layer})", "berth", {"seconds": round(outcome.seconds, 2)})


# --- report --------------------------------------------------------------------------------------


def spread(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if r.get(key, -1) >= 0]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def row(measure: str, profile: str, runs: list[dict]) -> str:
    first = runs[0]
    switched = spread(runs, "switched") if "switched" in first else ""
    changed = "/".join(str(r["changed"]) for r in runs) if "changed" in first else ""
    requests = f"{sum(r['sent'] for r in runs)} / {sum(r['failed'] for r in runs)}" if "sent" in first else ""
    cpu = f"{spread(runs, 'host_cpu')} / {spread(runs, 'machine_cpu')}" if "machine_cpu" in first else ""
    tasks = first.get("tasks", "")
    cells = [measure, profile, len(runs), spread(runs, "seconds"), switched, tasks, changed, requests, cpu]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table() -> str:
    rows = [
        "| measure | profile | runs | seconds: median (min-max) | switched (s) | tasks | changed | sent / failed "
        "| CPU s: hosts / machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for measures in RESULTS.values():
        rows += [
            row(measure, profile, runs)
            for measure, profiles in measures.items()
            if measure != "details"  # the backup phase's full record: in bench.json only
            for profile, runs in profiles.items()
        ]
    return "\n".join(rows)


def parallel_summary() -> str:
    """N hosts against one: the ratio, and the least the N-host run could take on this machine's cores.

    The test hosts share the controller's cores, so the N-host run cannot be shorter than the CPU
    seconds it used divided by the cores; nor than N times the one-host run's CPU seconds divided by
    the cores. On real VPSes each host brings its own CPU and only the controller's share remains.
    """
    lines = []
    cores = os.cpu_count() or 1
    measures = RESULTS.get("parallel", {})
    for profile in PROFILES:
        one = measures.get("1 host(s) at once", {}).get(profile)
        many = [(m, runs[profile]) for m, runs in measures.items() if not m.startswith("1 ") and profile in runs]
        if not one or not many:
            continue
        measure, runs = many[0]
        count = int(measure.split()[0])
        t1 = statistics.median(r["seconds"] for r in one)
        tn = statistics.median(r["seconds"] for r in runs)
        c1 = statistics.median(r["machine_cpu"] for r in one)
        cn = statistics.median(r["machine_cpu"] for r in runs)
        lines.append(
            f"- {profile}: 1 host {t1:.1f} s ({c1:.0f} CPU s), {count} hosts {tn:.1f} s ({cn:.0f} CPU s): "
            f"{tn / t1:.2f}x. On {cores} cores the {count}-host run needs at least {cn / cores:.0f} s "
            f"({cn / cores / t1:.2f}x) for the CPU it used, and {count} x {c1:.0f} / {cores} = "
            f"{count * c1 / cores:.0f} s ({count * c1 / cores / t1:.2f}x) for {count} times one host's."
        )
    return "\n".join(lines)


def slowest() -> str:
    lines = []
    for phase in ("cold", "second"):
        for measure, profiles in RESULTS.get(phase, {}).items():
            for profile, runs in profiles.items():
                top = ", ".join(f"{name} {t:.1f}s" for name, t in runs[-1]["slowest"])
                lines.append(f"- {measure}, {profile}: {top}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases: {', '.join(PHASES)}")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of second and release")
    parser.add_argument("--cold-repeat", type=int, default=1, help="repetitions of cold (a new host each)")
    parser.add_argument("--hosts", type=int, default=5, help="hosts of the parallel phase")
    parser.add_argument("--wrk", type=int, default=0, help="also run wrk with this many connections in release")
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated profiles to measure")
    parser.add_argument("--backup-mb", type=int, default=100, help="MB added to the database of the backup phase")
    parser.add_argument("--keep", action="store_true", help="leave the bench hosts running")
    args = parser.parse_args()
    only = [p for p in args.only.split(",") if p]
    if unknown := set(only) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    SELECTED[:] = [p for p in PROFILES if p in args.profiles.split(",")]
    run([sys.executable, str(ROOT / "scripts" / "setup.py"), "--engine"])
    run([sys.executable, str(ROOT / "scripts" / "images.py"), "trixie", "kit"])
    demo.admin_key()
    started = time.monotonic()
    if "cold" in only:
        cold(args.cold_repeat)
    if {"second", "release", "status", "backup"} & set(only):
        inventory = converged()
        if "second" in only:
            second(args.repeat, inventory)
        if "release" in only:
            release(args.repeat, inventory, args.wrk)
        if "status" in only:
            status(args.repeat, inventory)
        if "backup" in only:
            backup(inventory, args.backup_mb)
        if not args.keep:
            destroy(["berth-bench-1"])
    if "apps" in only:
        apps(args.repeat, keep=args.keep)
    if "parallel" in only:
        parallel(args.hosts, keep=args.keep)
    if "preflight" in only:
        preflight(args.repeat)
    print(f"\n{table()}\n\nSlowest tasks (last run):\n{slowest()}\n")
    if summary := parallel_summary():
        print(f"Parallel hosts against the machine's cores:\n{summary}\n")
    log(f"bench took {time.monotonic() - started:.0f} s; figures in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
