"""The project's own Ansible plugins (plugins/): the Jinja tests berth_ip_network and berth_port."""

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


# --- berth_secret_problems (plugins/filter/secrets.py) --------------------------------------------

secrets_spec = importlib.util.spec_from_file_location("secrets_filter", ROOT / "plugins" / "filter" / "secrets.py")
assert secrets_spec and secrets_spec.loader
secrets_filter = importlib.util.module_from_spec(secrets_spec)
secrets_spec.loader.exec_module(secrets_filter)


def problems(value: object, **rules: object) -> list[str]:
    return secrets_filter.secret_problems({"my_password": value}, **rules)


def test_a_good_secret_has_no_problem() -> None:
    assert problems("Zx8-long-enough-secret", min_length=16, min_unique=8, forbidden="'") == []


@pytest.mark.parametrize(
    ("value", "rules", "says"),
    [
        ("", {"min_length": 16}, "my_password is empty"),
        (None, {"min_length": 16}, "my_password is not set"),
        ("Zx8-short", {"min_length": 16}, "my_password is shorter than 16 characters"),
        ("abababababababababab", {"min_length": 16, "min_unique": 8}, "uses fewer than 8 different characters"),
        ("it's-long-enough-1234", {"forbidden": "'"}, "my_password contains \"'\", which it may not"),
        ("line\nbreak-long-enough", {}, "contains a control character"),
        ({"a": 1}, {}, "must be a single value, not a dict"),
    ],
)
def test_each_broken_rule_is_named_without_the_value(value: object, rules: dict, says: str) -> None:
    found = problems(value, **rules)
    assert any(says in message for message in found), found
    if isinstance(value, str) and value:
        assert all(value not in message for message in found)


def test_names_take_a_prefix_and_numbers_are_text() -> None:
    found = secrets_filter.secret_problems({"PORT": 8080, "KEY": "it's"}, prefix="app_env.", forbidden="'")
    assert found == ["app_env.KEY contains \"'\", which it may not"]
    assert secrets_filter.secret_problems(["not", "a", "mapping"], prefix="app_env.") == [
        "app_env must be a mapping of names to values"
    ]


# --- berth_certs_to_request (plugins/filter/certificates.py) ---------------------------------------

certs_spec = importlib.util.spec_from_file_location("certificates", ROOT / "plugins" / "filter" / "certificates.py")
assert certs_spec and certs_spec.loader
certificates = importlib.util.module_from_spec(certs_spec)
certs_spec.loader.exec_module(certificates)

SITES = [{"domain": "shop.test", "aliases": ["www.shop.test"]}, {"domain": "blog.test"}]


def info(name: str, sans: list[str], key: str = "ECC") -> dict:
    """A loop result of community.crypto.x509_certificate_info, as the role registers it."""
    return {"item": name, "subject_alt_name": [f"DNS:{n}" for n in sans], "public_key_type": key}


def test_certificates_that_match_their_sites_are_kept() -> None:
    infos = [info("shop.test", ["www.shop.test", "shop.test"]), info("blog.test", ["blog.test"])]
    assert certificates.certs_to_request(SITES, infos, "ecdsa") == []


@pytest.mark.parametrize(
    ("infos", "key_type", "wanted"),
    [
        ([], "ecdsa", ["shop.test", "blog.test"]),
        ([info("shop.test", ["shop.test"]), info("blog.test", ["blog.test"])], "ecdsa", ["shop.test"]),
        ([info("shop.test", ["shop.test", "www.shop.test", "old.test"]), info("blog.test", ["blog.test"])], "ecdsa",
         ["shop.test"]),
        ([info("shop.test", ["shop.test", "www.shop.test"]), info("blog.test", ["blog.test"], "RSA")], "ecdsa",
         ["blog.test"]),
        ([info("shop.test", ["shop.test", "www.shop.test"], "RSA"), info("blog.test", ["blog.test"], "RSA")], "rsa",
         []),
        ([{"item": "shop.test", "failed": True}, info("blog.test", ["blog.test"])], "ecdsa", ["shop.test"]),
    ],
)
def test_missing_or_changed_certificates_are_requested(infos: list, key_type: str, wanted: list[str]) -> None:
    assert certificates.certs_to_request(SITES, infos, key_type) == wanted


port_spec = importlib.util.spec_from_file_location("port_range", ROOT / "plugins" / "test" / "port_range.py")
assert port_spec and port_spec.loader
port_range = importlib.util.module_from_spec(port_spec)
port_spec.loader.exec_module(port_range)


@pytest.mark.parametrize("value", [1, 9100, 65535, "5432", "20000-27999", "1-65535"])
def test_ports_and_ranges_are_taken(value: object) -> None:
    assert port_range.port(value)


@pytest.mark.parametrize("value", [0, 65536, True, None, "", "x", "27999-20000", "5432-5432", "1-70000", "80,443",
                                   "-1", 9100.0])
def test_other_ports_are_refused(value: object) -> None:
    assert not port_range.port(value)


_listen_spec = importlib.util.spec_from_file_location("listen_address", ROOT / "plugins" / "test" / "listen_address.py")
assert _listen_spec and _listen_spec.loader
listen_address = importlib.util.module_from_spec(_listen_spec)
_listen_spec.loader.exec_module(listen_address)


@pytest.mark.parametrize("value", ["127.0.0.1:9187", "0.0.0.0:9121", "10.0.0.20:1", "[::1]:9187", "[fd00::5]:65535"])
def test_listen_addresses_pass(value: str) -> None:
    assert listen_address.listen_address(value)


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.1",
        "localhost:9187",
        "10.0.0.256:9187",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "fd00::5:9187",
        "[fd00::5%eth0]:9187",
        "10.0.0.0/8:9187",
        " 127.0.0.1:9187",
        "",
        None,
        9187,
    ],
)
def test_malformed_listen_addresses_fail(value: object) -> None:
    assert not listen_address.listen_address(value)
