"""The release scenario's test order: test_release.py first (it starts from the state the converge left:
one release of each app, nothing in the audit log but those), then test_lock.py (holds, releases and
deploys of its own, which add to the state and the audit log)."""

from __future__ import annotations

import pytest

ORDER = ("test_release.py", "test_lock.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: ORDER.index(item.path.name) if item.path.name in ORDER else len(ORDER))
