"""What the monitoring host does: scrape the berth host over TLS with basic auth, evaluate berth's rules,
and bring an alert and its resolution to the team's stand-ins (a webhook receiver, an SMTP sink)."""

from __future__ import annotations

import email
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EXPORTERS, SERVER, TARGET, address, api, get_host, query, records, wait_for

testinfra_hosts = [SERVER]

POOLS = {f"node_{name}" for name in EXPORTERS} | {
    "prometheus", "alertmanager", "blackbox", "blackbox_ssh", "blackbox_https"}
SITE = "https://localhost:8443/"
EXPIRING_SITE = "https://localhost:8444/"  # prepare.yml: its certificate expires in 5 days


def test_services_listen_on_loopback_only(host):
    listening = sorted(host.check_output("ss -Htln | awk '{print $4}'").split())
    for port in (9090, 9093, 9115):
        assert [a for a in listening if a.endswith(f":{port}")] == [f"127.0.0.1:{port}"], listening
    # one Alertmanager, no cluster port
    assert not [a for a in listening if a.endswith(":9094")], listening


def test_secrets_are_readable_by_the_service_user_only(host):
    for name in ("prometheus.yml", "alertmanager.yml"):
        config = host.file(f"/etc/prometheus/{name}")
        assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640), name
    assert "berth-test-scrape-password" in host.file("/etc/prometheus/prometheus.yml").content_string
    assert "insecure_skip_verify" not in host.file("/etc/prometheus/prometheus.yml").content_string


def test_every_target_is_up(host):
    def targets() -> list[dict] | None:
        active = api(host, "v1/targets?state=active")["activeTargets"]
        if {t["scrapePool"] for t in active} == POOLS and all(t["health"] == "up" for t in active):
            return active
        return None

    active = wait_for(targets, 60, "every target up")
    [node] = [t for t in active if t["scrapePool"] == f"node_{TARGET}"]
    # over TLS (the certificate checked against the test CA and the host's inventory name), with basic
    # auth, labelled as berth's rules expect
    assert node["scrapeUrl"] == f"https://{address(TARGET)}:9100/metrics"
    assert node["labels"]["job"] == "node" and node["labels"]["instance"] == TARGET


def test_the_ssh_probe_finds_the_banner(host):
    assert wait_for(lambda: [r for r in query(host, 'probe_success{job="blackbox_ssh"}') if r["value"][1] == "1"],
                    60, "SSH probe of the berth host")


def test_the_https_probe_sees_the_site_and_its_certificate(host):
    """prepare.yml's site: a 2xx over TLS, and the expiry of the certificate as a client sees it."""
    assert wait_for(lambda: [r for r in query(host, f'probe_success{{instance="{SITE}"}}') if r["value"][1] == "1"],
                    60, "HTTPS probe of the site")
    [expiry] = query(host, f'probe_ssl_earliest_cert_expiry{{instance="{SITE}"}}')
    line = host.check_output("openssl x509 -enddate -noout -in /etc/berth-test-site.crt")
    assert int(float(expiry["value"][1])) == int(ssl.cert_time_to_seconds(line.split("=", 1)[1]))


def test_the_rules_are_loaded(host):
    groups = {g["name"]: g for g in api(host, "v1/rules")["groups"]}
    assert {"berth-host", "berth-jobs", "berth-monitoring"} <= set(groups)
    rules = {r["name"]: r for g in groups.values() for r in g["rules"]}
    assert rules["BerthHostDown"]["duration"] == 10  # monitoring_alert_for in the scenario
    assert rules["BerthSiteDown"]["duration"] == 120
    assert all(r["health"] == "ok" for r in rules.values()), [r for r in rules.values() if r["health"] != "ok"]


def test_alertmanager_runs_the_configuration(host):
    original = api(host, "v2/status", port=9093)["config"]["original"]
    assert "inhibit_rules" in original and "send_resolved: true" in original
    assert host.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0


def host_down(status: str, since: float) -> Callable[[], dict | None]:
    """The first webhook record after `since` with BerthHostDown of the berth host in that status."""
    def check() -> dict | None:
        for record in records(get_host(SERVER), "webhook"):
            alerts = record["body"]["alerts"]
            if record["received"] > since and any(
                a["labels"].get("alertname") == "BerthHostDown" and a["labels"].get("instance") == TARGET
                and a["status"] == status for a in alerts
            ):
                return record
        return None
    return check


def subjects(since: float) -> list[tuple[float, str]]:
    found = []
    for record in records(get_host(SERVER), "mail"):
        if record["received"] > since:
            found.append((record["received"], email.message_from_string(record["message"])["Subject"] or ""))
    return found


def mail(word: str, since: float) -> Callable[[], float | None]:
    """When the first mail after `since` whose subject says [FIRING...] or [RESOLVED] BerthHostDown arrived."""
    def check() -> float | None:
        for received, subject in subjects(since):
            if subject.startswith(f"[{word}") and "BerthHostDown" in subject and TARGET in subject:
                return received
        return None
    return check


def inhibited_ssh_alert() -> list[dict]:
    """BerthSSHDown of the berth host in Alertmanager, suppressed by an inhibition."""
    alerts = api(get_host(SERVER), "v2/alerts?inhibited=true", port=9093)
    return [a for a in alerts if a["labels"].get("alertname") == "BerthSSHDown" and a["status"]["inhibitedBy"]]


