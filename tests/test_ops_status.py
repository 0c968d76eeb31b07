"""The status module of role ops (roles/ops/library/berth_status.py): its parsers, and the module run as
Ansible runs it on a directory tree made here (state files, audit log, lock, maintenance flag, backup
metrics, a real certificate made with openssl). Its run on a real host: the release scenario's test_ops.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, load_module

STATUS = load_module("berth_status", "roles/ops/library/berth_status.py")
PLAN = load_module("berth_apps_filters", "plugins/filter/apps.py").apps_plan
FILTERS = load_module("ops_filters", "roles/ops/filter_plugins/ops.py")
PYTHON = ROOT / ".venv" / "bin" / "python"

PROM = """\
# HELP berth_backup_last_success_timestamp_seconds Unix time of the app's last successful backup.
# TYPE berth_backup_last_success_timestamp_seconds gauge
berth_backup_last_success_timestamp_seconds{app="shop",repository="local"} 1000
berth_backup_last_success_timestamp_seconds{app="blog",repository="local"} 0
berth_backup_last_run_success{app="shop",repository="local"} 1
berth_backup_last_run_success{app="blog",repository="local"} 0
berth_backup_restore_test_last_success_timestamp_seconds{app="shop",repository="local"} 900
berth_backup_restore_test_last_run_success{app="shop",repository="local"} 0
"""


def test_backup_metrics_per_app_and_repository() -> None:
    samples = STATUS.parse_prom(PROM)
    assert STATUS.backup_results(samples, "berth_backup", now=1600) == [
        {"app": "blog", "repository": "local", "last_success": 0, "age_seconds": None, "ok": False},
        {"app": "shop", "repository": "local", "last_success": 1000, "age_seconds": 600, "ok": True},
    ]
    # the restore test's series are not the backup's (their names share the prefix)
    assert STATUS.backup_results(samples, "berth_backup_restore_test", now=1600) == [
        {"app": "shop", "repository": "local", "last_success": 900, "age_seconds": 700, "ok": False},
    ]
    assert STATUS.backup_results(STATUS.parse_prom("garbage\nx{app=\"a\"} notanumber\n"), "berth_backup", 0) == []


def test_compose_containers_leave_one_off_containers_out() -> None:
    out = "shop\tweb-blue\tFalse\trunning\nshop\tworker-default-blue\tFalse\trunning\n" \
          "shop\tworker-default-blue\tFalse\texited\nshop\tweb-blue\tTrue\trunning\nbad line\n"
    assert STATUS.compose_containers(out) == {
        ("shop", "web-blue"): ["running"],
        ("shop", "worker-default-blue"): ["running", "exited"],
    }


def test_last_ok_release_of_each_app() -> None:
    lines = [
        json.dumps({"app": "shop", "result": "ok", "version": "v1", "who": "ann"}),
        "not json",
        json.dumps({"app": "shop", "result": "ok", "version": "v2"}),
        json.dumps({"app": "shop", "result": "failed", "version": "v3", "who": "bob"}),
        json.dumps({"app": "blog", "result": "ok", "version": "v1", "who": "cy"}),
    ]
    found = STATUS.last_ok_releases(lines)
    assert found["shop"]["version"] == "v2" and found["blog"]["who"] == "cy"


def test_tail_lines_drops_the_partial_first_line(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    assert STATUS.tail_lines(log, size=30)[-1] == "line 99"
    assert all(line.startswith("line ") and len(line) == 7 for line in STATUS.tail_lines(log, size=30))
    assert STATUS.tail_lines(tmp_path / "missing") == []


def test_memory_and_openssl_parsing() -> None:
    memory = STATUS.memory_status("MemTotal:  2000 kB\nMemFree: 100 kB\nMemAvailable:  500 kB\n")
    assert memory == {"total": 2048000, "available": 512000, "available_percent": 25.0}
    text = ("notAfter=Feb  3 10:00:00 2027 GMT\n"
            "X509v3 Subject Alternative Name: \n    DNS:shop.test, DNS:www.shop.test\n")
    not_after, domains = STATUS.openssl_certificate(text)
    assert STATUS.iso(not_after) == "2027-02-03T10:00:00Z" and domains == ["shop.test", "www.shop.test"]
    with pytest.raises(ValueError):
        STATUS.openssl_certificate("no date here")


def make_tree(tmp_path: Path) -> tuple[list[dict], dict]:
    """Two apps as berth_apps_plan describes them, under tmp_path instead of /var/lib/berth and /run/lock."""
    apps = FILTERS.status_apps(PLAN([
        {"name": "shop", "image": "shop:v1", "domains": ["shop.test"],
         "workers": [{"name": "default", "command": ["w"], "replicas": 2}], "env": {"SECRET": "no"}},
        {"name": "blog", "image": "blog:v1"},
    ]))
    for app in apps:
        for key in ("state_dir", "lock_dir"):
            app[key] = str(tmp_path / app["name"] / key)
        app["state_file"] = f"{app['state_dir']}/release.json"
        app["live_colour_file"] = f"{app['state_dir']}/live-colour"
        Path(app["state_dir"]).mkdir(parents=True)
    shop, blog = apps
    Path(shop["live_colour_file"]).write_text("green\n")
    Path(shop["state_file"]).write_text(json.dumps({
        "app": "shop",
        "live": {"version": "v2", "image": "shop:v2", "colour": "green", "action": "deploy",
                 "at": "2026-11-27T14:03:11Z"},
        "releases": [{"version": "v2", "image": "shop:v2"}, {"version": "v1", "image": "shop:v1"}],
    }))
    Path(shop["lock_dir"]).mkdir()
    Path(shop["lock_dir"], "holder.json").write_text(json.dumps(
        {"who": "ann", "why": "db upgrade", "kind": "hold", "since": "2026-11-27T14:00:00Z",
         "until": "2000-01-01T00:00:00Z", "version": ""}))
    Path(shop["state_dir"], "maintenance").write_text(
        '{"who": "bob", "why": "moving", "since": "2026-11-27T14:01:00Z"}')
    Path(blog["lock_dir"]).mkdir()  # a lock without holder.json
    Path(blog["state_dir"], "maintenance").write_text("{}")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    backup, restore_test = PROM.split("berth_backup_restore_test_last_success", 1)
    (metrics / "berth_backup.prom").write_text(backup)
    (metrics / "berth_backup_restore_test.prom").write_text("berth_backup_restore_test_last_success" + restore_test)
    certs = tmp_path / "live" / "shop.test"
    certs.mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(certs / "privkey.pem"), "-out", str(certs / "cert.pem"), "-days", "30",
                    "-subj", "/CN=shop.test", "-addext", "subjectAltName=DNS:shop.test,DNS:www.shop.test"],
                   check=True, capture_output=True)
    (tmp_path / "live" / "broken.test").mkdir()
    (tmp_path / "live" / "broken.test" / "cert.pem").write_text("not a certificate")
    audit = tmp_path / "release.log"
    audit.write_text(json.dumps({"app": "shop", "result": "ok", "version": "v2", "who": "carl"}) + "\n")
    args = {"apps": apps, "audit_log": str(audit), "metrics_dir": str(metrics),
            "certificates_dir": str(tmp_path / "live"), "disk_paths": ["/", str(tmp_path / "nowhere")]}
    return apps, args


def run_module(tmp_path: Path, args: dict, check: bool) -> dict:
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check}}))
    # docker is not needed here: without it the module says so and reports the rest
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "openssl").exists():
        (bin_dir / "openssl").symlink_to(shutil.which("openssl"))
    proc = subprocess.run([PYTHON, ROOT / "roles/ops/library/berth_status.py", args_file], capture_output=True,
                          text=True, check=False, env={"PATH": str(bin_dir)})
    return json.loads(proc.stdout)


def files(tmp_path: Path) -> list[tuple[Path, float]]:
    """Every file of the tree with its modification time (but the test's own: arguments, PATH)."""
    return sorted((p, p.stat().st_mtime) for p in tmp_path.rglob("*") if p.name not in ("args.json", "bin", "openssl"))


@pytest.mark.parametrize("check", [False, True], ids=["run", "check mode"])
def test_the_module_reads_a_host(tmp_path: Path, check: bool) -> None:
    _, args = make_tree(tmp_path)
    before = files(tmp_path)
    result = run_module(tmp_path, args, check)
    assert not result.get("failed") and result["changed"] is False, result
    assert files(tmp_path) == before  # nothing written
    shop, blog = result["apps"]
    assert shop["live"] == {"colour": "green", "version": "v2", "image": "shop:v2", "since": "2026-11-27T14:03:11Z",
                            "action": "deploy", "who": "carl"}
    assert shop["previous"] == {"version": "v1", "image": "shop:v1"} and shop["releases"] == ["v2", "v1"]
    assert shop["workers"] == [{"name": "default", "service": "worker-default-green", "running": 0, "total": 2,
                                "containers": 0, "states": []}]
    assert shop["lock"] == {"known": True, "who": "ann", "why": "db upgrade", "kind": "hold",
                            "since": "2026-11-27T14:00:00Z", "until": "2000-01-01T00:00:00Z", "version": "",
                            "expired": True}
    assert shop["maintenance"] == {"who": "bob", "why": "moving", "since": "2026-11-27T14:01:00Z"}
    assert blog["deployed"] is False and blog["live"]["colour"] == "" and blog["previous"] is None
    assert blog["lock"]["known"] is False and blog["lock"]["since"]
    assert blog["maintenance"] == {"who": "", "why": "", "since": ""}
    host = result["host"]
    assert [d["path"] for d in host["disks"]] == ["/"] and 0 < host["disks"][0]["free"] <= host["disks"][0]["total"]
    assert host["memory"]["total"] > 0 and "docker" in host["docker"]  # (no docker on this PATH)
    assert host["backups"][1]["app"] == "shop" and host["backups"][1]["ok"] is True
    assert [(t["app"], t["ok"]) for t in host["restore_tests"]] == [("shop", False)]
    broken, cert = host["certificates"]
    assert broken["name"] == "broken.test" and broken["error"] and broken["days_left"] is None
    assert cert["domains"] == ["shop.test", "www.shop.test"] and 29.9 < cert["days_left"] <= 30
    pem = str(tmp_path / "live/shop.test/cert.pem")
    expected = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", pem],
                              check=True, capture_output=True, text=True).stdout
    assert STATUS.iso(STATUS.openssl_certificate(expected)[0]) == cert["not_after"]
    assert "SECRET" not in json.dumps(result)


