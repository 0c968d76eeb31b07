"""What a user of a converged host observes after the common role."""

import pytest

testinfra_hosts = ["all"]


@pytest.mark.parametrize("name", ["ca-certificates", "curl", "jq", "chrony", "locales", "tree"])
def test_packages_installed(host, name):
    assert host.package(name).is_installed


def test_time_zone(host):
    assert host.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Europe/Berlin"
    assert host.run("date +%Z").stdout.strip() in {"CET", "CEST"}


def test_locale_generated_and_default(host):
    assert "de_DE.utf8" in host.run("locale -a").stdout.split()
    assert host.file("/etc/default/locale").contains("^LANG=de_DE.UTF-8$")
    out = host.run("env -i bash -lc 'set -a; . /etc/default/locale; locale 2>&1'")
    assert "LANG=de_DE.UTF-8" in out.stdout
    assert "Cannot set" not in out.stdout


def test_chrony_running_and_listening(host):
    chrony = host.service("chrony")
    assert chrony.is_running
    assert chrony.is_enabled
    # chronyc's command port answers on loopback only.
    assert host.socket("udp://127.0.0.1:323").is_listening
    assert not host.socket("udp://0.0.0.0:123").is_listening


def test_chrony_uses_configured_sources_only(host):
    sources = host.check_output("chronyc -n sources")
    assert "127.0.0.1" in sources
    conf = host.file("/etc/chrony/chrony.conf").content_string
    assert "pool " not in conf


def test_chrony_measures_only_in_container(host):
    # Inside a test container the clock belongs to the machine: chronyd runs with -x.
    cmdline = host.check_output("cat /proc/$(pidof chronyd | cut -d' ' -f1)/cmdline | tr '\\0' ' '")
    assert "-x" in cmdline.split()
