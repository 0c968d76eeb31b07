"""What a user of a converged host observes after the docker and app_stack roles (see converge.yml)."""

import json
import shlex
import subprocess
import time

import pytest

testinfra_hosts = ["all"]

PROJECT = "demo"
DIR = f"/opt/{PROJECT}"
COLOURS = {"blue": 8001, "green": 8002}
SECRETS = ["pg-Test$secret#1/@:%x", "rd-Test$secret#2/@:%y"]
SERVICES = ["app-blue", "app-green", "postgres", "redis"]


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


def containers(host):
    out = host.check_output(f"docker compose -p {PROJECT} ps --all --format json")
    # compose prints one JSON object per line
    return {c["Service"]: c for c in map(json.loads, out.splitlines())}


def inspect(host, service):
    return json.loads(host.check_output(f"docker inspect {containers(host)[service]['ID']}"))[0]


def test_engine_and_compose_v2(host):
    assert host.service("docker").is_running
    assert host.check_output("docker compose version --short").lstrip("v").startswith("2.")


def test_default_bridge_takes_its_subnet_from_the_pools(host):
    # Fresh host: daemon.json was in place before the engine first started (docker role default pool).
    subnet = host.check_output("docker network inspect -f '{{(index .IPAM.Config 0).Subnet}}' bridge")
    assert subnet.startswith("10.201.")


def test_all_services_running_and_healthy(host):
    found = containers(host)
    assert sorted(found) == SERVICES
    for service, container in found.items():
        assert container["State"] == "running", service
        assert container["Health"] == "healthy", service


def test_each_colour_answers_with_its_version(host):
    for colour, port in COLOURS.items():
        assert get_json(host, port, "/version") == {"version": "v1", "colour": colour}
        assert get(host, port, "/healthz") == (200, "ok")


def test_app_writes_and_reads_postgres_and_redis(host):
    before = get_json(host, COLOURS["blue"], "/stats")
    after = get_json(host, COLOURS["blue"], "/visit")
    assert after["db_rows"] == before["db_rows"] + 1
    assert after["redis_count"] == before["redis_count"] + 1
    # The other colour shares the same database and cache.
    seen = get_json(host, COLOURS["green"], "/stats")
    assert (seen["db_rows"], seen["redis_count"]) == (after["db_rows"], after["redis_count"])


def test_only_the_colours_are_published_and_only_on_loopback(host):
    published = {}
    for service in SERVICES:
        ports = inspect(host, service)["NetworkSettings"]["Ports"] or {}
        bindings = [(b["HostIp"], int(b["HostPort"])) for spec in ports.values() for b in spec or []]
        published[service] = sorted(bindings)
    assert published == {
        "app-blue": [("127.0.0.1", 8001)],
        "app-green": [("127.0.0.1", 8002)],
        "postgres": [],
        "redis": [],
    }
    # `docker ps` agrees: the only port mappings of any running container are the colours'.
    mappings = {
        entry
        for line in host.check_output("docker ps --format '{{.Ports}}'").splitlines()
        for entry in line.split(", ")
        if "->" in entry
    }
    assert mappings == {"127.0.0.1:8001->8000/tcp", "127.0.0.1:8002->8000/tcp"}
    # What listens on the host: the engine's proxies for the two colours, on loopback, nothing else.
    docker_listeners = sorted(
        line.split()[3]
        for line in host.check_output("ss -Hltnp").splitlines()
        if "docker-proxy" in line or "dockerd" in line
    )
    assert docker_listeners == ["127.0.0.1:8001", "127.0.0.1:8002"]


def test_backend_network_is_internal(host):
    assert host.check_output(f"docker network inspect -f '{{{{.Internal}}}}' {PROJECT}_backend") == "true"
    for service in ("postgres", "redis"):
        networks = inspect(host, service)["NetworkSettings"]["Networks"]
        assert list(networks) == [f"{PROJECT}_backend"]


@pytest.mark.parametrize("service", SERVICES)
def test_containers_are_hardened_and_limited(host, service):
    config = inspect(host, service)["HostConfig"]
    assert "no-new-privileges:true" in config["SecurityOpt"]
    assert config["ReadonlyRootfs"] is True
    assert config["Memory"] > 0
    assert config["NanoCpus"] > 0
    assert config["RestartPolicy"]["Name"] == "unless-stopped"
    assert config["LogConfig"]["Type"] == "json-file"
    assert config["LogConfig"]["Config"] == {"max-size": "10m", "max-file": "3"}


def test_data_lives_in_named_volumes(host):
    mounts = {m["Destination"]: m for m in inspect(host, "postgres")["Mounts"]}
    assert mounts["/var/lib/postgresql/data"]["Name"] == f"{PROJECT}_postgres-data"
    mounts = {m["Destination"]: m for m in inspect(host, "redis")["Mounts"]}
    assert mounts["/data"]["Name"] == f"{PROJECT}_redis-data"


def test_secrets_only_in_0600_env_files(host):
    assert host.file(f"{DIR}/secrets").mode == 0o700
    for name in ("app", "postgres", "redis"):
        env = host.file(f"{DIR}/secrets/{name}.env")
        assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    assert any(s in host.file(f"{DIR}/secrets/postgres.env").content_string for s in SECRETS)
    for public in (f"{DIR}/compose.yaml", f"{DIR}/.env"):
        content = host.file(public).content_string
        assert not any(s in content for s in SECRETS), public
    # Not in any container's command or the host's process list either.
    processes = host.check_output("ps -eo args")
    for service in SERVICES:
        config = inspect(host, service)["Config"]
        assert not any(s in json.dumps([config["Cmd"], config["Entrypoint"]]) for s in SECRETS)
    assert not any(s in processes for s in SECRETS)


def test_app_env_values_are_taken_literally(host):
    env = inspect(host, "app-blue")["Config"]["Env"]
    assert "APP_GREETING=hello $HOME, literally" in env


@pytest.mark.parametrize(("tag", "healthz"), [("v2", 200), ("broken", 503)])
def test_kit_builds_answer_as_documented(host, tag, healthz):
    """The other builds of the demo app (issue 6 deploys them), run as a one-off of the blue service."""
    name = f"berth-kit-{tag}"
    host.run(f"docker rm -f {name}")
    host.check_output(
        f"cd {DIR} && APP_BLUE_IMAGE=berth-demo-app:{tag} docker compose run -d --no-deps --name {name} app-blue"
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


def test_host_restart_brings_the_stack_back_with_its_data(host):
    written = get_json(host, COLOURS["blue"], "/visit")
    name = host.backend.get_hostname()  # the test host container
    subprocess.run(["docker", "restart", "-t", "60", name], check=True, capture_output=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["docker", "exec", name, "docker", "compose", "-p", PROJECT, "ps", "--format", "{{.Health}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if state.returncode == 0 and state.stdout.split() == ["healthy"] * len(SERVICES):
            break
        time.sleep(3)
    else:
        pytest.fail(f"the stack was not healthy 180 s after the host restarted: {state.stdout} {state.stderr}")
    for port in COLOURS.values():
        seen = get_json(host, port, "/stats")
        assert (seen["db_rows"], seen["redis_count"]) == (written["db_rows"], written["redis_count"])
