"""What a client, an attacker, a load balancer and the release logic observe on a host converged with nginx.

Each host serves two apps of berth_apps (molecule.yml): shop (two domains, ports derived from its name)
and blog (one domain, ports from web.host_port); a third app without domains gets nothing. What nginx
should do for them is computed here with the same filter the role uses (plugins/filter/apps.py). Each
colour of each app is a stand-in that says which it is and echoes what nginx passed on (prepare.yml).
Debian 13 terminates TLS with certificates from Pebble (a real ACME server) on its loopback; Debian 12
is behind a load balancer (nginx_load_balancers: 127.0.0.1, so that requests from the host's loopback
come "from the load balancer" and requests from its network address from a stranger) and serves the
apps on port 80. A test that only one of them can answer is skipped on the other. Tests run in file
order: renewal and the rate limit last.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

testinfra_hosts = ["all"]

SCENARIO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("apps", SCENARIO.parents[3] / "plugins" / "filter" / "apps.py")
assert _spec and _spec.loader
apps_filter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(apps_filter)

INVENTORY = yaml.safe_load((SCENARIO / "molecule.yml").read_text())["provisioner"]["inventory"]
BERTH_APPS = INVENTORY["group_vars"]["all"]["berth_apps"]
HOST_VARS = INVENTORY["host_vars"]
PLAN = {app["name"]: app for app in apps_filter.apps_plan(BERTH_APPS)}
SERVED = {name: app for name, app in PLAN.items() if app["domains"]}
# One certificate per app: named by its first domain, covering all of its domains.
CERTS = {app["domains"][0]: app["domains"] for app in SERVED.values()}
# Every name served, and the app it belongs to.
OWNER = {domain: name for name, app in SERVED.items() for domain in app["domains"]}
ROOT = "/tmp/pebble-root.pem"
# Pebble issues certificates valid for 5 years; sslyze's Mozilla profile allows 366 days.
PEBBLE_LIFESPAN_DAYS = 1826
# The role's defaults for the load balancer's view (roles/nginx/defaults/main.yml).
HEALTH = "/berth-lb-health"
DRAIN_FILE = "/var/lib/berth/draining"
# A client of the load balancer, as the load balancer names it in X-Forwarded-For.
CLIENT = "203.0.113.9"


def load_balancers(host) -> list[str]:
    """The host's nginx_load_balancers (molecule.yml): empty on the host that terminates TLS itself."""
    return HOST_VARS.get(host.backend.get_hostname(), {}).get("nginx_load_balancers", [])


def behind_lb(host) -> bool:
    return bool(load_balancers(host))


def only_with_tls(host) -> None:
    if behind_lb(host):
        pytest.skip("behind a load balancer: no certificates, no HTTPS (the load balancer terminates TLS)")


def only_behind_lb(host) -> None:
    if not behind_lb(host):
        pytest.skip("this host terminates TLS itself (no nginx_load_balancers)")


def app_url(host, name: str, path: str = "/") -> str:
    """Where a client reaches an app: HTTPS, or port 80 through the load balancer (the host's loopback)."""
    return f"{'http' if behind_lb(host) else 'https'}://{name}{path}"


def via_lb(host, client: str = CLIENT) -> str:
    """curl options of a request the load balancer forwards for client (nothing on the TLS host)."""
    return f"-H 'X-Forwarded-For: {client}' -H 'X-Forwarded-Proto: https'" if behind_lb(host) else ""


@pytest.fixture
def trust(host) -> str:
    """Pebble's current issuing root (it changes on every Pebble start), for clients to trust."""
    host.check_output(f"curl -sS --fail --cacert /etc/pebble/ca.pem -o {ROOT} https://127.0.0.1:15000/roots/0")
    return ROOT


def request(host, url: str, options: str = "", address: str = "127.0.0.1") -> tuple[int, dict[str, str], str]:
    """Status, headers and body of a request from the host itself to address, trusting only Pebble's root."""
    name = url.split("/")[2]
    port = 443 if url.startswith("https") else 80
    out = host.run(f"curl -sS -i --max-time 10 --cacert {ROOT} --resolve {name}:{port}:{address} {options} '{url}'")
    assert out.rc == 0, out.stderr
    head, _, body = out.stdout.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def served_certificate(host, name: str) -> str:
    """Text of the certificate nginx presents for name, after checking it against Pebble's root."""
    out = host.check_output(
        f"openssl s_client -connect 127.0.0.1:443 -servername {name} -CAfile {ROOT} -verify_return_error"
        f" </dev/null 2>/dev/null | openssl x509 -noout -text -serial"
    )
    assert out, f"no certificate verified for {name}"
    return out


def nginx_pids(host) -> tuple[str, list[str]]:
    master = host.file("/run/nginx.pid").content_string.strip()
    return master, sorted(host.check_output(f"pgrep -P {master}").split())


def network_address(host) -> str:
    """The host's own address on the scenario network: a client that is neither loopback nor a load balancer."""
    return host.check_output("ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1")


def test_services_enabled_and_one_renewal_timer(host):
    assert host.service("nginx").is_running
    assert host.service("nginx").is_enabled
    assert host.service("certbot.timer").is_enabled
    assert host.service("certbot.timer").is_running
    # One renewal mechanism: Debian's cron entry is gone; the timer runs without certbot's random sleep.
    assert not host.file("/etc/cron.d/certbot").exists
    unit = host.check_output("systemctl cat certbot.service")
    assert "--no-random-sleep-on-renew" in unit
    assert host.run("nginx -t").rc == 0


