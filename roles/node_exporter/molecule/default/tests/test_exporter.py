"""What an admin sees on the exporter hosts: the service, its sandbox, its files and its metrics files."""

from __future__ import annotations

import re
import shlex
import ssl

import pytest
from conftest import PASSWORD, PROMETHEUS, TEXTFILE_DIR, address

testinfra_hosts = ["exporters"]

SERVICE = "prometheus-node-exporter"
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
    assert "berth_release_info" in host.file(f"{TEXTFILE_DIR}/berth_release.prom").content_string
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
    files = host.check_output(f"ls -A {TEXTFILE_DIR}").split()
    assert files == ["berth_backup.prom", "berth_release.prom", "berth_tls.prom"]


@pytest.mark.parametrize("family", ["ip", "ip6"])
def test_firewall_opens_9100_to_the_listed_sources_only(host, family):
    rules = host.check_output("nft list chain inet berth input")
    source = {"ip": address(PROMETHEUS), "ip6": "2001:db8:9100::/48"}[family]
    assert f'{family} saddr {source} tcp dport 9100 accept comment "Prometheus"' in rules
    assert re.search(r"policy drop;", rules)
    # 9100 appears in no other rule of the chain.
    assert len([line for line in rules.splitlines() if "9100" in line]) == 2
