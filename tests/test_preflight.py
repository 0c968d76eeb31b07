"""site.yml checks every layer's settings before any host changes (playbooks/preflight.yml).

With the production example filled in as a user fills it (tests/example_inventory.py) and every host
unreachable (-e ansible_host=127.0.0.1 -e ansible_port=1: nothing is sent anywhere), the filled example
passes every layer's checks of the settings (so a role that gains a required setting the example does
not set fails here), and each bad setting of tests/fixtures/bad-settings.yml is reported as itself,
never as "unreachable". The same cases run against a real fresh host in molecule/site.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bad_settings
import example_inventory
import pytest
import yaml
from bad_settings import Case, Outcome

UNREACHABLE = ["-e", "ansible_host=127.0.0.1", "-e", "ansible_port=1", "-e", "berth_ssh_user=root"]
INPUT_CASES = [case for case in bad_settings.load_cases() if not case.host]
FIXTURE = yaml.safe_load(example_inventory.FIXTURE.read_text())


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of inventories/production with every must-set line and secret filled in."""
    return example_inventory.fill_offline(tmp_path_factory.mktemp("preflight"))


@pytest.fixture(scope="module")
def outcomes(filled: tuple[Path, Path]) -> dict[str, Outcome]:
    """Every case that needs no host, two at a time (the machine has two cores)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda case: bad_settings.run(case, *filled, UNREACHABLE), INPUT_CASES)
        return {outcome.case.name: outcome for outcome in done}


def test_the_cases_cover_every_layer() -> None:
    cases = bad_settings.load_cases()
    assert {case.layer for case in cases} == set(bad_settings.LAYERS)
    assert len(INPUT_CASES) >= 20
    assert {case.layer for case in cases if case.host} == set(bad_settings.LAYERS) - {"edge", "monitoring"}


def test_the_filled_example_passes_every_check_of_the_settings(filled: tuple[Path, Path]) -> None:
    # No bad value: the settings pass, and the run stops only where it must reach the host.
    outcome = bad_settings.run(Case("none", {}, ""), *filled, UNREACHABLE)
    assert outcome.returncode == 4, outcome.output[-3000:]  # 4: a host was unreachable
    assert "UNREACHABLE" in outcome.output
    assert "Check what the settings ask of each host" in outcome.output
    assert outcome.recap()["app1.example.com"] == {"ok": 32, "changed": 0, "unreachable": 1}, outcome.output[-3000:]


@pytest.mark.parametrize("case", INPUT_CASES, ids=lambda case: case.name)
def test_a_bad_setting_is_refused_before_any_connection(outcomes: dict[str, Outcome], case: Case) -> None:
    outcome = outcomes[case.name]
    assert bad_settings.problems(outcome) == [], outcome.output[-3000:]


def test_no_secret_is_printed(outcomes: dict[str, Outcome]) -> None:
    printed = "".join(outcome.output for outcome in outcomes.values())
    for secret in (*FIXTURE["vault"].values(), "Short-pw-1"):
        assert secret not in printed


@pytest.mark.parametrize("playbook", ["playbooks/base.yml", "playbooks/edge.yml", "playbooks/metrics.yml",
                                      "playbooks/monitoring.yml"])
def test_a_layer_playbook_checks_every_layer(filled: tuple[Path, Path], playbook: str) -> None:
    # A layer alone still refuses a bad setting of another layer: the inventory is checked as a whole.
    case = Case("backup", {"backup_password": ""}, "backup_password is empty")
    outcome = bad_settings.run(case, *filled, UNREACHABLE, playbook=playbook)
    assert bad_settings.problems(outcome) == [], outcome.output[-3000:]


def test_a_setting_read_from_facts_is_checked_once_the_host_answers(filled: tuple[Path, Path]) -> None:
    # Facts are not known before the first contact: such a setting does not stop the check of the
    # settings (the run goes on to the host, here unreachable) instead of failing as "undefined".
    case = Case("harden", {"hardening_ssh_guard_host": "{{ ansible_facts.default_ipv4.address }}"}, "")
    outcome = bad_settings.run(case, *filled, UNREACHABLE)
    assert outcome.returncode == 4, outcome.output[-3000:]
    assert "UNREACHABLE" in outcome.output