def test_the_scenario_covers_derived_and_given_ports():
    assert SERVED["blog"]["ports"] == {"blue": 8100, "green": 8101}
    assert SERVED["shop"]["ports"]["blue"] == apps_filter.derived_port("shop")
    assert set(SERVED) == {"shop", "blog"} and "jobs" in PLAN


def test_certificates_issued_by_pebble_are_served(host, trust):
    only_with_tls(host)
    assert set(CERTS) == {"shop.test", "blog.test"}
    for domain, names in CERTS.items():
        for name in names:
            text = served_certificate(host, name)
            assert "Pebble Intermediate CA" in text
            assert "id-ecPublicKey" in text
            # The app's one certificate: its SANs are exactly the app's domains.
            sans = sorted(
                part.strip().removeprefix("DNS:")
                for part in text.split("X509v3 Subject Alternative Name:")[1].splitlines()[1].split(",")
            )
            assert sans == sorted(names)
        assert host.file(f"/etc/letsencrypt/renewal/{domain}.conf").contains("server = https://127.0.0.1:14000/dir")


def test_https_proxies_to_the_app_with_security_headers(host, trust):
    only_with_tls(host)
    for name, owner in OWNER.items():
        status, headers, body = request(host, f"https://{name}/some/path", "-H 'X-Forwarded-For: 6.6.6.6'")
        assert status == 200
        assert headers["strict-transport-security"] == "max-age=63072000"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "SAMEORIGIN"
        assert headers["referrer-policy"] == "strict-origin-when-cross-origin"
        assert headers["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'"
        assert headers["permissions-policy"] == "geolocation=(), camera=()"
        assert headers["server"] == "nginx"
        app = json.loads(body)
        assert (app["app"], app["colour"]) == (owner, "blue")
        seen = app["headers"]
        assert seen["Host"] == name
        assert seen["X-Forwarded-Proto"] == "https"
        assert seen["X-Forwarded-Host"] == name
        # The edge is the first proxy: a client's own X-Forwarded-For is not passed on.
        assert seen["X-Forwarded-For"] == "127.0.0.1"


def test_behind_lb_the_apps_are_proxied_on_port_80_for_the_load_balancer(host):
    only_behind_lb(host)
    for name, owner in OWNER.items():
        # The load balancer's request: the client it names last in X-Forwarded-For (what a client put before
        # it is its own claim), the scheme the client used.
        status, headers, body = request(
            host, f"http://{name}/some/path", f"-H 'X-Forwarded-For: 6.6.6.6, {CLIENT}' -H 'X-Forwarded-Proto: https'"
        )
        assert status == 200
        assert "location" not in headers
        # The same response headers as the HTTPS server's (the load balancer passes them to the client).
        assert headers["strict-transport-security"] == "max-age=63072000"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'"
        assert headers["permissions-policy"] == "geolocation=(), camera=()"
        app = json.loads(body)
        assert (app["app"], app["colour"]) == (owner, "blue")
        seen = app["headers"]
        assert seen["Host"] == name
        assert seen["X-Forwarded-For"] == CLIENT
        assert seen["X-Real-IP"] == CLIENT
        # The load balancer's X-Forwarded-Proto is passed on (not this connection's http), with its port.
        assert seen["X-Forwarded-Proto"] == "https"
        assert seen["X-Forwarded-Port"] == "443"
        assert seen["X-Forwarded-Host"] == name
    # The access log names the client, not the load balancer.
    path = f"/client-logged-{time.time_ns()}"
    request(host, f"http://shop.test{path}", via_lb(host))
    assert host.file("/var/log/nginx/access.log").contains(f"^{CLIENT} - .*GET {path} ")
    # Without X-Forwarded-Proto (or with nonsense in it), the app is told http.
    _, _, body = request(host, "http://blog.test/", "-H 'X-Forwarded-Proto: gopher'")
    assert json.loads(body)["headers"]["X-Forwarded-Proto"] == "http"
    assert json.loads(body)["headers"]["X-Forwarded-Port"] == "80"


def test_behind_lb_strangers_get_403_even_naming_the_load_balancer(host):
    only_behind_lb(host)
    stranger = network_address(host)
    for name in OWNER:
        for claim in ("", "-H 'X-Forwarded-For: 127.0.0.1'"):
            status, headers, _ = request(host, f"http://{name}/", claim, address=stranger)
            assert status == 403
            assert "location" not in headers
    assert host.file("/var/log/nginx/access.log").contains(f"^{stranger} - .* 403 ")


def test_behind_lb_no_certificate_and_no_https(host):
    only_behind_lb(host)
    # No certificate was requested for any app (certbot is installed, its timer has nothing to renew).
    assert host.run("ls /etc/letsencrypt/live/*/cert.pem").rc != 0
    assert not host.file("/etc/letsencrypt/archive").exists or host.check_output("ls /etc/letsencrypt/archive") == ""
    conf = host.file("/etc/nginx/nginx.conf").content_string
    assert "listen 443" not in conf and "ssl_certificate " not in conf
    # Nothing listens on 443: the load balancer owns TLS.
    out = host.run("curl -sS --max-time 5 -k https://127.0.0.1/")
    assert out.rc == 7, out.stderr  # curl: could not connect


def test_responses_are_compressed(host, trust):
    _, headers, _ = request(host, app_url(host, "shop.test"), f"--compressed {via_lb(host)}")
    assert headers["content-encoding"] == "gzip"


def test_plain_http_redirects_except_the_acme_path(host):
    only_with_tls(host)
    for name in OWNER:
        status, headers, _ = request(host, f"http://{name}/a/b?c=1")
        assert status == 301
        assert headers["location"] == f"https://{name}/a/b?c=1"
    token = "/var/lib/berth/acme/.well-known/acme-challenge/berth-probe"
    host.check_output(f"mkdir -p $(dirname {token}) && echo probe-content > {token}")
    try:
        for name in OWNER:
            status, _, body = request(host, f"http://{name}/.well-known/acme-challenge/berth-probe")
            assert status == 200
            assert body.strip() == "probe-content"
    finally:
        host.run(f"rm -f {token}")


def test_unknown_host_is_dropped(host, trust):
    # Plain HTTP: 444, the connection is closed without a response.
    out = host.run("curl -sS --max-time 5 -H 'Host: evil.test' http://127.0.0.1/")
    assert out.rc == 52, out.stderr  # curl: empty reply from server
    if behind_lb(host):
        return  # no HTTPS here (test_behind_lb_no_certificate_and_no_https)
    # HTTPS with an unknown name: the handshake is refused, no certificate shown.
    out = host.run("curl -sS --max-time 5 -k --resolve evil.test:443:127.0.0.1 https://evil.test/")
    assert out.rc == 35, out.stderr
    assert "unrecognized name" in out.stderr
    # A known name in TLS but an unknown Host header: dropped (444) or refused as misdirected (421).
    out = host.run(
        f"curl -sS --http1.1 --max-time 5 --cacert {ROOT} --resolve shop.test:443:127.0.0.1"
        " -H 'Host: evil.test' -o /dev/null -w '%{http_code}' https://shop.test/"
    )
    # Dropped: curl sees an empty reply (52) or a TLS stream cut without close_notify (56).
    dropped = out.stdout == "000" and out.rc in {52, 56}
    assert dropped or (out.rc, out.stdout) == (0, "421"), (out.rc, out.stdout, out.stderr)


def test_request_body_limit(host, trust):
    host.check_output("head -c 3000000 /dev/zero > /tmp/big && head -c 1000000 /dev/zero > /tmp/small")
    status, _, _ = request(host, app_url(host, "shop.test", "/upload"), f"--data-binary @/tmp/big {via_lb(host)}")
    assert status == 413
    status, _, _ = request(host, app_url(host, "shop.test", "/upload"), f"--data-binary @/tmp/small {via_lb(host)}")
    assert status == 200


def test_websocket_upgrade_is_proxied(host, trust):
    # Over TLS, or behind the load balancer in plain HTTP from it (its X-Forwarded-For).
    lb = behind_lb(host)
    script = f"""
import socket, ssl
ctx = ssl.create_default_context(cafile="{ROOT}")
with socket.create_connection(("127.0.0.1", {80 if lb else 443}), timeout=10) as raw:
    with (raw if {lb} else ctx.wrap_socket(raw, server_hostname="blog.test")) as s:
        s.sendall(b"GET /ws HTTP/1.1\\r\\nHost: blog.test\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
                  b"X-Forwarded-For: {CLIENT}\\r\\n"
                  b"Sec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n")
        f = s.makefile("rb")
        print(f.readline().decode().strip())
        while f.readline() not in (b"\\r\\n", b""):
            pass
        s.sendall(b"ping\\n")
        print(f.readline().decode().strip())
"""
    out = host.check_output(f"python3 - <<'EOF'\n{script}\nEOF").splitlines()
    assert out[0].startswith("HTTP/1.1 101")
    assert out[1] == "echo ping"


def test_second_converge_requested_no_certificate(host):
    only_with_tls(host)
    # Converge, idempotence and two check runs later, each app still has its first certificate only.
    for cert in CERTS:
        files = sorted(host.check_output(f"ls /etc/letsencrypt/archive/{cert}").split())
        assert files == ["cert1.pem", "chain1.pem", "fullchain1.pem", "privkey1.pem"]
    # No certificate of another name (e.g. one per domain).
    assert sorted(host.check_output("ls /etc/letsencrypt/live").split()) == sorted([*CERTS, "README"])


def test_each_app_has_its_live_colour_file_and_no_other(host):
    for app in SERVED.values():
        colour_dir = host.file(str(Path(app["live_colour_file"]).parent))
        assert colour_dir.is_directory
        assert colour_dir.mode == 0o755
        colour = host.file(app["live_colour_file"])
        assert colour.content_string == "blue\n"  # the role's safe default
        assert colour.mode == 0o644
    # An app without domains is not nginx's business.
    assert not host.file(str(Path(PLAN["jobs"]["live_colour_file"]).parent)).exists


# The nginx exporter (molecule.yml): Debian 13's on the host's network address with TLS (the test CA of
# prepare.yml) and basic auth, the node_exporter role's settings; Debian 12's (0.11: neither) on its
# default address, 127.0.0.1:9113, plain HTTP. nginx's stub_status is on 127.0.0.1:8080 on both.
EXPORTER_CA = "/etc/ssl/berth-exporter-test-ca.pem"
SCRAPE_USER, SCRAPE_PASSWORD = "prometheus", "berth-test-scrape-password"
STUB_STATUS = "127.0.0.1:8080"


def exporter_has_tls(host) -> bool:
    return "node_exporter_tls_cert" in HOST_VARS.get(host.backend.get_hostname(), {})


def exporter_address(host) -> str:
    return f"{network_address(host)}:9113" if exporter_has_tls(host) else "127.0.0.1:9113"


def scrape(host, credentials: str | None = f"{SCRAPE_USER}:{SCRAPE_PASSWORD}") -> tuple[str, str]:
    """HTTP status and body of a scrape of the exporter from the host, as Prometheus would do it."""
    if exporter_has_tls(host):
        name = host.backend.get_hostname()
        url = f"https://{name}:9113/metrics"
        options = f"--cacert {EXPORTER_CA} --resolve {name}:9113:{network_address(host)}"
        options += f" -u {credentials}" if credentials else ""
    else:
        url, options = "http://127.0.0.1:9113/metrics", ""
    out = host.run(f"curl -sS --max-time 10 -w '\\n%{{http_code}}' {options} {url}")
    assert out.rc == 0, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    return status, body


def metric(body: str, name: str) -> float:
    found = re.findall(rf"^{name} (\S+)$", body, re.M)
    assert len(found) == 1, f"{name} not exported once: {found}"
    return float(found[0])


def test_stub_status_is_served_on_loopback_to_loopback_only(host):
    listening = host.check_output("ss -Htln 'sport = :8080' | awk '{print $4}'").split()
    assert listening == [STUB_STATUS]
    answer = host.run(f"curl -sS --max-time 5 http://{STUB_STATUS}/stub_status")
    assert answer.rc == 0 and answer.stdout.startswith("Active connections:"), answer.stdout + answer.stderr
    # Only 127.0.0.1 may read it: another loopback source address is refused, other paths are not there.
    other = f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --interface 127.0.0.2 http://{STUB_STATUS}/stub_status"
    assert host.check_output(other) == "403"
    assert host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' http://{STUB_STATUS}/") == "404"
    # Not on the network address at all: nothing listens there (connection refused, curl exit 7).
    refused = host.run(f"curl -s -o /dev/null --max-time 5 http://{network_address(host)}:8080/stub_status")
    assert refused.rc == 7, f"expected connection refused, got curl exit {refused.rc}"


def test_exporter_listens_only_where_configured(host):
    service = host.service("prometheus-nginx-exporter")
    assert service.is_running and service.is_enabled
    assert host.check_output("systemctl show -p User --value prometheus-nginx-exporter") == "prometheus"
    listening = host.check_output("ss -Htln 'sport = :9113' | awk '{print $4}'").split()
    assert listening == [exporter_address(host)]
    args = host.file("/etc/default/prometheus-nginx-exporter").content_string
    assert f"--nginx.scrape-uri=http://{STUB_STATUS}/stub_status" in args
    assert f"--web.listen-address={exporter_address(host)}" in args


def test_exporter_reads_nginx(host):
    status, body = scrape(host)
    assert status == "200", body
    assert metric(body, "nginx_up") == 1
    accepted = metric(body, "nginx_connections_accepted")
    assert accepted > 0
    assert metric(body, "nginx_http_requests_total") > 0
    # The counters are nginx's own, read at each scrape: one more connection to nginx is counted.
    host.check_output(f"curl -sS -o /dev/null --max-time 5 http://{STUB_STATUS}/stub_status")
    _, again = scrape(host)
    assert metric(again, "nginx_connections_accepted") > accepted


def test_exporter_web_config_tls_and_basic_auth(host):
    directory = host.file("/etc/prometheus-nginx-exporter")
    if not exporter_has_tls(host):
        # Debian 12's exporter cannot serve TLS or basic auth: none configured, and no copy of the secrets.
        assert not directory.exists
        assert "--web.config.file" not in host.file("/etc/default/prometheus-nginx-exporter").content_string
        return
    assert (directory.user, directory.group, directory.mode) == ("root", "prometheus", 0o750)
    config = host.file("/etc/prometheus-nginx-exporter/web-config.yml")
    assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640)
    text = config.content_string
    assert SCRAPE_PASSWORD not in text and "berth-test-second-password" not in text
    assert set(re.findall(r'^\s+"(\w+)": "\$2b\$12\$[./A-Za-z0-9]{53}"$', text, re.M)) == {"prometheus", "ops"}
    key = host.file("/etc/prometheus-nginx-exporter/tls.key")
    assert (key.user, key.group, key.mode) == ("root", "prometheus", 0o640)
    assert "--web.config.file=/etc/prometheus-nginx-exporter/web-config.yml" in host.file(
        "/etc/default/prometheus-nginx-exporter"
    ).content_string
    assert scrape(host, "ops:berth-test-second-password")[0] == "200"
    assert scrape(host, f"{SCRAPE_USER}:wrong-password")[0] == "401"
    assert scrape(host, f"nobody:{SCRAPE_PASSWORD}")[0] == "401"
    assert scrape(host, None)[0] == "401"
    # TLS only: plain HTTP is answered 400; the certificate chains to the test CA and names the host.
    plain = f"curl -s -o /dev/null -w '%{{http_code}}' -u {SCRAPE_USER}:{SCRAPE_PASSWORD} http://{exporter_address(host)}/metrics"
    assert host.check_output(plain) == "400"


