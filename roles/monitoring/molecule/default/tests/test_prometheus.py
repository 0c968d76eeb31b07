"""What the monitoring host's Prometheus sees of the berth hosts' node_exporter, and what a stranger on the
network does not."""

from __future__ import annotations

import re

import pytest
from conftest import (
    CA,
    EXPORTERS,
    PASSWORD,
    SERVER,
    TEXTFILE_DIR,
    USER,
    address,
    api,
    curl,
    get_host,
    query,
    wait_for,
)

testinfra_hosts = [SERVER]
FILES = ("berth_tls.prom", "berth_release_demo.prom")


@pytest.fixture(scope="module")
def prometheus():
    host = get_host(SERVER)
    wait_for(lambda: host.run("curl -sf http://127.0.0.1:9090/-/ready").rc == 0, 60, "Prometheus ready")
    return host


@pytest.fixture(scope="module")
def targets(prometheus) -> dict[str, dict]:
    """The exporters' scrape targets once Prometheus has scraped each of them successfully."""

    def all_up() -> dict[str, dict]:
        found = {t["labels"]["instance"]: t for t in api(prometheus, "v1/targets")["activeTargets"]
                 if t["labels"]["job"] == "node"}
        return found if all(found.get(e, {}).get("health") == "up" for e in EXPORTERS) else {}

    return wait_for(all_up, 90, "both exporters up in Prometheus")


def values(prometheus, expr: str) -> dict[tuple, float]:
    """{(label values, sorted by label name, without __name__, job and host): value} of a query."""
    found = {}
    for series in query(prometheus, expr):
        labels = series["metric"]
        key = tuple(labels[name] for name in sorted(labels) if name not in ("__name__", "job", "host"))
        found[key] = float(series["value"][1])
    return found


def test_prometheus_scrapes_the_exporters_over_tls_with_basic_auth(prometheus, targets):
    for exporter in EXPORTERS:
        target = targets[exporter]
        assert target["health"] == "up" and target["lastError"] == ""
        # the address the exporter listens on, the TLS name its inventory name (server_name)
        assert target["scrapeUrl"] == f"https://{address(exporter)}:9100/metrics"
    assert all(v == 1 for v in values(prometheus, 'up{job="node"}').values())


def test_wrong_credentials_and_plain_http_are_refused(prometheus):
    for exporter in EXPORTERS:
        url = f"https://{exporter}:9100/metrics"
        assert curl(prometheus, url, f"-u {USER}:{PASSWORD}") == "200"
        assert curl(prometheus, url, f"-u {USER}:wrong-password") == "401"
        assert curl(prometheus, url, f"-u nobody:{PASSWORD}") == "401"
        assert curl(prometheus, url) == "401"
        # TLS only: a plain HTTP request is answered 400 (and carries no credentials to leak).
        assert curl(prometheus, f"http://{exporter}:9100/metrics", f"-u {USER}:{PASSWORD}") == "400"
        # The certificate is checked: it names the host and chains to the test CA.
        assert "CN=berth monitoring test CA" in prometheus.check_output(
            f"openssl s_client -connect {exporter}:9100 -servername {exporter} -CAfile {CA} -verify_return_error"
            " </dev/null 2>/dev/null | openssl x509 -noout -issuer"
        )


def test_a_source_that_is_not_allowed_cannot_reach_9100(prometheus, targets):
    own = address(SERVER)
    stranger = re.sub(r"\.\d+$", ".250", own)
    if stranger not in prometheus.check_output("ip -4 -o addr show dev eth0"):
        prefix = prometheus.check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'").split("/")[1]
        prometheus.check_output(f"ip addr add {stranger}/{prefix} dev eth0")
    for exporter in EXPORTERS:
        ip = address(exporter)
        # From the allowed address the TCP handshake succeeds; from the other one it is dropped (no answer).
        allowed = prometheus.run(f"curl -s -o /dev/null --max-time 5 --interface {own} -k https://{ip}:9100/")
        assert allowed.rc == 0, allowed.stderr
        refused = prometheus.run(f"curl -s -o /dev/null --max-time 5 --interface {stranger} -k https://{ip}:9100/")
        assert refused.rc == 28, f"expected a timeout (dropped), got curl exit {refused.rc}"


def test_textfile_metrics_reach_prometheus_with_their_values(prometheus, targets):
    """The values Prometheus holds are the ones in the files on each host (labels sorted by name)."""
    tls = values(prometheus, "berth_tls_certificate_not_after_timestamp_seconds")
    release = values(prometheus, "berth_release_info")
    deployed = values(prometheus, "berth_release_deployed_timestamp_seconds")
    backup_ok = values(prometheus, "berth_backup_last_run_success")
    sizes = values(prometheus, "berth_backup_size_bytes")
    durations = values(prometheus, "berth_backup_duration_seconds")
    for exporter in EXPORTERS:
        host = get_host(exporter)
        instance = exporter
        files = {name: host.file(f"{TEXTFILE_DIR}/{name}").content_string for name in FILES}
        certificates = re.findall(r'^\S+\{domain="([^"]+)"\} (\d+)$', files["berth_tls.prom"], re.M)
        assert {domain for domain, _ in certificates} == {"berth.test", "api.berth.test"}
        for domain, value in certificates:
            assert tls[(domain, instance)] == float(value)
        assert release[("demo", "green", instance, "v2")] == 1
        release_file = files["berth_release_demo.prom"]
        stamp = re.search(r'berth_release_deployed_timestamp_seconds\{app="demo"\} (\d+)', release_file)
        assert deployed[("demo", instance)] == float(stamp.group(1))
        assert backup_ok[(instance, "offsite")] == 0
        assert sizes[(instance, "offsite")] == 123456789
        assert durations[(instance, "offsite")] == 42.5
    # The stale-metrics alert's selector matches the file label of both node_exporter versions.
    fresh = values(prometheus, 'time() - node_textfile_mtime_seconds{file=~"(.*/)?berth_tls.prom"} < 3600')
    assert sorted(key[-1] for key in fresh) == sorted(EXPORTERS)


