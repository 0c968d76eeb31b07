"""The project's own Ansible plugins (plugins/): the berth_ip_network Jinja test."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("ip_network", ROOT / "plugins" / "test" / "ip_network.py")
assert spec and spec.loader
ip_network = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ip_network)


@pytest.mark.parametrize("value", ["127.0.0.0/8", "10.0.0.5/8", "192.0.2.10", "::1", "2001:db8::/32", "0.0.0.0/0"])
def test_addresses_and_networks_pass(value: str) -> None:
    assert ip_network.ip_network(value)


@pytest.mark.parametrize(
    "value",
    [
        "monitoring.example.com",
        "10.0.0.0/33",
        "300.1.1.1",
        "10.0.0.1 ",
        "",
        "2001:db8::/129",
        "10.0.0.0/255.0.0.0",
        "10.0.0.0/0.0.0.255",
        "fe80::1%eth0",
        "10.0.0.0/",
        None,
        10,
    ],
)
def test_names_and_malformed_values_fail(value: object) -> None:
    assert not ip_network.ip_network(value)


def test_the_plugin_names_its_test() -> None:
    assert ip_network.TestModule().tests() == {"berth_ip_network": ip_network.ip_network}