def test_exporter_reports_nginx_down(host):
    """nginx_up 0 while nginx is stopped (what BerthNginxDown fires on), 1 again once it is back."""
    host.check_output("systemctl stop nginx")
    try:
        status, body = scrape(host)
        assert status == "200" and metric(body, "nginx_up") == 0
    finally:
        host.check_output("systemctl start nginx")
    status, body = scrape(host)
    assert status == "200" and metric(body, "nginx_up") == 1


# mtail on nginx's access log: on 127.0.0.1:3903 (the role's default) on both hosts.
LOG_METRICS = "127.0.0.1:3903"
REQUESTS_RE = re.compile(r'^berth_nginx_http_requests_total\{app="([^"]+)",status="([^"]+)"\} (\S+)$', re.M)
DURATIONS_RE = re.compile(r'^berth_nginx_http_request_duration_seconds_count\{app="([^"]+)"\} (\S+)$', re.M)


def log_metrics(host) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    """mtail's request counts by (app, status class) and its duration histogram's count by app."""
    body = host.check_output(f"curl -sS --fail --max-time 5 http://{LOG_METRICS}/metrics")
    requests = {(app, status): float(value) for app, status, value in REQUESTS_RE.findall(body)}
    return requests, {app: float(value) for app, value in DURATIONS_RE.findall(body)}


