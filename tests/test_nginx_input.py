"""nginx refuses bad input before it changes anything (its tasks/check_input.yml, run on the controller).

Each case starts from valid input and spoils one thing; the valid input itself must pass, so a check
that always fails cannot hide here. The cases cover the load balancer's view (nginx_load_balancers, the
health URL, the drain file and the entry point drain); the other rules are exercised by the nginx
scenario's bad_input.yml and tests/fixtures/bad-settings.yml.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_input_cases

APPS = [{"name": "shop", "image": "registry.example.com/team/shop:1.0.0", "domains": ["shop.example.com"]}]
GOOD = {"berth_apps": APPS, "nginx_acme_email": "ops@example.com"}

SPOILT: dict[str, dict] = {
    "valid": {},
    "valid behind load balancers": {"nginx_load_balancers": ["10.0.0.2", "10.0.0.0/24", "2001:db8::/32"]},
    "valid behind load balancers without an ACME address": {
        "nginx_load_balancers": ["10.0.0.2"],
        "nginx_acme_email": "",
    },
    "valid health path and drain file": {
        "nginx_lb_health_path": "/_health/lb.txt",
        "nginx_drain_file": "/run/berth/drain-me",
    },
    "no ACME address without load balancers": {"nginx_acme_email": ""},
    "load balancer by host name": {"nginx_load_balancers": ["10.0.0.2", "lb.example.com"]},
    "load balancer with a netmask": {"nginx_load_balancers": ["10.0.0.0/255.0.0.0"]},
    "load balancer with an IPv6 zone": {"nginx_load_balancers": ["fe80::1%eth0"]},
    "load balancers as one string": {"nginx_load_balancers": "10.0.0.2"},
    "health path /": {"nginx_lb_health_path": "/"},
    "health path without a slash": {"nginx_lb_health_path": "berth-lb-health"},
    "health path with a space": {"nginx_lb_health_path": "/lb health"},
    "health path with a semicolon": {"nginx_lb_health_path": "/h;return"},
    "relative drain file": {"nginx_drain_file": "draining"},
    "drain file is a directory": {"nginx_drain_file": "/var/lib/berth/"},
    "drain file with a brace": {"nginx_drain_file": "/var/lib/berth/d}"},
    "drain without nginx_drain": {"entry_point": "drain"},
    # Maintenance: its page and Retry-After, and the entry point's choice of the app (as the release's).
    "valid maintenance settings": {"nginx_maintenance_retry_after": 0, "nginx_maintenance_page": "<h1>Back at 5</h1>"},
    "maintenance Retry-After negative": {"nginx_maintenance_retry_after": -1},
    "maintenance Retry-After over a day": {"nginx_maintenance_retry_after": 86401},
    "maintenance page empty": {"nginx_maintenance_page": " \n"},
    "maintenance of an unknown app": {"entry_point": "maintenance", "nginx_maintenance_app": "shpo"},
    "maintenance of an app without domains": {"entry_point": "maintenance", "nginx_maintenance_app": "jobs",
                                              "berth_apps": [*APPS, {"name": "jobs", "image": "r.example.com/j:1"}]},
    "maintenance without the app among two": {"entry_point": "maintenance", "berth_apps": [
        *APPS, {"name": "blog", "image": "r.example.com/b:1", "domains": ["blog.example.com"]}]},
    "maintenance neither on nor off": {"entry_point": "maintenance", "nginx_maintenance": "maybe"},
    # The nginx exporter: its listen address, the stub_status port, and basic auth (the node_exporter
    # role's settings) off loopback without TLS.
    "valid exporter addresses": {"nginx_exporter_listen_address": "[fd00::5]:9113", "nginx_stub_status_port": 8181},
    "valid exporter on every interface": {"nginx_exporter_listen_address": "0.0.0.0:9113"},
    "valid basic auth on loopback without TLS": {
        "node_exporter_basic_auth_users": {"prometheus": "0123456789abcdef0123"},
    },
    "exporter address without a port": {"nginx_exporter_listen_address": "127.0.0.1"},
    "exporter address by host name": {"nginx_exporter_listen_address": "localhost:9113"},
    "exporter address with a bad octet": {"nginx_exporter_listen_address": "10.0.0.256:9113"},
    "exporter port too high": {"nginx_exporter_listen_address": "127.0.0.1:70000"},
    "exporter IPv6 without brackets": {"nginx_exporter_listen_address": "fd00::5:9113"},
    "stub_status on an app's port": {"nginx_stub_status_port": 8100, "berth_apps": [
        {**APPS[0], "web": {"host_port": 8100}}]},
    "stub_status on 443": {"nginx_stub_status_port": 443},
    "exporter and stub_status on one port": {"nginx_stub_status_port": 9113},
    "basic auth off loopback without TLS": {
        "nginx_exporter_listen_address": "10.0.0.5:9113",
        "node_exporter_basic_auth_users": {"prometheus": "0123456789abcdef0123"},
    },
    # mtail's listen address (plain HTTP).
    "valid log metrics on every interface": {"nginx_log_metrics_listen_address": "0.0.0.0:3903"},
    "log metrics address by host name": {"nginx_log_metrics_listen_address": "localhost:3903"},
    "log metrics address without a port": {"nginx_log_metrics_listen_address": "[::1]"},
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    outcomes, _ = run_input_cases("nginx", SPOILT, GOOD, tmp_path_factory.mktemp("nginx"))
    return outcomes


@pytest.mark.parametrize("case", [name for name in SPOILT if name.startswith("valid")])
def test_valid_input_passes(outcomes: dict[str, dict], case: str) -> None:
    assert outcomes[case] == {"failed": False, "msg": ""}


LB_RULE = "nginx_load_balancers must hold the IP addresses or networks (CIDR, no host names)"
HEALTH_RULE = "nginx_lb_health_path must be a URL path other than / of letters, digits and . _ ~ / -"
LISTEN_RULE = (
    "nginx_exporter_listen_address must be IPv4:port or [IPv6]:port with a port 1-65535, e.g. 127.0.0.1:9113,"
    " 10.0.0.5:9113 or [fd00::5]:9113"
)
STUB_RULE = (
    "nginx_stub_status_port must be a port 1-65535 that neither nginx's sites (80, 443) nor an app's colours"
    " (on 127.0.0.1) use"
)
LOG_METRICS_RULE = (
    "nginx_log_metrics_listen_address must be IPv4:port or [IPv6]:port with a port 1-65535, e.g. 127.0.0.1:3903"
)
DRAIN_RULE = (
    "nginx_drain_file must be an absolute file path of letters, digits and . _ / -, e.g. /var/lib/berth/draining"
)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("no ACME address without load balancers", "nginx_acme_email must be set for Let's Encrypt production"),
        (
            "load balancer by host name",
            f"{LB_RULE} the load balancers connect from, e.g. [10.0.0.2] or [10.0.0.0/24]; got lb.example.com.",
        ),
        ("load balancer with a netmask", LB_RULE),
        ("load balancer with a netmask", "got 10.0.0.0/255.0.0.0."),
        ("load balancer with an IPv6 zone", "got fe80::1%eth0."),
        (
            "load balancers as one string",
            f'{LB_RULE} the load balancers connect from, e.g. [10.0.0.2] or [10.0.0.0/24]; got "10.0.0.2".',
        ),
        ("health path /", f'{HEALTH_RULE} (a path the apps do not use), e.g. /berth-lb-health; got "/".'),
        ("health path without a slash", 'got "berth-lb-health".'),
        ("health path with a space", HEALTH_RULE),
        ("health path with a semicolon", HEALTH_RULE),
        ("relative drain file", f'{DRAIN_RULE}; got "draining".'),
        ("drain file is a directory", DRAIN_RULE),
        ("drain file with a brace", DRAIN_RULE),
        ("drain without nginx_drain", "missing required arguments: nginx_drain"),
        ("maintenance Retry-After negative", "nginx_maintenance_retry_after (seconds in the maintenance page's"
         " Retry-After) must be 0-86400, e.g. 300; got -1."),
        ("maintenance Retry-After over a day", "got 86401."),
        ("maintenance page empty", "nginx_maintenance_page must be the HTML page shown during maintenance"),
        ("maintenance of an unknown app", "-e app=NAME must name an app of berth_apps: shop"
         " (e.g. -e app=shop); got 'shpo'"),
        ("maintenance of an app without domains", "app jobs has no domains: nginx serves nothing for it"),
        ("maintenance without the app among two", "berth_apps has 2 apps (shop, blog): say which one to switch"
         " with -e app=NAME (e.g. -e app=shop)"),
        ("maintenance neither on nor off", "nginx_maintenance"),
        ("maintenance neither on nor off", "maybe"),
        ("exporter address without a port", f'{LISTEN_RULE} (no host names); got "127.0.0.1".'),
        ("exporter address by host name", 'got "localhost:9113".'),
        ("exporter address with a bad octet", LISTEN_RULE),
        ("exporter port too high", LISTEN_RULE),
        ("exporter IPv6 without brackets", LISTEN_RULE),
        ("stub_status on an app's port", f"{STUB_RULE}, e.g. 8080; got 8100."),
        ("stub_status on 443", STUB_RULE),
        ("exporter and stub_status on one port", "nginx_exporter_listen_address and nginx_stub_status_port need two"),
        ("basic auth off loopback without TLS", "node_exporter_basic_auth_users (also the nginx exporter's) needs TLS"),
        ("log metrics address by host name", f"{LOG_METRICS_RULE} (or 0.0.0.0:3903"),
        ("log metrics address by host name", 'got "localhost:3903".'),
        ("log metrics address without a port", LOG_METRICS_RULE),
    ],
)
def test_bad_input_fails_with_a_clear_message(outcomes: dict[str, dict], case: str, says: str) -> None:
    assert outcomes[case]["failed"] is True
    # The message the user reads (the failed result's msg).
    assert says in json.loads(outcomes[case]["msg"])["msg"]
