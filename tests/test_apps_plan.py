"""The one description of the apps (berth_apps): what plugins/filter/apps.py derives from it, and the
bad descriptions refused before anything changes (the role berth_apps: argument specs, then
berth_apps_problems), each with a message that names the app and the field and never an env value."""

from __future__ import annotations

import importlib.util
import zlib

import pytest
from conftest import ROOT, run_input_cases

spec = importlib.util.spec_from_file_location("apps", ROOT / "plugins" / "filter" / "apps.py")
assert spec and spec.loader
apps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(apps)

SECRET = "s3cret-Value-never-shown"
SHOP = {
    "name": "shop",
    "image": "registry.example.com:5000/team/shop:1.4.2",
    "domains": ["shop.example.com", "www.shop.example.com"],
    "workers": [{"name": "default", "command": ["celery", "worker"], "replicas": 2}],
    "jobs": [{"name": "nightly", "schedule": "*-*-* 03:30", "command": ["./manage.py", "report"]}],
    "migrate": ["./manage.py", "migrate"],
    "env": {"SECRET_KEY": SECRET},
}
BLOG = {"name": "blog-2", "image": "blog@sha256:" + "a" * 64, "domains": ["blog.example.com"], "redis": False}


def test_the_plan_fills_in_defaults_and_derives_everything() -> None:
    shop, blog = apps.apps_plan([SHOP, BLOG])
    assert shop["dir"] == "/opt/shop" and shop["project"] == "shop"
    assert shop["web"] == {"port": 8000, "health_path": "/healthz", "command": [], "host_port": 0,
                           "services": {"blue": "web-blue", "green": "web-green"}}
    assert shop["workers"][0] == {"name": "default", "command": ["celery", "worker"], "replicas": 2,
                                  "stop_grace_period": 30,
                                  "services": {"blue": "worker-default-blue", "green": "worker-default-green"}}
    assert shop["colour_services"] == {"blue": ["web-blue", "worker-default-blue"],
                                       "green": ["web-green", "worker-default-green"]}
    assert shop["jobs"][0]["unit"] == "berth-job-shop-nightly" and shop["jobs"][0]["timeout"] == 3600
    assert shop["live_colour_file"] == "/var/lib/berth/apps/shop/live-colour"
    assert shop["state_file"] == "/var/lib/berth/apps/shop/release.json"
    assert shop["lock_dir"] == "/run/lock/berth-release-shop"
    assert (shop["postgres"], shop["redis"], blog["redis"]) == (True, True, False)
    assert blog["db_name"] == "blog_2" and blog["workers"] == [] and blog["memory"] == "256m"


def test_ports_come_from_the_name_not_the_position() -> None:
    alone = apps.apps_plan([SHOP])[0]["ports"]
    among = apps.apps_plan([BLOG, {"name": "wiki", "image": "wiki:1"}, SHOP])[2]["ports"]
    blue = 20000 + 2 * (zlib.crc32(b"shop") % 4000)
    assert alone == among == {"blue": blue, "green": blue + 1}


def test_a_host_port_overrides_the_derived_one() -> None:
    plan = apps.apps_plan([{**SHOP, "web": {"host_port": 18000}}])
    assert plan[0]["ports"] == {"blue": 18000, "green": 18001}


def test_a_good_description_has_no_problem() -> None:
    assert apps.apps_problems([SHOP, BLOG]) == []
    assert apps.apps_problems([]) == []


