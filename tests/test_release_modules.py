"""The release role's own modules (roles/release/library), run as Ansible runs them, on temporary files,
and its filters (roles/release/filter_plugins: which app a run releases).

Their part in real releases (nginx, containers, load) is tested by the release scenario."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

LIBRARY = ROOT / "roles" / "release" / "library"
PYTHON = ROOT / ".venv" / "bin" / "python"


def load(name: str, path: Path):  # noqa: ANN201 - a module loaded from its file
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


PLAN = load("berth_apps_filters", ROOT / "plugins" / "filter" / "apps.py").apps_plan
CHOOSE = load("release_filters", ROOT / "roles" / "release" / "filter_plugins" / "release.py")
HOST = load("release_host", LIBRARY / "release_host.py")
APPS = [
    {
        "name": "shop",
        "image": "registry.example.com:5000/team/shop:1.0.0",
        "domains": ["shop.test", "www.shop.test"],
        "workers": [{"name": "default", "command": ["w"]}, {"name": "mail", "command": ["m"]}],
        "migrate": ["./manage.py", "migrate"],
        "env": {"SECRET_KEY": "do-not-show"},
    },
    {"name": "blog", "image": "blog@sha256:" + "a" * 64},
]


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
        "colour_services": {"blue": ["web-blue"], "green": ["web-green"]},
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
    (tmp_path / ".env").write_text("SECRET_KEY=do-not-return\nBLUE_IMAGE=app:v1\nGREEN_IMAGE=app:v2\n")

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
    # (a lock without holder.json: an older berth, or somebody's mkdir)
    assert result["holder"]["kind"] == "unknown" and result["holder"]["who"] == "unknown"
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


def test_host_keeps_the_images_other_apps_still_need(tmp_path: Path) -> None:
    other = tmp_path / "blog-release.json"
    other.write_text(
        json.dumps(
            {"colours": {"blue": "blog:3", "green": "blog:2"}, "releases": [{"image": "blog:3"}, {"image": "blog:1"}]}
        )
    )

    result = module(
        "release_host", tmp_path, **host_args(tmp_path), other_state_files=[str(other), str(tmp_path / "missing.json")]
    )

    assert {"blog:1", "blog:2", "blog:3"} <= set(result["images_in_use"])
    assert result["running"] == {"blue": [], "green": []}


def container(project: str, service: str, status: str, image: str, oneoff: bool = False) -> dict:
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": service}
    if oneoff:
        labels["com.docker.compose.oneoff"] = "True"
    return {"Config": {"Labels": labels, "Image": image}, "State": {"Status": status}, "Image": f"sha256:{image}"}


def test_host_sorts_the_app_s_containers_by_colour() -> None:
    services = {"blue": ["web-blue", "worker-default-blue"], "green": ["web-green", "worker-default-green"]}
    items = [
        container("shop", "web-blue", "running", "shop:1"),
        container("shop", "worker-default-blue", "running", "shop:1"),
        container("shop", "worker-default-blue", "running", "shop:1"),
        container("shop", "web-green", "exited", "shop:2"),
        container("shop", "worker-default-green", "exited", "shop:2"),
        # a migration's one-off container and another app's web are not the app's colours
        container("shop", "web-green", "running", "shop:3", oneoff=True),
        container("blog", "web-green", "running", "blog:1"),
    ]

    web, running = HOST.colours(items, "shop", services)

    assert web == {
        "blue": {"State": "running", "Image": "shop:1", "ImageID": "sha256:shop:1"},
        "green": {"State": "exited", "Image": "shop:2", "ImageID": "sha256:shop:2"},
    }
    assert running == {"blue": ["web-blue", "worker-default-blue"], "green": []}


def test_the_only_app_is_chosen_without_a_name() -> None:
    plan = PLAN(APPS[:1])

    app = CHOOSE.release_app(plan, "")

    assert app["name"] == "shop" and CHOOSE.release_app_problem(plan, "") == ""
    assert app["repository"] == "registry.example.com:5000/team/shop"
    assert "env" not in app and "database_url" not in app
    assert app["worker_services"] == {
        "blue": ["worker-default-blue", "worker-mail-blue"],
        "green": ["worker-default-green", "worker-mail-green"],
    }
    assert app["migrate"] == ["./manage.py", "migrate"] and app["other_state_files"] == []
    assert "env" not in app and "do-not-show" not in json.dumps(app)


def test_an_app_is_chosen_by_name_among_several() -> None:
    plan = PLAN(APPS)

    app = CHOOSE.release_app(plan, "blog")

    assert app["name"] == "blog" and app["repository"] == "blog"
    assert app["worker_services"] == {"blue": [], "green": []}
    assert app["other_state_files"] == ["/var/lib/berth/apps/shop/release.json"]
    assert app["lock_dir"] == "/run/lock/berth-release-blog"


@pytest.mark.parametrize(
    ("apps", "name", "message"),
    [
        (APPS, "", "berth_apps has 2 apps (shop, blog): say which one to release with -e app=NAME (e.g. -e app=shop)"),
        (
            APPS,
            "nosuch",
            "release_app (-e app=NAME) must name an app of berth_apps: shop, blog (e.g. -e app=shop); got 'nosuch'",
        ),
        ([], "", "berth_apps is empty"),
    ],
)
def test_no_app_is_chosen_with_a_message_naming_the_apps(apps: list, name: str, message: str) -> None:
    plan = PLAN(apps)

    assert CHOOSE.release_app(plan, name) == {}
    assert CHOOSE.release_app_problem(plan, name).startswith(message)
