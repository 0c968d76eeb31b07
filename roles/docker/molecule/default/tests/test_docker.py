"""What a user of a converged host observes after the docker role (converge.yml sets the values)."""

import json

import pytest

testinfra_hosts = ["all"]


def info(host):
    return json.loads(host.check_output("docker info --format '{{json .}}'"))


def test_engine_and_compose_v2_run(host):
    assert host.service("docker").is_running
    assert host.service("docker").is_enabled
    server = host.check_output("docker version --format '{{.Server.Version}}'")
    assert int(server.split(".")[0]) >= 26
    compose = host.check_output("docker compose version --short")
    assert compose.lstrip("v").split(".")[0] == "2"


def test_packages_come_from_debian(host):
    for name in ("docker.io", "docker-cli", "docker-compose"):
        assert host.package(name).is_installed
    assert not host.file("/etc/apt/sources.list.d/docker.sources").exists


def test_daemon_json_is_in_effect(host):
    # prepare.yml started the engine with live-restore off and 1m/1 logs: only a restart after the
    # role wrote daemon.json shows these values (and the log options in the next test).
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["live-restore"] is True
    current = info(host)
    assert current["LiveRestoreEnabled"] is True
    assert current["LoggingDriver"] == "json-file"
    assert current["Driver"] == "overlay2"


def remove_probe(host):
    host.run("docker rm -f berth-probe; docker network rm berth-probe; docker image rm berth-probe:latest")


@pytest.fixture(scope="module")
def probe(host):
    """A tiny image (sleep and its libraries from the host) and a container publishing a port."""
    remove_probe(host)
    files = host.check_output("ldd /usr/bin/sleep | grep -o '/[^ ]*'").split()
    paths = " ".join(f.lstrip("/") for f in ["/usr/bin/sleep", *files])
    host.check_output(f"tar -C / -ch {paths} | docker import - berth-probe:latest")
    host.check_output("docker network create berth-probe")
    host.check_output(
        # The default bridge network: daemon.json's "ip" is its host binding address.
        "docker run -d --name berth-probe -p 18080:9 berth-probe:latest /usr/bin/sleep infinity"
    )
    yield "berth-probe"
    remove_probe(host)


def test_published_ports_default_to_loopback(host, probe):
    assert host.check_output(f"docker port {probe} 9/tcp") == "127.0.0.1:18080"
    assert host.socket("tcp://127.0.0.1:18080").is_listening
    assert not host.socket("tcp://0.0.0.0:18080").is_listening
    assert not host.socket("tcp://:::18080").is_listening


def test_log_rotation_applies_to_new_containers(host, probe):
    log_config = json.loads(host.check_output(f"docker inspect -f '{{{{json .HostConfig.LogConfig}}}}' {probe}"))
    assert log_config["Type"] == "json-file"
    assert log_config["Config"] == {"max-size": "20m", "max-file": "4"}


def test_networks_come_from_the_address_pool(host, probe):
    # (docker0 kept the subnet it got when prepare.yml first started the engine.)
    for network in (probe,):
        subnet = host.check_output(f"docker network inspect -f '{{{{(index .IPAM.Config 0).Subnet}}}}' {network}")
        assert subnet.startswith("10.213.") and subnet.endswith("/24")


def test_only_chosen_users_join_the_docker_group(host):
    line = host.check_output("getent group docker")
    members = line.split(":")[3].split(",") if line.split(":")[3] else []
    assert members == ["alice"]
    # `docker version` fails when the client cannot reach the engine (`docker info` would not).
    assert host.run("runuser -u alice -- docker version --format '{{.Server.Version}}'").rc == 0
    denied = host.run("runuser -u bob -- docker version --format '{{.Server.Version}}'")
    assert denied.rc != 0
    assert "permission denied" in denied.stderr