@pytest.mark.parametrize(
    ("description", "says"),
    [
        ([SHOP, {**BLOG, "name": "shop"}], "2 apps are named shop"),
        ([SHOP, {**BLOG, "domains": ["www.shop.example.com"]}], "the domain www.shop.example.com is given 2 times"),
        ([SHOP, {**BLOG, "web": {"host_port": apps.derived_port("shop") + 1}}], "would both use host port"),
        ([{**SHOP, "workers": [{"name": "default", "command": []}]}], "worker default needs a command"),
        ([{**SHOP, "workers": [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}]}],
         "two workers are named a"),
        ([{**SHOP, "jobs": [{"name": "nightly", "schedule": "", "command": ["x"]}]}],
         "schedule must be a systemd calendar expression"),
        ([{**SHOP, "jobs": [{"name": "nightly", "schedule": "daily", "command": []}]}], "job nightly needs a command"),
        ([{**SHOP, "image": "registry.example.com/team/shop"}], "image must be an image reference with a tag"),
        ([{**SHOP, "image": "Team/Shop:1"}], "image must be an image reference"),
        ([{**SHOP, "name": "Shop"}], "berth_apps[0].name must be lower-case"),
        ([{**SHOP, "domains": ["shop example.com"]}], "is not a lower-case DNS name"),
        ([{**SHOP, "web": {"health_path": "healthz"}}], "web.health_path must start with /"),
        ([{**SHOP, "web": {"host_port": 80}}], "web.host_port"),
        ([{**SHOP, "env": {"BAD-NAME": "x"}}], "env names BAD-NAME must be"),
        ([{**SHOP, "env": {"DATABASE_URL": "x"}}], "env may not set DATABASE_URL"),
        ([{**SHOP, "memory": "lots"}], "memory must be a size"),
        ("shop", "berth_apps must be a list"),
    ],
)
def test_bad_descriptions_are_named(description: object, says: str) -> None:
    problems = apps.apps_problems(description)
    assert any(says in problem for problem in problems), problems


def test_a_bad_env_value_is_refused_without_showing_it() -> None:
    bad = SECRET + "'quoted"
    problems = apps.apps_problems([{**SHOP, "env": {"SECRET_KEY": bad}}])
    assert problems == ["berth_apps: app shop: env SECRET_KEY contains a single quote or a control character, "
                        "which it may not (the value is not shown: it may be a secret)"]
    assert SECRET not in " ".join(problems)


PG_URL = f"postgresql://shop:{SECRET}@db.example.com:5432/shop?sslmode=require"
REDIS_URL = f"rediss://default:{SECRET}@redis.example.com:6380/0"


def test_where_the_data_lives_is_derived() -> None:
    local, host, external = apps.apps_plan([
        SHOP, {**BLOG, "data": "host"}, {"name": "wiki", "image": "wiki:1", "data": "external", "redis": False,
                                         "database_url": PG_URL}])
    assert (local["data"], local["local_services"], local["data_tls"]) == ("local", ["postgres", "redis"], True)
    assert (host["local_services"], host["db_redis_port"], host["db_secrets_dir"]) == \
        ([], host["ports"]["blue"], "/etc/berth/db/blog-2")
    assert external["local_services"] == [] and external["database_url"] == PG_URL


@pytest.mark.parametrize(
    ("app", "says"),
    [
        ({**SHOP, "data": "cloud"}, "data must be local (containers on each app host), host"),
        ({**SHOP, "data": "external"}, "data: external needs database_url"),
        ({**SHOP, "data": "external", "database_url": PG_URL}, "data: external needs redis_url"),
        ({**SHOP, "data": "external", "database_url": PG_URL.replace("require", "disable"), "redis_url": REDIS_URL},
         "database_url must ask for TLS with sslmode=require, verify-ca or verify-full (got sslmode=disable)"),
        ({**SHOP, "data": "external", "database_url": PG_URL.split("?")[0], "redis_url": REDIS_URL},
         "(got sslmode=nothing)"),
        ({**SHOP, "data": "external", "database_url": PG_URL, "redis_url": REDIS_URL.replace("rediss", "redis")},
         "redis_url must use TLS (rediss://)"),
        ({**SHOP, "data": "external", "database_url": f"mysql://x:{SECRET}@h/db", "redis_url": REDIS_URL},
         "database_url must be a URL postgres:// or postgresql://"),
        ({**SHOP, "data": "host", "database_url": PG_URL}, "database_url is only read with data: external"),
    ],
)
def test_bad_data_placements_are_named_without_the_url(app: dict, says: str) -> None:
    problems = apps.apps_problems([app])
    assert any(says in problem for problem in problems), problems
    assert SECRET not in " ".join(problems)


def test_tls_may_be_turned_off_for_an_external_database() -> None:
    app = {**SHOP, "data": "external", "data_tls": False, "database_url": PG_URL.split("?")[0],
           "redis_url": REDIS_URL.replace("rediss", "redis")}
    assert apps.apps_problems([app]) == []


def test_topologies_that_work() -> None:
    assert apps.topology_problems([SHOP, BLOG], ["app1"], []) == []
    assert apps.topology_problems([{**SHOP, "data": "host"}, {**BLOG, "data": "host"}], ["app1", "app2"], ["db1"]) == []
    # An app without data services may run on each app host as it is.
    assert apps.topology_problems([{**BLOG, "postgres": False, "redis": False}], ["app1", "app2"], []) == []
    assert apps.topology_problems([], [], []) == []


