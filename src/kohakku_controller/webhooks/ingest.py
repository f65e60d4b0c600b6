"""Reading a webhook request: its source, event name, body and the sender's delivery id.

Pure functions over headers (a case-insensitive mapping) and the raw body.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from ..parsers import find_unstorable_text, load_json

SOURCES = ("github", "slack", "custom")
#: Most fields a form-encoded body may have.
MAX_FORM_FIELDS = 1000
MAX_EVENT_LENGTH = 100


class BodyError(ValueError):
    """The body cannot be read as the content type says. ``status_code`` is 400 or 415."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


def detect_source(headers: Mapping[str, str]) -> str | None:
    """``X-Webhook-Source`` if sent; else GitHub, Slack or Standard Webhooks by their headers."""
    explicit = headers.get("X-Webhook-Source")
    if explicit is not None:
        return explicit.strip().lower()
    if headers.get("X-GitHub-Event"):
        return "github"
    if headers.get("X-Slack-Signature"):
        return "slack"
    if headers.get("webhook-id") and headers.get("webhook-signature"):
        return "custom"
    return None


def parse_payload(body: bytes, content_type: str) -> Any:
    """Decode a JSON or form-encoded body.

    A form with a single ``payload`` field (GitHub's form content type, Slack interactivity)
    is that field's JSON; any other form (Slack slash commands) is its fields as a dict.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return _parse_form(body)
    if media in ("", "application/json", "text/plain") or media.endswith("+json"):
        if not body.strip():
            return {}
        return _parse_json(body, "body")
    raise BodyError(
        f"Unsupported content type {media!r}: send application/json or "
        "application/x-www-form-urlencoded.",
        status_code=415,
    )


def _parse_json(raw: bytes | str, where: str) -> Any:
    try:
        return load_json(raw)
    except ValueError as exc:
        raise BodyError(f"Malformed JSON in {where}: {exc}.") from None


def _parse_form(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS, errors="strict"
        )
    except UnicodeDecodeError:
        raise BodyError("Malformed form body: not UTF-8.") from None
    except ValueError as exc:
        raise BodyError(f"Malformed form body: {exc}") from None
    fields = dict(pairs)
    if list(fields) == ["payload"]:
        return _parse_json(fields["payload"], "the form field 'payload'")
    problem = find_unstorable_text(fields)
    if problem:
        raise BodyError(f"Malformed form body: {problem}.")
    return fields


def event_name(source: str, headers: Mapping[str, str], payload: Any) -> str:
    """``X-Webhook-Event`` if sent; else what the sender's own conventions say."""
    explicit = headers.get("X-Webhook-Event")
    if explicit:
        return explicit.strip()
    if source == "github":
        return headers.get("X-GitHub-Event", "").strip()
    if isinstance(payload, dict):
        if source == "slack" and "command" in payload and "type" not in payload:
            return "slash_command"
        kind = payload.get("type")
        if isinstance(kind, str):
            return kind
    return ""


def sender_delivery_id(source: str, headers: Mapping[str, str], payload: Any) -> str:
    """The sender's id for this delivery ('' when it has none)."""
    if source == "github":
        return headers.get("X-GitHub-Delivery", "").strip()
    if source == "slack":
        event_id = payload.get("event_id") if isinstance(payload, dict) else None
        return event_id if isinstance(event_id, str) else ""
    if source == "custom":
        return headers.get("webhook-id", "").strip()
    return ""


def dedupe_key(source: str, headers: Mapping[str, str], external_id: str) -> str | None:
    """The key a delivery claims: GitHub hook id + delivery GUID, Slack event_id, webhook-id."""
    if not external_id:
        return None
    key = external_id
    if source == "github":
        key = f"{headers.get('X-GitHub-Hook-ID', '').strip()}:{external_id}"
    if len(key) > 200:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return key
