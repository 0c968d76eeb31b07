"""db_host's decisions (unit-tested in tests/test_db_host_filters.py).

    {{ apps | db_host_hba_rules(addresses) }}   # the whole pg_hba.conf, as community.postgresql.postgresql_pg_hba rules

`apps` are the apps of `berth_apps | berth_apps_plan` whose data lives on this host and that have a
database (`db_name`, `data_tls`); `addresses` are the app hosts' addresses (`berth_addresses`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

# Debian's own lines (pg_createcluster writes them): the postgres superuser and local users over the
# socket by peer, loopback with a password. Nothing else may reach a database.
LOCAL_RULES = [
    {"contype": "local", "databases": "all", "users": "postgres", "method": "peer"},
    {"contype": "local", "databases": "all", "users": "all", "method": "peer"},
    {"contype": "host", "databases": "all", "users": "all", "address": "127.0.0.1/32", "method": "scram-sha-256"},
    {"contype": "host", "databases": "all", "users": "all", "address": "::1/128", "method": "scram-sha-256"},
    {"contype": "local", "databases": "replication", "users": "all", "method": "peer"},
    {"contype": "host", "databases": "replication", "users": "all", "address": "127.0.0.1/32",
     "method": "scram-sha-256"},
    {"contype": "host", "databases": "replication", "users": "all", "address": "::1/128", "method": "scram-sha-256"},
]


def _host_network(address: Any) -> str:
    """One host as a network: 10.0.0.2 -> 10.0.0.2/32, 2001:db8::2 -> 2001:db8::2/128."""
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError as exc:
        raise AnsibleFilterError(f"db_host_app_addresses must hold IP addresses; got {address!r}") from exc
    return f"{ip}/{ip.max_prefixlen}"


def hba_rules(apps: Any, addresses: Any) -> list[dict[str, str]]:
    """Debian's local lines, then per app and app host address: its database, its role, scram-sha-256,
    over TLS only (hostssl) unless the app has data_tls: false (host: TLS or not)."""
    networks = list(dict.fromkeys(_host_network(address) for address in addresses or []))
    rules = [dict(rule) for rule in LOCAL_RULES]
    for app in apps or []:
        if not isinstance(app, Mapping) or "db_name" not in app:
            raise AnsibleFilterError(f"db_host_hba_rules takes apps of berth_apps_plan; got {app!r}")
        contype = "hostssl" if app.get("data_tls", True) else "host"
        rules += [{"contype": contype, "databases": app["db_name"], "users": app["db_name"], "address": network,
                   "method": "scram-sha-256", "comment": f"berth app {app.get('name', app['db_name'])}"}
                  for network in networks]
    return rules


class FilterModule:
    def filters(self) -> dict:
        return {"db_host_hba_rules": hba_rules}
