"""Decisions of the monitoring role: what Prometheus scrapes and probes, what Alertmanager sends where,
and the checks of the settings behind them. Pure functions of the settings and the inventory, tested in
tests/test_monitoring_filters.py; the templates only dump what these return."""

from __future__ import annotations

import copy
import ipaddress
import re
from typing import Any

import yaml

# Prometheus' duration (model.ParseDuration): units largest first, each at most once, e.g. 1h30m, 15s.
DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?\Z")
# Prometheus' size (--storage.tsdb.retention.size): a whole number and a unit, base 2.
SIZE_RE = re.compile(r"^[1-9][0-9]*(?:B|KB|MB|GB|TB|PB|EB)\Z")
RECEIVER_TYPES = ("email", "webhook", "slack")
HOST_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}\Z")
EMAIL_RE = re.compile(r"^[^@\s,<>]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
URL_RE = re.compile(r"^https?://[^\s/?#]+[^\s]*\Z")
# node_exporter's defaults (roles/node_exporter/defaults/main.yml): what a berth host without its own
# setting in the inventory runs.
NODE_EXPORTER_DEFAULTS = {
    "node_exporter_web_listen_address": "127.0.0.1:9100",
    "node_exporter_tls_cert": "",
    "node_exporter_basic_auth_users": {},
}
HOST_DOWN_ALERT = "BerthHostDown"
# The exporters of the services berth runs, scraped like node_exporter (its TLS and basic auth settings):
# job: (the inventory group whose hosts run it, its switch and its listen address, with their defaults).
EXPORTERS = {
    "nginx": ("app", ("nginx_exporter_enabled", True), ("nginx_exporter_listen_address", "127.0.0.1:9113")),
    "nginx_log": ("app", ("nginx_log_metrics_enabled", True),
                  ("nginx_log_metrics_listen_address", "127.0.0.1:3903")),
    "postgres": ("db", ("db_host_postgres_exporter_enabled", True),
                 ("db_host_postgres_exporter_listen_address", "127.0.0.1:9187")),
    # one target per app's Redis instance on the host (multi-target: /scrape?target=redis://...)
    "redis": ("db", ("db_host_redis_exporter_enabled", True),
              ("db_host_redis_exporter_listen_address", "127.0.0.1:9121")),
}
# Those that serve plain HTTP whatever node_exporter's settings: mtail (roles/nginx) has no TLS, no basic
# auth (it stays on loopback or behind a firewall rule for the monitoring hosts).
PLAIN_HTTP_EXPORTERS = {"nginx_log"}


def is_duration(value: Any) -> bool:
    """A Prometheus duration other than the empty string, e.g. 30s, 5m, 1h30m, 15d."""
    return isinstance(value, str) and value != "" and bool(DURATION_RE.match(value))


def is_size(value: Any) -> bool:
    """A Prometheus size, e.g. 512MB, 10GB."""
    return isinstance(value, str) and bool(SIZE_RE.match(value))


def monitoring_duration_problems(values: dict[str, Any], prefix: str = "") -> list[str]:
    """A message for each setting ({name: value}) that is not a Prometheus duration (names prefixed)."""
    return [
        f"{prefix}{name} must be a Prometheus duration (a number and a unit: ms, s, m, h, d, w, y, largest first, "
        f"no spaces), e.g. 30s, 5m or 1h30m; got {value!r}."
        for name, value in values.items()
        if not is_duration(value)
    ]


def monitoring_size_problems(values: dict[str, Any]) -> list[str]:
    """A message for each setting ({name: value}) that is not a Prometheus size."""
    return [
        f"{name} must be a Prometheus size (a whole number and B, KB, MB, GB, TB, PB or EB, no spaces), "
        f"e.g. 512MB or 10GB; got {value!r}."
        for name, value in values.items()
        if not is_size(value)
    ]


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _connect_address(listen_address: str) -> str:
    """Where a process on the same host reaches a service that listens on listen_address."""
    host, port = _split_address(listen_address)
    if _is_wildcard(host):
        host = "127.0.0.1" if host != "::" else "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def monitoring_grafana_server(listen_address: str) -> dict[str, Any]:
    """grafana.ini's [server] http_addr and http_port of an IP:port or [IPv6]:port listen address."""
    host, port = _split_address(listen_address)
    return {"http_addr": host, "http_port": port}


def _host_settings(hostvars: Any, name: str) -> dict[str, Any]:
    values = hostvars[name]
    found = {key: values.get(key, default) for key, default in NODE_EXPORTER_DEFAULTS.items()}
    found["ansible_host"] = values.get("ansible_host", name)
    found["hardening_ssh_port"] = values.get("hardening_ssh_port", 22)
    return found


def _scrape_address(listen: str, ansible_host: str, same_host: bool) -> str | None:
    """Where Prometheus reaches an exporter listening on `listen`: a wildcard at the host's ansible_host,
    a specific address at that address, loopback only from the same host (None: unreachable)."""
    host, port = _split_address(listen)
    if _is_wildcard(host):
        host = ansible_host
    elif _is_loopback(host) and not same_host:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _redis_instances(plan: Any) -> list[dict]:
    """The Redis instances a db host runs (roles/db_host): one per app of the plan with data: host and
    redis, on its db_redis_port."""
    return [{"app": app["name"], "port": app["db_redis_port"]}
            for app in plan or [] if app.get("data") == "host" and app.get("redis")]


def monitoring_exporter_targets(hostvars: Any, groups: Any, monitoring_host: str, username: str,
                                plan: Any = None) -> list[dict]:
    """The exporters of EXPORTERS that Prometheus can reach: nginx's on the hosts of the group app, the
    PostgreSQL exporter on the database host (group db), and its Redis exporter once per app's Redis
    instance there (plan: berth_apps_plan; each such target has app and redis: the exporter's
    /scrape target redis://127.0.0.1:<db_redis_port>, as the exporter runs beside the instance). Each
    switched on and listening beyond loopback (a loopback exporter on another host is not scraped: open it
    as node_exporter, e.g. nginx_exporter_listen_address: 0.0.0.0:9113 and a firewall rule). TLS and basic
    auth as the host's node_exporter (the exporters share its settings), except PLAIN_HTTP_EXPORTERS (mtail:
    nginx_log); the Redis exporter knows one user, the first of node_exporter_basic_auth_users by name
    (roles/db_host), so it is scraped as that one."""
    targets = []
    for job, (group, (switch, on), (variable, default)) in EXPORTERS.items():
        for name in (groups or {}).get(group, []):
            values = hostvars[name]
            if not values.get(switch, on):
                continue
            settings = _host_settings(hostvars, name)
            address = _scrape_address(str(values.get(variable, default)), str(settings["ansible_host"]),
                                      name == monitoring_host)
            if address is None:
                continue
            plain = job in PLAIN_HTTP_EXPORTERS
            users = {} if plain else settings["node_exporter_basic_auth_users"] or {}
            user = (sorted(users)[0] if job == "redis" else username) if users else ""
            target = {"name": name, "job": job, "address": address,
                      "tls": not plain and bool(settings["node_exporter_tls_cert"]), "basic_auth": bool(users),
                      "username": user, "password": users.get(user, "") if users else ""}
            if job != "redis":
                targets.append(target)
                continue
            targets += [{**target, "app": instance["app"], "redis": f"redis://127.0.0.1:{instance['port']}"}
                        for instance in _redis_instances(plan)]
    return targets


def monitoring_node_targets(hostvars: Any, hosts: list[str], monitoring_host: str, username: str) -> list[dict]:
    """One entry per host of the target group: where Prometheus scrapes its node_exporter and how.

    address: the exporter's listen address when it is a specific network address; with a wildcard
    (0.0.0.0, ::) the host's ansible_host and the exporter's port; loopback only when Prometheus runs on
    the same host. tls: the host serves TLS (node_exporter_tls_cert set); Prometheus then checks the
    certificate against monitoring_node_exporter_ca (or the system's CAs) and the host's inventory name
    (server_name). password: the host's node_exporter_basic_auth_users[username] when it has basic auth.
    """
    targets = []
    for name in hosts:
        settings = _host_settings(hostvars, name)
        address = _scrape_address(str(settings["node_exporter_web_listen_address"]), str(settings["ansible_host"]),
                                  name == monitoring_host)
        users = settings["node_exporter_basic_auth_users"] or {}
        targets.append(
            {
                "name": name,
                "address": address,
                "tls": bool(settings["node_exporter_tls_cert"]),
                "basic_auth": bool(users),
                "username": username if users else "",
                "password": users.get(username, "") if users else "",
                "ssh": f"{settings['ansible_host']}:{settings['hardening_ssh_port']}",
            }
        )
    return targets


def monitoring_target_problems(targets: list[dict], group: str, username: str) -> list[str]:
    """What keeps Prometheus from scraping the targets (messages for the input checks)."""
    if not targets:
        return [
            f"The inventory group {group} (monitoring_target_group) has no host: Prometheus would have nothing "
            "to scrape. Put the berth hosts in it (e.g. the production inventory's berth group), or run the "
            "monitoring role only once there are hosts to watch."
        ]
    problems = []
    for target in targets:
        if target["address"] is None:
            problems.append(
                f"{target['name']}: its node_exporter listens on loopback only (node_exporter_web_listen_address), "
                "so Prometheus on another host cannot scrape it; set it to the host's private address or "
                "0.0.0.0:9100 behind the firewall, e.g. node_exporter_web_listen_address: 0.0.0.0:9100."
            )
        if target["basic_auth"] and not target["password"]:
            problems.append(
                f"{target['name']}: its node_exporter_basic_auth_users has no user {username} "
                "(monitoring_node_exporter_username), the user Prometheus scrapes as; add it, e.g. "
                "node_exporter_basic_auth_users: {prometheus: \"{{ vault_node_exporter_password }}\"}."
            )
    return problems


def _host_job(target: dict, job_label: str, ca_file: str) -> dict:
    """The scrape job of one host's exporter: its own TLS name and credentials, labelled job=<job_label>
    (what berth's rules select), instance and host = the inventory name."""
    labels = {"instance": target["name"], "host": target["name"]}
    job: dict[str, Any] = {
        "job_name": f"{job_label}_{target['name']}",
        "scheme": "https" if target["tls"] else "http",
        "static_configs": [{"targets": [target["address"]], "labels": labels}],
        "relabel_configs": [{"target_label": "job", "replacement": job_label}],
    }
    if target["tls"]:
        tls: dict[str, Any] = {"server_name": target["name"], "min_version": "TLS12"}
        if ca_file:
            tls["ca_file"] = ca_file
        job["tls_config"] = tls
    if target["basic_auth"]:
        job["basic_auth"] = {"username": target["username"], "password": target["password"]}
    return job


def _redis_jobs(targets: list[dict], ca_file: str) -> list[dict]:
    """One job per db host's Redis exporter (multi-target): each app's instance a target of its own,
    redis://127.0.0.1:<port>, sent as /scrape?target=... to the exporter; labelled job="redis", app, host
    and instance=<host>/<app>."""
    jobs = []
    for name in dict.fromkeys(target["name"] for target in targets):
        mine = [target for target in targets if target["name"] == name]
        job = _host_job(mine[0], "redis", ca_file)
        job["metrics_path"] = "/scrape"
        job["static_configs"] = [
            {"targets": [target["redis"]],
             "labels": {"instance": f"{name}/{target['app']}", "host": name, "app": target["app"]}}
            for target in mine
        ]
        job["relabel_configs"] = [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"target_label": "__address__", "replacement": mine[0]["address"]},
            {"target_label": "job", "replacement": "redis"},
        ]
        jobs.append(job)
    return jobs


