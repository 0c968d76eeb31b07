#!/usr/bin/python3
"""Ansible module (runs on the host): take the release lock and read what the release needs to know.

One module instead of four tasks (mkdir, two slurps, docker_host_info) because every task is a round
trip to the host, and a rollback to a warm colour has to switch within seconds (docs/performance.md).
It is the one place that takes an app's lock (a deploy's, a rollback's, or a hold of playbooks/lock.yml,
which passes no state file); release_lock.py reads it and gives it back.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_host
short_description: Take the release lock; read the release state, the live colour and the colours' containers
description:
  - Creates O(lock_dir) (mkdir is atomic; the run that creates it holds the lock) and writes
    C(holder.json) into it - O(holder) with C(since) (now, UTC) and C(run) (a new id, RV(run) - only this
    run gives the lock back). When it exists already, fails at once with RV(lock_held) and RV(holder)
    (C(kind) C(unknown) when it has no C(holder.json) - an older berth, or somebody's mkdir); the task
    retries (until/retries) unless the holder is a hold, so the wait shows in Ansible's output.
  - A hold whose C(until) has passed has expired - it is taken over (moved aside atomically, so that of two
    runs only one takes it over), with a warning; RV(taken_over) names it.
  - Not taken in check mode, where a hold (not expired) fails the module as in a real run. If reading
    fails after the lock was taken, the lock is given back before the module fails. Without O(state_file)
    only the lock is taken (a hold).
  - Then reads the app's release state file (JSON), its live colour file and the colours' images from
    its compose project's .env (only the C(BLUE_IMAGE) and C(GREEN_IMAGE) lines), and inspects the
    host's containers with the docker CLI (the state of the app's services of each colour, and every
    image a container of any project uses).
  - Also reads the other apps' state files, so that the images they still need (their colours and retained
    releases) are never pruned by this app's release, even when the apps share an image.
  - Changes nothing but the lock, so it reports C(changed=false); a hold (no O(state_file)) reports C(changed=true).
options:
  lock_dir:
    description: The lock directory. Its parent must exist (C(/run/lock)).
    type: path
    required: true
  holder:
    description:
      - Who takes the lock - C(who), C(why), C(kind) (C(deploy), C(rollback) or C(hold)), C(until) (a hold's
        end, ISO-8601 UTC, or empty) and C(version) - written to C(holder.json) with C(since) and C(run).
    type: dict
    default: {}
  state_file:
    description: The release state file (JSON), absent before the first release. Not given - take the lock only.
    type: path
  live_colour_file:
    description: The file nginx reads the live colour from (with O(state_file)).
    type: path
  env_file:
    description: The compose stack's .env (with O(state_file)).
    type: path
  project:
    description: The compose project name (the app's name; with O(state_file)).
    type: str
  colour_services:
    description:
      - The app's services of each colour, C(blue) and C(green), each a list whose first item is the web
        service (C(web-blue)) and the rest its workers (C(worker-default-blue)); with O(state_file).
    type: dict
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
run:
  description: The id of this run's lock (in C(holder.json)); release_lock gives the lock back only to it.
  type: str
  returned: when locked
taken_over:
  description: The expired hold this run took the lock over from (its C(holder.json)), or an empty dict.
  type: dict
  returned: success
lock_held:
  description: True when the module failed because somebody else holds the lock.
  type: bool
  returned: failure
holder:
  description: The lock's holder (C(holder.json); C(kind) C(unknown) without one), when RV(lock_held).
  type: dict
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
import uuid  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

COLOURS = ("blue", "green")


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


HOLDER = "holder.json"
# What a lock without holder.json (an older berth, or somebody's mkdir) counts as: a deploy of nobody known.
UNKNOWN = {"who": "unknown", "why": "", "kind": "unknown", "since": "", "until": "", "version": ""}


class LockHeldError(Exception):
    """Somebody else holds the lock (args[0]: the holder)."""


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def read_holder(lock: Path) -> dict:
    """The lock's holder.json; UNKNOWN when there is none, or it is not a JSON object."""
    try:
        holder = json.loads((lock / HOLDER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dict(UNKNOWN)
    return {**UNKNOWN, **holder} if isinstance(holder, dict) else dict(UNKNOWN)


def expired(holder: dict, now: datetime) -> bool:
    """A hold whose until has passed (a hold without until, and any deploy's lock, never expire)."""
    if holder.get("kind") != "hold" or not holder.get("until"):
        return False
    try:
        until = datetime.fromisoformat(str(holder["until"]))
    except ValueError:
        return False
    return (until if until.tzinfo else until.replace(tzinfo=UTC)) <= now


def remove_lock(lock: Path) -> None:
    """holder.json, then the directory (rmdir: never anything somebody else put in it)."""
    (lock / HOLDER).unlink(missing_ok=True)
    lock.rmdir()


def take_over(lock: Path, seen: dict, run: str) -> bool:
    """Move the expired hold `seen` aside and remove it. rename is atomic: of two runs taking it over, one
    moves it; if what was moved is not `seen` any more (another run took it over and locked meanwhile), it is
    put back. False when there was nothing to take over."""
    aside = lock.with_name(f"{lock.name}.expired-{run}")
    try:
        lock.rename(aside)
    except FileNotFoundError:
        return False
    if read_holder(aside) != seen:
        aside.rename(lock)
        return False
    remove_lock(aside)
    return True


def take(lock: Path, holder: dict, now: datetime) -> tuple[str, dict]:
    """Take the lock for `holder`: (the run id, the expired hold taken over or {}). Raises LockHeldError."""
    run, taken_over = uuid.uuid4().hex, {}
    for _ in range(3):
        try:
            lock.mkdir(0o700)
        except FileExistsError:
            current = read_holder(lock)
            if expired(current, now) and take_over(lock, current, run):
                taken_over = current
                continue
            raise LockHeldError(current) from None
        record = {
            "who": "unknown",
            "why": "",
            "kind": "deploy",
            "until": "",
            "version": "",
            **{key: str(value) for key, value in holder.items() if value is not None},
            "since": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "run": run,
        }
        # Written beside, then renamed: a reader sees the whole file or none.
        part = lock / f".{HOLDER}.part"
        part.write_text(json.dumps(record) + "\n", encoding="utf-8")
        part.chmod(0o644)
        part.replace(lock / HOLDER)
        return run, taken_over
    raise LockHeldError(read_holder(lock))


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
            "holder": {"type": "dict", "default": {}},
            "state_file": {"type": "path"},
            "live_colour_file": {"type": "path"},
            "env_file": {"type": "path"},
            "project": {"type": "str"},
            "colour_services": {"type": "dict"},
            "other_state_files": {"type": "list", "elements": "path", "default": []},
        },
        required_by={"state_file": ("live_colour_file", "env_file", "project", "colour_services")},
        supports_check_mode=True,
    )
    params = module.params
    lock, locked, lock_result = Path(params["lock_dir"]), False, {"taken_over": {}}
    if module.check_mode:
        # No lock is taken, but a hold refuses the real run at once: check mode says so as well.
        current = read_holder(lock) if lock.is_dir() else {}
        if current.get("kind") == "hold" and not expired(current, utc_now()):
            module.fail_json(msg=f"{params['lock_dir']} is held", lock_held=True, holder=current, locked=False)
    else:
        try:
            run, taken_over = take(lock, params["holder"], utc_now())
            locked, lock_result = True, {"run": run, "taken_over": taken_over}
        except LockHeldError as held:
            module.fail_json(msg=f"{params['lock_dir']} is held", lock_held=True, holder=held.args[0], locked=False)
        except OSError as error:
            module.fail_json(msg=f"cannot create the lock {params['lock_dir']}: {error}", locked=False)
        if lock_result["taken_over"]:
            gone = lock_result["taken_over"]
            module.warn(
                f"{params['lock_dir']}: the hold by {gone['who']} ({gone['why']!r}) expired at {gone['until']}; "
                "this run took the lock over"
            )
    if params["state_file"] is None:
        module.exit_json(changed=locked, locked=locked, **lock_result)
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
            remove_lock(lock)
        module.fail_json(msg=str(error), locked=False)
    module.exit_json(changed=False, locked=locked, **lock_result, **result)


if __name__ == "__main__":
    main()