def test_log_metrics_listen_on_loopback_only_by_default(host):
    assert host.service("mtail").is_enabled
    listening = host.check_output("ss -Htln 'sport = :3903' | awk '{print $4}'").split()
    assert listening == [LOG_METRICS]
    assert host.run(f"curl -sS --max-time 5 http://{network_address(host)}:3903/metrics").rc != 0


def test_log_metrics_count_each_apps_requests_by_status_class(host, trust):
    """Requests through nginx (stand-ins answer /berth-status/<code> with that code) show up in mtail's
    metrics as exactly these counts per app and status class, and in each app's duration histogram."""
    sent = {("shop", "2xx"): 3, ("shop", "5xx"): 2, ("shop", "4xx"): 1, ("blog", "2xx"): 1, ("blog", "5xx"): 4}
    paths = {"2xx": "/", "4xx": "/berth-status/404", "5xx": "/berth-status/500"}
    domain = {"shop": "www.shop.test", "blog": "blog.test"}
    before, durations_before = log_metrics(host)
    for (app, status_class), count in sent.items():
        for _ in range(count):
            status, _, _ = request(host, app_url(host, domain[app], paths[status_class]), via_lb(host))
            assert f"{str(status)[0]}xx" == status_class
    expected = {key: before.get(key, 0) + count for key, count in sent.items()}
    for _ in range(40):  # mtail reads the log every 250 ms
        after, durations = log_metrics(host)
        if {key: after.get(key, 0) for key in expected} == expected:
            break
        time.sleep(0.25)
    assert {key: after.get(key, 0) for key in expected} == expected
    # No other app or status class moved (3xx of shop, say).
    assert {key: value for key, value in after.items() if key not in expected} == {
        key: value for key, value in before.items() if key not in expected
    }
    for app in domain:
        total = sum(count for (name, _), count in sent.items() if name == app)
        assert durations[app] == durations_before.get(app, 0) + total


