"""The db_host role refuses bad input before it changes anything (its tasks/check_input.yml, run on the
controller as the database host of a small inventory).

Each case starts from valid input and spoils one thing; the valid inputs themselves must pass, so a check
that always fails cannot hide here. The inventory's shape (is this host in the group db, how many hosts
are there) is part of the input: each shape is a run of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

APPS = [
    {"name": "shop", "image": "registry.example.com/shop:1.0", "data": "host"},
    {"name": "blog", "image": "registry.example.com/blog:1.0", "data": "host", "redis": False},
]
GOOD = {"berth_apps": APPS}
SPOILT = {
    "valid": {},
    "valid IPv6 addresses": {"db_host_listen_address": "2001:db8::20", "db_host_app_addresses": ["2001:db8::2"]},
    "valid Redis size in capitals": {"db_host_redis_maxmemory": "1GB"},
    "valid local app with a reserved name": {"berth_apps": [*APPS, {"name": "postgres", "image": "r.example.com/p:1"}]},
    "valid own certificate": {"db_host_ssl_cert_file": "/etc/ssl/db/db.pem",
                              "db_host_ssl_key_file": "/etc/ssl/db/db.key"},
    "listen address a network": {"db_host_listen_address": "10.0.0.0/24"},
    "listen address a name": {"db_host_listen_address": "db1.internal"},
    "app address a name": {"db_host_app_addresses": ["10.0.0.2", "app1.internal"]},
    "app address a network": {"db_host_app_addresses": ["10.0.0.0/24"]},
    "Redis size without a number": {"db_host_redis_maxmemory": "lots"},
    "Redis size in nginx syntax": {"db_host_redis_maxmemory": "256m "},
    "relative certificate path": {"db_host_ssl_cert_file": "certs/db.pem"},
    "key path with a quote": {"db_host_ssl_key_file": "/etc/ssl/private/db'.key"},
    "app named postgres": {"berth_apps": [*APPS, {"name": "postgres", "image": "r.example.com/p:1", "data": "host"}]},
    "app named like PostgreSQL's own roles": {
        "berth_apps": [*APPS, {"name": "pg-monitor", "image": "r.example.com/p:1", "data": "host"}]},
    "Redis on PostgreSQL's port": {
        "berth_apps": [*APPS, {"name": "news", "image": "r.example.com/n:1", "data": "host",
                               "web": {"host_port": 5432}}]},
    # The exporters: their listen addresses, and basic auth (the node_exporter role's) off loopback without TLS.
    "valid exporters on the private address with TLS": {
        "db_host_postgres_exporter_listen_address": "10.0.0.20:9187",
        "db_host_redis_exporter_listen_address": "[fd00::20]:9121",
        "node_exporter_tls_cert": "-----BEGIN CERTIFICATE-----",
        "node_exporter_basic_auth_users": {"prometheus": "0123456789abcdef0123"},
    },
    "valid basic auth on loopback without TLS": {
        "node_exporter_basic_auth_users": {"prometheus": "0123456789abcdef0123"},
    },
    "PostgreSQL exporter address by name": {"db_host_postgres_exporter_listen_address": "localhost:9187"},
    "Redis exporter address without a port": {"db_host_redis_exporter_listen_address": "127.0.0.1"},
    "exporters on one port": {"db_host_redis_exporter_listen_address": "127.0.0.1:9187"},
    "basic auth off loopback without TLS": {
        "db_host_redis_exporter_listen_address": "10.0.0.20:9121",
        "node_exporter_basic_auth_users": {"prometheus": "0123456789abcdef0123"},
    },
}
SAYS = {
    "listen address a network": 'db_host_listen_address must be an IP address of this host (no network, no host '
                                'name), e.g. 10.0.0.20; got "10.0.0.0/24"',
    "listen address a name": 'db_host_listen_address must be an IP address of this host (no network, no host name), '
                             'e.g. 10.0.0.20; got "db1.internal"',
    "app address a name": "db_host_app_addresses must hold the IP addresses of the app hosts",
    "app address a network": "db_host_app_addresses must hold the IP addresses of the app hosts",
    "Redis size without a number": 'db_host_redis_maxmemory must be a Redis size',
    "Redis size in nginx syntax": 'db_host_redis_maxmemory must be a Redis size',
    "relative certificate path": "db_host_ssl_cert_file and db_host_ssl_key_file must be absolute paths",
    "key path with a quote": "db_host_ssl_cert_file and db_host_ssl_key_file must be absolute paths",
    "app named postgres": "PostgreSQL keeps these names for itself: postgres.",
    "app named like PostgreSQL's own roles": "PostgreSQL keeps these names for itself: pg_monitor.",
    "Redis on PostgreSQL's port": "may not be PostgreSQL's 5432: set another web.host_port for news",
    "PostgreSQL exporter address by name": "db_host_postgres_exporter_listen_address must be IPv4:port or [IPv6]:port"
                                           ' with a port 1-65535, e.g. 127.0.0.1:9187 or 10.0.0.20:9187 (no host'
                                           ' names); got "localhost:9187".',
    "Redis exporter address without a port": 'db_host_redis_exporter_listen_address must be IPv4:port or [IPv6]:port',
    "exporters on one port": "db_host_postgres_exporter_listen_address and db_host_redis_exporter_listen_address need",
    "basic auth off loopback without TLS": "node_exporter_basic_auth_users (also the database exporters') needs TLS",
}


def inventory(db_hosts: list[str], app_hosts: list[str]) -> dict:
    """The controller (localhost) and made-up hosts, each with its private address (no facts needed)."""
    def host(name: str, address: str) -> dict:
        found = {"berth_private_address": address}
        return found | ({"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
                        if name == "localhost" else {})
    addresses = {name: f"10.0.0.{index + 2}" for index, name in enumerate(sorted({*db_hosts, *app_hosts}))}
    return {"all": {"children": {"berth": {"children": {
        "app": {"hosts": {name: host(name, addresses[name]) for name in app_hosts}},
        "db": {"hosts": {name: host(name, addresses[name]) for name in db_hosts}},
    }}}}}


def run(cases: dict[str, dict], shape: dict, out_dir: Path) -> tuple[dict[str, dict], str]:
    """Each case's outcome on localhost in the given inventory, and everything the run printed."""
    (out_dir / "hosts.yml").write_text(yaml.safe_dump(shape))
    out = out_dir / "outcomes.json"
    extra = {"cases": [{"name": name, "vars": GOOD | change} for name, change in cases.items()],
             "out": str(out), "input_role": "db_host"}
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_CACHE_PLUGIN": "memory"}
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "--check", "-i", str(out_dir / "hosts.yml"),
           "--limit", "localhost", str(ROOT / "tests" / "playbooks" / "input_cases.yml"), "-e", json.dumps(extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed
    return json.loads(out.read_text()), printed


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    found, _ = run(SPOILT, inventory(["localhost"], ["app1", "app2"]), tmp_path_factory.mktemp("db_host"))
    return found


@pytest.mark.parametrize("case", [name for name in SPOILT if name.startswith("valid")])
def test_valid_input_passes(outcomes: dict[str, dict], case: str) -> None:
    assert outcomes[case] == {"failed": False, "msg": ""}


@pytest.mark.parametrize("case", list(SAYS))
def test_bad_input_is_refused_with_a_message_naming_it(outcomes: dict[str, dict], case: str) -> None:
    assert outcomes[case]["failed"], case
    msg = json.loads(outcomes[case]["msg"])["msg"]
    assert SAYS[case] in msg
    # only the broken rule is reported (two cases may break the same rule)
    assert [other for other in set(SAYS.values()) - {SAYS[case]} if other in msg and other not in SAYS[case]] == []


def test_every_spoilt_case_has_its_message() -> None:
    assert {name for name in SPOILT if not name.startswith("valid")} == set(SAYS)


@pytest.mark.parametrize(
    ("db_hosts", "app_hosts", "says"),
    [
        (["db1"], ["localhost"], "db_host runs on the database host, the host of the inventory group db; localhost "
                                 "is not in it (its groups: app, berth)"),
        (["localhost", "db2"], ["app1"], "The inventory group db may hold one host (berth manages one database "
                                         "host, no replication); it holds db2, localhost"),
    ],
)
def test_the_inventory_shape_is_checked(tmp_path: Path, db_hosts: list[str], app_hosts: list[str], says: str) -> None:
    found, _ = run({"valid": {}}, inventory(db_hosts, app_hosts), tmp_path)
    assert found["valid"]["failed"]
    assert says in json.loads(found["valid"]["msg"])["msg"]
