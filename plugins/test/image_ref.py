"""Jinja test `berth_image_ref`: a Docker image reference, [registry[:port]/]path[:tag][@sha256:digest], as the
distribution/reference grammar has it (the path's components lower case).

    app_stack_postgres_image is berth_image_ref
"""

from __future__ import annotations

import re

_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REF = re.compile(
    rf"^(?:{_DOMAIN})?{_PATH}(?:/{_PATH})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?\Z"
)


def image_ref(value: object) -> bool:
    return isinstance(value, str) and bool(IMAGE_REF.match(value))


class TestModule:
    def tests(self) -> dict:
        return {"berth_image_ref": image_ref}