def served(host, name: str) -> tuple[str, str]:
    """The app and colour that answered a request for name."""
    status, _, body = request(host, app_url(host, name), via_lb(host))
    assert status == 200
    app = json.loads(body)
    return app["app"], app["colour"]


def colours_served(host) -> dict[str, str]:
    """The colour each name is served from, checking that each name reaches its own app."""
    found = {}
    for name, owner in OWNER.items():
        app, colour = served(host, name)
        assert app == owner, f"{name} reached {app}, not {owner}"
        found[name] = colour
    return found


def set_colour(host, app: str, content: str | None) -> None:
    """What the release role does: write a temporary file, then rename it over the app's live one."""
    path = PLAN[app]["live_colour_file"]
    if content is None:
        host.check_output(f"rm -f {path}")
    else:
        host.check_output(f"printf '{content}\\n' > {path}.tmp && mv -f {path}.tmp {path}")


def test_colour_switch_moves_one_apps_traffic_without_reload(host, trust):
    shop = PLAN["shop"]["domains"]
    blog = PLAN["blog"]["domains"]
    before = nginx_pids(host)
    try:
        assert set(colours_served(host).values()) == {"blue"}
        set_colour(host, "shop", "green")
        for _ in range(3):
            seen = colours_served(host)
            assert [seen[name] for name in shop] == ["green"] * len(shop)
            assert [seen[name] for name in blog] == ["blue"] * len(blog), "blog moved with shop"
        set_colour(host, "blog", "green")
        set_colour(host, "shop", "blue")
        seen = colours_served(host)
        assert [seen[name] for name in shop + blog] == ["blue"] * len(shop) + ["green"] * len(blog)
        # No file, or nonsense in it: the default colour (blue), for that app only.
        set_colour(host, "shop", "green")
        set_colour(host, "shop", None)
        seen = colours_served(host)
        assert [seen[name] for name in shop + blog] == ["blue"] * len(shop) + ["green"] * len(blog)
        set_colour(host, "shop", "purple")
        assert colours_served(host)["shop.test"] == "blue"
        set_colour(host, "shop", "")
        assert colours_served(host)["www.shop.test"] == "blue"
    finally:
        set_colour(host, "shop", "blue")
        set_colour(host, "blog", "blue")
    assert nginx_pids(host) == before, "nginx was reloaded or restarted"


def health(host, host_header: str | None = None, address: str = "127.0.0.1") -> tuple[int, dict[str, str], str]:
    """The load balancer's health check on port 80, with a Host header (an app's name, an address) or curl's."""
    header = f"-H 'Host: {host_header}'" if host_header else ""
    return request(host, f"http://{address}{HEALTH}", header, address=address)


# The load balancer may send an app's name, the host's address or anything as Host.
HEALTH_HOSTS = [*OWNER, None, "192.0.2.44", "lb-check.example"]


