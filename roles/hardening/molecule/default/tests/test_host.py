"""What a converged host shows from the inside: effective sshd settings, sudo, firewall, fail2ban,
upgrades, journald and sysctl."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import BOOKWORM, EPHEMERAL, SSH_PORT, TRIXIE

testinfra_hosts = ["targets"]


def name(host) -> str:
    return host.check_output("hostname")


def sshd_settings(host) -> dict[str, str]:
    out = host.check_output("sshd -T -C user=alice,host=probe,addr=192.0.2.1")
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_sshd_is_key_only_and_locked_down(host):
    settings = sshd_settings(host)
    expected = {
        "port": str(SSH_PORT[name(host)]),
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "permitrootlogin": "no",
        "authenticationmethods": "publickey",
        "allowgroups": "berth-admins",
        "maxauthtries": "3",
        "logingracetime": "30",
        "allowtcpforwarding": "no",
        "allowagentforwarding": "no",
        "x11forwarding": "no",
        "permittunnel": "no",
        "loglevel": "VERBOSE",
    }
    assert {key: settings.get(key) for key in expected} == expected


def test_sshd_listens_only_on_its_port(host):
    port = SSH_PORT[name(host)]
    assert host.socket(f"tcp://0.0.0.0:{port}").is_listening
    other = 2222 if port == 22 else 22
    assert not host.socket(f"tcp://0.0.0.0:{other}").is_listening


def test_rsa_host_key_is_4096_bits(host):
    assert host.check_output("ssh-keygen -l -f /etc/ssh/ssh_host_rsa_key.pub").split()[0] == "4096"


def test_admin_has_exactly_its_key_and_sudo(host):
    admin_key = (EPHEMERAL / "admin_ed25519.pub").read_text().split()[1]
    keys = host.file("/home/alice/.ssh/authorized_keys")
    assert keys.mode == 0o600
    assert [line.split()[1] for line in keys.content_string.splitlines() if line.strip()] == [admin_key]
    assert "berth-admins" in host.user("alice").groups
    sudoers = host.file("/etc/sudoers.d/berth-admins")
    assert sudoers.mode == 0o440
    assert sudoers.contains("^%berth-admins ALL=(ALL:ALL) NOPASSWD: ALL$")
    assert host.run("visudo -c").rc == 0


def test_firewall_loads_only_its_own_table(host):
    assert host.service("nftables").is_enabled
    conf = host.file("/etc/nftables.conf").content_string
    assert not re.search(r"^\s*flush\s+ruleset", conf, re.M)
    assert "table inet berth" in host.check_output("nft list tables")
    assert "policy drop" in host.check_output("nft list chain inet berth input")


def test_stopping_the_firewall_keeps_other_tables(host):
    """Debian's unit would "flush ruleset" on stop: Docker's and fail2ban's tables must survive it."""
    before = set(host.check_output("nft list tables").splitlines())
    assert len(before) > 1  # Docker's tables (the inner engine's, or the embedded DNS's NAT)
    try:
        host.check_output("systemctl stop nftables")
        after_stop = set(host.check_output("nft list tables").splitlines())
    finally:
        host.check_output("systemctl start nftables")
    assert after_stop == before - {"table inet berth"}
    assert set(host.check_output("nft list tables").splitlines()) == before


def test_fail2ban_guards_sshd_through_nftables(host):
    jails = host.check_output("fail2ban-client status")
    assert re.search(r"Jail list:\s+recidive, sshd", jails)
    assert host.check_output("fail2ban-client get sshd actions").splitlines()[-1].strip() == "nftables"
    assert host.check_output("fail2ban-client get sshd bantime") == "15"


def test_unattended_upgrades_security_only_with_reboot_window(host):
    config = host.check_output("apt-config dump Unattended-Upgrade")
    origins = re.findall(r'Unattended-Upgrade::Origins-Pattern:: "(.*)";', config)
    # Only security suites: Debian's (label Debian-Security) and Ubuntu's (archive <codename>-security).
    security = re.compile(r"label=Debian-Security|archive=\$\{distro_codename\}-security")
    assert origins and all(security.search(origin) for origin in origins)
    assert 'Unattended-Upgrade::Automatic-Reboot "true";' in config
    assert 'Unattended-Upgrade::Automatic-Reboot-Time "03:30";' in config
    periodic = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    assert host.service("apt-daily-upgrade.timer").is_enabled


