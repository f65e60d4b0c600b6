"""Signing helpers for the three sender schemes, and a client that posts raw bodies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.workflows.conftest import make_skill, make_workflow  # noqa: F401 (fixtures)

FIXTURES = Path(__file__).parent / "fixtures"
GITHUB_SECRET = "github-secret-current"
GITHUB_OLD_SECRET = "github-secret-previous"
SLACK_SECRET = "slack-signing-secret"
CUSTOM_KEY = b"custom-sender-key-0123456789abcd"
CUSTOM_SECRET = "whsec_" + base64.b64encode(CUSTOM_KEY).decode()
URL = "/api/v1/webhooks/"


def load_fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def as_body(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    return json.dumps(payload).encode()


def github_headers(
    body: bytes,
    event: str,
    *,
    delivery: str | None = None,
    hook_id: str = "4242",
    secret: str = GITHUB_SECRET,
) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": hook_id,
        "X-Hub-Signature-256": f"sha256={digest}",
    }


def slack_headers(
    body: bytes, *, secret: str = SLACK_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest.hexdigest()}"}


def custom_headers(
    body: bytes,
    *,
    msg_id: str | None = None,
    key: bytes = CUSTOM_KEY,
    timestamp: int | None = None,
    event: str | None = None,
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    headers = {
        "X-Webhook-Source": "custom",
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": f"v1,{base64.b64encode(mac).decode()}",
    }
    if event:
        headers["X-Webhook-Event"] = event
    return headers


@pytest.fixture
def webhook_secrets(settings: Any) -> dict[str, list[str]]:
    secrets = {
        "github": [GITHUB_SECRET, GITHUB_OLD_SECRET],
        "slack": [SLACK_SECRET],
        "custom": [CUSTOM_SECRET],
    }
    settings.KOHAKKU_CONTROLLER = {
        **settings.KOHAKKU_CONTROLLER,
        "WEBHOOK_SECRETS": secrets,
        "ALLOW_UNSIGNED_WEBHOOKS": False,
    }
    return secrets


@pytest.fixture
def post_webhook(db: Any, webhook_secrets: Any) -> Callable[..., Any]:
    """POST a raw body to the webhook endpoint without any API credential."""
    client = APIClient()

    def post(
        body: bytes,
        headers: dict[str, str],
        content_type: str = "application/json",
        stream: Any = None,
    ):
        # ``stream``: the body as the server reads it, when it is not ``body`` (cut short).
        extra = {} if stream is None else {"wsgi.input": stream}
        return client.generic(
            "POST", URL, body, content_type=content_type, headers=headers, **extra
        )

    return post
