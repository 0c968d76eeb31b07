#!/usr/bin/python3
"""Ansible module (runs on the host): take the release lock and read what the release needs to know.

One module instead of four tasks (mkdir, two slurps, docker_host_info) because every task is a round
trip to the host, and a rollback to a warm colour has to switch within seconds (docs/performance.md).
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_host
short_description: Take the release lock; read the release state, the live colour and the colours' containers
description:
  - Creates O(lock_dir) (mkdir is atomic: the run that creates it holds the lock). When it exists
    already (another release holds it), fails at once with RV(lock_held); the task retries (until/
    retries), so the wait shows in Ansible's output. Not taken in check mode. If reading fails after
    the lock was taken, the lock is given back before the module fails.
  - Then reads the release state file (JSON), the live colour file and the colours' images from the
    stack's .env (only the C(APP_BLUE_IMAGE) and C(APP_GREEN_IMAGE) lines), and inspects the compose
    project's C(app-blue) and C(app-green) containers with the docker CLI.
  - Changes nothing but the lock, so it reports C(changed=false).
options:
  lock_dir:
    description: The lock directory. Its parent must exist (C(/run/lock)).
    type: path
    required: true
  state_file:
    description: The release state file (JSON), absent before the first release.
    type: path
    required: true
  live_colour_file:
    description: The file nginx reads the live colour from.
    type: path
    required: true
  env_file:
    description: The compose stack's .env.
    type: path
    required: true
  project:
    description: The compose project name (the app's name).
    type: str
    required: true
"""

RETURN = r"""
locked:
  description: Whether this run took the lock (and must give it back).
  type: bool
  returned: always
lock_held:
  description: True when the module failed because another release holds the lock.
  type: bool
  returned: failure
state:
  description: The parsed state file, or null before the first release.
  type: dict
  returned: success
live_colour:
  description: The live colour file's content, stripped, or an empty string when it does not exist.
  type: str
  returned: success
env_found:
  description: Whether the stack's .env exists.
  type: bool
  returned: success
env_images:
  description: Colour to image, from .env (empty when .env does not exist).
  type: dict
  returned: success
containers:
  description:
    - Colour to its container's C(State) (running, exited, ...), C(Image) (the reference it was created
      from) and C(ImageID).
  type: dict
  returned: success
"""

import json  # noqa: E402 - after the documentation, as Ansible expects
import re  # noqa: E402
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

COLOURS = ("blue", "green")


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def env_images(text: str) -> dict[str, str]:
    """APP_BLUE_IMAGE / APP_GREEN_IMAGE from .env text; nothing else is read or returned."""
    images = {}
    for colour in COLOURS:
        found = re.search(rf"(?m)^APP_{colour.upper()}_IMAGE=(.*)$", text)
        images[colour] = found.group(1).strip() if found else ""
    return images


def containers(module: AnsibleModule, project: str) -> dict[str, dict[str, str]]:
    """The project's app-blue / app-green containers, from docker ps + docker inspect."""
    docker = module.get_bin_path("docker")
    if docker is None:  # no engine yet (check mode on a fresh host): no containers
        return {}
    label = f"label=com.docker.compose.project={project}"
    rc, out, err = module.run_command([docker, "ps", "--all", "--quiet", "--no-trunc", "--filter", label])
    if rc != 0:
        raise RuntimeError(f"docker ps failed: {err.strip()}")
    ids = out.split()
    if not ids:
        return {}
    rc, out, err = module.run_command([docker, "inspect", "--type", "container", *ids])
    if rc != 0:
        raise RuntimeError(f"docker inspect failed: {err.strip()}")
    found = {}
    for item in json.loads(out):
        service = item["Config"]["Labels"].get("com.docker.compose.service", "")
        colour = service.removeprefix("app-")
        if service.startswith("app-") and colour in COLOURS:
            found[colour] = {
                "State": item["State"]["Status"],
                "Image": item["Config"]["Image"],
                "ImageID": item["Image"],
            }
    return found


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "lock_dir": {"type": "path", "required": True},
            "state_file": {"type": "path", "required": True},
            "live_colour_file": {"type": "path", "required": True},
            "env_file": {"type": "path", "required": True},
            "project": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    lock, locked = Path(params["lock_dir"]), False
    if not module.check_mode:
        try:
            lock.mkdir(0o700)
            locked = True
        except FileExistsError:
            module.fail_json(msg=f"another release holds {params['lock_dir']}", lock_held=True, locked=False)
        except OSError as error:
            module.fail_json(msg=f"cannot create the lock {params['lock_dir']}: {error}", locked=False)
    try:
        state_text = read_text(params["state_file"])
        env_text = read_text(params["env_file"])
        try:
            state = json.loads(state_text) if state_text is not None else None
        except ValueError as error:
            raise ValueError(f"{params['state_file']} is not JSON ({error})") from error
        result = {
            "state": state,
            "live_colour": (read_text(params["live_colour_file"]) or "").strip(),
            "env_found": env_text is not None,
            "env_images": env_images(env_text) if env_text is not None else {},
            "containers": containers(module, params["project"]),
        }
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        if locked:
            lock.rmdir()
        module.fail_json(msg=str(error), locked=False)
    module.exit_json(changed=False, locked=locked, **result)


if __name__ == "__main__":
    main()