def test_collectors_are_chosen_by_the_variables(prometheus, targets):
    for exporter in EXPORTERS:
        instance = f'instance="{exporter}"'
        assert query(prometheus, f"node_tcp_connection_states{{{instance}}}"), "tcpstat (enabled) reports nothing"
        assert query(prometheus, f'node_scrape_collector_success{{{instance}, collector="textfile"}}')
        assert not query(prometheus, f'node_scrape_collector_success{{{instance}, collector="arp"}}')
        assert not query(prometheus, f"node_arp_entries{{{instance}}}"), "arp (disabled) still reports"
        assert query(prometheus, f"node_textfile_scrape_error{{{instance}}} == 0")


def test_upgrade_and_reboot_metrics_reach_prometheus(prometheus, targets):
    """apt.prom (Debian's collectors) on each host, scraped: the pending upgrade prepare.yml made."""
    pending = values(prometheus, "apt_upgrades_pending")
    reboot = values(prometheus, "node_reboot_required")
    lists = values(prometheus, "apt_package_cache_timestamp_seconds")
    for exporter in EXPORTERS:
        instance = exporter
        assert pending[("all", instance, "berth-test:berth-test-security/stable-security")] == 1
        assert reboot[(instance,)] == 0
        assert lists[(instance,)] > 0


def alert_states(prometheus) -> dict[tuple[str, str, str], str]:
    """{(alert name, instance, domain or repository): state} of the live Prometheus' active alerts."""
    states = {}
    for alert in api(prometheus, "v1/alerts")["alerts"]:
        labels = alert["labels"]
        subject = labels.get("domain") or labels.get("repository", "")
        states[(labels["alertname"], labels.get("instance", ""), subject)] = alert["state"]
    return states


def test_a_pending_reboot_reaches_prometheus_and_its_alert(prometheus, targets):
    exporter = EXPORTERS[0]
    host = get_host(exporter)
    instance = exporter
    key = ("BerthRebootRequired", instance, "")
    # As unattended-upgrades' kernel hook does; the timer's service would see it within 15 minutes.
    host.check_output("touch /run/reboot-required && systemctl start prometheus-node-exporter-apt.service")
    try:
        wait_for(lambda: values(prometheus, "node_reboot_required").get((instance,)) == 1, 30, "reboot required")
        # for: 26h, so pending (and on this host only).
        states = wait_for(lambda: (s := alert_states(prometheus)).get(key) and s, 30, "BerthRebootRequired")
        assert states[key] == "pending"
        assert [k for k in states if k[0] == "BerthRebootRequired"] == [key]
    finally:
        host.check_output("rm -f /run/reboot-required && systemctl start prometheus-node-exporter-apt.service")
    wait_for(lambda: values(prometheus, "node_reboot_required").get((instance,)) == 0, 30, "reboot done")
    wait_for(lambda: key not in alert_states(prometheus), 30, "BerthRebootRequired resolved")


def test_the_live_prometheus_evaluates_the_rules_on_scraped_data(prometheus, targets):
    groups = {g["name"] for g in api(prometheus, "v1/rules")["groups"]}
    assert groups == {
        "berth-host",
        "berth-backup",
        "berth-tls",
        "berth-release",
        "berth-jobs",
        "berth-updates",
        "berth-nginx",
        "berth-databases",
        "berth-monitoring",  # the monitoring role's own rules
    }

    expected: dict[tuple[str, str, str], set[str]] = {}
    for exporter in EXPORTERS:
        instance = exporter
        # berth.test expires in 5 days (for: 1h, so pending), api.berth.test in 60 (no alert); the last
        # backup failed (no for: firing) and the last success was 2 days ago (for: 10m, pending at first).
        expected[("BerthCertificateExpiring", instance, "berth.test")] = {"pending"}
        expected[("BerthBackupFailed", instance, "offsite")] = {"firing"}
        # (firing once the exporter has been scraped for 10 minutes: how long the steps before took)
        expected[("BerthBackupTooOld", instance, "offsite")] = {"pending", "firing"}
        # prepare.yml's upgrade from a "security" archive (for: 2d, so pending).
        expected[("BerthSecurityUpgradesPending", instance, "")] = {"pending"}
    seen: list[dict] = []

    def as_expected() -> bool:
        # the berth hosts' node_exporter alerts (the monitoring host's own, e.g. the expiring site's, apart)
        seen.append({k: v for k, v in alert_states(prometheus).items() if k[1] in EXPORTERS})
        return seen[-1].keys() == expected.keys() and all(seen[-1][k] in expected[k] for k in expected)

    try:
        wait_for(as_expected, 30, "the expected alerts")
    except AssertionError:
        raise AssertionError(f"expected {expected}, seen {seen[-1]}") from None