def _blackbox_relabel(blackbox: str) -> list[dict]:
    return [
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"target_label": "__address__", "replacement": blackbox},
    ]


def monitoring_app_probes(plan: Any, app_hosts: Any, behind_load_balancer: bool = False) -> list[dict]:
    """The HTTPS probes of the apps (berth_apps_plan): each app with a domain is probed at its health path
    on its first domain, https://<domain><web.health_path>, labelled app=<name>. When one app host serves
    the apps directly (not behind a load balancer: nginx_load_balancers empty), the probe is labelled
    host=<that host> too, so that the host being down silences the site's alert (the inhibition of
    monitoring_alertmanager_config); behind a load balancer one host down does not take the site down."""
    hosts = list(app_hosts or [])
    host = hosts[0] if len(hosts) == 1 and not behind_load_balancer else ""
    probes = []
    for app in plan or []:
        if not app.get("domains"):
            continue
        labels = {"app": app["name"], **({"host": host} if host else {})}
        probes.append({"url": f"https://{app['domains'][0]}{app['web']['health_path']}", "labels": labels})
    return probes


def monitoring_scrape_configs(
    targets: list[dict],
    prometheus: str,
    alertmanager: str,
    blackbox: str,
    ca_file: str = "",
    probe_urls: list[str] | None = None,
    probe_ssh: bool = True,
    app_probes: list[dict] | None = None,
    exporters: list[dict] | None = None,
) -> list[dict]:
    """Prometheus' scrape_configs: one job per berth host's node_exporter (each with its own TLS name
    and credentials; all labelled job="node", as berth's alert rules expect, instance=<inventory name>
    and host=<inventory name>), Prometheus, Alertmanager and blackbox_exporter themselves, and the
    blackbox probes: each host's SSH (instance and host: its inventory name), the apps' URLs
    (app_probes, from monitoring_app_probes) and each URL of probe_urls (instance: the URL); and the
    services' exporters (from monitoring_exporter_targets), one job per host as node_exporter's,
    labelled job="<nginx|postgres>", and each db host's Redis exporter, one job per host with a target
    per app's instance (job="redis", app, host).

    prometheus, alertmanager and blackbox are listen addresses (a wildcard is reached on loopback)."""
    configs: list[dict] = [_host_job(target, "node", ca_file) for target in targets]
    configs += [_host_job(target, target["job"], ca_file) for target in exporters or [] if target["job"] != "redis"]
    configs += _redis_jobs([target for target in exporters or [] if target["job"] == "redis"], ca_file)
    blackbox_address = _connect_address(blackbox)
    configs += [
        {"job_name": "prometheus", "static_configs": [{"targets": [_connect_address(prometheus)]}]},
        {"job_name": "alertmanager", "static_configs": [{"targets": [_connect_address(alertmanager)]}]},
        {"job_name": "blackbox", "static_configs": [{"targets": [blackbox_address]}]},
    ]
    if probe_ssh and targets:
        configs.append(
            {
                "job_name": "blackbox_ssh",
                "metrics_path": "/probe",
                "params": {"module": ["ssh_banner"]},
                "static_configs": [
                    {"targets": [target["ssh"]], "labels": {"instance": target["name"], "host": target["name"]}}
                    for target in targets
                ],
                "relabel_configs": _blackbox_relabel(blackbox_address),
            }
        )
    https = [{"targets": [probe["url"]], "labels": dict(probe["labels"])} for probe in app_probes or []]
    https += [{"targets": [url]} for url in probe_urls or [] if url not in {p["url"] for p in app_probes or []}]
    if https:
        configs.append(
            {
                "job_name": "blackbox_https",
                "metrics_path": "/probe",
                "params": {"module": ["https_2xx"]},
                "static_configs": https,
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {"target_label": "__address__", "replacement": blackbox_address},
                ],
            }
        )
    return configs