def test_no_alert_of_the_packages_own_configuration_reached_anybody(host):
    """Debian's Prometheus first starts with its own configuration (jobs on localhost:9090 and
    localhost:9100, which berth's node_exporter does not answer there): the role removes that start's
    data, so Prometheus holds no sample of those targets, at any time, and no alert about them reached the
    receivers (the sinks have run since before the first converge). Whether the package's start scraped
    before the role reconfigured it depends on timing; when it did, its samples are what this finds."""
    instances = {alert["labels"].get("instance") for record in records(host, "webhook")
                 for alert in record["body"]["alerts"]}
    assert "localhost:9100" not in instances, instances
    assert query(host, 'count_over_time(up{instance=~"localhost:.+"}[1d])') == []


def test_host_down_reaches_webhook_and_mail_then_resolves(capsys):
    """The berth host goes down (node_exporter and sshd stopped): BerthHostDown reaches the webhook and the
    mail; BerthSSHDown of the same host fires in Prometheus but is inhibited, so it reaches nobody. Then
    the host comes back: the resolution reaches both."""
    server, target = get_host(SERVER), get_host(TARGET)
    fault = time.time()
    target.run("systemctl stop ssh.socket")  # (if Debian's socket unit is in use)
    target.check_output("systemctl stop ssh.service prometheus-node-exporter")
    try:
        fired = wait_for(host_down("firing", fault), 120, "BerthHostDown at the webhook")
        fired_mail = wait_for(mail("FIRING", fault), 60, "BerthHostDown by mail")
        assert wait_for(inhibited_ssh_alert, 90, "BerthSSHDown inhibited in Alertmanager")
    finally:
        # sshd first, until its alert is gone; then node_exporter (the host-down alert inhibits until then)
        target.check_output("systemctl start ssh.service")
        wait_for(lambda: not [a for a in api(server, "v1/alerts")["alerts"]
                              if a["labels"]["alertname"] == "BerthSSHDown"], 90, "BerthSSHDown resolved")
        repair = time.time()
        target.check_output("systemctl start prometheus-node-exporter")
    resolved = wait_for(host_down("resolved", repair), 120, "BerthHostDown resolved at the webhook")
    resolved_mail = wait_for(mail("RESOLVED", repair), 60, "BerthHostDown resolved by mail")
    # the inhibited alert was never sent
    sent = [a["labels"]["alertname"] for r in records(server, "webhook") if r["received"] > fault
            for a in r["body"]["alerts"]]
    assert "BerthSSHDown" not in sent and "BerthHostDown" in sent
    assert not [s for _, s in subjects(fault) if "BerthSSHDown" in s]
    figures = (
        "time to alert (BerthHostDown, for: 10s, scrape/evaluation 2s, group_wait 2s, group_interval 5s): "
        f"webhook {fired['received'] - fault:.1f} s, mail {fired_mail - fault:.1f} s after the stop; "
        f"resolved: webhook {resolved['received'] - repair:.1f} s, mail {resolved_mail - repair:.1f} s "
        "after the start"
    )
    with capsys.disabled():
        print("\n" + figures)
    directory = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if directory:
        Path(directory, "time-to-alert.txt").write_text(figures + "\n")


def test_a_certificate_expiring_as_served_reaches_webhook_and_mail(capsys):
    """The site on 8444 serves a certificate that expires in 5 days: BerthSiteCertificateExpiring (within
    14 days; for: 5s in the scenario) for that URL reaches the webhook and the mail; the site on 8443, whose
    certificate has 30 days, raises none. The alert has fired since the converge: the site is stopped until
    Prometheus no longer has the alert, then started, so the clock starts when the certificate is served
    again."""
    server = get_host(SERVER)

    def active() -> list[dict]:
        return [a for a in api(server, "v1/alerts")["alerts"]
                if a["labels"]["alertname"] == "BerthSiteCertificateExpiring"]

    server.check_output("systemctl stop berth-test-expiring-site")
    try:
        wait_for(lambda: not active(), 30, "BerthSiteCertificateExpiring gone while the site is down")
    finally:
        served = time.time()
        server.check_output("systemctl start berth-test-expiring-site")

    def webhook() -> tuple[float, list[dict]] | None:
        for record in records(server, "webhook"):
            alerts = [a for a in record["body"]["alerts"] if a["status"] == "firing"
                      and a["labels"].get("alertname") == "BerthSiteCertificateExpiring"]
            if record["received"] > served and alerts:
                return record["received"], alerts
        return None

    received, alerts = wait_for(webhook, 60, "BerthSiteCertificateExpiring at the webhook")
    assert {a["labels"]["instance"] for a in alerts} == {EXPIRING_SITE}
    assert {a["labels"]["instance"] for a in active()} == {EXPIRING_SITE}
    mailed = wait_for(lambda: next((t for t, s in subjects(served) if s.startswith("[FIRING")
                                    and "BerthSiteCertificateExpiring" in s and EXPIRING_SITE in s), None),
                      60, "BerthSiteCertificateExpiring by mail")
    with capsys.disabled():
        print("\ntime to alert (BerthSiteCertificateExpiring, for: 5s, probe/evaluation 2s, group_interval 5s): "
              f"webhook {received - served:.1f} s, mail {mailed - served:.1f} s after the site is served again")


@pytest.mark.parametrize("name", ["prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter"])
def test_services_run(host, name):
    service = host.service(name)
    assert service.is_running and service.is_enabled
