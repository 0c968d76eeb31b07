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
  - Creates O(lock_dir) (mkdir is atomic; the run that creates it holds the lock). When it exists
    already (another release holds it), fails at once with RV(lock_held); the task retries (until/
    retries), so the wait shows in Ansible's output. Not taken in check mode. If reading fails after
    the lock was taken, the lock is given back before the module fails.
  - Then reads the app's release state file (JSON), its live colour file and the colours' images from
    its compose project's .env (only the C(BLUE_IMAGE) and C(GREEN_IMAGE) lines), and inspects the
    host's containers with the docker CLI (the state of the app's services of each colour, and every
    image a container of any project uses).
  - Also reads the other apps' state files, so that the images they still need (their colours and retained
    releases) are never pruned by this app's release, even when the apps share an image.
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
  colour_services:
    description:
      - The app's services of each colour, C(blue) and C(green), each a list whose first item is the web
        service (C(web-blue)) and the rest its workers (C(worker-default-blue)).
    type: dict
    required: true
  other_state_files:
    description: The release state files of the host's other apps (missing ones are skipped).
    type: list
    elements: path
    default: []
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
    - Colour to its web container's C(State) (running, exited, ...), C(Image) (the reference it was
      created from) and C(ImageID). One-off containers (C(docker compose run)) are left out.
  type: dict
  returned: success
running:
  description: Colour to the app's services of that colour with at least one running container.
  type: dict
  returned: success
images_in_use:
  description:
    - Image references that must stay on the host, sorted - the images of every container on the host (any
      project, any state) and those the other apps' state files name.
  type: list
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
    """BLUE_IMAGE / GREEN_IMAGE from .env text; nothing else is read or returned."""
    images = {}
    for colour in COLOURS:
        found = re.search(rf"(?m)^{colour.upper()}_IMAGE=(.*)$", text)
        images[colour] = found.group(1).strip() if found else ""
    return images


def inspect_all(module: AnsibleModule) -> list[dict]:
    """docker inspect of every container on the host (one docker ps, one docker inspect)."""
    docker = module.get_bin_path("docker")
    if docker is None:  # no engine yet (check mode on a fresh host): no containers
        return []
    rc, out, err = module.run_command([docker, "ps", "--all", "--quiet", "--no-trunc"])
    if rc != 0:
        raise RuntimeError(f"docker ps failed: {err.strip()}")
    ids = out.split()
    if not ids:
        return []
    rc, out, err = module.run_command([docker, "inspect", "--type", "container", *ids])
    if rc != 0:
        raise RuntimeError(f"docker inspect failed: {err.strip()}")
    return json.loads(out)


def colours(items: list[dict], project: str, colour_services: dict[str, list[str]]) -> tuple[dict, dict]:
    """The project's web container of each colour, and its services of each colour that are running."""
    web, running = {}, {colour: [] for colour in COLOURS}
    for item in items:
        labels = item["Config"].get("Labels") or {}
        if labels.get("com.docker.compose.project") != project or labels.get("com.docker.compose.oneoff") == "True":
            continue
        service = labels.get("com.docker.compose.service", "")
        for colour in COLOURS:
            services = list(colour_services.get(colour) or [])
            if service not in services:
                continue
            if service == services[0]:
                web[colour] = {
                    "State": item["State"]["Status"],
                    "Image": item["Config"]["Image"],
                    "ImageID": item["Image"],
                }
            if item["State"]["Status"] == "running" and service not in running[colour]:
                running[colour].append(service)
    return web, running


def state_images(state: dict | None) -> set[str]:
    """The images a release state still needs: its colours' and its retained releases'."""
    if not isinstance(state, dict):
        return set()
    found = {str(image) for image in (state.get("colours") or {}).values() if image}
    found |= {
        str(entry["image"]) for entry in state.get("releases") or [] if isinstance(entry, dict) and entry.get("image")
    }
    return found


def read_state(path: str) -> dict | None:
    text = read_text(path)
    try:
        return json.loads(text) if text is not None else None
    except ValueError as error:
        raise ValueError(f"{path} is not JSON ({error})") from error


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "lock_dir": {"type": "path", "required": True},
            "state_file": {"type": "path", "required": True},
            "live_colour_file": {"type": "path", "required": True},
            "env_file": {"type": "path", "required": True},
            "project": {"type": "str", "required": True},
            "colour_services": {"type": "dict", "required": True},
            "other_state_files": {"type": "list", "elements": "path", "default": []},
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
        state = read_state(params["state_file"])
        env_text = read_text(params["env_file"])
        items = inspect_all(module)
        web, running = colours(items, params["project"], params["colour_services"])
        in_use = {str(item["Config"]["Image"]) for item in items}
        for other in params["other_state_files"]:
            in_use |= state_images(read_state(other))
        result = {
            "state": state,
            "live_colour": (read_text(params["live_colour_file"]) or "").strip(),
            "env_found": env_text is not None,
            "env_images": env_images(env_text) if env_text is not None else {},
            "containers": web,
            "running": running,
            "images_in_use": sorted(in_use),
        }
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        if locked:
            lock.rmdir()
        module.fail_json(msg=str(error), locked=False)
    module.exit_json(changed=False, locked=locked, **result)


if __name__ == "__main__":
    main()
