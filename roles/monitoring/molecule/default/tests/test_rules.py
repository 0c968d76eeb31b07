"""The rule files the role installs pass promtool's check and their promtool unit tests with the monitoring
host's promtool: berth's (roles/node_exporter/files/prometheus) and the role's own (files/prometheus)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import SERVER

testinfra_hosts = [SERVER]
ROLES = Path(__file__).resolve().parents[4]
FILES = {
    "berth-alerts": ROLES / "node_exporter" / "files" / "prometheus",
    "berth-monitoring-alerts": ROLES / "monitoring" / "files" / "prometheus",
}


def rule_count(path: Path) -> int:
    """The rules in a rule file, as promtool counts them."""
    return sum(len(group["rules"]) for group in yaml.safe_load(path.read_text())["groups"])


@pytest.mark.parametrize("name", sorted(FILES))
def test_promtool_unit_tests_pass(host, name):
    host.check_output("install -d -m 0700 /root/promtool-tests")
    for path in (FILES[name] / f"{name}.yml", FILES[name] / f"{name}.test.yml"):
        host.ansible("copy", f"src={path} dest=/root/promtool-tests/{path.name} mode=0644", check=False)
    checked = host.run(f"promtool check rules /root/promtool-tests/{name}.yml")
    rules = rule_count(FILES[name] / f"{name}.yml")
    assert rules >= 6
    assert checked.rc == 0 and f"SUCCESS: {rules} rules found" in checked.stdout, checked.stdout + checked.stderr
    result = host.run(f"cd /root/promtool-tests && promtool test rules {name}.test.yml")
    assert result.rc == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
