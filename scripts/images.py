#!/usr/bin/env python3
"""Build the local test images: the test hosts, then the test kit that runs inside them.

No registry is needed. The test hosts, Debian 13 (trixie) and 12 (bookworm) with systemd, are made
with debootstrap and `docker import`. The kit (the demo app v1, v2 and a broken build, and stand-ins
for the official PostgreSQL and Redis images) is built FROM berth-test:trixie with `docker build`
(tests/demo_app, tests/images). Built images are cached twice: in the engine (skipped when the image
carries the current recipe hash) and as a gzip'd `docker save` under ~/.cache/berth/images (reloaded
in seconds on a fresh engine). The kit's archive is what the scenarios copy into a test host.

    scripts/images.py [--force] [trixie|bookworm|kit ...]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _lib import CACHE, ROOT, log, output, run

SUITES = ("trixie", "bookworm")
REPO = "berth-test"
# What a fresh Debian cloud image has that matters to Ansible: python3 and python3-apt (the cloud
# images ship unattended-upgrades, which needs it; apt's check mode needs it too).
PACKAGES = "python3,python3-apt,systemd,systemd-sysv,sudo,ca-certificates,iproute2,procps"
# Units that make no sense (or hang) in a container.
MASKED = (
    "getty.target",
    "console-getty.service",
    "systemd-logind.service",
    "systemd-remount-fs.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "dev-hugepages.mount",
    "systemd-firstboot.service",
)
LABEL = "berth.recipe"


def recipe_hash() -> str:
    """Changes whenever the recipe (packages, masked units, build steps) changes, so images rebuild."""
    recipe = PACKAGES + " ".join(MASKED) + inspect.getsource(debootstrap) + inspect.getsource(build)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def tag(suite: str) -> str:
    return f"{REPO}:{suite}"


def image_recipe(suite: str) -> str:
    return output(["docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{LABEL}"}}}}', tag(suite)])


def tarball(suite: str) -> Path:
    return CACHE / "images" / f"{REPO}-{suite}-{recipe_hash()}.tar.gz"


def debootstrap(suite: str, rootfs: Path) -> None:
    # No mirror argument: debootstrap's own default, so no host name lives in this repository.
    run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", suite, str(rootfs)], stdout=subprocess.DEVNULL)
    for leftover in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for entry in (rootfs / leftover).glob("*"):
            if entry.is_file():
                entry.unlink()
    (rootfs / "etc/machine-id").write_text("")
    for unit in MASKED:
        link = rootfs / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


def build(suite: str) -> None:
    with tempfile.TemporaryDirectory(prefix=f"berth-{suite}-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        debootstrap(suite, rootfs)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run(
            [
                "docker",
                "import",
                "--change",
                "ENV container=docker",
                "--change",
                f"LABEL {LABEL}={recipe_hash()}",
                "--change",
                'CMD ["/lib/systemd/systemd"]',
                "-",
                tag(suite),
            ],
            stdin=tar.stdout,
            stdout=subprocess.DEVNULL,
        )
        tar.wait()


def save(suite: str) -> None:
    path = tarball(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f"{REPO}-{suite}-*.tar.gz"):
        old.unlink()
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        save_proc = subprocess.Popen(["docker", "save", tag(suite)], stdout=subprocess.PIPE)
        run(["gzip", "-1"], stdin=save_proc.stdout, stdout=out, quiet=True)
        if save_proc.wait() != 0:
            sys.exit(f"berth: docker save {tag(suite)} failed")
    partial.rename(path)


def ensure(suite: str, *, force: bool = False) -> str:
    """Make sure the image for `suite` exists with the current recipe; say how it was obtained."""
    if not force and image_recipe(suite) == recipe_hash():
        return "present"
    path = tarball(suite)
    if not force and path.exists():
        with path.open("rb") as src:
            run(["docker", "load", "-q"], stdin=src, stdout=subprocess.DEVNULL)
        if image_recipe(suite) == recipe_hash():
            return "loaded from cache"
    if shutil.which("debootstrap") is None:
        sys.exit("berth: debootstrap is missing; run scripts/setup.py first")
    build(suite)
    save(suite)
    return "built"


# The test kit: images for the inner Docker engine of a test host, built FROM the trixie test image.
# tag -> (build context below the project root, build arguments)
KIT: dict[str, tuple[str, dict[str, str]]] = {
    "berth-demo-app:v1": ("tests/demo_app", {"APP_VERSION": "v1"}),
    "berth-demo-app:v2": ("tests/demo_app", {"APP_VERSION": "v2"}),
    "berth-demo-app:broken": ("tests/demo_app", {"APP_VERSION": "broken", "APP_BROKEN": "1"}),
    "berth-demo-app:bad-migration": ("tests/demo_app", {"APP_VERSION": "bad-migration", "APP_MIGRATION_BROKEN": "1"}),
    "berth-standin/postgres:17": ("tests/images/postgres", {}),
    "berth-standin/redis:8": ("tests/images/redis", {}),
}
KIT_BASE = "trixie"


def kit_hash() -> str:
    """Changes with the base image's recipe, the kit's definition or a build context's files (not docs)."""
    h = hashlib.sha256(f"{recipe_hash()} {sorted(KIT.items())}".encode())
    for context in sorted({context for context, _ in KIT.values()}):
        for path in sorted((ROOT / context).rglob("*")):
            if path.is_file() and path.suffix != ".md" and "__pycache__" not in path.parts:
                h.update(f"{path.relative_to(ROOT)}\0".encode() + path.read_bytes())
    return h.hexdigest()[:16]