def test_health_url_answers_ok_on_port_80_for_every_name(host):
    for name in HEALTH_HOSTS:
        status, headers, body = health(host, name)
        assert (status, body) == (200, "ok\n"), name
        assert headers["content-type"] == "text/plain"
        assert "location" not in headers  # never redirected to HTTPS
    # Not logged; never rate-limited (a burst far past 20 r/s from a visitor's address), open to strangers.
    address = network_address(host)
    marker = f"health-{time.time_ns()}"
    urls = " ".join(f"-o /dev/null 'http://shop.test{HEALTH}?{marker}'" for _ in range(120))
    codes = host.check_output(f"curl -sS --max-time 60 --resolve shop.test:80:{address} -w '%{{http_code}}\\n' {urls}")
    assert set(codes.split()) == {"200"}
    assert not host.file("/var/log/nginx/access.log").contains(marker)


def run_drain(host, drain: bool, check: bool = False) -> str:
    """The role's entry point drain (molecule/default/drain.yml) on this host; its recap line."""
    name = host.backend.get_hostname()
    ansible_playbook = shutil.which("ansible-playbook")
    assert ansible_playbook, "ansible-playbook is not on PATH"
    cmd = [ansible_playbook, "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", name, str(SCENARIO / "drain.yml")]
    cmd += ["-e", json.dumps({"nginx_drain": drain, "nginx_drain_reason": "test"})] + (["--check"] if check else [])
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}  # a plain recap to read
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    recap = run.stdout[run.stdout.rindex("PLAY RECAP") :]
    # (the whole recap when the host's line is missing, for the failing assertion to show)
    return next((line for line in recap.splitlines() if line.strip().startswith(f"{name} ")), recap)


def test_drain_turns_the_health_url_to_503_without_reload_and_keeps_serving(host, trust):
    assert not host.file(DRAIN_FILE).exists
    before = nginx_pids(host)
    try:
        assert "changed=1 " in run_drain(host, True)
        # The very next health check says draining, whatever the Host header.
        for name in HEALTH_HOSTS:
            status, headers, body = health(host, name)
            assert (status, body) == (503, "draining\n"), name
            assert headers["content-type"] == "text/plain"
        content = host.file(DRAIN_FILE).content_string
        assert re.fullmatch(r"since: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\nreason: test\n", content), content
        assert host.file(DRAIN_FILE).mode == 0o644
        # Requests routed here meanwhile are served as before (each name reaches its own app).
        assert set(colours_served(host).values()) == {"blue"}
        # Draining again changes nothing (the drain keeps its start time); ending it in check mode neither.
        assert "changed=0 " in run_drain(host, True)
        assert host.file(DRAIN_FILE).content_string == content
        assert "changed=1 " in run_drain(host, False, check=True)
        assert health(host)[0] == 503
        assert "changed=1 " in run_drain(host, False)
        status, _, body = health(host)
        assert (status, body) == (200, "ok\n")
        assert "changed=0 " in run_drain(host, False)
    finally:
        host.run(f"rm -f {DRAIN_FILE}")
    # Draining and its end are one file: nginx was neither reloaded nor restarted.
    assert nginx_pids(host) == before, "nginx was reloaded or restarted"
    # The drain file by hand works the same (what the entry point does, for an operator).
    host.check_output(f"touch {DRAIN_FILE}")
    try:
        assert health(host, "blog.test")[0] == 503
    finally:
        host.check_output(f"rm -f {DRAIN_FILE}")
    assert health(host, "blog.test")[0] == 200


# Maintenance (the entry point maintenance through playbooks/maintenance.yml, as an operator runs it).
PLAYBOOKS = SCENARIO.parents[3] / "playbooks"
KEEPALIVE = SCENARIO.parents[3] / "tests" / "load" / "keepalive.py"
REMOTE_KEEPALIVE = "/usr/local/bin/berth-keepalive"
RETRY_AFTER = "300"  # nginx_maintenance_retry_after's default


def flag(app: str) -> str:
    return f"{PLAN[app]['state_dir']}/maintenance"


def run_maintenance(host, state: str, app: str = "shop", check: bool = False, rc: int = 0) -> str:
    """playbooks/maintenance.yml on this host; its recap line (or, when it must fail, its output)."""
    name = host.backend.get_hostname()
    ansible_playbook = shutil.which("ansible-playbook")
    assert ansible_playbook, "ansible-playbook is not on PATH"
    cmd = [ansible_playbook, "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", name,
           str(PLAYBOOKS / "maintenance.yml"), "-e", f"app={app}", "-e", f"maintenance={state}",
           "-e", "maintenance_why=test", "-e", "berth_operator=tester"] + (["--check", "--diff"] if check else [])
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}  # a plain recap to read
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert run.returncode == rc, run.stdout[-4000:] + run.stderr[-2000:]
    if rc:
        return run.stdout + run.stderr
    recap = run.stdout[run.stdout.rindex("PLAY RECAP") :]
    return next((line for line in recap.splitlines() if line.strip().startswith(f"{name} ")), recap)


def start_load(host, site: str, out: str, maintenance_ok: bool) -> str:
    """keepalive.py on the host, on site through nginx from loopback (the load balancer's address behind
    one: the client is then loopback, exempt from the rate limit); 2 connections, 20 requests/s. Its PID."""
    plain = "--plain --header 'X-Forwarded-Proto: https'" if behind_lb(host) else ""
    return host.check_output(
        f"nohup python3 {REMOTE_KEEPALIVE} --host {site} --address 127.0.0.1 {plain} --version-field app"
        f" {'--maintenance-ok' if maintenance_ok else ''} --connections 2 --rate 20 --duration 300 --out {out}"
        f" >{out}.log 2>&1 & echo $!"
    )