def monitoring_receiver_problems(receivers: Any) -> list[str]:
    """What is wrong with monitoring_alert_receivers. The messages name the receiver by its position
    and type, never its URL or password (both secrets)."""
    example = "e.g. [{type: webhook, url: \"{{ vault_monitoring_webhook_url }}\"}]"
    if not isinstance(receivers, list) or not receivers:
        return [
            "monitoring_alert_receivers must list at least one receiver (type email, webhook or slack), or no "
            f"alert reaches anybody; {example}."
        ]
    problems = []
    for number, receiver in enumerate(receivers, 1):
        where = f"monitoring_alert_receivers[{number - 1}]"
        if not isinstance(receiver, dict) or receiver.get("type") not in RECEIVER_TYPES:
            kind = receiver.get("type") if isinstance(receiver, dict) else receiver
            problems.append(f"{where} must be a mapping with type email, webhook or slack; got type {kind!r}.")
            continue
        kind = receiver["type"]
        if kind in ("webhook", "slack"):
            if not (isinstance(receiver.get("url"), str) and URL_RE.match(receiver["url"])):
                problems.append(
                    f"{where} ({kind}) needs url: the http(s) URL alerts are posted to, from Ansible Vault, "
                    "e.g. url: \"{{ vault_monitoring_webhook_url }}\" (missing or not an http(s) URL)."
                )
            continue
        smarthost = receiver.get("smarthost")
        if not (isinstance(smarthost, str) and HOST_RE.match(smarthost)):
            problems.append(
                f"{where} (email) needs smarthost: the SMTP server as host:port, e.g. smtp.example.com:587; "
                f"got {smarthost!r}."
            )
        for key in ("from", "to"):
            value = receiver.get(key)
            if not (isinstance(value, str) and EMAIL_RE.match(value)):
                problems.append(f"{where} (email) needs {key}: an e-mail address, e.g. ops@example.com; got {value!r}.")
        if bool(receiver.get("auth_username")) != bool(receiver.get("auth_password")):
            problems.append(f"{where} (email): set auth_username and auth_password together, or neither.")
    return problems


