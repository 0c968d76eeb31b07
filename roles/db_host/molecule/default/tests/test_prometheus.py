"""What the monitoring host (the app host, group monitoring: role monitoring) makes of the database host:
Prometheus scrapes its PostgreSQL exporter and, once per app's Redis instance, its Redis exporter over the
scenario network with TLS (the test CA) and basic auth; berth's Redis rules match the series as scraped
(labels app and host); and every panel of the PostgreSQL and Redis dashboards finds series in this
Prometheus (scripts/check_dashboards.py run on the monitoring host)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[5]
sys.path.insert(0, str(ROOT / "molecule" / "shared"))
from dashboards import evaluate  # noqa: E402
from prometheus_api import api, get_host, query, wait_for  # noqa: E402

_spec = importlib.util.spec_from_file_location("apps", ROOT / "plugins" / "filter" / "apps.py")
assert _spec and _spec.loader
apps_filter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(apps_filter)

testinfra_hosts = ["monitoring"]
DB = "berth-dbhost-trixie"
EVALUATED = ["berth-postgres.json", "berth-redis.json"]


@pytest.fixture(scope="module")
def address() -> str:
    """The db host's address on the scenario network, where its exporters listen (molecule.yml)."""
    db = get_host(DB)
    return db.check_output("ip -4 -o addr show dev eth0 | awk '{print $4; exit}'").split("/")[0]


@pytest.fixture(scope="module")
def redis_apps(host) -> list[dict]:
    """The apps with a Redis instance on the db host: one Redis target each."""
    plan = apps_filter.apps_plan(host.ansible.get_variables()["berth_apps"])
    found = [app for app in plan if app["data"] == "host" and app["redis"]]
    assert [app["name"] for app in found] == ["shop"]
    return found


@pytest.fixture(scope="module")
def database_targets(host, redis_apps) -> list[dict]:
    """Prometheus' active targets of the jobs postgres and redis, once all are up."""
    def targets() -> list[dict] | None:
        active = [t for t in api(host, "v1/targets?state=active")["activeTargets"]
                  if t["labels"].get("job") in ("postgres", "redis")]
        if len(active) == 1 + len(redis_apps) and all(t["health"] == "up" for t in active):
            return active
        return None

    return wait_for(targets, 60, "the postgres and redis targets up")


def test_the_postgres_exporter_is_scraped_over_the_network_with_tls(database_targets, address):
    [postgres] = [t for t in database_targets if t["labels"]["job"] == "postgres"]
    # (the certificate is checked against the test CA and the host's inventory name: tls_config.server_name)
    assert postgres["scrapeUrl"] == f"https://{address}:9187/metrics"
    assert postgres["labels"]["instance"] == DB and postgres["labels"]["host"] == DB


def test_each_apps_redis_instance_is_a_target_of_the_redis_exporter(database_targets, redis_apps, address):
    redis = {t["labels"]["app"]: t for t in database_targets if t["labels"]["job"] == "redis"}
    assert set(redis) == {app["name"] for app in redis_apps}
    for app in redis_apps:
        target = redis[app["name"]]
        assert target["scrapeUrl"] == (f"https://{address}:9121/scrape?target=redis%3A%2F%2F127.0.0.1%3A"
                                       f"{app['db_redis_port']}")
        assert target["labels"]["host"] == DB and target["labels"]["instance"] == f"{DB}/{app['name']}"


def test_every_redis_instance_is_up_labelled_with_its_app_and_host(host, database_targets, redis_apps):
    up = {(r["metric"]["app"], r["metric"]["host"]): r["value"][1] for r in query(host, 'redis_up{job="redis"}')}
    assert up == {(app["name"], DB): "1" for app in redis_apps}
    assert [r["value"][1] for r in query(host, 'pg_up{job="postgres"}')] == ["1"]


def test_berths_redis_rules_match_the_scraped_series(host, database_targets, redis_apps):
    rules = {r["name"]: r for g in api(host, "v1/rules")["groups"] for r in g["rules"]}
    for name in ("BerthRedisDown", "BerthRedisMemoryHigh", "BerthDatabaseExporterDown"):
        assert rules[name]["health"] == "ok" and rules[name]["state"] == "inactive", rules[name]
    # The memory rule's ratio (without its threshold) finds one series per instance, with app and host:
    # the division matches used and max of the same instance.
    expr = rules["BerthRedisMemoryHigh"]["query"]
    ratio = expr.split(" > 0.9")[0]
    found = query(host, f"({ratio}) and on (app, host) redis_memory_max_bytes > 0")
    assert {(r["metric"]["app"], r["metric"]["host"]) for r in found} == {(app["name"], DB) for app in redis_apps}
    assert all(0 < float(r["value"][1]) < 0.9 for r in found), found
    # The down rule's series is there and not firing.
    assert query(host, rules["BerthRedisDown"]["query"]) == []
    assert len(query(host, "redis_up")) == len(redis_apps)


def test_every_panel_of_the_postgres_and_redis_dashboards_finds_series(host, database_targets, capsys):
    summary = evaluate(host, EVALUATED)
    with capsys.disabled():
        print(f"\ndashboards evaluated in Prometheus: {summary}")
