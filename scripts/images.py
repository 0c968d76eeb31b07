#!/usr/bin/env python3
"""Build the local test-host images: Debian 13 (trixie) and 12 (bookworm) with systemd.

No registry is needed: each image is made with debootstrap and `docker import`. Built images are
cached twice: in the engine (skipped when the image carries the current recipe hash) and as a
gzip'd `docker save` under ~/.cache/berth/images (reloaded in seconds on a fresh engine).

    scripts/images.py [--force] [trixie|bookworm ...]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"one of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args()
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
    # The suites build in parallel: debootstrap spends most of its time waiting on downloads.
    with ThreadPoolExecutor() as pool:
        outcomes = pool.map(lambda suite: (suite, ensure(suite, force=args.force)), args.suites or SUITES)
        for suite, outcome in outcomes:
            log(f"image {tag(suite)}: {outcome}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    main()
