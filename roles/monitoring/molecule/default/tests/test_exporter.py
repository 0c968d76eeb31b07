"""What an admin sees on the berth hosts (node_exporter): the service, its sandbox, its files and its metrics files."""

from __future__ import annotations

import re
import shlex
import ssl

import pytest
from conftest import PASSWORD, SERVER, TEXTFILE_DIR, address

testinfra_hosts = ["berth"]

SERVICE = "prometheus-node-exporter"
APT_SERVICE = "prometheus-node-exporter-apt"
# The timers of prometheus-node-exporter-collectors that the role stops and disables (hardware of
# physical machines; tasks/collectors.yml says why).
TIMERS_OFF = ["smartmon", "nvme", "ipmitool-sensor", "mellanox-hca-temp"]
# What systemctl show must report for the exporter's unit (the hardening in the unit file).
HARDENING = {
    "User": "node-exporter",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "read-only",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RemoveIPC": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


def main_pid(host) -> int:
    pid = int(host.check_output(f"systemctl show -p MainPID --value {SERVICE}"))
    assert pid > 0, f"{SERVICE} is not running"
    return pid


def test_exporter_runs_as_its_own_unprivileged_user(host):
    service = host.service(SERVICE)
    assert service.is_running and service.is_enabled
    user = host.user("node-exporter")
    assert user.exists and user.shell == "/usr/sbin/nologin" and user.uid < 1000
    status = host.file(f"/proc/{main_pid(host)}/status").content_string
    assert re.search(rf"^Uid:\s+{user.uid}\s+{user.uid}\s+{user.uid}\s+{user.uid}$", status, re.M)
    # berth's unit replaces the package's (which runs as the prometheus user shared with the server).
    unit = host.check_output(f"systemctl show -p FragmentPath --value {SERVICE}")
    assert unit == f"/etc/systemd/system/{SERVICE}.service"


def test_unit_hardening_is_in_effect(host):
    shown = host.check_output(f"systemctl show {SERVICE} -p " + " -p ".join(HARDENING))
    properties = dict(line.split("=", 1) for line in shown.splitlines())
    assert properties == HARDENING
    pid = main_pid(host)
    # ... and the kernel enforces it on the running process:
    status = host.file(f"/proc/{pid}/status").content_string
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^CapEff:\s+0+$", status, re.M)
    assert re.search(r"^CapBnd:\s+0+$", status, re.M)
    assert re.search(r"^Seccomp:\s+2$", status, re.M)  # a seccomp filter
    # its own mount namespace: / read-only (ProtectSystem=strict) and a private /tmp.
    mounts = [line.split() for line in host.file(f"/proc/{pid}/mountinfo").content_string.splitlines()]
    root_options = [fields[5] for fields in mounts if fields[4] == "/"]
    assert root_options and all("ro" in options.split(",") for options in root_options)
    assert any(fields[4] == "/tmp" and "systemd-private" in fields[3] for fields in mounts)
    # systemd's own rating of the sandbox (0 best, 10 worst; a plain service is ~9.6).
    rating = host.check_output(f"systemd-analyze security {SERVICE} --no-pager | tail -n 1")
    assert float(re.search(r"exposure level for \S+: ([0-9.]+)", rating).group(1)) <= 2.0, rating


def test_listens_on_the_private_address_only(host):
    ip = address(host.backend.get_hostname())
    listening = host.check_output("ss -Htln 'sport = :9100' | awk '{print $4}'").split()
    assert listening == [f"{ip}:9100"]


def test_web_config_holds_bcrypt_hashes_not_passwords(host):
    config = host.file("/etc/node-exporter/web-config.yml")
    assert (config.user, config.group, config.mode) == ("root", "node-exporter", 0o640)
    text = config.content_string
    assert PASSWORD not in text and "berth-test-second-password" not in text
    hashes = dict(re.findall(r'^\s+"(\w+)": "(\$2b\$12\$[./A-Za-z0-9]{53})"$', text, re.M))
    assert set(hashes) == {"prometheus", "ops"}
    check = f"import bcrypt; print(bcrypt.checkpw(b'{PASSWORD}', b'{hashes['prometheus']}'))"
    assert host.check_output(f"python3 -c {shlex.quote(check)}") == "True"
    key = host.file("/etc/node-exporter/tls.key")
    assert (key.user, key.group, key.mode) == ("root", "node-exporter", 0o640)


def test_other_roles_metrics_files_are_kept(host):
    # prepare.yml wrote them before the role ran, as the backup role and the release logic will.
    assert "berth_release_info" in host.file(f"{TEXTFILE_DIR}/berth_release_demo.prom").content_string
    assert "berth_backup_last_run_success" in host.file(f"{TEXTFILE_DIR}/berth_backup.prom").content_string
    directory = host.file(TEXTFILE_DIR)
    assert (directory.user, directory.group, directory.mode) == ("root", "root", 0o755)


def certificate_metrics(host) -> dict[str, int]:
    text = host.file(f"{TEXTFILE_DIR}/berth_tls.prom").content_string
    found = re.findall(r'^berth_tls_certificate_not_after_timestamp_seconds\{domain="([^"]+)"\} (\d+)$', text, re.M)
    return {domain: int(value) for domain, value in found}


def not_after(host, cert: str) -> int:
    """notAfter read with openssl (independently of the role's script)."""
    line = host.check_output(f"openssl x509 -enddate -noout -in {cert}")
    return int(ssl.cert_time_to_seconds(line.split("=", 1)[1]))


def test_certificate_expiry_metrics_match_the_certificates(host):
    metrics = certificate_metrics(host)
    assert set(metrics) == {"berth.test", "api.berth.test"}
    for domain, value in metrics.items():
        assert value == not_after(host, f"/etc/letsencrypt/live/{domain}/cert.pem"), domain
    prom = host.file(f"{TEXTFILE_DIR}/berth_tls.prom")
    assert (prom.user, prom.mode) == ("root", 0o644)


def test_the_timer_refreshes_the_certificate_metrics(host):
    timer = host.service("berth-tls-metrics.timer")
    assert timer.is_enabled and timer.is_running
    # A certificate issued since the last run shows up when the timer's service runs (in its sandbox) ...
    host.check_output("install -d -m 0700 /etc/letsencrypt/live/new.berth.test")
    host.check_output("cp /etc/letsencrypt/live/api.berth.test/cert.pem /etc/letsencrypt/live/new.berth.test/")
    host.check_output("systemctl start berth-tls-metrics.service")
    assert "new.berth.test" in certificate_metrics(host)
    # ... and one removed disappears; no temporary file is left behind.
    host.check_output("rm -r /etc/letsencrypt/live/new.berth.test && systemctl start berth-tls-metrics.service")
    assert set(certificate_metrics(host)) == {"berth.test", "api.berth.test"}
    # (sponge.* would be the apt metrics service's own temporary file, if it happened to run just now.)
    files = [name for name in host.check_output(f"ls -A {TEXTFILE_DIR}").split() if not name.startswith("sponge.")]
    assert files == ["apt.prom", "berth_backup.prom", "berth_release_demo.prom", "berth_tls.prom"]


def apt_metrics(host) -> dict[str, list[tuple[dict[str, str], float]]]:
    """apt.prom as {metric: [(labels, value)]} (Debian 12's script and Debian 13's order labels differently)."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in host.file(f"{TEXTFILE_DIR}/apt.prom").content_string.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            found.setdefault(match.group(1), []).append((labels, float(match.group(3))))
    return found


def test_debian_collectors_write_the_apt_metrics(host):
    assert host.package("prometheus-node-exporter-collectors").is_installed
    timer = host.service(f"{APT_SERVICE}.timer")
    assert timer.is_enabled and timer.is_running
    # berth's unit (into the textfile directory, sandboxed) replaces the package's.
    unit = host.check_output(f"systemctl show -p FragmentPath --value {APT_SERVICE}.service")
    assert unit == f"/etc/systemd/system/{APT_SERVICE}.service"
    rating = host.check_output(f"systemd-analyze security {APT_SERVICE}.service --no-pager | tail -n 1")
    assert float(re.search(r"exposure level for \S+: ([0-9.]+)", rating).group(1)) <= 2.0, rating
    for name in TIMERS_OFF:
        other = host.service(f"prometheus-node-exporter-{name}.timer")
        assert not other.is_enabled and not other.is_running, name
    prom = host.file(f"{TEXTFILE_DIR}/apt.prom")
    assert (prom.user, prom.group, prom.mode) == ("root", "root", 0o644)
    metrics = apt_metrics(host)
    # prepare.yml left berth-test-dummy 1 installed and 2 in a repository of a "security" archive.
    assert ({"origin": "berth-test:berth-test-security/stable-security", "arch": "all"}, 1) in metrics[
        "apt_upgrades_pending"
    ]
    assert metrics["node_reboot_required"] == [({}, 0)]
    assert metrics["apt_package_cache_timestamp_seconds"][0][1] > 0
    assert "apt_autoremove_pending" in metrics


def test_no_systemd_unit_failed(host):
    failed = host.check_output("systemctl list-units --state=failed --plain --no-legend --no-pager")
    assert failed == "", failed


@pytest.mark.parametrize("family", ["ip", "ip6"])
def test_firewall_opens_9100_to_the_listed_sources_only(host, family):
    rules = host.check_output("nft list chain inet berth input")
    source = {"ip": address(SERVER), "ip6": "2001:db8:9100::/48"}[family]
    assert f'{family} saddr {source} tcp dport 9100 accept comment "Prometheus"' in rules
    assert re.search(r"policy drop;", rules)
    # 9100 appears in no other rule of the chain.
    assert len([line for line in rules.splitlines() if "9100" in line]) == 2
