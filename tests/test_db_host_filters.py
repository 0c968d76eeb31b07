"""db_host's pg_hba.conf (roles/db_host/filter_plugins/db_host.py): Debian's local lines, then one line per
app with data: host and app host address; nothing else reaches a database."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from conftest import load_module

db_host = load_module("db_host_filters", "roles/db_host/filter_plugins/db_host.py")
apps = load_module("berth_apps_filter", "plugins/filter/apps.py")

PLAN = apps.apps_plan([
    {"name": "shop", "image": "registry.example.com/shop:1.0.0", "data": "host"},
    {"name": "blog-eu", "image": "registry.example.com/blog:3.2", "data": "host", "data_tls": False},
])


def remote(rules: list[dict]) -> list[tuple[str, str, str, str, str]]:
    return [(r["contype"], r["databases"], r["users"], r["address"], r["method"]) for r in rules
            if r["contype"] != "local" and r["address"] not in ("127.0.0.1/32", "::1/128")]


def test_debian_local_lines_come_first_with_the_postgres_superuser_by_peer() -> None:
    rules = db_host.hba_rules([], [])
    assert rules == db_host.LOCAL_RULES
    assert rules[0] == {"contype": "local", "databases": "all", "users": "postgres", "method": "peer"}
    assert remote(rules) == []


def test_one_line_per_app_and_address_tls_unless_the_app_says_not() -> None:
    rules = db_host.hba_rules(PLAN, ["10.0.0.2", "10.0.0.3"])
    assert rules[: len(db_host.LOCAL_RULES)] == db_host.LOCAL_RULES
    assert remote(rules) == [
        ("hostssl", "shop", "shop", "10.0.0.2/32", "scram-sha-256"),
        ("hostssl", "shop", "shop", "10.0.0.3/32", "scram-sha-256"),
        ("host", "blog_eu", "blog_eu", "10.0.0.2/32", "scram-sha-256"),
        ("host", "blog_eu", "blog_eu", "10.0.0.3/32", "scram-sha-256"),
    ]
    assert {r["comment"] for r in rules[len(db_host.LOCAL_RULES):]} == {"berth app shop", "berth app blog-eu"}


def test_ipv6_addresses_and_duplicates() -> None:
    rules = db_host.hba_rules(PLAN[:1], ["2001:db8::2", "2001:DB8::2", "10.0.0.2"])
    assert [r[3] for r in remote(rules)] == ["2001:db8::2/128", "10.0.0.2/32"]


def test_no_app_host_means_no_remote_line() -> None:
    assert remote(db_host.hba_rules(PLAN, [])) == []


@pytest.mark.parametrize("address", ["10.0.0.0/24", "db.example.com", "", None])
def test_a_non_address_is_refused(address: object) -> None:
    with pytest.raises(AnsibleFilterError, match="db_host_app_addresses"):
        db_host.hba_rules(PLAN, [address])


def test_the_rules_are_new_dicts_each_time() -> None:
    first = db_host.hba_rules([], [])
    first[0]["method"] = "trust"
    assert db_host.hba_rules([], [])[0]["method"] == "peer"


def test_an_app_without_a_plan_is_refused() -> None:
    with pytest.raises(AnsibleFilterError, match="berth_apps_plan"):
        db_host.hba_rules([{"name": "shop"}], ["10.0.0.2"])
