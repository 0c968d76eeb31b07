"""What a user of a converged host observes after the docker and app_stack roles with two apps (see
molecule.yml): shop (a worker, PostgreSQL, Redis) and blog (PostgreSQL only, web.host_port 18000).
shop's jobs (the role app_jobs, tests/test_app_jobs.py) run in one-off containers of its project: the
checks of the app's services leave those out."""

import importlib.util
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml

testinfra_hosts = ["all"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[4]

# The apps as the scenario's inventory (molecule.yml) describes them, and what the project's filter
# derives from them. Molecule reads "$$" in molecule.yml as a literal "$"; shop's jobs are a template
# (a test adds jobs with -e __extra_jobs): here they are the scenario's own.
_spec = importlib.util.spec_from_file_location("berth_apps_filter", ROOT / "plugins" / "filter" / "apps.py")
assert _spec and _spec.loader
apps_filter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(apps_filter)
HOST_VARS = yaml.safe_load((HERE.parent / "molecule.yml").read_text().replace("$$", "$"))["provisioner"][
    "inventory"]["host_vars"]["berth-app-stack-trixie"]
BERTH_APPS = [
    {**app, "jobs": HOST_VARS["__shop_jobs"]} if app["name"] == "shop" else app for app in HOST_VARS["berth_apps"]
]
PLAN = {app["name"]: app for app in apps_filter.apps_plan(BERTH_APPS)}
SHOP, BLOG = PLAN["shop"], PLAN["blog"]
WORKER = SHOP["workers"][0]
# Before any release the live colour is blue; the scenario keeps the idle web warm.
SERVICES = {
    "shop": ["postgres", "redis", "web-blue", "web-green", "worker-default-blue"],
    "blog": ["postgres", "web-blue", "web-green"],
}
PASSWORD = re.compile(r"^[A-Za-z0-9]{32}$")


def get(host, port, path):
    """GET http://127.0.0.1:<port><path> from inside the test host; return (status, body)."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5)\n"
        "    print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    out = host.check_output(f"python3 -c {shlex.quote(script)}")
    status, _, body = out.partition("\n")
    return int(status), body


def get_json(host, port, path):
    status, body = get(host, port, path)
    assert status == 200, body
    return json.loads(body)


def containers(host, project):
    """{service: [container, …]} of a compose project (a worker has one per replica), without one-off
    containers (`docker compose run`: shop's jobs, every minute for summary, and the kit test's)."""
    out = host.check_output(f"docker compose -p {project} ps --all --format json")
    found = {}
    for container in map(json.loads, out.splitlines()):  # compose prints one JSON object per line
        if "com.docker.compose.oneoff=True" in container["Labels"].split(","):
            continue
        found.setdefault(container["Service"], []).append(container)
    return found


def inspect(host, container_id):
    return json.loads(host.check_output(f"docker inspect {container_id}"))[0]


def inspect_service(host, project, service):
    return [inspect(host, c["ID"]) for c in containers(host, project)[service]]


def secret(host, app, name):
    return host.file(f"{app['dir']}/secrets/{name}-password").content_string


def in_container(host, container_id, script):
    """Run a Python script in a container; return the command's result (rc, stdout, stderr)."""
    return host.run(f"docker exec {container_id} python3 -c {shlex.quote(script)}")


def test_engine_and_compose_v2(host):
    assert host.service("docker").is_running
    assert host.check_output("docker compose version --short").lstrip("v").startswith("2.")


@pytest.mark.parametrize("project", SERVICES)
def test_each_app_is_its_own_project_running_and_healthy(host, project):
    found = containers(host, project)
    assert sorted(found) == SERVICES[project]
    for service, running in found.items():
        for container in running:
            assert container["State"] == "running", service
            # Workers have no health check (the image's HTTP one would never pass without a port).
            assert container["Health"] == ("" if service.startswith("worker-") else "healthy"), service


def test_ports_are_the_plans(host):
    # shop's are derived from its name; blog's from web.host_port.
    assert BLOG["ports"] == {"blue": 18000, "green": 18001}
    assert SHOP["ports"]["blue"] == apps_filter.derived_port("shop")
    for app in PLAN.values():
        for colour, port in app["ports"].items():
            assert get_json(host, port, "/version") == {"version": "v1", "colour": colour}
            assert get(host, port, "/healthz") == (200, "ok")


def test_shop_writes_and_reads_its_postgres_and_redis(host):
    ports = SHOP["ports"]
    before = get_json(host, ports["blue"], "/stats")
    after = get_json(host, ports["blue"], "/visit")
    assert after["db_rows"] == before["db_rows"] + 1
    assert after["redis_count"] == before["redis_count"] + 1
    # The other colour shares the same database and cache.
    seen = get_json(host, ports["green"], "/stats")
    assert (seen["db_rows"], seen["redis_count"]) == (after["db_rows"], after["redis_count"])


def test_the_worker_runs_its_replicas_in_the_live_colour_only(host):
    found = containers(host, "shop")
    assert len(found[WORKER["services"]["blue"]]) == WORKER["replicas"] == 2
    assert WORKER["services"]["green"] not in found
    for worker in inspect_service(host, "shop", WORKER["services"]["blue"]):
        config = worker["Config"]
        assert config["Cmd"] == WORKER["command"]
        assert "APP_COLOUR=blue" in config["Env"]
        assert config["StopSignal"] == "SIGTERM"
        assert config["StopTimeout"] == WORKER["stop_grace_period"]
        assert config["Healthcheck"]["Test"] == ["NONE"]
        assert not worker["HostConfig"]["PortBindings"]


def test_the_worker_processes_jobs(host):
    port = SHOP["ports"]["blue"]
    before = get_json(host, port, "/jobs")["processed"]
    get_json(host, port, f"/enqueue?id=verify-{time.time_ns()}")
    deadline = time.monotonic() + 30
    while get_json(host, port, "/jobs")["processed"] == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert get_json(host, port, "/jobs")["processed"] == before + 1


def test_blog_has_no_redis(host):
    assert "redis" not in containers(host, "blog")
    assert not host.file(f"{BLOG['dir']}/secrets/redis.env").exists
    assert not host.file(f"{BLOG['dir']}/secrets/redis-password").exists
    for colour in ("blue", "green"):
        env = inspect_service(host, "blog", f"web-{colour}")[0]["Config"]["Env"]
        assert not any(var.startswith("REDIS_URL=") for var in env)
        assert any(var.startswith("DATABASE_URL=postgresql://blog:") for var in env)
    assert "redis" not in host.file(f"{BLOG['dir']}/compose.yaml").content_string


def test_only_the_web_colours_are_published_and_only_on_loopback(host):
    expected = {
        f"127.0.0.1:{port}->8000/tcp" for app in PLAN.values() for port in app["ports"].values()
    }
    mappings = {
        entry
        for line in host.check_output("docker ps --format '{{.Ports}}'").splitlines()
        for entry in line.split(", ")
        if "->" in entry
    }
    assert mappings == expected
    docker_listeners = sorted(
        line.split()[3]
        for line in host.check_output("ss -Hltnp").splitlines()
        if "docker-proxy" in line or "dockerd" in line
    )
    assert docker_listeners == sorted(entry.split("->")[0] for entry in expected)


@pytest.mark.parametrize("project", SERVICES)
def test_backend_network_is_internal(host, project):
    assert host.check_output(f"docker network inspect -f '{{{{.Internal}}}}' {project}_backend") == "true"
    for service in ("postgres", "redis"):
        if service in SERVICES[project]:
            networks = inspect_service(host, project, service)[0]["NetworkSettings"]["Networks"]
            assert list(networks) == [f"{project}_backend"]


@pytest.mark.parametrize(("project", "service"), [(p, s) for p, services in SERVICES.items() for s in services])
def test_containers_are_hardened_and_limited(host, project, service):
    for container in inspect_service(host, project, service):
        config = container["HostConfig"]
        assert "no-new-privileges:true" in config["SecurityOpt"]
        assert config["ReadonlyRootfs"] is True
        assert config["Memory"] > 0
        assert config["NanoCpus"] > 0
        assert config["RestartPolicy"]["Name"] == "unless-stopped"
        assert config["LogConfig"]["Type"] == "json-file"
        assert config["LogConfig"]["Config"] == {"max-size": "10m", "max-file": "3"}
        if service.startswith(("web-", "worker-")):
            assert config["CapDrop"] == ["ALL"]
            assert config["Memory"] == 256 * 1024 * 1024
            assert config["NanoCpus"] == 500_000_000


def test_data_lives_in_named_volumes(host):
    for project in SERVICES:
        mounts = {m["Destination"]: m for m in inspect_service(host, project, "postgres")[0]["Mounts"]}
        assert mounts["/var/lib/postgresql/data"]["Name"] == f"{project}_postgres-data"
    mounts = {m["Destination"]: m for m in inspect_service(host, "shop", "redis")[0]["Mounts"]}
    assert mounts["/data"]["Name"] == "shop_redis-data"


@pytest.mark.parametrize("project", SERVICES)
def test_secrets_only_in_0600_files(host, project):
    app = PLAN[project]
    assert host.file(f"{app['dir']}/secrets").mode == 0o700
    names = ["app.env", "postgres.env", "postgres-password"]
    names += ["redis.env", "redis-password"] if app["redis"] else []
    for name in names:
        found = host.file(f"{app['dir']}/secrets/{name}")
        assert (found.user, found.group, found.mode) == ("root", "root", 0o600), name
    secrets = [secret(host, app, "postgres")] + ([secret(host, app, "redis")] if app["redis"] else [])
    # Generated on the host: 32 letters and digits.
    assert all(PASSWORD.match(s) for s in secrets)
    assert f"POSTGRES_PASSWORD='{secrets[0]}'" in host.file(f"{app['dir']}/secrets/postgres.env").content_string
    for public in (f"{app['dir']}/compose.yaml", f"{app['dir']}/.env"):
        content = host.file(public).content_string
        assert not any(s in content for s in secrets), public
    # Not in any container's command or the host's process list either.
    processes = host.check_output("ps -eo args")
    assert not any(s in processes for s in secrets)
    for service in SERVICES[project]:
        for container in inspect_service(host, project, service):
            config = container["Config"]
            assert not any(s in json.dumps([config["Cmd"], config["Entrypoint"]]) for s in secrets)


def test_each_app_has_its_own_passwords(host):
    assert secret(host, SHOP, "postgres") != secret(host, BLOG, "postgres")
    assert secret(host, SHOP, "postgres") != secret(host, SHOP, "redis")


def test_the_colour_images_are_named_in_env(host):
    for app in PLAN.values():
        content = host.file(f"{app['dir']}/.env").content_string
        assert "BLUE_IMAGE=berth-demo-app:v1" in content.splitlines()
        assert "GREEN_IMAGE=berth-demo-app:v1" in content.splitlines()


def test_app_env_values_are_taken_literally(host):
    env = inspect_service(host, "shop", "web-blue")[0]["Config"]["Env"]
    assert "APP_GREETING=hello $HOME, literally #1" in env
    assert "APP_PORT=8000" in env


# Isolation between apps (docs/apps.md): own networks, own files, own passwords.
def test_shop_cannot_reach_blogs_postgres(host):
    blog_pg = inspect_service(host, "blog", "postgres")[0]["NetworkSettings"]["Networks"]["blog_backend"]
    address = blog_pg["IPAddress"]
    assert address
    probe = (
        "import socket, sys\n"
        f"s = socket.socket(); s.settimeout(3)\n"
        f"sys.exit(0 if s.connect_ex(('{address}', 5432)) == 0 else 1)\n"
    )
    for service in ("web-blue", WORKER["services"]["blue"]):
        container = containers(host, "shop")[service][0]["ID"]
        assert in_container(host, container, probe).rc == 1, service
    # The same probe from blog's own web reaches it: the probe itself works.
    assert in_container(host, containers(host, "blog")["web-blue"][0]["ID"], probe).rc == 0


def test_shop_sees_no_file_of_blog(host):
    for running in containers(host, "shop").values():
        for container in running:
            assert host.run(f"docker exec {container['ID']} test -e {BLOG['dir']}").rc == 1
            sources = [m.get("Source", "") for m in inspect(host, container["ID"])["Mounts"]]
            assert not any(source.startswith("/opt/") for source in sources)


def login(host, container_id, user, password):
    """Log in to PostgreSQL (the service `postgres` as the container sees it) as user to the database blog."""
    script = (
        "import psycopg2, sys\n"
        "try:\n"
        f"    psycopg2.connect(host='postgres', user='{user}', password='{password}', dbname='blog',"
        " connect_timeout=3).close()\n"
        "except psycopg2.OperationalError as e:\n"
        "    print(e); sys.exit(1)\n"
    )
    return in_container(host, container_id, script)


def test_shops_password_does_not_open_blogs_database(host):
    blog_web = containers(host, "blog")["web-blue"][0]["ID"]
    shop_password = secret(host, SHOP, "postgres")
    assert login(host, blog_web, "blog", shop_password).rc == 1
    assert "password authentication failed" in login(host, blog_web, "shop", shop_password).stdout
    # The probe itself works: blog's own password opens it.
    assert login(host, blog_web, "blog", secret(host, BLOG, "postgres")).rc == 0


@pytest.mark.parametrize(("tag", "healthz"), [("v2", 200), ("broken", 503)])
def test_kit_builds_answer_as_documented(host, tag, healthz):
    """The other builds of the demo app (the release deploys them), run as a one-off of shop's blue web."""
    name = f"berth-kit-{tag}"
    host.run(f"docker rm -f {name}")
    host.check_output(
        f"cd {SHOP['dir']} && BLUE_IMAGE=berth-demo-app:{tag} docker compose run -d --no-deps --name {name} web-blue"
    )
    try:
        probe = f"docker exec {name} curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:8000"
        for _ in range(30):
            if host.run(f"{probe}/version").stdout == "200":
                break
            time.sleep(0.5)
        assert host.check_output(f"docker exec {name} curl -fsS http://127.0.0.1:8000/version") == (
            f'{{"version": "{tag}", "colour": "blue"}}'
        )
        assert host.check_output(f"{probe}/healthz") == str(healthz)
    finally:
        host.run(f"docker rm -f {name}")


def all_up(host):
    """Every container of both apps running, and healthy where it has a health check."""
    try:
        found = [c for project in SERVICES for running in containers(host, project).values() for c in running]
    except AssertionError:  # the engine is not up yet
        return False
    return len(found) == 9 and all(c["State"] == "running" and c["Health"] in ("healthy", "") for c in found)


def test_host_restart_brings_the_apps_back_with_their_data(host):
    written = get_json(host, SHOP["ports"]["blue"], "/visit")
    name = host.backend.get_hostname()  # the test host container
    subprocess.run(["docker", "restart", "-t", "60", name], check=True, capture_output=True)
    deadline = time.monotonic() + 180
    while not all_up(host):
        if time.monotonic() > deadline:
            pytest.fail("the apps were not running and healthy 180 s after the host restarted")
        time.sleep(3)
    assert len(containers(host, "shop")[WORKER["services"]["blue"]]) == 2
    for port in SHOP["ports"].values():
        seen = get_json(host, port, "/stats")
        assert (seen["db_rows"], seen["redis_count"]) == (written["db_rows"], written["redis_count"])
    assert get(host, BLOG["ports"]["blue"], "/healthz") == (200, "ok")
