"""The decisions of the monitoring role (roles/monitoring/filter_plugins/monitoring.py): what Prometheus
scrapes and probes, what Alertmanager sends where, and the checks of the settings behind them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT, load_module

monitoring = load_module("monitoring_filters", "roles/monitoring/filter_plugins/monitoring.py")
BERTH_ALERTS = ROOT / "roles" / "node_exporter" / "files" / "prometheus" / "berth-alerts.yml"
OWN_ALERTS = ROOT / "roles" / "monitoring" / "files" / "prometheus" / "berth-monitoring-alerts.yml"
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def targets(hostvars: dict, monitoring_host: str = "mon1") -> list[dict]:
    return monitoring.monitoring_node_targets(hostvars, list(hostvars), monitoring_host, "prometheus")


@pytest.mark.parametrize("value", ["30s", "5m", "1h30m", "15d", "2w", "1y", "500ms", "0s", "1d12h"])
def test_durations_prometheus_accepts(value: str) -> None:
    assert monitoring.monitoring_duration_problems({"x": value}) == []


@pytest.mark.parametrize("value", ["5 minutes", "", "5", "30m1h", "1.5h", "5M", 300, None, "-5m", "5m "])
def test_durations_prometheus_refuses(value: object) -> None:
    problems = monitoring.monitoring_duration_problems({"monitoring_scrape_interval": value})
    assert len(problems) == 1
    assert problems[0].startswith("monitoring_scrape_interval must be a Prometheus duration")
    assert repr(value) in problems[0]


def test_duration_messages_name_the_alert() -> None:
    problems = monitoring.monitoring_duration_problems({"BerthHostDown": "soon"}, prefix="monitoring_alert_for.")
    assert problems[0].startswith("monitoring_alert_for.BerthHostDown must be a Prometheus duration")


@pytest.mark.parametrize(("value", "ok"), [("10GB", True), ("512MB", True), ("1TB", True), ("10 GB", False),
                                           ("10G", False), ("0GB", False), ("ten", False), ("", False)])
def test_sizes(value: str, ok: bool) -> None:
    assert (monitoring.monitoring_size_problems({"monitoring_retention_size": value}) == []) is ok


def test_a_host_with_tls_and_basic_auth_on_a_wildcard_address() -> None:
    hostvars = {
        "app1.example.com": {
            "ansible_host": "203.0.113.10",
            "node_exporter_web_listen_address": "0.0.0.0:9100",
            "node_exporter_tls_cert": CERT,
            "node_exporter_basic_auth_users": {"prometheus": "a-long-enough-password", "ops": "another-password-x"},
            "hardening_ssh_port": 2222,
        }
    }
    [target] = targets(hostvars)
    assert target == {
        "name": "app1.example.com",
        "address": "203.0.113.10:9100",
        "tls": True,
        "basic_auth": True,
        "username": "prometheus",
        "password": "a-long-enough-password",
        "ssh": "203.0.113.10:2222",
    }
    [job, *_] = monitoring.monitoring_scrape_configs([target], "127.0.0.1:9090", "127.0.0.1:9093",
                                                     "127.0.0.1:9115", ca_file="/etc/prometheus/ca.pem")
    assert job == {
        "job_name": "node_app1.example.com",
        "scheme": "https",
        "static_configs": [{"targets": ["203.0.113.10:9100"], "labels": {"instance": "app1.example.com",
                                                                                "host": "app1.example.com"}}],
        # berth's rules select job="node"
        "relabel_configs": [{"target_label": "job", "replacement": "node"}],
        # the certificate is checked, against the host's inventory name; never insecure_skip_verify
        "tls_config": {"server_name": "app1.example.com", "min_version": "TLS12", "ca_file": "/etc/prometheus/ca.pem"},
        "basic_auth": {"username": "prometheus", "password": "a-long-enough-password"},
    }


def test_a_host_on_node_exporters_defaults_and_one_on_a_private_address() -> None:
    hostvars = {
        "web1": {"ansible_host": "web1.internal", "node_exporter_web_listen_address": "10.0.0.5:9100"},
        "mon1": {},  # the monitoring host itself, node_exporter on loopback: reachable
    }
    web1, mon1 = targets(hostvars)
    assert (web1["address"], web1["tls"], web1["basic_auth"], web1["ssh"]) == ("10.0.0.5:9100", False, False,
                                                                                "web1.internal:22")
    assert mon1["address"] == "127.0.0.1:9100"
    jobs = monitoring.monitoring_scrape_configs([web1, mon1], "0.0.0.0:9090", "127.0.0.1:9093", "127.0.0.1:9115")
    assert jobs[0]["scheme"] == "http" and "tls_config" not in jobs[0] and "basic_auth" not in jobs[0]
    names = [job["job_name"] for job in jobs]
    assert names == ["node_web1", "node_mon1", "prometheus", "alertmanager", "blackbox", "blackbox_ssh"]
    # a wildcard listen address is reached on loopback
    assert jobs[2]["static_configs"] == [{"targets": ["127.0.0.1:9090"]}]


def test_ssh_and_https_probes_go_through_blackbox() -> None:
    hostvars = {"web1": {"node_exporter_web_listen_address": "0.0.0.0:9100"}}
    jobs = monitoring.monitoring_scrape_configs(targets(hostvars), "127.0.0.1:9090", "127.0.0.1:9093",
                                                "127.0.0.1:9115", probe_urls=["https://shop.example.com/"])
    ssh, https = jobs[-2:]
    assert ssh["params"] == {"module": ["ssh_banner"]} and ssh["metrics_path"] == "/probe"
    assert ssh["static_configs"] == [{"targets": ["web1:22"], "labels": {"instance": "web1", "host": "web1"}}]
    assert {"target_label": "__address__", "replacement": "127.0.0.1:9115"} in ssh["relabel_configs"]
    assert https["params"] == {"module": ["https_2xx"]}
    assert https["static_configs"] == [{"targets": ["https://shop.example.com/"]}]
    assert {"source_labels": ["__param_target"], "target_label": "instance"} in https["relabel_configs"]
    no_probes = monitoring.monitoring_scrape_configs(targets(hostvars), "127.0.0.1:9090", "127.0.0.1:9093",
                                                     "127.0.0.1:9115", probe_ssh=False)
    assert [job["job_name"] for job in no_probes] == ["node_web1", "prometheus", "alertmanager", "blackbox"]


def test_the_apps_are_probed_at_their_health_path_labelled_with_the_host_that_alone_serves_them() -> None:
    plan = [
        {"name": "shop", "domains": ["shop.example.com", "www.shop.example.com"], "web": {"health_path": "/healthz"}},
        {"name": "worker-only", "domains": [], "web": {"health_path": "/healthz"}},
        {"name": "blog", "domains": ["blog.example.com"], "web": {"health_path": "/"}},
    ]
    probes = monitoring.monitoring_app_probes(plan, ["app1"])
    assert probes == [
        {"url": "https://shop.example.com/healthz", "labels": {"app": "shop", "host": "app1"}},
        {"url": "https://blog.example.com/", "labels": {"app": "blog", "host": "app1"}},
    ]
    # several app hosts, or one behind a load balancer: one host down does not take the site down
    for hosts, behind in ((["app1", "app2"], False), (["app1"], True)):
        assert [p["labels"] for p in monitoring.monitoring_app_probes(plan, hosts, behind)] == [
            {"app": "shop"}, {"app": "blog"}]
    assert monitoring.monitoring_app_probes([], ["app1"]) == []
    jobs = monitoring.monitoring_scrape_configs(
        [], "127.0.0.1:9090", "127.0.0.1:9093", "127.0.0.1:9115", app_probes=probes,
        probe_urls=["https://shop.example.com/healthz", "https://status.example.com/"])
    # an extra URL that is an app's probe already is probed once
    assert jobs[-1]["static_configs"] == [
        {"targets": ["https://shop.example.com/healthz"], "labels": {"app": "shop", "host": "app1"}},
        {"targets": ["https://blog.example.com/"], "labels": {"app": "blog", "host": "app1"}},
        {"targets": ["https://status.example.com/"]},
    ]


def test_the_services_exporters_are_scraped_where_they_can_be_reached_as_node_exporter_is() -> None:
    hostvars = {
        "app1": {"ansible_host": "203.0.113.10", "nginx_exporter_listen_address": "0.0.0.0:9113",
                 "node_exporter_tls_cert": CERT,
                 "node_exporter_basic_auth_users": {"prometheus": "a-long-enough-password"}},
        "app2": {},  # nginx exporter on loopback (its default): not reachable from the monitoring host
        "app3": {"nginx_exporter_listen_address": "10.0.0.3:9113", "nginx_exporter_enabled": False},
        "db1": {"ansible_host": "203.0.113.20", "db_host_postgres_exporter_listen_address": "10.0.0.20:9187"},
    }
    groups = {"app": ["app1", "app2", "app3"], "db": ["db1"]}
    nginx, postgres = monitoring.monitoring_exporter_targets(hostvars, groups, "mon1", "prometheus")
    assert nginx == {"name": "app1", "job": "nginx", "address": "203.0.113.10:9113", "tls": True, "basic_auth": True,
                     "username": "prometheus", "password": "a-long-enough-password"}
    assert (postgres["job"], postgres["address"], postgres["tls"]) == ("postgres", "10.0.0.20:9187", False)
    # on the monitoring host itself, loopback is reachable (nginx's exporter and mtail, their defaults)
    itself = monitoring.monitoring_exporter_targets({"mon1": {}}, {"app": ["mon1"]}, "mon1", "p")
    assert [(t["name"], t["job"], t["address"]) for t in itself] == [
        ("mon1", "nginx", "127.0.0.1:9113"), ("mon1", "nginx_log", "127.0.0.1:3903")]
    jobs = monitoring.monitoring_scrape_configs([], "127.0.0.1:9090", "127.0.0.1:9093", "127.0.0.1:9115",
                                                ca_file="/etc/prometheus/ca.pem", exporters=[nginx, postgres])
    assert jobs[0] == {
        "job_name": "nginx_app1", "scheme": "https",
        "static_configs": [{"targets": ["203.0.113.10:9113"], "labels": {"instance": "app1", "host": "app1"}}],
        "relabel_configs": [{"target_label": "job", "replacement": "nginx"}],
        "tls_config": {"server_name": "app1", "min_version": "TLS12", "ca_file": "/etc/prometheus/ca.pem"},
        "basic_auth": {"username": "prometheus", "password": "a-long-enough-password"},
    }
    assert jobs[1]["job_name"] == "postgres_db1" and jobs[1]["scheme"] == "http" and "basic_auth" not in jobs[1]


def test_mtail_is_scraped_in_plain_http_whatever_node_exporters_tls_and_basic_auth() -> None:
    secured = {"node_exporter_tls_cert": CERT,
               "node_exporter_basic_auth_users": {"prometheus": "a-long-enough-password"}}
    hostvars = {
        "app1": {"ansible_host": "203.0.113.10", "nginx_log_metrics_listen_address": "0.0.0.0:3903", **secured},
        "app2": {"nginx_log_metrics_listen_address": "10.0.0.2:3903", "nginx_exporter_enabled": False},
        "app3": {"nginx_log_metrics_listen_address": "10.0.0.3:3903", "nginx_log_metrics_enabled": False},
        "app4": {"nginx_exporter_listen_address": "0.0.0.0:9113", **secured},  # mtail on loopback (its default)
    }
    targets = monitoring.monitoring_exporter_targets(hostvars, {"app": list(hostvars)}, "mon1", "prometheus")
    mtail = [t for t in targets if t["job"] == "nginx_log"]
    assert mtail == [
        {"name": "app1", "job": "nginx_log", "address": "203.0.113.10:3903", "tls": False, "basic_auth": False,
         "username": "", "password": ""},
        {"name": "app2", "job": "nginx_log", "address": "10.0.0.2:3903", "tls": False, "basic_auth": False,
         "username": "", "password": ""},
    ]
    # nginx's exporter (app4's; app1's is on loopback) keeps node_exporter's TLS and basic auth
    assert [(t["name"], t["tls"], t["basic_auth"]) for t in targets if t["job"] == "nginx"] == [("app4", True, True)]
    job = monitoring.monitoring_scrape_configs([], "127.0.0.1:9090", "127.0.0.1:9093", "127.0.0.1:9115",
                                               ca_file="/etc/prometheus/ca.pem", exporters=mtail[:1])[0]
    assert job == {
        "job_name": "nginx_log_app1", "scheme": "http",
        "static_configs": [{"targets": ["203.0.113.10:3903"], "labels": {"instance": "app1", "host": "app1"}}],
        "relabel_configs": [{"target_label": "job", "replacement": "nginx_log"}],
    }


def test_each_apps_redis_instance_on_the_db_host_is_a_target_of_its_exporter() -> None:
    hostvars = {
        "db1": {"ansible_host": "203.0.113.20", "db_host_redis_exporter_listen_address": "10.0.0.20:9121",
                "db_host_postgres_exporter_listen_address": "10.0.0.20:9187", "node_exporter_tls_cert": CERT,
                "node_exporter_basic_auth_users": {"prometheus": "scrape-password", "ops": "ops-password"}},
    }
    plan = [
        {"name": "shop", "data": "host", "redis": True, "db_redis_port": 20001},
        {"name": "blog", "data": "host", "redis": False, "db_redis_port": 20003},  # no Redis
        {"name": "jobs", "data": "local", "redis": True, "db_redis_port": 20005},  # its data on its app host
        {"name": "wiki", "data": "host", "redis": True, "db_redis_port": 20007},
    ]
    found = monitoring.monitoring_exporter_targets(hostvars, {"db": ["db1"]}, "mon1", "prometheus", plan)
    postgres, *redis = found
    assert (postgres["job"], postgres["username"], postgres["password"]) == ("postgres", "prometheus",
                                                                             "scrape-password")
    # The Redis exporter knows one basic auth user: the first by name (roles/db_host).
    assert redis == [
        {"name": "db1", "job": "redis", "address": "10.0.0.20:9121", "tls": True, "basic_auth": True,
         "username": "ops", "password": "ops-password", "app": app, "redis": f"redis://127.0.0.1:{port}"}
        for app, port in (("shop", 20001), ("wiki", 20007))
    ]
    jobs = monitoring.monitoring_scrape_configs([], "127.0.0.1:9090", "127.0.0.1:9093", "127.0.0.1:9115",
                                                ca_file="/etc/prometheus/ca.pem", exporters=found)
    assert [job["job_name"] for job in jobs[:2]] == ["postgres_db1", "redis_db1"]
    assert jobs[1] == {
        "job_name": "redis_db1", "scheme": "https", "metrics_path": "/scrape",
        "static_configs": [
            {"targets": ["redis://127.0.0.1:20001"], "labels": {"instance": "db1/shop", "host": "db1", "app": "shop"}},
            {"targets": ["redis://127.0.0.1:20007"], "labels": {"instance": "db1/wiki", "host": "db1", "app": "wiki"}},
        ],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"target_label": "__address__", "replacement": "10.0.0.20:9121"},
            {"target_label": "job", "replacement": "redis"},
        ],
        "tls_config": {"server_name": "db1", "min_version": "TLS12", "ca_file": "/etc/prometheus/ca.pem"},
        "basic_auth": {"username": "ops", "password": "ops-password"},
    }


def test_no_redis_target_without_an_instance_a_reachable_or_a_running_exporter() -> None:
    plan = [{"name": "shop", "data": "host", "redis": True, "db_redis_port": 20001}]
    network = {"db_host_redis_exporter_listen_address": "0.0.0.0:9121", "ansible_host": "10.0.0.20"}
    for hostvars, apps in (
        ({"db1": network}, []),  # no app's Redis on the db host
        ({"db1": {}}, plan),  # its default: loopback, not reachable from mon1
        ({"db1": {**network, "db_host_redis_exporter_enabled": False}}, plan),
    ):
        found = monitoring.monitoring_exporter_targets(hostvars, {"db": ["db1"]}, "mon1", "prometheus", apps)
        assert [t for t in found if t["job"] == "redis"] == [], hostvars
    # a wildcard: the host's ansible_host; without basic auth no user
    (found,) = [t for t in monitoring.monitoring_exporter_targets({"db1": network}, {"db": ["db1"]}, "mon1", "p", plan)
                if t["job"] == "redis"]
    assert (found["address"], found["basic_auth"], found["username"]) == ("10.0.0.20:9121", False, "")


def test_target_problems() -> None:
    assert monitoring.monitoring_target_problems([], "berth", "prometheus")[0].startswith(
        "The inventory group berth (monitoring_target_group) has no host")
    hostvars = {
        "web1": {},  # node_exporter on loopback, Prometheus elsewhere
        "web2": {"node_exporter_web_listen_address": "0.0.0.0:9100", "node_exporter_tls_cert": CERT,
                 "node_exporter_basic_auth_users": {"ops": "a-long-enough-password"}},
        "web3": {"node_exporter_web_listen_address": "0.0.0.0:9100"},
    }
    problems = monitoring.monitoring_target_problems(targets(hostvars), "berth", "prometheus")
    assert len(problems) == 2
    assert problems[0].startswith("web1: its node_exporter listens on loopback only")
    assert problems[1].startswith("web2: its node_exporter_basic_auth_users has no user prometheus")


def test_receivers_become_one_receiver_with_every_channel() -> None:
    receivers = [
        {"type": "email", "smarthost": "smtp.example.com:587", "from": "am@example.com", "to": "ops@example.com",
         "auth_username": "am", "auth_password": "secret"},
        {"type": "webhook", "url": "https://hooks.example.com/berth"},
        {"type": "slack", "url": "https://chat.example.com/hooks/xyz", "channel": "#ops"},
    ]
    assert monitoring.monitoring_receiver_problems(receivers) == []
    config = monitoring.monitoring_alertmanager_config(receivers, "30s", "5m", "4h")
    assert config["route"] == {"receiver": "berth", "group_by": ["alertname", "instance"], "group_wait": "30s",
                               "group_interval": "5m", "repeat_interval": "4h"}
    [berth] = config["receivers"]
    assert berth["email_configs"] == [{"to": "ops@example.com", "from": "am@example.com",
                                       "smarthost": "smtp.example.com:587", "require_tls": True,
                                       "send_resolved": True, "auth_username": "am", "auth_password": "secret"}]
    assert berth["webhook_configs"] == [{"url": "https://hooks.example.com/berth", "send_resolved": True}]
    assert berth["slack_configs"] == [{"api_url": "https://chat.example.com/hooks/xyz", "send_resolved": True,
                                       "channel": "#ops"}]
    # a host down silences the other alerts of the same host; one without a host label, nothing (alerts
    # without `host` would otherwise count as the same host)
    assert config["inhibit_rules"] == [{"source_matchers": ['alertname="BerthHostDown"', 'host=~".+"'],
                                        "target_matchers": ['alertname!="BerthHostDown"'], "equal": ["host"]}]


def test_only_the_configured_channels_appear() -> None:
    config = monitoring.monitoring_alertmanager_config([{"type": "webhook", "url": "http://127.0.0.1:1/"}],
                                                       "1s", "1s", "1h")
    assert set(config["receivers"][0]) == {"name", "webhook_configs"}


@pytest.mark.parametrize(
    ("receivers", "message"),
    [
        ([], "monitoring_alert_receivers must list at least one receiver"),
        (None, "monitoring_alert_receivers must list at least one receiver"),
        ([{"type": "pager"}], "monitoring_alert_receivers[0] must be a mapping with type email, webhook or slack"),
        ([{"type": "webhook"}], "monitoring_alert_receivers[0] (webhook) needs url"),
        ([{"type": "slack", "url": "hooks.slack.com/x"}], "monitoring_alert_receivers[0] (slack) needs url"),
        ([{"type": "email", "from": "a@example.com", "to": "b@example.com"}],
         "monitoring_alert_receivers[0] (email) needs smarthost"),
        ([{"type": "email", "smarthost": "smtp.example.com:25", "to": "b@example.com"}],
         "monitoring_alert_receivers[0] (email) needs from"),
        ([{"type": "email", "smarthost": "smtp.example.com:25", "from": "a@example.com", "to": "b@example.com",
           "auth_username": "a"}], "monitoring_alert_receivers[0] (email): set auth_username and auth_password"),
    ],
)
def test_receiver_problems(receivers: object, message: str) -> None:
    problems = monitoring.monitoring_receiver_problems(receivers)
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_receiver_problems_never_show_the_secret() -> None:
    problems = monitoring.monitoring_receiver_problems([{"type": "webhook", "url": "ftp://token-1234@x"}])
    assert problems and "token-1234" not in problems[0]


def test_rule_files_and_alert_names() -> None:
    names = monitoring.monitoring_alert_names([BERTH_ALERTS.read_text(), OWN_ALERTS.read_text()])
    assert "BerthHostDown" in names and "BerthSiteDown" in names and "BerthSSHDown" in names
    assert len(names) == len(set(names))


def test_for_overrides() -> None:
    text = BERTH_ALERTS.read_text()
    assert monitoring.monitoring_rules_with_for(text, {}) == text
    assert monitoring.monitoring_rules_with_for(text, {"BerthSiteDown": "1m"}) == text  # not in this file
    changed = monitoring.monitoring_rules_with_for(text, {"BerthHostDown": "10s"})
    assert changed.startswith("# berth's rules with `for` changed by monitoring_alert_for: BerthHostDown 10s\n")
    before, after = yaml.safe_load(text), yaml.safe_load(changed)
    rules = {r["alert"]: r for g in after["groups"] for r in g["rules"] if "alert" in r}
    assert rules["BerthHostDown"]["for"] == "10s"
    # Ansible hands the values over as str subclasses
    class Tagged(str):
        pass

    assert "for: 20s" in monitoring.monitoring_rules_with_for(text, {"BerthHostDown": Tagged("20s")})
    # everything else is as it was
    rules["BerthHostDown"]["for"] = "5m"
    assert after == before


@pytest.mark.parametrize(
    ("listen", "connect"),
    [("0.0.0.0:9090", "127.0.0.1:9090"), ("10.0.0.2:9093", "10.0.0.2:9093"), ("[::]:9115", "[::1]:9115"),
     ("[2001:db8::1]:9090", "[2001:db8::1]:9090")],
)
def test_connect_address(listen: str, connect: str) -> None:
    assert monitoring._connect_address(listen) == connect


def test_the_role_ships_its_rule_file_and_the_template_uses_the_filters() -> None:
    assert OWN_ALERTS.exists()
    template = (ROOT / "roles" / "monitoring" / "templates" / "etc" / "prometheus" / "prometheus.yml.j2").read_text()
    assert "__monitoring_scrape_configs" in template
    assert Path(monitoring.__file__).name == "monitoring.py"


@pytest.mark.parametrize(
    ("address", "server"),
    [
        ("127.0.0.1:3000", {"http_addr": "127.0.0.1", "http_port": 3000}),
        ("10.0.0.5:3001", {"http_addr": "10.0.0.5", "http_port": 3001}),
        ("[::1]:3000", {"http_addr": "::1", "http_port": 3000}),
        ("0.0.0.0:3000", {"http_addr": "0.0.0.0", "http_port": 3000}),
    ],
)
def test_grafana_server_settings(address: str, server: dict) -> None:
    assert monitoring.monitoring_grafana_server(address) == server
