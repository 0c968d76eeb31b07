"""The inventory's monitoring host, converged by the same commands as the app host: it scrapes both hosts,
probes each app from outside, and brings a site going down, a failed backup and their resolutions to the
team's (stand-in) chat and mail (molecule/shared/alert-sinks.yml). The file runs after test_site.py:
its faults are repaired before it ends. The times from fault to notification are printed and written to
the scenario's monitoring-figures.txt (figures, not assertions)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from dashboards import evaluate
from prometheus_api import api, get_host, mailed, notified, query, wait_for

HOST, MONITOR = "berth-site-trixie", "berth-site-probe"
APP_HOST, MONITOR_HOST = "app1.example.com", "prometheus.example.com"
PROBES = {"shop": "https://shop.test/healthz", "blog": "https://blog.test/healthz"}
FIGURES = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "monitoring-figures.txt"

testinfra_hosts = [MONITOR]


def figure(capsys: pytest.CaptureFixture, line: str) -> None:
    with capsys.disabled():
        print("\n" + line)
    with FIGURES.open("a") as out:
        out.write(line + "\n")


def test_every_host_and_app_is_watched(host):
    pools = {f"node_{APP_HOST}", f"node_{MONITOR_HOST}", f"nginx_{APP_HOST}",
             f"nginx_log_{APP_HOST}", "prometheus", "alertmanager",
             "blackbox", "blackbox_ssh", "blackbox_https"}

    def all_up() -> list[dict] | None:
        active = api(host, "v1/targets?state=active")["activeTargets"]
        if {t["scrapePool"] for t in active} == pools and all(t["health"] == "up" for t in active):
            return active
        return None

    active = wait_for(all_up, 90, "every target up")
    nodes = {t["labels"]["instance"]: t for t in active if t["labels"]["job"] == "node"}
    assert set(nodes) == {APP_HOST, MONITOR_HOST}
    for app, url in PROBES.items():
        [probe] = wait_for(lambda url=url: [r for r in query(host, f'probe_success{{instance="{url}"}}')
                                            if r["value"][1] == "1"], 60, f"{url} answers the probe")
        # a host serving the app alone: its host label lets a host-down alert silence the site's
        assert (probe["metric"]["app"], probe["metric"]["host"]) == (app, APP_HOST)
    # nginx's exporter (over the network, as the example opens it) reads nginx's status
    assert wait_for(lambda: [r for r in query(host, f'nginx_up{{instance="{APP_HOST}"}}') if r["value"][1] == "1"],
                    30, "nginx_up 1")
    # the certificate as a client sees it: Pebble's, valid for years
    [expiry] = query(host, f'probe_ssl_earliest_cert_expiry{{instance="{PROBES["shop"]}"}}')
    assert float(expiry["value"][1]) - time.time() > 300 * 86400
    # berth's textfile metrics are read, and no host or site alert fires on the healthy hosts
    assert query(host, 'berth_release_info{app="shop", version="v1"}')
    firing = {a["labels"]["alertname"] for a in api(host, "v1/alerts")["alerts"] if a["state"] == "firing"}
    assert not firing & {"BerthHostDown", "BerthSSHDown", "BerthSiteDown", "BerthMonitoringTargetDown"}, firing


def test_the_site_going_down_reaches_chat_and_mail_then_its_recovery(host, capsys):
    """The shop's web container stops: nginx answers 502, the probe fails, BerthSiteDown (for: 10s here)
    reaches the webhook and the mail; the container starts again: the resolution reaches both."""
    app = get_host(HOST)
    colour = json.loads(app.check_output("cat /var/lib/berth/apps/shop/release.json"))["live"]["colour"]
    web = app.check_output("docker ps -q --filter label=com.docker.compose.project=shop "
                           f"--filter label=com.docker.compose.service=web-{colour}")
    assert web, f"the shop's live colour ({colour}) runs"
    fault = time.time()
    app.check_output(f"docker stop {web}")
    try:
        fired = wait_for(notified(host, "BerthSiteDown", "firing", fault, app="shop"), 120,
                         "BerthSiteDown at the webhook")
        fired_mail = wait_for(mailed(host, "FIRING", "BerthSiteDown", fault), 60, "BerthSiteDown by mail")
    finally:
        repair = time.time()
        app.check_output(f"docker start {web}")
    resolved = wait_for(notified(host, "BerthSiteDown", "resolved", repair, app="shop"), 180,
                        "BerthSiteDown resolved at the webhook")
    resolved_mail = wait_for(mailed(host, "RESOLVED", "BerthSiteDown", repair), 60, "resolved by mail")
    # only the shop was down
    [alert] = [a for a in fired["body"]["alerts"] if a["labels"]["alertname"] == "BerthSiteDown"]
    assert alert["labels"]["instance"] == PROBES["shop"]
    figure(capsys, "time to alert (BerthSiteDown, for: 10s, scrape/evaluation 2s, group_wait 2s): "
                   f"webhook {fired['received'] - fault:.1f} s, mail {fired_mail - fault:.1f} s after the stop; "
                   f"resolved: webhook {resolved['received'] - repair:.1f} s, mail {resolved_mail - repair:.1f} s "
                   "after the start")


def test_a_failed_backup_reaches_chat_and_mail_then_the_next_good_one_resolves_it(host, capsys):
    """The repository's password is made wrong: the next backup fails, and BerthBackupFailed (no `for`)
    reaches the webhook and the mail; the password is put back: the next backup succeeds and resolves it."""
    app = get_host(HOST)
    password = "/etc/berth/backup/password"
    app.check_output(f"cp -p {password} {password}.test-saved && echo wrong-password-for-the-test > {password}")
    fault = time.time()
    try:
        assert app.run("systemctl start berth-backup.service").rc != 0, "the backup with a wrong password fails"
        fired = wait_for(notified(host, "BerthBackupFailed", "firing", fault), 60, "BerthBackupFailed at the webhook")
        fired_mail = wait_for(mailed(host, "FIRING", "BerthBackupFailed", fault), 60, "BerthBackupFailed by mail")
    finally:
        app.check_output(f"mv {password}.test-saved {password}")
    repair = time.time()
    app.check_output("systemctl start berth-backup.service")
    resolved = wait_for(notified(host, "BerthBackupFailed", "resolved", repair), 120,
                        "BerthBackupFailed resolved at the webhook")
    assert {a["labels"]["instance"] for a in fired["body"]["alerts"]} == {APP_HOST}
    figure(capsys, f"time to alert (BerthBackupFailed, no for): webhook {fired['received'] - fault:.1f} s, "
                   f"mail {fired_mail - fault:.1f} s after the failed run started; resolved: webhook "
                   f"{resolved['received'] - repair:.1f} s after the good run started")


def test_every_panel_of_the_site_and_operations_dashboards_finds_series(host, capsys):
    """The Grafana site and operations dashboards against this Prometheus, which probes the real apps and
    scrapes the app host's release, backup and certificate metrics: every panel's query returns series.
    The backup test above ran backups; a restore test runs here, as its timer would (its metrics exist
    only once it has run). (The host dashboard's failed-units panel needs node_exporter's systemd
    collector, which the example leaves off: it is evaluated in the monitoring role's scenario.)"""
    app = get_host(HOST)
    app.check_output("systemctl start berth-backup-verify.service")
    summary = evaluate(host, ["berth-site.json", "berth-operations.json"])
    figure(capsys, "site and operations dashboards evaluated against the whole site's Prometheus: "
                   f"{summary}")


def test_the_monitoring_services_are_closed_to_the_network(host):
    listening = host.check_output("ss -Htln | awk '{print $4}'").split()
    for port in (9090, 9093, 9115):
        assert [a for a in listening if a.endswith(f":{port}")] == [f"127.0.0.1:{port}"], listening
