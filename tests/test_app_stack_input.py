"""app_stack refuses bad input before it changes anything (its tasks/check_input.yml and
check_host.yml, run on the controller).

Each case starts from valid input and spoils one thing; the valid input itself must pass, so a
check that always fails cannot hide here. The apps' rules themselves are tested in
tests/test_apps_plan.py (the role berth_apps checks them); here what app_stack adds: its host-wide
settings and the apps' ports held on the host. The run's output must never show a value of an app's
env: it may be a secret.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from conftest import run_input_cases

SECRET = "shop-Secret$value#1/@:%x"


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port some other program (this test) listens on, on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port_pair() -> int:
    """A port that is free on loopback with the next one (blue and green of an app)."""
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65534:
                continue
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def app(name: str, **extra: object) -> dict:
    return {"name": name, "image": f"registry.example.com/team/{name}:1.0.0", **extra}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, busy_port: int) -> dict[str, dict]:
    shop = app("shop", web={"host_port": free_port_pair()}, env={"SECRET_KEY": SECRET},
               workers=[{"name": "default", "command": ["celery", "worker"], "replicas": 2}])
    blog = app("blog", redis=False, web={"host_port": free_port_pair()})
    good = {"berth_apps": [shop, blog]}
    spoilt = {
        "valid": {},
        "no apps": {"berth_apps": []},
        "an app without postgres and redis": {"berth_apps": [app("static", postgres=False, redis=False,
                                                                 web={"host_port": free_port_pair()})]},
        "upper-case postgres image": {"app_stack_postgres_image": "Registry/Postgres:17"},
        "redis image with spaces": {"app_stack_redis_image": "redis: 8"},
        "bad postgres memory": {"app_stack_postgres_memory": "lots"},
        "bad log size": {"app_stack_log_max_size": "10 MB"},
        "blue port held by another program": {"berth_apps": [shop, app("blog", web={"host_port": busy_port})]},
        "green port held by another program": {"berth_apps": [shop, app("blog", web={"host_port": busy_port - 1})]},
    }
    outcomes, printed = run_input_cases("app_stack", spoilt, good, tmp_path_factory.mktemp("app_stack"))
    assert SECRET not in printed
    return outcomes


@pytest.mark.parametrize("case", ["valid", "no apps", "an app without postgres and redis"])
def test_valid_input_passes(outcomes: dict[str, dict], case: str) -> None:
    assert outcomes[case] == {"failed": False, "msg": ""}


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("upper-case postgres image", "app_stack_postgres_image must be an image reference"),
        ("redis image with spaces", "app_stack_redis_image must be an image reference"),
        ("bad postgres memory", "app_stack_postgres_memory (each app's PostgreSQL memory limit) must be a size"),
        ("bad log size", "app_stack_log_max_size (where a container's log is rotated) must be a size"),
        ("blue port held by another program", "in use by another program"),
        ("green port held by another program", "in use by another program"),
    ],
)
def test_bad_input_fails_with_a_clear_message(outcomes: dict[str, dict], case: str, says: str) -> None:
    assert outcomes[case]["failed"] is True
    # (The failed result as registered; what the run prints is checked in `outcomes`: no secret.)
    assert says in outcomes[case]["msg"]
