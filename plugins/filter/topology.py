"""Jinja filters `berth_addresses` (the addresses berth hosts reach each other on) and `berth_layer_roles`.

    {{ groups['app'] | berth_addresses(hostvars) }}   # e.g. ['10.0.0.2', '10.0.0.3']
    {{ __berth_layers | berth_layer_roles(group_names) }}   # the roles of the layers that run on a host

Each host's `berth_private_address` (set it to the host's address on the provider's private network),
or else the address of its default route as its facts say. The database host's PostgreSQL listens on
it, its pg_hba and firewall let the app hosts' addresses in, and the app hosts' DATABASE_URL names it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


def _address(host: str, hostvars: Mapping[str, Any]) -> str:
    facts = hostvars.get(host) or {}
    value = facts.get("berth_private_address") or \
        ((facts.get("ansible_facts") or {}).get("default_ipv4") or {}).get("address")
    if not value:
        raise AnsibleFilterError(
            f"the address of {host} is not known: set berth_private_address for it in the inventory (its "
            f"address on the private network), or run on it too so that its facts are read (no --limit)")
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError as exc:
        raise AnsibleFilterError(f"berth_private_address of {host} must be an IP address; got {value!r}") from exc


def berth_addresses(hosts: Any, hostvars: Mapping[str, Any]) -> list[str]:
    """The address of each host, in order."""
    return [_address(str(host), hostvars) for host in hosts or []]


def berth_layer_roles(layers: Any, group_names: Any) -> list[str]:
    """The roles of the layers ({role, hosts: [group, ...]}) whose groups the host is in, in order."""
    mine = set(group_names or [])
    return [str(layer["role"]) for layer in layers or [] if mine.intersection(layer["hosts"])]


class FilterModule:
    def filters(self) -> dict:
        return {"berth_addresses": berth_addresses, "berth_layer_roles": berth_layer_roles}