def stop_load(host, pid: str, out: str) -> dict:
    host.check_output(f"kill -INT {pid}")
    for _ in range(50):
        if host.file(out).exists:
            return json.loads(host.file(out).content_string)
        time.sleep(0.2)
    raise AssertionError(f"no summary in {out}: {host.run(f'cat {out}.log').stdout}")


def maintenance_page(host, name: str, options: str = "", address: str = "127.0.0.1") -> None:
    """name answers with the maintenance page: 503, Retry-After, HTML, the app's headers, never cached."""
    status, headers, body = request(host, app_url(host, name, "/any/path?q=1"), options, address=address)
    assert status == 503, (name, status, body[:200])
    assert headers["retry-after"] == RETRY_AFTER
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["strict-transport-security"] == "max-age=63072000"
    assert headers["x-frame-options"] == "SAMEORIGIN"
    assert "Down for maintenance" in body


def test_maintenance_under_load_without_reload_or_failed_request(host, trust):
    host.check_output(f"rm -f {flag('shop')} {flag('blog')} /tmp/maint-*.json")
    subprocess.run(["docker", "cp", str(KEEPALIVE), f"{host.backend.get_hostname()}:{REMOTE_KEEPALIVE}"], check=True)
    before = nginx_pids(host)
    errors_before, maintained_before = shop_5xx_and_maintenance(host)
    loads = {site: ("/tmp/maint-" + site + ".json") for site in ("shop.test", "blog.test")}
    pids = {site: start_load(host, site, out, site == "shop.test") for site, out in loads.items()}
    try:
        time.sleep(1)
        assert "changed=1 " in run_maintenance(host, "on")
        # The very next request of each of shop's names gets the page, whatever its method; blog is served.
        for name in PLAN["shop"]["domains"]:
            maintenance_page(host, name, via_lb(host))
        maintenance_page(host, "shop.test", f"{via_lb(host)} -X POST -d x=1")
        assert served(host, "blog.test") == ("blog", "blue")
        flag_text = host.file(flag("shop")).content_string
        content = json.loads(flag_text)
        assert content["who"] == "tester" and content["why"] == "test", content
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", content["since"]), content
        assert host.file(flag("shop")).mode == 0o644
        # Still working: the load balancer's health URL (the host is healthy: the load balancer keeps it and
        # passes the page on), and, on the host with TLS, the ACME path and the redirect to HTTPS.
        status, _, body = health(host, "shop.test")
        assert (status, body) == (200, "ok\n")
        if not behind_lb(host):
            assert request(host, "http://shop.test/.well-known/acme-challenge/nothing")[0] == 404
            assert request(host, "http://shop.test/x")[0] == 301
        # The host's own check through nginx (the release's after a switch) reaches the app, not the page;
        # the same header from anyone else does not (a stranger, or a client the load balancer names).
        argv = apps_filter.edge_check_argv(PLAN["shop"], "/", behind_lb(host))
        assert host.check_output(" ".join(f"'{arg}'" for arg in argv)) == "200"
        bypass = "-H 'X-Berth-Edge-Check: 1'"
        if behind_lb(host):
            maintenance_page(host, "shop.test", f"{via_lb(host)} {bypass}")
        else:
            maintenance_page(host, "shop.test", bypass, address=network_address(host))
        # On again: nothing changes (the first who, why and since stay); off in check mode changes nothing.
        assert "changed=0 " in run_maintenance(host, "on")
        assert host.file(flag("shop")).content_string == flag_text
        assert "changed=1 " in run_maintenance(host, "off", check=True)
        maintenance_page(host, "www.shop.test", via_lb(host))
        time.sleep(1)
        assert "changed=1 " in run_maintenance(host, "off")
        assert served(host, "shop.test") == ("shop", "blue")
        assert not host.file(flag("shop")).exists
        assert "changed=0 " in run_maintenance(host, "off")
        # On in check mode shows the flag it would write and writes nothing.
        assert "changed=1 " in run_maintenance(host, "on", check=True)
        assert not host.file(flag("shop")).exists
        time.sleep(1)
    finally:
        summaries = {site: stop_load(host, pids[site], out) for site, out in loads.items()}
        host.run(f"rm -f {flag('shop')}")
    # Every request had an answer: shop's from the app or the page (503 with Retry-After), blog's from blog.
    shop, blog = summaries["shop.test"], summaries["blog.test"]
    assert (shop["failed"], shop["errors"]) == (0, {}), shop["errors"]
    assert set(shop["versions"]) == {"shop", "maintenance"}, shop["versions"]
    assert min(shop["versions"].values()) >= 20, shop["versions"]
    assert (blog["failed"], set(blog["versions"])) == (0, {"blog"}), (blog["errors"], blog["versions"])
    assert nginx_pids(host) == before, "nginx was reloaded or restarted"
    # mtail counts the page apart from the app's 5xx (no BerthSiteErrors for a planned maintenance).
    for _ in range(40):  # mtail reads the log every 250 ms
        errors, maintained = shop_5xx_and_maintenance(host)
        if maintained >= maintained_before + shop["versions"]["maintenance"]:
            break
        time.sleep(0.25)
    assert maintained >= maintained_before + shop["versions"]["maintenance"], (maintained_before, maintained)
    assert errors == errors_before


