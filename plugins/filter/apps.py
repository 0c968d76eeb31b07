"""Jinja filters `berth_apps_plan` and `berth_apps_problems`: everything derived from `berth_apps`.

    {{ berth_apps | berth_apps_plan }}       # one dict per app: paths, ports, services, defaults filled in
    {{ berth_apps | berth_apps_problems }}   # one sentence per broken rule; [] when the description is good

`berth_apps` (roles/berth_apps) is the one description of the apps on a host. Every role reads it
through `berth_apps_plan`, so a path, a port or a service name is decided here and nowhere else:

- the compose project `name` in `/opt/<name>`, with the services `web-blue`/`web-green`,
  `worker-<worker>-blue`/`-green`, and `postgres`/`redis` when the app has them;
- the host ports of the colours (on 127.0.0.1): `web.host_port` (blue) and the next one (green), or,
  when it is 0, derived from a hash of the name: stable when apps are added, removed or reordered;
- the release's files under `/var/lib/berth/apps/<name>/` (the live colour nginx reads per request,
  the release state) and its lock `/run/lock/berth-release-<name>`;
- where its data lives (`data`): `local` (its own PostgreSQL and Redis containers, `local_services`),
  `host` (the `db` host: its database and role `db_name`, its Redis instance on `db_redis_port`, the
  passwords in `db_secrets_dir` there) or `external` (`database_url`/`redis_url` from the vault).

`berth_apps_topology_problems` holds the rules between the apps and the inventory (several app hosts,
the `db` group). `berth_apps_problems` holds the rules that span fields or apps (unique names, domains, ports, worker
names) and the ones a type cannot say (an image with a tag, a health path, environment names). Its
sentences name the app and the field, never an environment value (those may be secrets).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Derived host ports: blue = FIRST_PORT + 2 * (crc32(name) % PORT_SLOTS), green = blue + 1.
FIRST_PORT = 20000
PORT_SLOTS = 4000
STATE_ROOT = "/var/lib/berth/apps"
DB_SECRETS_ROOT = "/etc/berth/db"
PLACEMENTS = ("local", "host", "external")
# sslmode values of a PostgreSQL URL that encrypt the connection.
TLS_SSLMODES = {"require", "verify-ca", "verify-full"}
LOCK_ROOT = "/run/lock"

WEB_DEFAULTS = {"port": 8000, "health_path": "/healthz", "command": [], "host_port": 0}
WORKER_DEFAULTS = {"replicas": 1, "stop_grace_period": 30}
JOB_DEFAULTS = {"timeout": 3600}
APP_DEFAULTS = {"domains": [], "workers": [], "jobs": [], "migrate": [], "env": {}, "postgres": True,
                "redis": True, "memory": "256m", "cpus": 0.5, "data": "local", "data_tls": True,
                "database_url": "", "redis_url": ""}

NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
WORKER_NAME = NAME
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SIZE = re.compile(r"^[0-9]+[kmg]$")
# A Docker image reference ([registry[:port]/]path[:tag][@sha256:digest]) that names a tag or a digest.
_DOMAIN = r"([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*(:[0-9]+)?/"
_PATH = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
_TAG = r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
IMAGE = re.compile(rf"^({_DOMAIN})?{_PATH}(/{_PATH})*({_TAG}|({_TAG})?@sha256:[a-f0-9]{{64}})$")
# What a value in a single-quoted environment file cannot hold.
_BAD_VALUE = re.compile(r"[\x00-\x1f\x7f']")
RESERVED_ENV = {"DATABASE_URL", "REDIS_URL", "APP_COLOUR", "APP_PORT", "APP_PROCESS"}


def derived_port(name: str) -> int:
    """The blue port of an app without web.host_port (green is the next one)."""
    return FIRST_PORT + 2 * (zlib.crc32(name.encode()) % PORT_SLOTS)


def _app(raw: Mapping[str, Any]) -> dict[str, Any]:
    app = {**APP_DEFAULTS, **raw}
    name = str(app["name"])
    web = {**WEB_DEFAULTS, **(app.get("web") or {})}
    blue = int(web["host_port"]) or derived_port(name)
    web["services"] = {"blue": "web-blue", "green": "web-green"}
    workers = [
        {**WORKER_DEFAULTS, **worker,
         "services": {colour: f"worker-{worker['name']}-{colour}" for colour in ("blue", "green")}}
        for worker in app["workers"] or []
    ]
    jobs = [
        {**JOB_DEFAULTS, **job, "unit": f"berth-job-{name}-{job['name']}",
         "lock": f"{LOCK_ROOT}/berth-job-{name}-{job['name']}"}
        for job in app["jobs"] or []
    ]
    state_dir = f"{STATE_ROOT}/{name}"
    services = [service for service in ("postgres", "redis") if app[service]]
    return {
        **app,
        "name": name,
        "domains": list(app["domains"] or []),
        "web": web,
        "workers": workers,
        "jobs": jobs,
        "migrate": list(app["migrate"] or []),
        "env": dict(app["env"] or {}),
        "project": name,
        "dir": f"/opt/{name}",
        "db_name": name.replace("-", "_"),
        "ports": {"blue": blue, "green": blue + 1},
        # The data services in the app's compose project (none when its data lives elsewhere).
        "local_services": services if app["data"] == "local" else [],
        # On the db host (data: host): its Redis instance's port (its blue port, unique among the apps)
        # and the directory of its generated passwords.
        "db_redis_port": blue,
        "db_secrets_dir": f"{DB_SECRETS_ROOT}/{name}",
        "state_dir": state_dir,
        "live_colour_file": f"{state_dir}/live-colour",
        "state_file": f"{state_dir}/release.json",
        "lock_dir": f"{LOCK_ROOT}/berth-release-{name}",
        # The services of each colour: its web and its workers.
        "colour_services": {colour: [web["services"][colour]] + [w["services"][colour] for w in workers]
                            for colour in ("blue", "green")},
    }


def apps_plan(apps: Any) -> list[dict[str, Any]]:
    """Each app of `berth_apps` with its defaults filled in and everything derived from it."""
    return [_app(app) for app in apps or []]


def _command_problem(where: str, command: Any, required: bool) -> list[str]:
    if command is None or (isinstance(command, list) and not command):
        return [f"{where} needs a command (exec form, e.g. [python3, app.py, worker])"] if required else []
    if not isinstance(command, list) or not all(isinstance(part, (str, int, float)) for part in command):
        return [f"{where} must be a list of words (exec form, e.g. [python3, app.py, worker])"]
    return []


def _one_app(index: int, app: Mapping[str, Any]) -> list[str]:
    name = app.get("name")
    if not isinstance(name, str) or not NAME.match(name) or len(name) > 30:
        return [f"berth_apps[{index}].name must be lower-case letters, digits and single hyphens, starting "
                f"with a letter, at most 30 characters (e.g. shop); got {name!r}"]
    where = f"berth_apps: app {name}"
    found = []
    image = app.get("image")
    if not isinstance(image, str) or not IMAGE.match(image):
        found.append(f"{where}: image must be an image reference with a tag or digest "
                     f"([registry/]name:tag, lower case, e.g. registry.example.com/team/{name}:1.0.0; an implicit "
                     f"\"latest\" cannot be rolled back to); got {image!r}")
    for domain in app.get("domains") or []:
        if not isinstance(domain, str) or not DOMAIN.match(domain):
            found.append(f"{where}: domain {domain!r} is not a lower-case DNS name (e.g. {name}.example.com)")
    web = app.get("web") or {}
    if not str(web.get("health_path", "/")).startswith("/"):
        found.append(f"{where}: web.health_path must start with / (e.g. /healthz); got {web.get('health_path')!r}")
    if not 1 <= int(web.get("port", 8000)) <= 65535:
        found.append(f"{where}: web.port (the port the app listens on in its container) must be 1-65535, "
                     f"e.g. 8000; got {web.get('port')!r}")
    host_port = int(web.get("host_port", 0))
    if host_port and not 1024 <= host_port <= 65534:
        found.append(f"{where}: web.host_port (blue's port on 127.0.0.1; green gets the next one) must be "
                     f"1024-65534, or 0 to derive it; got {host_port}")
    found += _command_problem(f"{where}: web.command", web.get("command"), required=False)
    found += _command_problem(f"{where}: migrate", app.get("migrate"), required=False)
    seen: set[str] = set()
    for worker in app.get("workers") or []:
        wname = worker.get("name")
        if not isinstance(wname, str) or not WORKER_NAME.match(wname) or len(wname) > 20:
            found.append(f"{where}: worker name {wname!r} must be lower-case letters, digits and single hyphens, "
                         f"at most 20 characters (e.g. mailer)")
            continue
        if wname in seen:
            found.append(f"{where}: two workers are named {wname}")
        seen.add(wname)
        found += _command_problem(f"{where}: worker {wname}", worker.get("command"), required=True)
        if not 1 <= int(worker.get("replicas", 1)) <= 20:
            found.append(f"{where}: worker {wname}: replicas must be 1-20; got {worker.get('replicas')!r}")
        if not 1 <= int(worker.get("stop_grace_period", 30)) <= 3600:
            found.append(f"{where}: worker {wname}: stop_grace_period (seconds between SIGTERM and SIGKILL) "
                         f"must be 1-3600; got {worker.get('stop_grace_period')!r}")
    seen = set()
    for job in app.get("jobs") or []:
        jname = job.get("name")
        if not isinstance(jname, str) or not WORKER_NAME.match(jname) or len(jname) > 20:
            found.append(f"{where}: job name {jname!r} must be lower-case letters, digits and single hyphens, "
                         f"at most 20 characters (e.g. nightly-report)")
            continue
        if jname in seen:
            found.append(f"{where}: two jobs are named {jname}")
        seen.add(jname)
        found += _command_problem(f"{where}: job {jname}", job.get("command"), required=True)
        schedule = job.get("schedule")
        if not isinstance(schedule, str) or not schedule.strip() or _BAD_VALUE.search(schedule):
            found.append(f"{where}: job {jname}: schedule must be a systemd calendar expression "
                         f"(man systemd.time), e.g. \"*-*-* 03:30\" or hourly; got {schedule!r}")
        if not 10 <= int(job.get("timeout", 3600)) <= 86400:
            found.append(f"{where}: job {jname}: timeout must be 10-86400 seconds; got {job.get('timeout')!r}")
    env = app.get("env") or {}
    bad_names = sorted(str(key) for key in env if not ENV_NAME.match(str(key)))
    if bad_names:
        found.append(f"{where}: env names {', '.join(bad_names)} must be letters, digits and _, not starting "
                     f"with a digit")
    reserved = sorted(RESERVED_ENV.intersection(env))
    if reserved:
        found.append(f"{where}: env may not set {', '.join(reserved)}: berth sets them")
    for key, value in env.items():
        if value is None or isinstance(value, (Mapping, list)):
            found.append(f"{where}: env {key} must be a single value")
        elif _BAD_VALUE.search(str(value)):
            found.append(f"{where}: env {key} contains a single quote or a control character, which it may not "
                         f"(the value is not shown: it may be a secret)")
    found += _data_problems(where, app)
    if not SIZE.match(str(app.get("memory", "256m"))):
        found.append(f"{where}: memory must be a size, a number and k, m or g (e.g. 256m); got {app.get('memory')!r}")
    if not 0.01 <= float(app.get("cpus", 0.5)) <= 64:
        found.append(f"{where}: cpus must be 0.01-64 (cores, e.g. 0.5); got {app.get('cpus')!r}")
    return found


def _url_problem(where: str, field: str, url: Any, schemes: tuple[str, ...], example: str) -> list[str]:
    """A URL of a managed service; the messages never show it (it holds a password)."""
    if not isinstance(url, str) or not url:
        return [f"{where}: data: external needs {field} (from the vault, e.g. {example})"]
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        return [f"{where}: {field} must be a URL {' or '.join(s + '://' for s in schemes)}… with a host, e.g. "
                f"{example} (the value is not shown: it holds a password)"]
    return []


def _data_problems(where: str, app: Mapping[str, Any]) -> list[str]:
    data = app.get("data", "local")
    if data not in PLACEMENTS:
        return [f"{where}: data must be local (containers on each app host), host (the db host) or external "
                f"(a managed database); got {data!r}"]
    found = []
    if data != "external":
        found += [f"{where}: {field} is only read with data: external (this app has data: {data})"
                  for field in ("database_url", "redis_url") if app.get(field)]
        return found
    tls = app.get("data_tls", True)
    if app.get("postgres", True):
        url = app.get("database_url")
        problem = _url_problem(where, "database_url", url, ("postgres", "postgresql"),
                               "postgresql://shop:PASSWORD@db.example.com:5432/shop?sslmode=require")
        found += problem
        sslmode = parse_qs(urlsplit(url).query).get("sslmode", [""])[-1] if not problem else ""
        if not problem and tls and sslmode not in TLS_SSLMODES:
            found.append(f"{where}: database_url must ask for TLS with sslmode=require, verify-ca or verify-full "
                         f"(got sslmode={sslmode or 'nothing'}); data_tls: false allows a connection in the clear")
    if app.get("redis", True):
        url = app.get("redis_url")
        problem = _url_problem(where, "redis_url", url, ("redis", "rediss"),
                               "rediss://default:PASSWORD@redis.example.com:6380/0")
        found += problem
        if not problem and tls and urlsplit(url).scheme != "rediss":
            found.append(f"{where}: redis_url must use TLS (rediss://); data_tls: false allows redis:// in the clear")
    return found


def apps_problems(apps: Any) -> list[str]:
    """One sentence per broken rule of `berth_apps`; [] when every app is good."""
    if not isinstance(apps, list):
        return ["berth_apps must be a list of apps (see docs/apps.md)"]
    found: list[str] = []
    for index, app in enumerate(apps):
        if not isinstance(app, Mapping):
            found.append(f"berth_apps[{index}] must be an app (a mapping with name and image)")
            continue
        found += _one_app(index, app)
    # The rules between apps, over the apps whose own fields are sound enough to derive a plan from.
    named = [app for app in apps if isinstance(app, Mapping) and isinstance(app.get("name"), str)]
    try:
        plan = apps_plan(named)
    except (TypeError, ValueError, KeyError):
        return found
    names: dict[str, int] = {}
    for app in plan:
        names[app["name"]] = names.get(app["name"], 0) + 1
    found += [f"berth_apps: {count} apps are named {name}: each app needs its own name"
              for name, count in names.items() if count > 1]
    domains: dict[str, list[str]] = {}
    for app in plan:
        for domain in app["domains"]:
            domains.setdefault(domain, []).append(app["name"])
    found += [f"berth_apps: the domain {domain} is given {len(owners)} times ({', '.join(owners)}): "
              f"each domain goes to one app" for domain, owners in domains.items() if len(owners) > 1]
    free = max([port for app in plan for port in app["ports"].values()] + [FIRST_PORT]) + 2
    ports: dict[int, str] = {}
    for app in plan:
        for port in app["ports"].values():
            other = ports.get(port)
            if other is not None and other != app["name"]:
                found.append(f"berth_apps: apps {other} and {app['name']} would both use host port {port}: set "
                             f"web.host_port of one of them to a free even port, e.g. {free} (blue uses it, "
                             f"green the next one)")
            ports[port] = app["name"]
    return found


def edge_check_argv(app: Mapping[str, Any], path: str, behind_load_balancer: bool = False) -> list[str]:
    """The curl command that asks nginx on 127.0.0.1 for `path` of the app by its first domain and prints
    the status code: HTTPS, or, behind a load balancer that terminates TLS (nginx_load_balancers), HTTP on
    port 80 as the load balancer sends it. [] for an app without a domain (nginx does not serve it).
    -k: the certificate is the edge's own tests' concern; the question is whether the app answers.
    X-Berth-Edge-Check: 1 (honoured from loopback only) reaches the app even while it is in maintenance
    (the nginx role's flag): a deploy during maintenance is checked against the app, not the page."""
    if not app["domains"]:
        return []
    host = app["domains"][0]
    argv = ["curl", "-ksS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-H", "X-Berth-Edge-Check: 1"]
    if behind_load_balancer:
        return [*argv, "-H", "X-Forwarded-Proto: https", "--resolve", f"{host}:80:127.0.0.1", f"http://{host}{path}"]
    return [*argv, "--resolve", f"{host}:443:127.0.0.1", f"https://{host}{path}"]


def jobs_here(plan: Any, host: str, app_hosts: Any) -> list[dict[str, Any]]:
    """The plan as the host `host` runs its scheduled jobs: every app's jobs on the first app host (the
    inventory's order), none on the others, so that a job runs once however many app hosts serve the app."""
    hosts = list(app_hosts or [])
    runs_jobs = not hosts or hosts[0] == host
    return [app if runs_jobs else {**app, "jobs": []} for app in plan or []]


def topology_problems(apps: Any, app_hosts: Any, db_hosts: Any) -> list[str]:
    """The rules between the apps and the inventory's groups `app` (hosts serving the apps) and `db`."""
    plan = apps_plan(apps)
    app_hosts, db_hosts = list(app_hosts or []), list(db_hosts or [])
    found = []
    if plan and not app_hosts:
        found.append("berth_apps describes apps but no host is in the inventory group app (the hosts that serve "
                     "them): put your server(s) under app, as in inventories/production/hosts.yml")
    both = sorted(set(app_hosts) & set(db_hosts))
    if both:
        found.append(f"{', '.join(both)} cannot be in both groups app and db: the db host holds the data of "
                     f"several app hosts and runs no app")
    if len(db_hosts) > 1:
        found.append(f"the group db has {len(db_hosts)} hosts ({', '.join(db_hosts)}): berth manages one database "
                     f"host (no replication); keep one")
    for app in plan:
        where = f"berth_apps: app {app['name']}"
        if len(app_hosts) > 1 and app["local_services"]:
            found.append(f"{where} keeps its {' and '.join(app['local_services'])} on each app host (data: local), "
                         f"but there are {len(app_hosts)} app hosts ({', '.join(app_hosts)}): each would write to "
                         f"its own copy and the data would split. Set data: host (the db host) or data: external "
                         f"(a managed database), see docs/topology.md")
        if app["data"] == "host" and not db_hosts and (app["postgres"] or app["redis"]):
            found.append(f"{where} has data: host, but the inventory group db has no host: add your database "
                         f"server under db, as in inventories/hcloud/README.md")
    return found


class FilterModule:
    def filters(self) -> dict:
        return {"berth_apps_plan": apps_plan, "berth_apps_problems": apps_problems,
                "berth_apps_topology_problems": topology_problems, "berth_edge_check_argv": edge_check_argv,
                "berth_apps_jobs_here": jobs_here}
