#!/usr/bin/python3
"""Test stand-in for a team's mail: an SMTP server on 127.0.0.1:2525 (Debian's python3-aiosmtpd) that
appends each message, with the time it arrived, as one JSON line to /var/lib/berth-test-sinks/mail.jsonl."""

import json
import signal
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

PATH = Path("/var/lib/berth-test-sinks/mail.jsonl")


class Sink:
    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        record = {
            "received": time.time(),
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "message": envelope.content.decode("utf-8", "replace"),
        }
        with PATH.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        return "250 OK"


# Blocked before the server thread starts (it inherits the mask): the main thread waits for them.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
controller = Controller(Sink(), hostname="127.0.0.1", port=2525)
controller.start()
signal.sigwait({signal.SIGTERM, signal.SIGINT})
controller.stop()