def monitoring_alertmanager_config(
    receivers: list[dict], group_wait: str, group_interval: str, repeat_interval: str
) -> dict:
    """Alertmanager's configuration: one route to one receiver holding every configured channel, grouped
    by alertname and instance, resolved notifications on, and a host down silencing that host's other
    alerts: every alert with the same `host` label (its node_exporter's and SSH probe's, and the probes of
    the sites it alone serves; monitoring_scrape_configs sets the label). A host-down alert without a
    `host` label silences nothing."""
    channels: dict[str, list[dict]] = {"email_configs": [], "webhook_configs": [], "slack_configs": []}
    for receiver in receivers:
        kind = receiver["type"]
        if kind == "webhook":
            channels["webhook_configs"].append({"url": receiver["url"], "send_resolved": True})
        elif kind == "slack":
            slack = {"api_url": receiver["url"], "send_resolved": True}
            if receiver.get("channel"):
                slack["channel"] = receiver["channel"]
            channels["slack_configs"].append(slack)
        else:
            email: dict[str, Any] = {
                "to": receiver["to"],
                "from": receiver["from"],
                "smarthost": receiver["smarthost"],
                "require_tls": bool(receiver.get("require_tls", True)),
                "send_resolved": True,
            }
            if receiver.get("auth_username"):
                email["auth_username"] = receiver["auth_username"]
                email["auth_password"] = receiver["auth_password"]
            channels["email_configs"].append(email)
    berth = {"name": "berth", **{key: value for key, value in channels.items() if value}}
    return {
        "route": {
            "receiver": "berth",
            "group_by": ["alertname", "instance"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [berth],
        "inhibit_rules": [
            {
                # Only a host-down alert that names its host: Alertmanager takes a label missing on both
                # sides as equal, so one without `host` (a target berth did not configure, e.g. the
                # package's default localhost:9100 until the first restart) would silence every alert
                # without it, the probe_urls sites' among them.
                "source_matchers": [f'alertname="{HOST_DOWN_ALERT}"', 'host=~".+"'],
                "target_matchers": [f'alertname!="{HOST_DOWN_ALERT}"'],
                "equal": ["host"],
            }
        ],
    }


def monitoring_alert_names(rule_files: list[str]) -> list[str]:
    """The alert names defined in the given rule files' texts."""
    return sorted(
        rule["alert"]
        for text in rule_files
        for group in (yaml.safe_load(text) or {}).get("groups", [])
        for rule in group.get("rules", [])
        if "alert" in rule
    )


def monitoring_rules_with_for(text: str, overrides: dict[str, str]) -> str:
    """A rule file's text with the `for` of the named alerts replaced (monitoring_alert_for). Without an
    override for one of its alerts the text is returned as it is, comments and all."""
    rules = yaml.safe_load(text) or {}
    changed = copy.deepcopy(rules)
    hit = False
    for group in changed.get("groups", []):
        for rule in group.get("rules", []):
            if rule.get("alert") in overrides:
                # a plain str: Ansible's values are str subclasses that safe_dump cannot represent
                rule["for"] = "".join(str(overrides[rule["alert"]]))
                hit = True
    if not hit:
        return text
    header = "# berth's rules with `for` changed by monitoring_alert_for: " + ", ".join(
        f"{name} {value}" for name, value in sorted(overrides.items())
    )
    return header + "\n" + yaml.safe_dump(changed, sort_keys=False, width=120)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "monitoring_duration_problems": monitoring_duration_problems,
            "monitoring_size_problems": monitoring_size_problems,
            "monitoring_node_targets": monitoring_node_targets,
            "monitoring_target_problems": monitoring_target_problems,
            "monitoring_scrape_configs": monitoring_scrape_configs,
            "monitoring_app_probes": monitoring_app_probes,
            "monitoring_exporter_targets": monitoring_exporter_targets,
            "monitoring_receiver_problems": monitoring_receiver_problems,
            "monitoring_alertmanager_config": monitoring_alertmanager_config,
            "monitoring_alert_names": monitoring_alert_names,
            "monitoring_rules_with_for": monitoring_rules_with_for,
            "monitoring_connect_address": _connect_address,
            "monitoring_grafana_server": monitoring_grafana_server,
        }
