"""The whole host after docs/first-hour.md's commands (site.yml and the first release) on the filled
copy of inventories/production, observed from the probe (another host on the network): as a visitor of
the site, an attacker scanning ports, and the monitoring server; then docs/first-hour.md's expected
output checked against what the runs printed, and the CI entry run for real."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import testinfra
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
HOST, PROBE = "berth-site-trixie", "berth-site-probe"
SITE, BLOG = "shop.test", "blog.test"
PROJECT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(PROJECT / "plugins" / "filter"))
from apps import derived_port  # noqa: E402 - the project's filter, for the apps' colour ports

# The well-known ports and the usual suspects of a Docker host (Docker's API, databases, caches, the
# apps' colours, metrics, Pebble).
COLOURS = [derived_port(app) + colour for app in ("shop", "blog") for colour in (0, 1)]
PORTS = ",".join(["1-1024,2375,2376,3000,5432,6379,8000,8001,8002,3903,9090,9100,9113,14000,15000", *map(str, COLOURS)])

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
ADMIN_KEY = EPHEMERAL / "admin_ed25519"
# The user's inventory (prepare.yml filled it in) and its host; the admin of the production example.
USER_INVENTORY = EPHEMERAL / "mysite"
VAULT_PASSWORD = EPHEMERAL / "vault-password"
APP_HOST, ADMIN = "app1.example.com", "deploy"

testinfra_hosts = [PROBE]


def get_host(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def target() -> testinfra.host.Host:
    return get_host(HOST)


@pytest.fixture(scope="module")
def address(target) -> str:
    return target.check_output("ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1")


@pytest.fixture(scope="module")
def stranger(host) -> str:
    """An extra address of the probe that is not the monitoring server's: what the world sees."""
    own = host.check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'")
    network = ipaddress.ip_interface(own).network
    extra = str(network.network_address + 250)
    if extra not in host.check_output("ip -4 -o addr show dev eth0"):
        host.check_output(f"ip addr add {extra}/{network.prefixlen} dev eth0")
    return extra


@pytest.fixture(scope="module")
def pebble_root(host, target) -> str:
    """Pebble's issuing root (it changes on every Pebble start), for the probe to verify the site."""
    root = target.check_output("curl -sS --cacert /etc/pebble/ca.pem https://127.0.0.1:15000/roots/0")
    host.check_output(f"printf '%s\\n' '{root}' > /tmp/pebble-root.pem")
    return "/tmp/pebble-root.pem"


def https(host, address: str, path: str, root: str, site: str = SITE) -> str:
    return host.check_output(f"curl -sS --fail --cacert {root} --resolve {site}:443:{address} https://{site}{path}")


