"""What a client, an attacker and the release logic observe on a host converged with the nginx role.

The host serves two apps of berth_apps (molecule.yml): shop (two domains, ports derived from its name)
and blog (one domain, ports from web.host_port); a third app without domains gets nothing. What nginx
should do for them is computed here with the same filter the role uses (plugins/filter/apps.py).
Certificates come from Pebble (a real ACME server) on the host's loopback; each colour of each app is a
stand-in that says which it is and echoes what nginx passed on (prepare.yml). Tests run in file order:
renewal and the rate limit last.
"""

from __future__ import annotations

import importlib.util
import json
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

BERTH_APPS = yaml.safe_load((SCENARIO / "molecule.yml").read_text())["provisioner"]["inventory"]["group_vars"]["all"][
    "berth_apps"
]
PLAN = {app["name"]: app for app in apps_filter.apps_plan(BERTH_APPS)}
SERVED = {name: app for name, app in PLAN.items() if app["domains"]}
# One certificate per app: named by its first domain, covering all of its domains.
CERTS = {app["domains"][0]: app["domains"] for app in SERVED.values()}
# Every name served, and the app it belongs to.
OWNER = {domain: name for name, app in SERVED.items() for domain in app["domains"]}
ROOT = "/tmp/pebble-root.pem"
# Pebble issues certificates valid for 5 years; sslyze's Mozilla profile allows 366 days.
PEBBLE_LIFESPAN_DAYS = 1826


@pytest.fixture
def trust(host) -> str:
    """Pebble's current issuing root (it changes on every Pebble start), for clients to trust."""
    host.check_output(f"curl -sS --fail --cacert /etc/pebble/ca.pem -o {ROOT} https://127.0.0.1:15000/roots/0")
    return ROOT


def request(host, url: str, options: str = "") -> tuple[int, dict[str, str], str]:
    """Status, headers and body of a request from the host itself, trusting only Pebble's root."""
    name = url.split("/")[2]
    port = 443 if url.startswith("https") else 80
    out = host.run(f"curl -sS -i --max-time 10 --cacert {ROOT} --resolve {name}:{port}:127.0.0.1 {options} '{url}'")
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


def test_responses_are_compressed(host, trust):
    _, headers, _ = request(host, "https://shop.test/", "--compressed")
    assert headers["content-encoding"] == "gzip"


def test_plain_http_redirects_except_the_acme_path(host):
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
    status, _, _ = request(host, "https://shop.test/upload", "--data-binary @/tmp/big")
    assert status == 413
    status, _, _ = request(host, "https://shop.test/upload", "--data-binary @/tmp/small")
    assert status == 200


def test_websocket_upgrade_is_proxied(host, trust):
    script = f"""
import socket, ssl
ctx = ssl.create_default_context(cafile="{ROOT}")
with socket.create_connection(("127.0.0.1", 443), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname="blog.test") as s:
        s.sendall(b"GET /ws HTTP/1.1\\r\\nHost: blog.test\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
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


def served(host, name: str) -> tuple[str, str]:
    """The app and colour that answered a request for name."""
    status, _, body = request(host, f"https://{name}/")
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


def test_renewal_by_the_timer_service_is_served_without_restart(host, trust):
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
        request(host, f"https://blog.test/after-rotation-{attempt}")
        if host.file("/var/log/nginx/access.log").contains("GET /after-rotation-"):
            break
        time.sleep(0.25)
    assert host.file("/var/log/nginx/access.log").contains("GET /after-rotation-")


def test_sslyze_mozilla_intermediate(host, trust, tmp_path: Path):
    """sslyze from the controller against the host's address; only the certificate lifespan is relaxed."""
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


def burst_of_requests(host, address: str) -> list[str]:
    """150 requests on one keep-alive connection, far past 20 r/s with a burst of 40."""
    urls = " ".join(f"-o /dev/null https://shop.test/r{i}" for i in range(150))
    out = host.check_output(
        f"curl -sS --max-time 60 --cacert {ROOT} --resolve shop.test:443:{address} -w '%{{http_code}}\\n' {urls}"
    )
    return out.split()


def test_rate_limit_per_ip(host, trust):
    # From the host's own network address (not loopback, which is exempt): as a visitor would.
    address = host.check_output("ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1")
    codes = burst_of_requests(host, address)
    assert len(codes) == 150
    assert codes[0] == "200"
    assert codes.count("429") > 0
    assert set(codes) == {"200", "429"}


def test_the_hosts_own_checks_are_never_rate_limited(host, trust):
    # nginx_rate_limit_exempt (default: loopback): the release's smoke check must not get a 429.
    assert set(burst_of_requests(host, "127.0.0.1")) == {"200"}
