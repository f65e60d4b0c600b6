"""Trigger the demo: send a signed custom webhook and print the task it becomes.

``make demo`` (or ``python demo/trigger.py [NAME]`` from ``example_project/``) posts a
Standard Webhooks delivery with event ``demo.hello`` to ``/api/v1/webhooks/``, signed with
the demo secret (``KOHAKKU_CUSTOM_WEBHOOK_SECRET``, else ``var/demo-webhook-secret`` written
by ``make run``). The ``demo-hello`` workflow turns it into a task of the ``hello`` skill;
the script polls the task with the operator token from ``var/demo-credentials.json`` until
it finishes, then prints its status and its result.

Environment: PORT (8000) or KOHAKKU_DEMO_URL (the controller's base URL).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

# Runnable as a script from anywhere: make ``demo`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.local import demo_credentials, demo_webhook_secret

FINAL_STATUSES = {"completed", "failed", "cancelled", "timed_out"}
EVENT = "demo.hello"


def standard_webhook_headers(secret: str, body: bytes, message_id: str) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``: id, timestamp and ``v1`` signature."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    timestamp = str(int(time.time()))
    signed = f"{message_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": f"v1,{signature}",
    }


def send_demo_webhook(client: httpx.Client, secret: str, payload: dict[str, Any]) -> dict:
    """Post one signed ``demo.hello`` delivery; return the controller's JSON answer."""
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Source": "custom",
        "X-Webhook-Event": EVENT,
        **standard_webhook_headers(secret, body, f"msg_{uuid.uuid4().hex}"),
    }
    response = client.post("/api/v1/webhooks/", content=body, headers=headers)
    if response.status_code not in (200, 201, 202):
        raise SystemExit(f"webhook refused: HTTP {response.status_code} {response.text}")
    return response.json()


def wait_for_task(client: httpx.Client, guid: str, timeout: float) -> dict[str, Any]:
    """Poll the task until it reaches a final status (or ``timeout`` seconds pass)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        response = client.get(f"/api/v1/tasks/{guid}/")
        response.raise_for_status()
        task = response.json()
        if task["status"] != last:
            last = task["status"]
            print(f"  task {guid}: {last}", flush=True)
        if task["status"] in FINAL_STATUSES:
            return task
        if time.monotonic() > deadline:
            raise SystemExit(f"the task is still {task['status']} after {timeout:.0f} s")
        time.sleep(0.25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", default="Ada", help="who the skill greets")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    args = parser.parse_args(argv)
    base_url = os.environ.get("KOHAKKU_DEMO_URL") or (
        f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    )
    try:
        secret = demo_webhook_secret()
        token = demo_credentials()["operator"]["token"]
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    with httpx.Client(
        base_url=base_url, timeout=10, headers={"Authorization": f"Token {token}"}
    ) as client:
        try:
            answer = send_demo_webhook(client, secret, {"type": EVENT, "name": args.name})
        except httpx.ConnectError:
            print(f"no controller on {base_url}; start it with `make run`", file=sys.stderr)
            return 1
        print(f"webhook accepted: {json.dumps(answer)}")
        guid = answer.get("task_guid")
        if not guid:
            print("the webhook was not routed to a task", file=sys.stderr)
            return 1
        task = wait_for_task(client, guid, args.timeout)
        print(f"status: {task['status']}")
        if task.get("status_reason"):
            print(f"reason: {task['status_reason']}")
        if task["status"] != "completed":
            print(json.dumps(task, indent=2))
            return 1
        result = client.get(f"/api/v1/tasks/{guid}/result/", follow_redirects=True)
        result.raise_for_status()
        print("result:", result.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
