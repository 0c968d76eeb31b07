"""Bad input fails before any change: bad schedules (systemd's own check on the host, and the characters
a unit file takes), two jobs with one unit, a bad setting, a job berth_apps refuses."""

from __future__ import annotations

import sys
from pathlib import Path

SCENARIO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SCENARIO.parents[3] / "molecule" / "shared"))
from bad_input import check_bad_input  # noqa: E402


def test_bad_input_fails_before_changes() -> None:
    # 5 cases (bad_input.yml asserts the outcome of each case itself).
    check_bad_input(SCENARIO / "bad_input.yml", cases=5, hosts=1, timeout=600)