def kit_tarball() -> Path:
    return CACHE / "images" / f"berth-kit-{kit_hash()}.tar.gz"


def kit_current() -> bool:
    return all(
        output(["docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{LABEL}"}}}}', name]) == kit_hash()
        for name in KIT
    )


def build_kit() -> None:
    for name, (context, build_args) in KIT.items():
        cmd = ["docker", "build", "-q", "--pull=false", "--label", f"{LABEL}={kit_hash()}", "-t", name]
        for key, value in build_args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        # The classic builder: the same on every engine version, and its layer cache shares the demo
        # app's package layer between its builds.
        run([*cmd, str(ROOT / context)], env={**os.environ, "DOCKER_BUILDKIT": "0"}, stdout=subprocess.DEVNULL)


def save_kit() -> None:
    """One archive for the whole kit: the images share the base layers, which are stored once."""
    path = kit_tarball()
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("berth-kit-*.tar.gz"):
        old.unlink()
    partial = path.with_suffix(".partial")
    with partial.open("wb") as out:
        save_proc = subprocess.Popen(["docker", "save", *KIT], stdout=subprocess.PIPE)
        run(["gzip", "-1"], stdin=save_proc.stdout, stdout=out, quiet=True)
        if save_proc.wait() != 0:
            sys.exit("berth: docker save of the kit failed")
    partial.rename(path)


def ensure_kit(*, force: bool = False) -> str:
    """Make sure the kit's images exist with the current recipe and its archive is cached."""
    path = kit_tarball()
    if not force and kit_current() and path.exists():
        return "present"
    if not force and path.exists():
        with path.open("rb") as src:
            run(["docker", "load", "-q"], stdin=src, stdout=subprocess.DEVNULL)
        if kit_current():
            return "loaded from cache"
    if not force and kit_current():
        save_kit()
        return "present (archive saved)"
    ensure(KIT_BASE)
    build_kit()
    save_kit()
    return "built"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "groups", nargs="*", metavar="IMAGE", help=f"one of {', '.join(SUITES)}, kit (default: all, kit last)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args()
    chosen = args.groups or [*SUITES, "kit"]
    unknown = set(chosen) - {*SUITES, "kit"}
    if unknown:
        parser.error(f"unknown image(s): {', '.join(sorted(unknown))}")
    suites = [suite for suite in chosen if suite in SUITES]
    # The suites build in parallel: debootstrap spends most of its time waiting on downloads.
    with ThreadPoolExecutor() as pool:
        outcomes = pool.map(lambda suite: (suite, ensure(suite, force=args.force)), suites)
        for suite, outcome in outcomes:
            log(f"image {tag(suite)}: {outcome}")
    # The kit is built FROM a test-host image, so after them.
    if "kit" in chosen:
        log(f"kit {', '.join(KIT)}: {ensure_kit(force=args.force)} ({kit_tarball()})")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    main()