def test_the_openssl_path_reads_the_same_certificate(tmp_path: Path) -> None:
    # The host may lack the cryptography package: then openssl is asked, with the same answer.
    make_tree(tmp_path)

    def run(argv: list[str]) -> tuple[int, str, str]:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    text = run(["openssl", "x509", "-noout", "-enddate", "-ext", "subjectAltName", "-in",
                str(tmp_path / "live/shop.test/cert.pem")])[1]
    via_openssl = STATUS.openssl_certificate(text)
    via_module = STATUS.read_certificate(str(tmp_path / "live/shop.test/cert.pem"), run)
    assert via_openssl == (int(via_module[0]), via_module[1])
    assert abs(via_openssl[0] - time.time() - 30 * 86400) < 120


def test_the_status_renders_as_text(tmp_path: Path) -> None:
    _, args = make_tree(tmp_path)
    text = FILTERS.render_status({"web-1": run_module(tmp_path, args, False),
                                  "web-2": {"failed": True, "msg": "unreachable"}})
    assert "  shop: live green v2 since 2026-11-27T14:03:11Z (deploy) by carl; previous v1" in text
    assert "    worker default: 0/2 running" in text
    assert ("    lock: HOLD by ann since 2026-11-27T14:00:00Z, why: db upgrade, until 2000-01-01T00:00:00Z (EXPIRED)"
            in text)
    assert "    maintenance: ON (who bob, since 2026-11-27T14:01:00Z, why: moving)" in text
    assert "  blog: not set up on this host" in text and "lock: HELD by an unknown holder" in text
    assert "  backup shop (local): last success " in text and "days ago, last run ok" in text
    assert "  backup blog (local): last success never, last run FAILED" in text
    assert "  restore test shop (local): last success " in text and "days ago, last run FAILED" in text
    assert "certificate shop.test, www.shop.test: expires" in text and "certificate broken.test: unreadable" in text
    assert "web-2: status could not be read: unreachable" in text
    assert text.index("web-1") < text.index("web-2")
