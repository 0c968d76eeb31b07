#!/usr/bin/python3
"""Write the expiry time of each certbot certificate for node_exporter's textfile collector.

For every <live dir>/<name>/cert.pem:
    berth_tls_certificate_not_after_timestamp_seconds{domain="<name>"} <Unix time of notAfter>
The output file is replaced atomically (temporary file in the same directory, then rename), so the
collector never reads half a file. Installed by berth's node_exporter role, run by berth-tls-metrics.timer.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

METRIC = "berth_tls_certificate_not_after_timestamp_seconds"
HELP = f"# HELP {METRIC} Expiry time (notAfter) of the certificate served for a domain, in Unix seconds."


def not_after(cert_file: Path) -> float:
    """notAfter of a PEM certificate as Unix time."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    when: datetime | None = getattr(cert, "not_valid_after_utc", None)
    if when is None:  # cryptography before 42 (Debian 12): a naive datetime in UTC
        when = cert.not_valid_after.replace(tzinfo=UTC)
    return when.timestamp()


def label_value(text: str) -> str:
    """Escape a label value for the Prometheus text format."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def collect(live_dir: Path) -> tuple[dict[str, float], list[str]]:
    """notAfter per certificate name, and the errors of certificates that could not be read."""
    found: dict[str, float] = {}
    errors: list[str] = []
    for cert_file in sorted(live_dir.glob("*/cert.pem")):
        name = cert_file.parent.name
        try:
            found[name] = not_after(cert_file)
        except (OSError, ValueError) as error:
            errors.append(f"{cert_file}: {error}")
    return found, errors


def render(found: dict[str, float]) -> str:
    lines = [HELP, f"# TYPE {METRIC} gauge"]
    lines += [f'{METRIC}{{domain="{label_value(name)}"}} {found[name]:.0f}' for name in sorted(found)]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace path with text; the temporary name does not end in .prom, so the collector skips it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        Path(temporary).chmod(0o644)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live-dir", type=Path, default=Path("/etc/letsencrypt/live"))
    parser.add_argument("--output", type=Path, required=True, help="the .prom file to write")
    args = parser.parse_args(argv)
    found, errors = collect(args.live_dir)
    write_atomically(args.output, render(found))
    for error in errors:
        print(f"cannot read a certificate: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
