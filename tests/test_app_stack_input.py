"""app_stack refuses bad input before it changes anything (its tasks/check_input.yml and
check_host.yml, run on the controller).

Each case starts from valid input and spoils one thing; the valid input itself must pass, so a
check that always fails cannot hide here. The run's output must never show a secret, neither a good
one nor a refused one: the messages name the variable and the rule.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from conftest import run_input_cases

GOOD_PG = "pg-Good$secret#1/@:%x"
GOOD_REDIS = "rd-Good$secret#2/@:%y"


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port some other program (this test) listens on, on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_ports() -> tuple[int, int]:
    socks = [socket.socket() for _ in range(2)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = tuple(sock.getsockname()[1] for sock in socks)
    for sock in socks:
        sock.close()
    return ports  # type: ignore[return-value]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, busy_port: int) -> dict[str, dict]:
    blue, green = free_ports()
    good = {
        "app_stack_app_image": "registry.example.com:5000/team/app:1.4.2",
        "app_stack_postgres_password": GOOD_PG,
        "app_stack_redis_password": GOOD_REDIS,
        "app_stack_blue_port": blue,
        "app_stack_green_port": green,
    }
    spoilt = {
        "valid": {},
        "missing password": {"app_stack_postgres_password": ""},
        "short password": {"app_stack_redis_password": "Sh0rt$pw"},
        "monotonous password": {"app_stack_postgres_password": "abababababababababab"},
        "quote in password": {"app_stack_redis_password": "it's-a-long-secret-1234"},
        "upper-case image": {"app_stack_app_image": "Registry/Team/App:1"},
        "image with spaces": {"app_stack_postgres_image": "postgres: 17"},
        "untagged app image": {"app_stack_app_image": "registry.example.com/team/app"},
        "colour ports clash": {"app_stack_green_port": blue},
        "port held by another program": {"app_stack_green_port": busy_port},
        "bad env name": {"app_stack_app_env": {"BAD-NAME": "x"}},
    }
    outcomes, printed = run_input_cases("app_stack", spoilt, good, tmp_path_factory.mktemp("app_stack"))
    for secret in (GOOD_PG, GOOD_REDIS, "Sh0rt$pw", "abababababababababab", "it's-a-long-secret-1234"):
        assert secret not in printed
    return outcomes


def test_valid_input_passes(outcomes: dict[str, dict]) -> None:
    assert outcomes["valid"] == {"failed": False, "msg": ""}


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing password", "app_stack_postgres_password is empty"),
        ("short password", "app_stack_redis_password is shorter than 16 characters"),
        ("monotonous password", "app_stack_postgres_password uses fewer than 8 different characters"),
        ("quote in password", "app_stack_redis_password contains"),
        ("upper-case image", "not a valid image reference"),
        ("image with spaces", "not a valid image reference"),
        ("untagged app image", "must name a tag or digest"),
        ("colour ports clash", "must be two different ports"),
        ("port held by another program", "in use by another program"),
        ("bad env name", "BAD-NAME must be shell-style variable names"),
    ],
)
def test_bad_input_fails_with_a_clear_message(outcomes: dict[str, dict], case: str, says: str) -> None:
    assert outcomes[case]["failed"] is True
    # (The failed result as registered; what the run prints is checked in `outcomes`: no secret.)
    assert says in outcomes[case]["msg"]
