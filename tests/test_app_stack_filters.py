"""app_stack's decisions per app (roles/app_stack/filter_plugins/app_stack.py): which colour is live,
which image each colour runs, which services and images a run needs."""

from __future__ import annotations

import base64
import json

import pytest
from ansible.errors import AnsibleFilterError
from conftest import load_module

stack = load_module("app_stack_filters", "roles/app_stack/filter_plugins/app_stack.py")
apps = load_module("berth_apps_filter", "plugins/filter/apps.py")

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


# --- DATABASE_URL and REDIS_URL, where the data lives -------------------------------------------------

SECRET = "p4ssw0rdNeverShown"


def test_local_data_is_reached_by_its_service_names() -> None:
    shop = apps.apps_plan([{"name": "shop", "image": "shop:1"}])[0]
    passwords = {"/opt/shop/secrets/postgres-password": "pg\n", "/opt/shop/secrets/redis-password": "rd\n"}
    assert stack.password_files(shop) == {"postgres": "/opt/shop/secrets/postgres-password",
                                          "redis": "/opt/shop/secrets/redis-password"}
    assert stack.data_env(shop, passwords) == {"DATABASE_URL": "postgresql://shop:pg@postgres:5432/shop",
                                               "REDIS_URL": "redis://:rd@redis:6379/0"}


def test_data_on_the_db_host_is_reached_at_its_address_with_tls() -> None:
    shop, blog = apps.apps_plan([{"name": "shop", "image": "shop:1", "data": "host"},
                                 {"name": "blog-2", "image": "blog:1", "data": "host", "redis": False,
                                  "data_tls": False}])
    files = stack.password_files(shop)
    assert files == {"postgres": "/etc/berth/db/shop/postgres-password", "redis": "/etc/berth/db/shop/redis-password"}
    passwords = {files["postgres"]: "pg", files["redis"]: "rd", "/etc/berth/db/blog-2/postgres-password": "bg"}
    port = shop["db_redis_port"]
    assert stack.data_env(shop, passwords, "10.0.0.4") == {
        "DATABASE_URL": "postgresql://shop:pg@10.0.0.4:5432/shop?sslmode=require",
        "REDIS_URL": f"redis://:rd@10.0.0.4:{port}/0"}
    assert stack.data_env(blog, passwords, "fd00::4") == {
        "DATABASE_URL": "postgresql://blog_2:bg@[fd00::4]:5432/blog_2?sslmode=disable"}
    with pytest.raises(AnsibleFilterError, match="app shop has data: host, but the db host's address is unknown"):
        stack.data_env(shop, passwords, "")


def test_external_data_is_the_given_urls() -> None:
    url = f"postgresql://shop:{SECRET}@db.example.com/shop?sslmode=require"
    shop = apps.apps_plan([{"name": "shop", "image": "shop:1", "data": "external", "redis": False,
                            "database_url": url}])[0]
    assert stack.password_files(shop) == {}
    assert stack.data_env(shop, {}) == {"DATABASE_URL": url}


def test_only_local_data_runs_in_the_compose_project() -> None:
    plan = apps.apps_plan([{"name": "shop", "image": "shop:1", "data": "host"}])
    (run,) = stack.runs(plan, {}, True, *IMAGES)
    assert run["services"] == ["web-blue", "web-green"] and run["needed_images"] == ["shop:1"]