SECURITY_SOURCE = "/etc/apt/sources.list.d/berth-security.sources"
# Where each host's sources have the suite: trixie as debootstrap made it gets berth's file; bookworm's
# deb822 source from prepare.yml (as cloud images have it) already has it.
SUITE_SOURCE = {TRIXIE: SECURITY_SOURCE, BOOKWORM: "/etc/apt/sources.list.d/debian.sources"}


def security_suite(host) -> str:
    return host.check_output(". /etc/os-release && echo $VERSION_CODENAME") + "-security"


def test_apt_sources_have_the_security_suite_once(host):
    # APT's own reading of the sources (not the role's module): the source entries that give the suite.
    out = host.check_output("apt-get indextargets --no-release-info --format '$(RELEASE) $(TARGET_OF) $(SOURCESENTRY)'")
    wanted = (security_suite(host), "deb")
    entries = {entry for suite, kind, entry in map(str.split, out.splitlines()) if (suite, kind) == wanted}
    assert [entry.rsplit(":", 1)[0] for entry in entries] == [SUITE_SOURCE[name(host)]], entries
    berth = host.file(SECURITY_SOURCE)
    if name(host) == TRIXIE:
        text = berth.content_string
        assert "URIs: http://security.debian.org/debian-security\n" in text
        assert f"Suites: {security_suite(host)}\nComponents: main\n" in text
        assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n" in text
        assert (berth.user, berth.group, berth.mode) == ("root", "root", 0o644)
    else:
        assert not berth.exists


def test_apt_fetched_the_security_suites_index(host):
    # apt-cache policy names each fetched index with its Release file's fields.
    policy = host.check_output("apt-cache policy")
    release = rf"release v=\d+,o=Debian,a=[a-z]+-security,n={security_suite(host)},l=Debian-Security,"
    assert re.search(release, policy), policy
    assert host.run(f"ls /var/lib/apt/lists/*_dists_{security_suite(host)}_InRelease").rc == 0


def test_unattended_upgrades_allows_the_security_suite_and_nothing_else(host):
    """unattended-upgrade's own reading of the origins: every index it does not allow is pinned away (and
    printed), and the security suite's indexes are not among them."""
    run = host.run("unattended-upgrade --dry-run -d")
    out = run.stdout + run.stderr
    assert run.rc == 0, out
    allowed = re.search(r"^Allowed origins are: (.*)$", out, re.M)
    assert allowed and f"origin=Debian,codename={security_suite(host)},label=Debian-Security" in allowed[1], out
    not_allowed = re.findall(r"^Marking not allowed (.*) with -32768 pin$", out, re.M)
    assert any(re.search(r"o=Debian,l=Debian\s", index) for index in not_allowed), out
    assert not [index for index in not_allowed if "Debian-Security" in index or "security" in index], out


def test_journald_keeps_a_capped_persistent_journal(host):
    assert host.file("/var/log/journal").is_directory
    # journald reports its limits when it starts: "System Journal (...) is 8.0M, max 64.0M, ..."
    out = host.check_output("journalctl -b --no-pager -o cat -t systemd-journald | grep 'System Journal' | tail -1")
    assert re.search(r"max 64(\.0)?M,", out), out


def test_sysctl_file_keeps_forwarding_where_docker_runs(host):
    conf = host.file("/etc/sysctl.d/90-berth-hardening.conf").content_string
    forward = "1" if name(host).endswith("trixie") else "0"
    assert re.search(rf"^net\.ipv4\.ip_forward = {forward}$", conf, re.M)
    assert re.search(r"^net\.ipv4\.tcp_syncookies = 1$", conf, re.M)


def test_sysctl_in_a_container_sets_no_machine_wide_key(host):
    """Inside a container only net.ipv4/net.ipv6 keys are live; kernel/fs/dev keys stay commented out."""
    lines = [
        line for line in host.file("/etc/sysctl.d/90-berth-hardening.conf").content_string.splitlines() if "=" in line
    ]
    active = [line for line in lines if not line.startswith("#")]
    commented = [line.lstrip("# ") for line in lines if line.startswith("#")]
    assert active and all(re.match(r"net\.ipv[46]\.", line) for line in active)
    assert any(line.startswith("kernel.kptr_restrict") for line in commented)


def test_machine_kernel_unchanged():
    """The machine's own kernel settings are what they were before the scenario (prepare.yml recorded them)."""
    text = (EPHEMERAL / "machine-sysctl-before.txt").read_text()
    before = dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)
    assert before
    for key, value in before.items():
        live = Path("/proc/sys/" + key.replace(".", "/")).read_text()
        assert live.strip() == value.strip(), key
