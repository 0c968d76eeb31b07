"""app_stack's decisions per app (roles/app_stack/filter_plugins/app_stack.py): which colour is live,
which image each colour runs, which services and images a run needs."""

from __future__ import annotations

import base64
import importlib.util
import json

import pytest
from ansible.errors import AnsibleFilterError
from conftest import ROOT


def load(name: str, path: str) -> object:
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stack = load("app_stack_filters", "roles/app_stack/filter_plugins/app_stack.py")
apps = load("berth_apps_filter", "plugins/filter/apps.py")

PLAN = apps.apps_plan([
    {"name": "shop", "image": "registry.example.com/shop:1.0.0",
     "workers": [{"name": "default", "command": ["celery", "worker"]}, {"name": "mail", "command": ["mail"]}]},
    {"name": "blog", "image": "registry.example.com/blog:3.2", "redis": False},
])
IMAGES = ("postgres:17", "redis:8")


def slurped(path: str, text: str) -> dict:
    return {"source": path, "content": base64.b64encode(text.encode()).decode(), "encoding": "base64"}


def test_files_reads_what_slurp_found() -> None:
    results = [slurped("/a", "one"), {"failed": True, "msg": "file not found"}, {"skipped": True}]
    assert stack.files(results) == {"/a": "one"}
    assert stack.files(None) == {}


def test_before_the_first_release_blue_runs_the_apps_image() -> None:
    shop, blog = stack.runs(PLAN, {}, False, *IMAGES)
    assert shop == {
        "name": "shop", "dir": "/opt/shop", "live": "blue", "idle": "green",
        "images": {"blue": "registry.example.com/shop:1.0.0", "green": "registry.example.com/shop:1.0.0"},
        "services": ["postgres", "redis", "web-blue"],
        "workers": ["worker-default-blue", "worker-mail-blue"],
        "needed_images": ["registry.example.com/shop:1.0.0", "postgres:17", "redis:8"],
    }
    # No Redis: neither its service nor its image.
    assert blog["services"] == ["postgres", "web-blue"]
    assert blog["workers"] == []
    assert blog["needed_images"] == ["registry.example.com/blog:3.2", "postgres:17"]


def test_after_a_release_its_state_decides() -> None:
    state = {"live": {"colour": "green"}, "colours": {"blue": "shop:1.0.0", "green": "shop:1.1.0"}, "releases": []}
    read = {"/var/lib/berth/apps/shop/release.json": json.dumps(state)}
    shop, blog = stack.runs(PLAN, read, False, *IMAGES)
    assert (shop["live"], shop["idle"]) == ("green", "blue")
    assert shop["images"] == {"blue": "shop:1.0.0", "green": "shop:1.1.0"}
    assert shop["services"] == ["postgres", "redis", "web-green"]
    assert shop["workers"] == ["worker-default-green", "worker-mail-green"]
    assert shop["needed_images"] == ["shop:1.1.0", "postgres:17", "redis:8"]
    # Another app's state is its own.
    assert blog["live"] == "blue"


def test_a_warm_idle_colour_starts_its_web_but_never_its_workers() -> None:
    state = {"live": {"colour": "green"}, "colours": {"blue": "shop:1.0.0", "green": "shop:1.1.0"}}
    read = {"/var/lib/berth/apps/shop/release.json": json.dumps(state)}
    shop = stack.runs(PLAN, read, True, *IMAGES)[0]
    assert shop["services"] == ["postgres", "redis", "web-green", "web-blue"]
    assert shop["workers"] == ["worker-default-green", "worker-mail-green"]
    assert shop["needed_images"] == ["shop:1.1.0", "shop:1.0.0", "postgres:17", "redis:8"]


@pytest.mark.parametrize("text", ["{not json", json.dumps({"live": {"colour": "red"}, "colours": {}}),
                                  json.dumps({"live": {"colour": "blue"}, "colours": {"blue": "a:1"}})])
def test_a_broken_state_file_is_refused_by_name(text: str) -> None:
    with pytest.raises(AnsibleFilterError, match="release state of shop"):
        stack.runs(PLAN, {"/var/lib/berth/apps/shop/release.json": text}, False, *IMAGES)
