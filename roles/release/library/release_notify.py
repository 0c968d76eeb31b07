#!/usr/bin/python3
"""Ansible module (runs on the controller, delegate_to localhost): tell berth_notify's receivers about a
release event. A receiver that is down, slow or answers an error gives a warning naming the receiver (never
its URL: it may hold a token) and never fails the run."""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_notify
short_description: Send a release event to the receivers of berth_notify (webhook or Slack/Mattermost)
description:
  - POSTs one JSON document to each receiver of O(receivers) whose C(events) include O(event) (no C(events) -
    every event). C(webhook) receivers get C(event), C(app), C(version), C(previous_version), C(host),
    C(who), C(at) (now, UTC) and C(message); C(slack) receivers (Slack or Mattermost incoming webhooks)
    get C({"text" - ...}).
  - Each request has O(timeout) seconds. A failure is a warning with the receiver's name and the reason;
    the module never fails because of a receiver. Check mode sends nothing.
options:
  receivers:
    description: C(berth_notify) - the receivers.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The receiver's name (in warnings).
        type: str
        required: true
      url:
        description: Where to POST (it may hold a token - never printed).
        type: str
        required: true
      kind:
        description: C(webhook) (the event as JSON) or C(slack) (C({"text"}), also Mattermost).
        type: str
        choices: [webhook, slack]
        default: webhook
      events:
        description: The events this receiver gets; empty - all.
        type: list
        elements: str
        default: []
  event:
    description: The event.
    type: str
    required: true
    choices: [deploy_started, deploy_succeeded, deploy_failed, deploy_rolled_back, rollback, lock_held, lock_released]
  app:
    description: The app.
    type: str
    required: true
  version:
    description: The version deployed or rolled back to (empty for a lock event).
    type: str
    default: ""
  previous_version:
    description: The version live before.
    type: str
    default: ""
  host:
    description: The host (inventory name).
    type: str
    required: true
  who:
    description: Who ran it (berth_operator).
    type: str
    required: true
  message:
    description: One sentence for people.
    type: str
    required: true
  timeout:
    description: Seconds for each receiver.
    type: int
    default: 5
"""

RETURN = r"""
sent:
  description: The names of the receivers that took the event (a 2xx answer).
  type: list
  returned: always
failed_receivers:
  description: The names of the receivers that did not.
  type: list
  returned: always
"""

import json  # noqa: E402 - after the documentation, as Ansible expects
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

EVENTS = [
    "deploy_started",
    "deploy_succeeded",
    "deploy_failed",
    "deploy_rolled_back",
    "rollback",
    "lock_held",
    "lock_released",
]


def payload(receiver: dict, event: dict) -> dict:
    """What one receiver gets: the event itself, or Slack's {"text"}."""
    if receiver.get("kind") == "slack":
        return {"text": f"berth: {event['message']} ({event['event']}, {event['host']})"}
    return event


def wanted(receiver: dict, event: str) -> bool:
    return not receiver.get("events") or event in receiver["events"]


def send(url: str, document: dict, timeout: int) -> str:
    """An empty string when the receiver took it (2xx), else why not (without the URL)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "berth"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return "" if 200 <= answer.status < 300 else f"answered {answer.status}"
    except urllib.error.HTTPError as error:
        return f"answered {error.code}"
    except urllib.error.URLError as error:
        return f"unreachable ({error.reason})"
    except TimeoutError:
        return f"no answer within {timeout} s"
    except (OSError, ValueError) as error:
        return f"failed ({type(error).__name__})"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "receivers": {
                "type": "list",
                "elements": "dict",
                "required": True,
                # Only the URL is secret (it may hold a token); the names appear in the warnings.
                "options": {
                    "name": {"type": "str", "required": True},
                    "url": {"type": "str", "required": True, "no_log": True},
                    "kind": {"type": "str", "choices": ["webhook", "slack"], "default": "webhook"},
                    "events": {"type": "list", "elements": "str", "choices": EVENTS, "default": []},
                },
            },
            "event": {"type": "str", "required": True, "choices": EVENTS},
            "app": {"type": "str", "required": True},
            "version": {"type": "str", "default": ""},
            "previous_version": {"type": "str", "default": ""},
            "host": {"type": "str", "required": True},
            "who": {"type": "str", "required": True},
            "message": {"type": "str", "required": True},
            "timeout": {"type": "int", "default": 5},
        },
        supports_check_mode=True,
    )
    params = module.params
    event = {key: params[key] for key in ("event", "app", "version", "previous_version", "host", "who", "message")}
    event["at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    sent, failed = [], []
    for receiver in params["receivers"]:
        name = receiver["name"]
        if module.check_mode or not wanted(receiver, params["event"]):
            continue
        problem = send(receiver["url"], payload(receiver, event), params["timeout"])
        if problem:
            failed.append(name)
            module.warn(f"notification {params['event']} of {params['app']} to {name}: {problem}")
        else:
            sent.append(name)
    module.exit_json(changed=False, sent=sent, failed_receivers=failed)


if __name__ == "__main__":
    main()
