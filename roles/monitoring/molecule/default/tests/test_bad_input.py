"""Bad input fails at the input checks, before any change; the running services and exporters are left
alone."""

from __future__ import annotations

import sys
from pathlib import Path

SCENARIO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SCENARIO.parents[3] / "molecule" / "shared"))
from bad_input import check_bad_input  # noqa: E402


def test_bad_input_fails_before_changes() -> None:
    # One run: 7 cases on the monitoring host (bad_input.yml), 9 on each of the two berth hosts
    # (bad_input_node_exporter.yml); the playbooks assert the outcome of each case themselves.
    check_bad_input(SCENARIO / "bad_input.yml", cases={7: 1, 9: 2})
