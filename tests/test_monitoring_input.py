"""The monitoring role refuses bad Grafana settings before it changes anything (its tasks/check_input.yml, run
on the controller). Grafana itself is opt-in and not installed by any scenario (no access to its apt
repository on the test machines); these are its input rules.

Each case starts from valid input and spoils one thing; the valid inputs themselves must pass, so a check
that always fails cannot hide here. The admin password never appears in what the run prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_input_cases

PASSWORD = "grafana-Admin-7731-secret"
GOOD = {"monitoring_alert_receivers": [{"type": "webhook", "url": "https://hooks.example.com/berth"}]}
ENABLED = {"monitoring_grafana_enabled": True, "monitoring_grafana_admin_password": PASSWORD}
SPOILT: dict[str, dict] = {
    "valid, Grafana off": {},
    "valid, Grafana off without a password": {"monitoring_grafana_admin_password": ""},
    "valid, Grafana on": ENABLED,
    "valid, Grafana on IPv6 loopback": ENABLED | {"monitoring_grafana_listen_address": "[::1]:3000"},
    "Grafana on without a password": {"monitoring_grafana_enabled": True},
    "Grafana on with a short password": ENABLED | {"monitoring_grafana_admin_password": "short-Pw-12"},
    "Grafana on with a quote in the password": ENABLED | {"monitoring_grafana_admin_password": 'abc"defghijklmnopq'},
    "Grafana admin user with a space": ENABLED | {"monitoring_grafana_admin_user": "grafana admin"},
    "Grafana on a host name": ENABLED | {"monitoring_grafana_listen_address": "localhost:3000"},
    "Grafana port out of range": ENABLED | {"monitoring_grafana_listen_address": "127.0.0.1:70000"},
    "Grafana repository over http": ENABLED | {"monitoring_grafana_apt_repository": "http://apt.grafana.com"},
    "Grafana key URL empty": ENABLED | {"monitoring_grafana_apt_key_url": ""},
}
EXPECTED = {
    "Grafana on without a password": "monitoring_grafana_admin_password must be set when monitoring_grafana_enabled",
    "Grafana on with a short password": "monitoring_grafana_admin_password must be set when monitoring_grafana_enabled",
    "Grafana on with a quote in the password": "monitoring_grafana_admin_password must be set when",
    "Grafana admin user with a space": 'monitoring_grafana_admin_user must be a user name (letters, digits, . _ -), '
    'e.g. admin; got "grafana admin"',
    "Grafana on a host name": "monitoring_grafana_listen_address must be IPv4:port or [IPv6]:port",
    "Grafana port out of range": 'monitoring_grafana_listen_address must be IPv4:port or [IPv6]:port (no host names), '
    'e.g. 127.0.0.1:3000; got "127.0.0.1:70000"',
    "Grafana repository over http": "monitoring_grafana_apt_repository and monitoring_grafana_apt_key_url must be "
    "https:// URLs",
    "Grafana key URL empty": "monitoring_grafana_apt_repository and monitoring_grafana_apt_key_url must be https://",
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], str]:
    return run_input_cases("monitoring", SPOILT, GOOD, Path(tmp_path_factory.mktemp("monitoring")))


@pytest.mark.parametrize("name", [n for n in SPOILT if n.startswith("valid")])
def test_valid_input_passes(outcomes: tuple[dict[str, dict], str], name: str) -> None:
    assert outcomes[0][name] == {"failed": False, "msg": ""}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bad_input_is_refused_with_its_rule(outcomes: tuple[dict[str, dict], str], name: str) -> None:
    result = outcomes[0][name]
    assert result["failed"], name
    message = json.loads(result["msg"])["msg"]
    assert EXPECTED[name] in message, message
    # only the broken rule is named
    others = [m for m in set(EXPECTED.values()) if m not in EXPECTED[name] and EXPECTED[name] not in m]
    assert not [m for m in others if m in message], message


def test_the_password_is_never_printed(outcomes: tuple[dict[str, dict], str]) -> None:
    assert PASSWORD not in outcomes[1]
    assert not [name for name, result in outcomes[0].items() if PASSWORD in result["msg"]]
