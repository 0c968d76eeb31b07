"""Example inventories: the static ones resolve to the expected groups and variables (ansible-inventory),
the dynamic inventory configs parse, and their plugins build berth's groups from a fake cloud API.

No test reaches a real cloud API: the plugins are pointed at a local HTTP server on 127.0.0.1, and every
other HTTP(S) request would go to a proxy on a closed local port."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import example_inventory
import jinja2
import jinja2.defaults
import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.loader import filter_loader, init_plugin_loader, lookup_loader, test_loader
from conftest import ROOT

BIN = ROOT / ".venv" / "bin"
ENVIRONMENTS = {
    # environment: (the app host, its address, the first domain of its first app, the monitoring host, its address)
    "production": ("app1.example.com", "203.0.113.10", "shop.example.com", "prometheus.example.com", "198.51.100.20"),
    "staging": ("app1.staging.example.com", "203.0.113.20", "shop.staging.example.com",
                "prometheus.staging.example.com", "198.51.100.21"),
}
HCLOUD = ROOT / "inventories" / "hcloud" / "hcloud.yml"
DIGITALOCEAN = ROOT / "inventories" / "digitalocean" / "digitalocean.yml"
PLUGINS = {HCLOUD: "hetzner.hcloud.hcloud", DIGITALOCEAN: "community.digitalocean.digitalocean"}
# Options whose values the plugins evaluate as Jinja2 expressions (not {{ }} templates).
EXPRESSION_OPTIONS = ("compose", "groups", "filters")
FAKE_TOKEN = "berth-test-token-not-real"  # sent only to the local fake API


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def env_dir(name: str) -> Path:
    return ROOT / "inventories" / name


def ansible_env(**extra: str) -> dict[str, str]:
    """The environment of an ansible command: the project's config, no vault password, and any
    HTTP(S) request not meant for 127.0.0.1 sent to a closed local port instead of the internet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_VAULT", "HCLOUD_", "DO_"))}
    dead_end = "http://127.0.0.1:9"
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HTTP_PROXY=dead_end,
        HTTPS_PROXY=dead_end,
        http_proxy=dead_end,
        https_proxy=dead_end,
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
        # An inventory source that does not parse is an error, not a warning and an empty inventory.
        ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
        ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="true",
    )
    env.update(extra)
    return env


def ansible(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], cwd=ROOT, env=ansible_env(**extra_env), capture_output=True, text=True
    )


