"""The release role's own modules (roles/release/library), run as Ansible runs them, on temporary files.

Their part in real releases (nginx, containers, load) is tested by the release scenario."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import ROOT

LIBRARY = ROOT / "roles" / "release" / "library"
PYTHON = ROOT / ".venv" / "bin" / "python"


def module(name: str, tmp_path: Path, check: bool = False, **args: object) -> dict:
    """Run a module with args (a file named on the command line, as Ansible's debug mode does)."""
    args_file = tmp_path / f"{name}-args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check}}))
    proc = subprocess.run([PYTHON, LIBRARY / f"{name}.py", args_file], capture_output=True, text=True, check=False)
    return json.loads(proc.stdout)


def host_args(tmp_path: Path) -> dict:
    return {
        "lock_dir": str(tmp_path / "lock"),
        "state_file": str(tmp_path / "release.json"),
        "live_colour_file": str(tmp_path / "live-colour"),
        "env_file": str(tmp_path / ".env"),
        "project": "berth-unit-test-no-such-project",
    }


def test_switch_writes_the_colour_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "live-colour"
    path.write_text("blue\n")
    path.chmod(0o644)

    first = module("release_switch", tmp_path, path=str(path), colour="green")
    second = module("release_switch", tmp_path, path=str(path), colour="green")

    assert first["changed"] and first["previous"] == "blue"
    assert path.read_text() == "green\n" and path.stat().st_mode & 0o777 == 0o644
    assert not second["changed"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".live-colour")] == []


def test_switch_in_check_mode_shows_the_diff_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "live-colour"
    path.write_text("blue\n")

    result = module("release_switch", tmp_path, check=True, path=str(path), colour="green")

    assert result["changed"] and result["diff"]["after"] == "green\n"
    assert path.read_text() == "blue\n"


def test_switch_refuses_an_unknown_colour(tmp_path: Path) -> None:
    result = module("release_switch", tmp_path, path=str(tmp_path / "live-colour"), colour="red")
    assert result["failed"] and "blue, green" in result["msg"]
    assert not (tmp_path / "live-colour").exists()


def test_host_takes_the_lock_and_reads_state_colour_and_images(tmp_path: Path) -> None:
    (tmp_path / "release.json").write_text(json.dumps({"live": {"colour": "green"}}))
    (tmp_path / "live-colour").write_text("green\n")
    (tmp_path / ".env").write_text("SECRET_KEY=do-not-return\nAPP_BLUE_IMAGE=app:v1\nAPP_GREEN_IMAGE=app:v2\n")

    result = module("release_host", tmp_path, **host_args(tmp_path))

    assert result["locked"] and (tmp_path / "lock").is_dir()
    assert result["state"] == {"live": {"colour": "green"}} and result["live_colour"] == "green"
    assert result["env_found"] and result["env_images"] == {"blue": "app:v1", "green": "app:v2"}
    assert "do-not-return" not in json.dumps(result)
    assert result["containers"] == {}


def test_host_fails_while_another_release_holds_the_lock(tmp_path: Path) -> None:
    (tmp_path / "lock").mkdir()

    result = module("release_host", tmp_path, **host_args(tmp_path))

    assert result["failed"] and result["lock_held"] and not result["locked"]
    assert (tmp_path / "lock").is_dir()


def test_host_gives_the_lock_back_when_the_state_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "release.json").write_text("{not json")

    result = module("release_host", tmp_path, **host_args(tmp_path))

    assert result["failed"] and "release.json is not JSON" in result["msg"]
    assert not (tmp_path / "lock").exists()


def test_host_in_check_mode_reads_without_taking_the_lock(tmp_path: Path) -> None:
    result = module("release_host", tmp_path, check=True, **host_args(tmp_path))

    assert not result.get("failed") and not result["locked"] and not (tmp_path / "lock").exists()
    assert result["state"] is None and not result["env_found"] and result["env_images"] == {}
