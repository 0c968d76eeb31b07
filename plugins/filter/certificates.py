"""Jinja filter `berth_certs_to_request`: the sites whose certificate must be requested.

    {{ __nginx_cert_sites | berth_certs_to_request(__nginx_cert_info.results | default([]), nginx_acme_key_type) }}

`infos` are the loop results of community.crypto.x509_certificate_info over the certificates present
(each result's `item` is the certificate's name, the site's domain). A site needs a certificate when
it has none, or when its certificate's names (subjectAltName) are not exactly the site's domain and
aliases, or its key is not of the configured type: a second run requests nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# nginx_acme_key_type -> community.crypto's public_key_type
KEY_TYPES = {"ecdsa": "ECC", "rsa": "RSA"}


def certs_to_request(
    sites: Iterable[Mapping[str, Any]], infos: Iterable[Mapping[str, Any]], key_type: str
) -> list[str]:
    """The domains of the sites whose certificate is missing or no longer matches the site."""
    found = {info["item"]: info for info in infos if not info.get("skipped") and not info.get("failed")}
    wanted_key = KEY_TYPES.get(key_type)
    outdated = []
    for site in sites:
        info = found.get(site["domain"])
        names = sorted([site["domain"], *(site.get("aliases") or [])])
        have = sorted(name.removeprefix("DNS:") for name in (info or {}).get("subject_alt_name") or [])
        if info is None or have != names or info.get("public_key_type") != wanted_key:
            outdated.append(site["domain"])
    return outdated


class FilterModule:
    def filters(self) -> dict:
        return {"berth_certs_to_request": certs_to_request}