def ssh(user: str, address: str) -> subprocess.CompletedProcess:
    """Log in from the controller with the admin's key (the one root had on the fresh host)."""
    options = ["BatchMode=yes", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "ConnectTimeout=10"]
    argv = ["ssh", "-i", str(ADMIN_KEY), *(f"-o{o}" for o in options), f"{user}@{address}", "id -un"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_the_first_run_logged_in_as_root_and_went_on_as_the_admin(target, address):
    # sshd's log: the first converge came in as root, then (hardening proved the admin's key and
    # turned root logins off) the rest of that run and every later one as the admin.
    log = target.check_output("journalctl -u ssh --no-pager -o cat")
    root, admin = log.find("Accepted publickey for root "), log.find(f"Accepted publickey for {ADMIN} ")
    assert 0 <= root < admin, log[-3000:]
    refused = ssh("root", address)
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr
    assert ssh(ADMIN, address).stdout.strip() == ADMIN


def test_only_ssh_http_and_https_are_open_to_the_world(host, address, stranger):
    out = host.check_output(f"nmap -Pn -sT -n -T4 --max-retries 1 -S {stranger} -e eth0 -p {PORTS} -oG - {address}")
    line = next(line for line in out.splitlines() if "Ports:" in line)
    states = dict(re.findall(r"(\d+)/(\w+)/tcp", line))
    assert {int(port) for port, state in states.items() if state == "open"} == {22, 80, 443}, line


@pytest.mark.parametrize("site", [SITE, BLOG])
def test_each_app_is_served_over_https_with_its_certificate_from_the_acme_server(host, address, pebble_root, site):
    # curl verifies the chain against Pebble's root and the app's name.
    assert json.loads(https(host, address, "/version", pebble_root, site)) == {"version": "v1", "colour": "blue"}
    names = host.check_output(
        f"echo | openssl s_client -connect {address}:443 -servername {site} 2>/dev/null "
        "| openssl x509 -noout -issuer -ext subjectAltName"
    )
    assert "Pebble" in names
    # One certificate per app, for the app's domains only.
    assert ("DNS:www.shop.test" in names) == (site == SITE) and ("DNS:blog.test" in names) == (site == BLOG)
    redirect = host.check_output(
        f"curl -sS -o /dev/null -w '%{{http_code}} %{{redirect_url}}' -H 'Host: {site}' http://{address}/"
    )
    assert redirect == f"301 https://{site}/"


def test_each_app_is_wired_to_its_own_postgresql_and_redis(host, address, pebble_root):
    first = json.loads(https(host, address, "/visit", pebble_root))
    second = json.loads(https(host, address, "/visit", pebble_root))
    assert second["db_rows"] == first["db_rows"] + 1
    assert second["redis_count"] == first["redis_count"] + 1
    # blog has its own database (its rows do not move with shop's) and no Redis.
    blog = json.loads(https(host, address, "/visit", pebble_root, BLOG))
    assert blog["redis_count"] is None
    assert json.loads(https(host, address, "/stats", pebble_root))["db_rows"] == second["db_rows"]


def test_the_worker_processes_what_the_web_queues(host, address, pebble_root):
    before = json.loads(https(host, address, "/jobs", pebble_root))["processed"]
    for number in range(5):
        https(host, address, f"/enqueue?id=site-{number}", pebble_root)
    for _ in range(30):
        jobs = json.loads(https(host, address, "/jobs", pebble_root))
        if jobs["processed"] >= before + 5:
            break
        time.sleep(1)
    assert (jobs["processed"], jobs["distinct"], jobs["queued"]) == (before + 5, before + 5, 0)


def test_the_scheduled_job_runs_the_live_image(target):
    assert target.check_output("systemctl is-enabled berth-job-shop-summary.timer") == "enabled"
    target.check_output("systemctl start berth-job-shop-summary.service")
    summary = target.check_output("journalctl -u berth-job-shop-summary.service --no-pager -o cat")
    assert '"version": "v1"' in summary


@pytest.mark.parametrize("app", ["shop", "blog"])
def test_the_first_release_of_each_app_is_recorded(target, app):
    state = json.loads(target.check_output(f"cat /var/lib/berth/apps/{app}/release.json"))
    assert (state["live"]["version"], state["live"]["colour"]) == ("v1", "blue")


@pytest.fixture(scope="module")
def backup_run(target) -> None:
    """One backup run, started as its timer starts it (the tests must not wait for the schedule)."""
    target.check_output("systemctl start berth-backup.service")


def test_a_backup_is_produced_and_listed_by_restic(target, backup_run):
    assert target.check_output("systemctl is-enabled berth-backup.timer berth-backup-verify.timer").split() == [
        "enabled", "enabled"]
    snapshots = json.loads(
        target.check_output(
            "RESTIC_PASSWORD_FILE=/etc/berth/backup/password restic -r /var/backups/berth/restic snapshots --json"
        )
    )
    assert len(snapshots) >= 1


def test_the_monitoring_server_scrapes_the_metrics(host, address, backup_run):
    metrics = host.check_output(f"curl -sS --fail http://{address}:9100/metrics")
    assert 'berth_release_info{app="shop",colour="blue",version="v1"} 1' in metrics
    assert 'berth_release_info{app="blog",colour="blue",version="v1"} 1' in metrics
    for app in ("shop", "blog"):
        assert re.search(rf'berth_backup_last_run_success\{{app="{app}",repository="[^"]+"\}} 1', metrics)
    assert re.search(r'berth_tls_certificate_not_after_timestamp_seconds\{domain="shop.test"\} \d', metrics)
    assert "node_filesystem_avail_bytes" in metrics


@pytest.mark.parametrize("port", [9100, 9113, 3903])
def test_metrics_are_closed_to_everybody_else(host, address, stranger, port):
    # node_exporter's, nginx's exporter and mtail (nginx's log): the monitoring server's address gets in
    # (the tests of test_the_monitoring_host.py scrape them), a stranger's does not
    assert host.run(f"curl -sS --max-time 5 -o /dev/null http://{address}:{port}/metrics").rc == 0
    refused = host.run(f"curl -sS --max-time 5 --interface {stranger} http://{address}:{port}/metrics")
    assert refused.rc != 0


SECRET = "v9-secret-7731"


def berth(artifacts: Path, *command: str) -> subprocess.CompletedProcess:
    """The berth command (.venv/bin/berth, installed by setup.py) on the user's inventory, with the vault
    password as docs/ci.md passes it."""
    argv = [str(PROJECT / ".venv" / "bin" / "berth"), "-i", str(USER_INVENTORY), "--artifacts", str(artifacts)]
    argv += ["--secret-env", "BERTH_CI_TEST_TOKEN", *command]
    env = dict(os.environ, BERTH_CI_TEST_TOKEN=SECRET, ANSIBLE_VAULT_PASSWORD_FILE=str(VAULT_PASSWORD))
    return subprocess.run(argv, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900, check=False)


def test_ci_entry_runs_a_deploy_for_real(tmp_path):
    # `berth deploy` through ansible-runner: deploy.yml of the live version (a real run that finds
    # nothing to switch), with progress lines, a summary and JUnit XML.
    done = berth(tmp_path, "deploy", "shop", "v1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert APP_HOST in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["exit_code"], summary["failures"]) == ("successful", 0, [])
    assert summary["hosts"][APP_HOST]["ok"] > 5
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None and int(suite.get("tests")) > 5 and suite.get("failures") == "0"


def test_ci_entry_fails_a_bad_rollback_and_masks_the_secret(tmp_path):
    # The version asked for is the secret: the role's failure message names it, berth must mask it.
    done = berth(tmp_path, "rollback", "shop", SECRET)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "******** is not a retained release" in summary["failures"][0]["message"]
    written = done.stdout + done.stderr + "".join(p.read_text() for p in tmp_path.iterdir())
    assert SECRET not in written
    assert "******** is not a retained release" in done.stdout


def expected_output() -> dict[str, list[str]]:
    """docs/first-hour.md's "you see" blocks: {step: lines}; "…" stands for anything."""
    text = (PROJECT / "docs" / "first-hour.md").read_text()
    blocks = re.finditer(r"<!-- output: (\S+) -->\n```text\n(.*?)```", text, re.DOTALL)
    return {match[1]: match[2].splitlines() for match in blocks}


def shown(expected: str, printed: str) -> bool:
    """Whether a line the document shows is the line printed (spacing aside; … for anything)."""
    pattern = ".*?".join(re.escape(" ".join(part.split())) for part in expected.split("…"))
    return re.fullmatch(pattern, " ".join(printed.split())) is not None


@pytest.mark.parametrize("step", ["first-run", "release", "later-run"])
def test_the_first_hour_shows_what_the_runs_printed(step):
    # The graph block is checked by tests/test_docs.py (ansible-inventory on a filled copy).
    assert set(expected_output()) == {"graph", "first-run", "release", "later-run"}
    printed = (EPHEMERAL / "runs" / f"{step}-1.log").read_text().splitlines()
    position = 0
    for line in expected_output()[step]:
        found = next((i for i in range(position, len(printed)) if shown(line, printed[i])), None)
        assert found is not None, f"docs/first-hour.md shows {line!r}, not printed (in order) by {step}"
        position = found + 1


def test_the_first_hour_curl_answers(host, address, pebble_root):
    # Step 9's command, with the test's resolution of the name and its CA (Pebble's).
    status = host.check_output(
        f"curl -sS -o /dev/null -w '%{{http_code}}\\n' --cacert {pebble_root} --resolve {SITE}:443:{address} "
        f"https://{SITE}/healthz"
    )
    assert status == "200"


def test_every_bad_setting_was_refused_on_the_fresh_host():
    # bad_settings.yml (the side_effect before the first run): its report, case by case; the cases that
    # read the host (the others never contact it: tests/test_preflight.py).
    report = json.loads((EPHEMERAL / "bad-settings.json").read_text())
    cases = [c for c in yaml.safe_load((PROJECT / "tests" / "fixtures" / "bad-settings.yml").read_text())
             if c.get("host")]
    assert len(report) == len(cases) >= 8
    assert [(c["layer"], c["vars"]) for c in report] == [(c["layer"], c["vars"]) for c in cases]
    for case in report:
        assert (case["returncode"], case["state"], case["problems"]) == (2, "unchanged", []), case