def shop_5xx_and_maintenance(host) -> tuple[float, float]:
    """mtail's count of shop's 5xx answers, and of its maintenance pages."""
    body = host.check_output(f"curl -sS --fail --max-time 5 http://{LOG_METRICS}/metrics")
    found = re.search(r'^berth_nginx_maintenance_requests_total\{app="shop"\} (\S+)$', body, re.M)
    return log_metrics(host)[0].get(("shop", "5xx"), 0), float(found.group(1)) if found else 0


def test_maintenance_refuses_bad_input_before_any_change(host):
    out = run_maintenance(host, "maybe", rc=2)
    assert "Say -e maintenance=on (serve the maintenance page) or -e maintenance=off" in out
    out = run_maintenance(host, "on", app="jobs", rc=2)
    assert "app jobs has no domains: nginx serves nothing for it" in out
    assert "changed=0 " in out
    assert not host.file(flag("shop")).exists and not host.file(flag("jobs")).exists


def test_renewal_by_the_timer_service_is_served_without_restart(host, trust):
    only_with_tls(host)
    old = served_certificate(host, "shop.test").split("serial=")[1].strip()
    master, workers = nginx_pids(host)
    conf = "/etc/letsencrypt/renewal/shop.test.conf"
    # Make the certificate due (Pebble's last 5 years), then run exactly what certbot.timer starts.
    host.check_output(f"sed -i '1i renew_before_expiry = 1900 days' {conf}")
    try:
        started = time.monotonic()
        out = host.run("timeout 120 systemctl start certbot.service")
        elapsed = time.monotonic() - started
        assert out.rc == 0, host.run("journalctl -u certbot.service --no-pager -n 30").stdout
    finally:
        host.run(f"sed -i '/^renew_before_expiry = 1900 days$/d' {conf}")
    print(f"renewal through certbot.service took {elapsed:.1f} s")
    assert host.file("/etc/letsencrypt/archive/shop.test/cert2.pem").exists
    new = host.check_output("openssl x509 -noout -serial -in /etc/letsencrypt/live/shop.test/cert.pem")
    new = new.split("=")[1].strip()
    assert new != old
    # The deploy hook reloaded nginx (new workers, same master): the new certificate is served.
    assert served_certificate(host, "www.shop.test").split("serial=")[1].strip() == new
    new_master, new_workers = nginx_pids(host)
    assert new_master == master
    # (old workers may still be finishing: only ask for new ones)
    assert set(new_workers) - set(workers)


def test_logs_rotate_and_nginx_keeps_logging(host, trust):
    assert host.file("/etc/logrotate.d/nginx").contains("rotate 14")
    host.check_output("logrotate -f /etc/logrotate.d/nginx")
    assert host.file("/var/log/nginx/access.log.1").exists
    # nginx reopens its logs on USR1 asynchronously: allow it a few seconds.
    for attempt in range(20):
        request(host, app_url(host, "blog.test", f"/after-rotation-{attempt}"), via_lb(host))
        if host.file("/var/log/nginx/access.log").contains("GET /after-rotation-"):
            break
        time.sleep(0.25)
    assert host.file("/var/log/nginx/access.log").contains("GET /after-rotation-")


def test_sslyze_mozilla_intermediate(host, trust, tmp_path: Path):
    """sslyze from the controller against the host's address; only the certificate lifespan is relaxed."""
    only_with_tls(host)
    from sslyze.mozilla_tls_profile.tls_config_checker import MozillaTlsConfiguration, TlsConfigurationEnum

    intermediate = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    profile = intermediate.model_copy(update={"maximum_certificate_lifespan": PEBBLE_LIFESPAN_DAYS})
    (tmp_path / "profile.json").write_text(profile.model_dump_json())
    (tmp_path / "root.pem").write_text(host.file(ROOT).content_string)
    address = host.check_output("hostname -I").split()[0]
    sslyze = Path(sys.executable).parent / "sslyze"  # the controller's venv (scripts/requirements.txt)
    run = subprocess.run(
        [
            str(sslyze),
            f"--custom_tls_config={tmp_path / 'profile.json'}",
            f"--certinfo_ca_file={tmp_path / 'root.pem'}",
            f"shop.test:443{{{address}}}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "shop.test:443: OK - Compliant." in run.stdout, run.stdout[-3000:]


def burst_of_requests(host, address: str, options: str = "") -> list[str]:
    """150 requests on one keep-alive connection, far past 20 r/s with a burst of 40."""
    port = 80 if behind_lb(host) else 443
    urls = " ".join(f"-o /dev/null {app_url(host, 'shop.test', f'/r{i}')}" for i in range(150))
    out = host.check_output(
        f"curl -sS --max-time 60 --cacert {ROOT} --resolve shop.test:{port}:{address} {options}"
        f" -w '%{{http_code}}\\n' {urls}"
    )
    return out.split()


def test_rate_limit_per_ip(host, trust):
    if behind_lb(host):
        # Through the load balancer (loopback, which is exempt): the client it names is limited.
        codes = burst_of_requests(host, "127.0.0.1", via_lb(host))
    else:
        # From the host's own network address (not loopback, which is exempt): as a visitor would.
        codes = burst_of_requests(host, network_address(host))
    assert len(codes) == 150
    assert codes[0] == "200"
    assert codes.count("429") > 0
    assert set(codes) == {"200", "429"}


def test_the_hosts_own_checks_are_never_rate_limited(host, trust):
    # nginx_rate_limit_exempt (default: loopback): the release's smoke check must not get a 429.
    assert set(burst_of_requests(host, "127.0.0.1")) == {"200"}