@pytest.mark.parametrize(
    ("description", "app_hosts", "db_hosts", "says"),
    [
        ([SHOP], ["app1", "app2"], [], "app shop keeps its postgres and redis on each app host (data: local), but "
                                       "there are 2 app hosts (app1, app2)"),
        ([{**SHOP, "data": "host"}], ["app1", "app2"], [], "app shop has data: host, but the inventory group db "
                                                          "has no host"),
        ([{**SHOP, "data": "host"}], ["app1"], ["db1", "db2"], "the group db has 2 hosts (db1, db2)"),
        ([{**SHOP, "data": "host"}], ["app1", "db1"], ["db1"], "db1 cannot be in both groups app and db"),
        ([SHOP], [], [], "no host is in the inventory group app"),
    ],
)
def test_bad_topologies_are_named(description: list, app_hosts: list, db_hosts: list, says: str) -> None:
    problems = apps.topology_problems(description, app_hosts, db_hosts)
    assert any(says in problem for problem in problems), problems


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], str]:
    """The role's check_input on the controller: argument specs first, then the filter's rules."""
    cases = {
        "valid": {},
        "no apps": {"berth_apps": []},
        "worker without command": {"berth_apps": [{**SHOP, "workers": [{"name": "default"}]}]},
        "job without schedule": {"berth_apps": [{**SHOP, "jobs": [{"name": "j", "command": ["x"]}]}]},
        "unknown field": {"berth_apps": [{**SHOP, "replicas": 3}]},
        "app without image": {"berth_apps": [{"name": "shop"}]},
        "same name twice": {"berth_apps": [SHOP, {**BLOG, "name": "shop"}]},
        "quote in a secret": {"berth_apps": [{**SHOP, "env": {"SECRET_KEY": SECRET + "'"}}]},
    }
    return run_input_cases("berth_apps", cases, {"berth_apps": [SHOP, BLOG]}, tmp_path_factory.mktemp("apps"))


def test_the_role_passes_a_good_description(outcomes: tuple[dict[str, dict], str]) -> None:
    assert outcomes[0]["valid"] == {"failed": False, "msg": ""}
    assert outcomes[0]["no apps"] == {"failed": False, "msg": ""}


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("worker without command", "missing required arguments: command"),
        ("job without schedule", "missing required arguments: schedule"),
        ("unknown field", "replicas"),
        ("app without image", "missing required arguments: image"),
        ("same name twice", "2 apps are named shop"),
        ("quote in a secret", "env SECRET_KEY contains a single quote"),
    ],
)
def test_the_role_refuses_bad_descriptions(outcomes: tuple[dict[str, dict], str], case: str, says: str) -> None:
    assert outcomes[0][case]["failed"] is True
    assert says in outcomes[0][case]["msg"], outcomes[0][case]["msg"]


def test_no_env_value_is_printed(outcomes: tuple[dict[str, dict], str]) -> None:
    assert SECRET not in outcomes[1]


def test_the_edge_check_goes_through_nginx_by_the_first_domain() -> None:
    shop, blog = apps.apps_plan([SHOP, {**BLOG, "domains": []}])
    assert apps.edge_check_argv(shop, "/healthz")[-3:] == [
        "--resolve", "shop.example.com:443:127.0.0.1", "https://shop.example.com/healthz"]
    behind = apps.edge_check_argv(shop, "/", behind_load_balancer=True)
    assert behind[-5:] == ["-H", "X-Forwarded-Proto: https", "--resolve", "shop.example.com:80:127.0.0.1",
                           "http://shop.example.com/"]
    assert apps.edge_check_argv(blog, "/") == []
    # Through an app's maintenance page to the app itself (nginx honours it from loopback only).
    assert ["-H", "X-Berth-Edge-Check: 1"] == behind[8:10] == apps.edge_check_argv(shop, "/")[8:10]


def test_the_jobs_run_on_the_first_app_host_only() -> None:
    plan = apps.apps_plan([SHOP, BLOG])
    assert apps.jobs_here(plan, "app1", ["app1", "app2"]) == plan
    assert [app["jobs"] for app in apps.jobs_here(plan, "app2", ["app1", "app2"])] == [[], []]
    # A host outside the inventory's groups (a role's own test host) runs them.
    assert apps.jobs_here(plan, "test", []) == plan