def plain(value: Any) -> Any:
    """ansible-inventory's JSON without its markers of untrusted values ({"__ansible_unsafe": value})."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def inventory_list(source: Path, **extra_env: str) -> dict[str, Any]:
    proc = ansible("ansible-inventory", "-i", str(source), "--list", **extra_env)
    assert proc.returncode == 0, proc.stderr
    return plain(json.loads(proc.stdout))


def members(inventory: dict[str, Any], group: str, kind: str = "hosts") -> set[str]:
    return set(inventory.get(group, {}).get(kind, []))


# --- The static examples -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(ENVIRONMENTS))
def static(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, inventory_list(env_dir(request.param))


def test_static_inventory_groups(static: tuple[str, dict[str, Any]]) -> None:
    name, inventory = static
    host = ENVIRONMENTS[name][0]
    assert members(inventory, "app") == {host}
    assert members(inventory, "monitoring") == {ENVIRONMENTS[name][3]}
    # berth runs the monitoring host (site.yml's monitoring layer, on monitoring:&berth)
    assert members(inventory, "berth", "children") == {"app", "monitoring"}


def test_static_inventory_variables(static: tuple[str, dict[str, Any]]) -> None:
    name, inventory = static
    host, address, domain, monitor_host, monitor_address = ENVIRONMENTS[name]
    hostvars = inventory["_meta"]["hostvars"]
    app = hostvars[host]
    assert app["ansible_host"] == address
    assert app["ansible_user"] == "{{ berth_ssh_user | default('deploy') }}"
    shop, blog = app["berth_apps"]
    assert shop["domains"][0] == domain
    assert (shop["name"], shop["image"]) == ("shop", "registry.example.com/team/shop:1.0.0")
    assert shop["env"] == {"APP_ENV": name, "SECRET_KEY": "{{ vault_shop_secret_key }}"}
    assert shop["workers"][0]["name"] == "default" and shop["jobs"][0]["name"] == "nightly-report"
    assert (blog["name"], blog["redis"]) == ("blog", False)
    assert app["hardening_firewall_source_rules"][0]["port"] == 9100
    monitor = hostvars[monitor_host]
    assert monitor["ansible_host"] == monitor_address
    # a berth host: the same settings as the app host, the receivers of its alerts among them
    assert {k: v for k, v in monitor.items() if k != "ansible_host"} == {
        k: v for k, v in app.items() if k != "ansible_host"}
    assert [r["type"] for r in monitor["monitoring_alert_receivers"]] == ["email", "slack"]


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_vault_example_is_not_loaded(name: str) -> None:
    # group_vars/berth/vault.yml.example documents the secrets; Ansible must not load it (its extension
    # is not one group_vars reads), or its placeholder values would become real settings.
    example = load(env_dir(name) / "group_vars" / "berth" / "vault.yml.example")
    assert example and all(key.startswith("vault_") for key in example)
    inventory = inventory_list(env_dir(name))
    for hostvars in inventory["_meta"]["hostvars"].values():
        assert not [key for key in hostvars if key.startswith("vault_")]


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_every_vault_reference_has_an_example(name: str) -> None:
    # The settings in use take exactly the secrets the example names; the optional (commented) ones
    # exactly those it names in comments.
    berth = env_dir(name) / "group_vars" / "berth"
    referenced = set(re.findall(r"\bvault_\w+", json.dumps(load(berth / "vars.yml"))))
    defined = set(load(berth / "vault.yml.example"))
    assert referenced, "vars.yml takes no secret from the vault"
    assert referenced == defined
    optional = set(re.findall(r"^#.*\b(vault_\w+)", (berth / "vars.yml").read_text(), re.MULTILINE))
    example = set(re.findall(r"^# (vault_\w+):", (berth / "vault.yml.example").read_text(), re.MULTILINE))
    assert optional == example


# Files the linters leave alone (.yamllint, .ansible-lint): Ansible Vault files, by their names.
VAULT_NAMES = ("vault.yml", "vault.yaml", "*.vault.yml", "*.vault.yaml")


def vault_files(root: Path) -> list[Path]:
    found = {path for pattern in VAULT_NAMES for path in root.rglob(pattern)}
    return sorted(p for p in found if not {".venv", ".cache", "collections", ".git"} & set(p.parts))


def test_the_linters_skip_exactly_the_vault_names() -> None:
    yamllint = load(ROOT / ".yamllint")["ignore"].split()
    ansible_lint = load(ROOT / ".ansible-lint")["exclude_paths"]
    assert set(VAULT_NAMES) <= set(yamllint)
    assert {f"**/{name}" for name in VAULT_NAMES} <= set(ansible_lint)


def test_files_with_a_vault_name_are_encrypted() -> None:
    # The linters skip these names, so a plain-text file under one of them is caught here instead:
    # it would be a secret in the clear, and YAML mistakes in it would go unseen.
    for vault in vault_files(ROOT):
        assert vault.read_text().startswith("$ANSIBLE_VAULT;"), f"{vault} is not encrypted"


def test_an_encrypted_vault_file_passes_the_linters(tmp_path: Path) -> None:
    # An inventory kept in the repository with its encrypted vault.yml, as the docs suggest.
    inventory = tmp_path / "inventories" / "mine"
    shutil.copytree(env_dir("production"), inventory)
    for name in (".yamllint", ".ansible-lint"):
        shutil.copy(ROOT / name, tmp_path / name)
    vault = inventory / "group_vars" / "berth" / "vault.yml"
    shutil.copy(inventory / "group_vars" / "berth" / "vault.yml.example", vault)
    password = tmp_path / "vault-password"
    password.write_text("berth-test-vault-password\n")
    encrypt = ansible("ansible-vault", "encrypt", "--vault-password-file", str(password), str(vault))
    assert encrypt.returncode == 0, encrypt.stderr
    password.unlink()
    assert vault_files(tmp_path) == [vault]
    yamllint = subprocess.run([str(BIN / "yamllint"), "--strict", "."], cwd=tmp_path, capture_output=True, text=True)
    assert yamllint.returncode == 0, yamllint.stdout
    lint = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--strict", "inventories"],
        cwd=tmp_path, env=ansible_env(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")), capture_output=True, text=True,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # ... while a real mistake elsewhere in the same inventory is still reported.
    (inventory / "group_vars" / "berth" / "vars.yml").write_text("---\nkey: [unclosed\n")
    broken = subprocess.run([str(BIN / "yamllint"), "--strict", "."], cwd=tmp_path, capture_output=True, text=True)
    assert broken.returncode != 0 and "vars.yml" in broken.stdout


# --- Filling the examples in, as a new user does (tests/example_inventory.py) ----------------------


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_the_marked_lines_are_the_same_in_every_example(name: str) -> None:
    production = [example_inventory.marked(env_dir("production") / f) for f in ("hosts.yml", example_inventory.VARS)]
    other = [example_inventory.marked(env_dir(name) / f) for f in ("hosts.yml", example_inventory.VARS)]
    assert [path[-1] for path in production[0]] == [path[-1] for path in other[0]]
    assert production[1] == other[1]
    assert production[1], "the example marks no setting as must-set"


def test_the_fixture_fills_exactly_the_marked_lines(tmp_path: Path) -> None:
    fixture = load(example_inventory.FIXTURE)
    password = tmp_path / "vault-password"
    password.write_text("berth-test-vault-password\n")
    dest = tmp_path / "mine"
    example_inventory.fill(env_dir("production"), dest, fixture, example_inventory.offline_values(tmp_path), password)
    inventory = inventory_list(dest, ANSIBLE_VAULT_PASSWORD_FILE=str(password))
    app = inventory["_meta"]["hostvars"]["app1.example.com"]
    assert app["ansible_host"] == "127.0.0.1"
    assert [a["domains"] for a in app["berth_apps"]] == [["shop.test", "www.shop.test"], ["blog.test"]]
    assert app["app_stack_image_archives"] == [str(tmp_path / "kit.tar.gz")]
    assert app["vault_backup_password"] == fixture["vault"]["vault_backup_password"]
    assert (dest / "group_vars" / "berth" / "vault.yml").read_text().startswith("$ANSIBLE_VAULT;")
    # Everything the example did not mark is as it was.
    example = load(env_dir("production") / example_inventory.VARS)
    filled = load(dest / example_inventory.VARS)
    assert {k: v for k, v in filled.items() if k not in fixture["settings"]} == {
        k: v for k, v in example.items() if k not in fixture["settings"]
    }


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda f: f["settings"].pop("nginx_acme_email"), "marks ['nginx_acme_email'] but the fixture gives no value"),
        (lambda f: f["settings"].update(common_timezone="UTC"), "fills ['common_timezone'], which"),
        (lambda f: f["vault"].pop("vault_backup_password"), "marks ['vault_backup_password']"),
        (lambda f: f["addresses"].pop("prometheus.example.com"), "marks ['prometheus.example.com']"),
    ],
)
def test_a_fixture_that_misses_a_marked_line_is_refused(tmp_path: Path, spoil: Any, says: str) -> None:
    fixture = load(example_inventory.FIXTURE)
    spoil(fixture)
    values = example_inventory.offline_values(tmp_path)
    with pytest.raises(example_inventory.FillError, match=re.escape(says)):
        example_inventory.fill(env_dir("production"), tmp_path / "mine", fixture, values, tmp_path)


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_templated_settings_resolve(name: str) -> None:
    # The firewall's node_exporter, nginx exporter and mtail sources come from the monitoring group (evaluated on
    # the controller, no connection to any host).
    host = ENVIRONMENTS[name][0]
    proc = ansible(
        "ansible", "-i", str(env_dir(name)), host, "-c", "local", "-m", "ansible.builtin.debug",
        "-a", "var=hardening_firewall_source_rules",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = json.loads(proc.stdout.split("=>", 1)[1])["hardening_firewall_source_rules"]
    assert rules == [
        {"port": 9100, "proto": "tcp", "sources": [ENVIRONMENTS[name][4]],
         "comment": "Prometheus scrapes node_exporter"},
        {"port": 9113, "proto": "tcp", "sources": [ENVIRONMENTS[name][4]],
         "comment": "Prometheus scrapes the nginx exporter"},
        {"port": 3903, "proto": "tcp", "sources": [ENVIRONMENTS[name][4]],
         "comment": "Prometheus scrapes mtail (nginx's log)"},
    ]
    spec = {"hardening_firewall_source_rules": role_specs()["hardening"]["hardening_firewall_source_rules"]}
    assert ArgumentSpecValidator(spec).validate({"hardening_firewall_source_rules": rules}).error_messages == []


def role_specs() -> dict[str, dict[str, Any]]:
    specs = {}
    for path in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        specs[path.parent.parent.name] = load(path)["argument_specs"]["main"]["options"]
    return specs


def owner(variable: str, specs: dict[str, dict[str, Any]]) -> str | None:
    return next((role for role, options in specs.items() if variable in options), None)


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_group_vars_are_role_options(name: str) -> None:
    # A misspelt variable would be ignored silently by Ansible; here it fails.
    specs = role_specs()
    settings = load(env_dir(name) / "group_vars" / "berth" / "vars.yml")
    unknown = [k for k in settings if not k.startswith("ansible_") and owner(k, specs) is None]
    assert unknown == [], "not an option of any role (roles/*/meta/argument_specs.yml)"


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_group_vars_pass_the_argument_specs(name: str) -> None:
    # Values that are not templates are checked with the same validator the roles use.
    specs = role_specs()
    settings = load(env_dir(name) / "group_vars" / "berth" / "vars.yml")
    for role, options in specs.items():
        values = {k: v for k, v in settings.items() if k in options and "{{" not in json.dumps(v)}
        result = ArgumentSpecValidator(options).validate(values)
        assert result.error_messages == [], f"{role}: {result.error_messages}"


def test_environments_set_the_same_variables() -> None:
    production, staging = (set(load(env_dir(n) / "group_vars" / "berth" / "vars.yml")) for n in ENVIRONMENTS)
    assert production == staging


# --- The dynamic inventory configs ---------------------------------------------------------------


@pytest.mark.parametrize("config", list(PLUGINS), ids=lambda p: p.name)
def test_plugin_config_names_its_plugin(config: Path) -> None:
    assert load(config)["plugin"] == PLUGINS[config]


def plugin_options(plugin: str) -> dict[str, Any]:
    proc = ansible("ansible-doc", "-t", "inventory", plugin, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[plugin]["doc"]["options"]


def option_names(options: dict[str, Any]) -> set[str]:
    return {alias for name, spec in options.items() for alias in [name, *(spec.get("aliases") or [])]}


@pytest.mark.parametrize("config", list(PLUGINS), ids=lambda p: p.name)
def test_plugin_config_options_are_documented(config: Path) -> None:
    options = plugin_options(PLUGINS[config])
    data = load(config)
    assert set(data) - option_names(options) == set()
    keyed = option_names(options["keyed_groups"]["suboptions"])
    for entry in data.get("keyed_groups", []):
        assert set(entry) - keyed == set()


@pytest.mark.parametrize("config", list(PLUGINS), ids=lambda p: p.name)
def test_plugin_config_keeps_the_token_out(config: Path) -> None:
    data = load(config)
    token_keys = {"api_token", "token", "oauth_token"} & set(data)
    for key in token_keys:
        assert re.fullmatch(r"\{\{ lookup\('ansible\.builtin\.env', '\w+'\) \}\}", data[key]), key
    assert not {"api_endpoint", "baseurl"} & set(data), "the default (the provider's) API endpoint is meant"


def expressions(data: dict[str, Any]) -> list[str]:
    found = [entry["key"] for entry in data.get("keyed_groups", [])]
    for option in EXPRESSION_OPTIONS:
        value = data.get(option) or []
        found += list(value.values()) if isinstance(value, dict) else list(value)
    return found


@functools.cache
def plugin_loaders() -> None:
    init_plugin_loader()


def unknown_plugins(tree: jinja2.nodes.Template) -> list[str]:
    plugin_loaders()
    missing = [
        f.name
        for f in tree.find_all(jinja2.nodes.Filter)
        if f.name not in jinja2.defaults.DEFAULT_FILTERS and filter_loader.get(f.name) is None
    ]
    missing += [
        t.name
        for t in tree.find_all(jinja2.nodes.Test)
        if t.name not in jinja2.defaults.DEFAULT_TESTS and test_loader.get(t.name) is None
    ]
    for call in tree.find_all(jinja2.nodes.Call):
        if isinstance(call.node, jinja2.nodes.Name) and call.node.name == "lookup":
            name = call.args[0].value  # type: ignore[attr-defined]
            missing += [] if lookup_loader.get(name) else [name]
    return missing


@pytest.mark.parametrize("config", list(PLUGINS), ids=lambda p: p.name)
def test_plugin_config_expressions_compile(config: Path) -> None:
    data = load(config)
    env = jinja2.Environment(autoescape=False)  # only parsed, never rendered
    found = expressions(data)
    assert found, "no group or compose expression found"
    templates = [f"{{{{ {expression} }}}}" for expression in found]
    templates += [v for v in data.values() if isinstance(v, str) and "{{" in v]
    for template in templates:
        tree = env.parse(template)  # raises TemplateSyntaxError on a broken expression
        assert unknown_plugins(tree) == [], template


# --- The plugins against a fake API on 127.0.0.1 ----------------------------------------------------


def hcloud_server(
    ident: int, name: str, ipv4: str, location: str, labels: dict[str, str], private: str | None = None
) -> dict[str, Any]:
    """A server as the API describes it; `private`: its address on the network "berth" (none: not on it)."""
    private_net = [
        {"network": HCLOUD_NETWORK["id"], "ip": private, "alias_ips": [], "mac_address": "86:00:00:00:00:01"}
    ]
    return {
        "id": ident,
        "name": name,
        "status": "running",
        "created": "2026-01-01T00:00:00+00:00",
        "labels": labels,
        "server_type": {"id": 1, "name": "cx22", "architecture": "x86"},
        "datacenter": {"id": 1, "name": f"{location}-dc1", "location": {"id": 1, "name": location}},
        "image": {"id": 7, "name": "debian-13", "os_flavor": "debian", "description": "Debian 13"},
        "public_net": {
            "ipv4": {"id": ident, "ip": ipv4, "blocked": False, "dns_ptr": f"static.{ipv4}.example.com"},
            "ipv6": {"id": ident + 100, "ip": f"2001:db8:{ident}::/64", "blocked": False, "dns_ptr": []},
            "floating_ips": [],
            "firewalls": [],
        },
        "private_net": private_net if private else [],
    }


def droplet(ident: int, name: str, ipv4: str, region: str, tags: list[str], private: str | None) -> dict[str, Any]:
    """A droplet as the API describes it; `private`: its address in the VPC (None: it has none)."""
    public = {"ip_address": ipv4, "type": "public", "netmask": "255.255.255.0", "gateway": "203.0.113.1"}
    vpc = {"ip_address": private, "type": "private", "netmask": "255.255.240.0", "gateway": "10.114.0.1"}
    networks = {"v4": [vpc, public] if private else [public], "v6": []}
    return {"id": ident, "name": name, "networks": networks, "region": {"slug": region}, "tags": tags,
            "size_slug": "s-1vcpu-1gb", "status": "active"}  # fmt: skip


PAGE = {"pagination": {"page": 1, "per_page": 50, "previous_page": None, "next_page": None, "last_page": 1}}
# The shapes of inventories/hcloud/README.md and inventories/digitalocean/README.md, with the private
# addresses of the static stand-ins of tests/fixtures/<provider>-fill.yml (tests/test_cloud_examples.py).
HCLOUD_NETWORK = {"id": 4711, "name": "berth", "ip_range": "10.0.0.0/16", "subnets": [], "routes": [], "servers": [],
                  "load_balancers": [], "labels": {}, "protection": {"delete": False},
                  "created": "2026-01-01T00:00:00+00:00", "expose_routes_to_vswitch": False}  # fmt: skip
BERTH = {"berth": "production"}
FAKE_API = {
    # path (without the query): the JSON answer of the provider's API
    "/hcloud/v1/locations": {"locations": [{"id": 1, "name": "fsn1"}], "meta": PAGE},
    "/hcloud/v1/networks": {"networks": [HCLOUD_NETWORK], "meta": PAGE},
    f"/hcloud/v1/networks/{HCLOUD_NETWORK['id']}": {"network": HCLOUD_NETWORK},
    "/hcloud/v1/servers": {
        "servers": [
            hcloud_server(1, "app1", "203.0.113.10", "fsn1", {**BERTH, "role": "app"}, "10.0.0.3"),
            hcloud_server(2, "app2", "203.0.113.11", "nbg1", {**BERTH, "role": "app"}, "10.0.0.4"),
            hcloud_server(3, "db1", "203.0.113.20", "fsn1", {**BERTH, "role": "db"}, "10.0.0.10"),
            hcloud_server(4, "prometheus", "198.51.100.20", "nbg1", {"role": "monitoring"}, "10.0.0.20"),
            # On the network, labelled role=db but not berth: not berth's database server.
            hcloud_server(5, "other-db", "203.0.113.98", "fsn1", {"role": "db"}, "10.0.0.30"),
            # Not on the network: left out, even with berth's labels.
            hcloud_server(6, "unrelated", "203.0.113.99", "fsn1", {}),
            hcloud_server(7, "app9-off-network", "203.0.113.97", "fsn1", {**BERTH, "role": "app"}),
        ],
        "meta": PAGE,
    },
    "/do/v2/droplets": {
        "droplets": [
            droplet(11, "app1", "203.0.113.10", "fra1", ["berth", "role:app", "env:production"], "10.114.0.2"),
            droplet(12, "app2", "203.0.113.11", "fra1", ["berth", "role:app", "env:production"], "10.114.0.3"),
            droplet(13, "prometheus", "198.51.100.20", "fra1", ["role:monitoring", "env:production"], "10.114.0.9"),
            droplet(14, "unrelated", "203.0.113.99", "fra1", ["env:production"], "10.114.0.50"),
            droplet(15, "app1-staging", "203.0.113.20", "fra1", ["berth", "role:app", "env:staging"], "10.116.0.2"),
        ],
        "links": {},
        "meta": {"total": 5},
    },
}


@dataclass
class FakeApi:
    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Authorization header)


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            api.requests.append((path, self.headers.get("Authorization", "")))
            ok = path in FAKE_API and self.headers.get("Authorization") == f"Bearer {FAKE_TOKEN}"
            body = json.dumps(FAKE_API[path] if ok else {"error": {"code": "unauthorized"}}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield api
    server.shutdown()
    server.server_close()


def local_copy(config: Path, tmp_path: Path, endpoint_option: str, endpoint: str) -> Path:
    """The config as it is, pointed at the fake API (the plugins pick files by their name's ending)."""
    assert endpoint.startswith("http://127.0.0.1:")
    copy = tmp_path / config.name
    copy.write_text(config.read_text() + f"{endpoint_option}: {endpoint}\n")
    assert load(copy)[endpoint_option] == endpoint
    return copy


def assert_berth_groups(inventory: dict[str, Any], hostvars: dict[str, Any], name: str) -> None:
    """The groups and addresses are those of the example's static stand-in (tests/fixtures/<name>-fill.yml),
    which tests/test_cloud_examples.py runs site.yml with."""
    assert members(inventory, "monitoring") == {"prometheus"}
    assert hostvars["app1"]["ansible_host"] == "203.0.113.10"
    assert hostvars["prometheus"]["ansible_host"] == "198.51.100.20"
    stand_in = load(ROOT / "tests" / "fixtures" / f"{name}-fill.yml")["static_inventory"]["hosts"]["all"]["children"]
    for group, spec in {**stand_in["berth"]["children"], "monitoring": stand_in["monitoring"]}.items():
        assert members(inventory, group) == set(spec["hosts"]), group
        for host, variables in spec["hosts"].items():
            assert hostvars[host]["berth_private_address"] == variables["berth_private_address"], host
    assert members(inventory, "berth") == {h for g in stand_in["berth"]["children"].values() for h in g["hosts"]}


def test_hcloud_plugin_builds_the_groups(fake_api: FakeApi, tmp_path: Path) -> None:
    if importlib.util.find_spec("dateutil") is None:
        pytest.skip("python-dateutil is not in .venv, and hetzner.hcloud's inventory plugin needs it")
    config = local_copy(HCLOUD, tmp_path, "api_endpoint", f"{fake_api.url}/hcloud/v1")
    inventory = inventory_list(config, HCLOUD_TOKEN=FAKE_TOKEN)
    hostvars = inventory["_meta"]["hostvars"]
    assert_berth_groups(inventory, hostvars, "hcloud")
    assert members(inventory, "berth") == {"app1", "app2", "db1"}
    assert members(inventory, "db") == {"db1"}  # other-db has role=db but no berth label
    # Only the servers on the network "berth": app9-off-network is left out despite its labels.
    assert members(inventory, "hcloud") == {"app1", "app2", "db1", "prometheus", "other-db"}
    assert members(inventory, "hcloud_location_fsn1") == {"app1", "db1", "other-db"}
    assert hostvars["app1"]["hcloud_labels"] == {"berth": "production", "role": "app"}
    assert hostvars["db1"]["hcloud_private_networks"] == [{"id": 4711, "name": "berth", "ip": "10.0.0.10"}]
    assert {path for path, _ in fake_api.requests} == {
        "/hcloud/v1/locations", "/hcloud/v1/servers", "/hcloud/v1/networks", "/hcloud/v1/networks/4711"
    }  # fmt: skip
    assert {auth for _, auth in fake_api.requests} == {f"Bearer {FAKE_TOKEN}"}


def test_digitalocean_plugin_builds_the_groups(fake_api: FakeApi, tmp_path: Path) -> None:
    config = local_copy(DIGITALOCEAN, tmp_path, "baseurl", f"{fake_api.url}/do/v2")
    inventory = inventory_list(config, DO_API_TOKEN=FAKE_TOKEN)
    hostvars = inventory["_meta"]["hostvars"]
    assert_berth_groups(inventory, hostvars, "digitalocean")
    assert members(inventory, "berth") == {"app1", "app2"}
    assert "db" not in inventory  # the databases are DigitalOcean's (data: external)
    # Only this environment's droplets: the staging one is filtered out.
    assert set(hostvars) == {"app1", "app2", "prometheus", "unrelated"}
    assert members(inventory, "do_region_fra1") == {"app1", "app2", "prometheus", "unrelated"}
    assert fake_api.requests == [("/do/v2/droplets", f"Bearer {FAKE_TOKEN}")]


def test_digitalocean_droplet_without_a_vpc_address_fails_the_inventory(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # berth_private_address would be undefined: strict makes it an error, not a host left without it.
    droplets = [*FAKE_API["/do/v2/droplets"]["droplets"], droplet(16, "app3", "203.0.113.12", "fra1",
                ["berth", "role:app", "env:production"], None)]  # fmt: skip
    monkeypatch.setitem(FAKE_API, "/do/v2/droplets", {**FAKE_API["/do/v2/droplets"], "droplets": droplets})
    config = local_copy(DIGITALOCEAN, tmp_path, "baseurl", f"{fake_api.url}/do/v2")
    proc = ansible("ansible-inventory", "-i", str(config), "--list", DO_API_TOKEN=FAKE_TOKEN)
    assert proc.returncode != 0
    assert "berth_private_address" in proc.stderr, proc.stderr


def test_digitalocean_plugin_without_token_is_refused(fake_api: FakeApi, tmp_path: Path) -> None:
    # No DO_API_TOKEN: the request carries no usable token and the inventory fails loudly.
    config = local_copy(DIGITALOCEAN, tmp_path, "baseurl", f"{fake_api.url}/do/v2")
    proc = ansible("ansible-inventory", "-i", str(config), "--list")
    assert proc.returncode != 0
    assert "401" in proc.stderr
    assert fake_api.requests == [("/do/v2/droplets", "Bearer ")]


# The servers and droplets of the examples' READMEs (step by step there), and what they show.
README_SHAPES = {
    HCLOUD: ("/hcloud/v1/servers", "servers", "api_endpoint", "/hcloud/v1", "HCLOUD_TOKEN", [
        hcloud_server(1, "app1", "203.0.113.10", "fsn1", {**BERTH, "role": "app"}, "10.0.0.3"),
        hcloud_server(2, "app2", "203.0.113.11", "fsn1", {**BERTH, "role": "app"}, "10.0.0.4"),
        hcloud_server(3, "db1", "203.0.113.20", "fsn1", {**BERTH, "role": "db"}, "10.0.0.10"),
        hcloud_server(4, "prometheus", "198.51.100.20", "fsn1", {"role": "monitoring"}, "10.0.0.20"),
    ]),
    DIGITALOCEAN: ("/do/v2/droplets", "droplets", "baseurl", "/do/v2", "DO_API_TOKEN", [
        droplet(11, "app1", "203.0.113.10", "fra1", ["berth", "role:app", "env:production"], "10.114.0.2"),
        droplet(12, "app2", "203.0.113.11", "fra1", ["berth", "role:app", "env:production"], "10.114.0.3"),
        droplet(13, "prometheus", "198.51.100.20", "fra1", ["role:monitoring", "env:production"], "10.114.0.9"),
    ]),
}  # fmt: skip


@pytest.mark.parametrize("config", list(README_SHAPES), ids=lambda p: p.name)
def test_the_readme_shows_the_plugins_graph(
    config: Path, fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, key, option, prefix, token, hosts = README_SHAPES[config]
    monkeypatch.setitem(FAKE_API, path, {**FAKE_API[path], key: hosts})
    copy = local_copy(config, tmp_path, option, f"{fake_api.url}{prefix}")
    graph = ansible("ansible-inventory", "-i", str(copy), "--graph", **{token: FAKE_TOKEN})
    assert graph.returncode == 0, graph.stderr
    readme = (config.parent / "README.md").read_text()
    shown = re.search(r"^```\n(@all:\n.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert shown, "the README shows no ansible-inventory --graph"
    assert shown[1].strip() == graph.stdout.strip()
