"""Signature checks for webhook senders: pure functions over the raw body and headers.

This module imports nothing outside the standard library. Each function raises
:class:`VerificationError` (with a short ``reason``) or returns ``None`` when one of the
given secrets produced the signature. Comparisons run in constant time.

* GitHub: ``X-Hub-Signature-256: sha256=<hex>``, HMAC-SHA256 of the raw body.
* Slack: ``X-Slack-Signature: v0=<hex>``, HMAC-SHA256 of ``v0:<X-Slack-Request-Timestamp>:<body>``.
* Standard Webhooks (custom senders): ``webhook-signature: v1,<base64> [v1,<base64> ...]``,
  HMAC-SHA256 of ``<webhook-id>.<webhook-timestamp>.<body>`` keyed with the base64 bytes of a
  ``whsec_`` secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "VerificationError",
    "decode_standard_webhooks_secret",
    "verify_github_signature",
    "verify_slack_signature",
    "verify_standard_webhooks_signature",
]

DEFAULT_TOLERANCE_SECONDS = 300


class VerificationError(Exception):
    """The delivery's signature is missing, malformed, stale or wrong.

    ``reason`` is one of ``missing``, ``malformed``, ``expired``, ``mismatch``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _check_timestamp(timestamp: str | None, header: str, tolerance: int, now: float | None) -> int:
    if not timestamp:
        raise VerificationError("missing", f"{header} header is missing.")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) < 16):
        raise VerificationError("malformed", f"{header} is not a unix timestamp.")
    value = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - value) > tolerance:
        raise VerificationError(
            "expired", f"{header} is more than {tolerance} seconds away from the server's clock."
        )
    return value


def _parse_hex_signature(signature: str | None, prefix: str, header: str) -> bytes:
    """The digest bytes of a ``<prefix>=<hex>`` signature header."""
    if not signature:
        raise VerificationError("missing", f"{header} header is missing.")
    found, _, hex_digest = signature.strip().partition("=")
    if found != prefix or not hex_digest:
        raise VerificationError("malformed", f"{header} must be '{prefix}=<hex>'.")
    try:
        return bytes.fromhex(hex_digest)
    except ValueError:
        raise VerificationError("malformed", f"{header} is not hex.") from None


def _require_match(
    secrets: Iterable[str | bytes], message: bytes, received: bytes, header: str
) -> None:
    for secret in secrets:
        if hmac.compare_digest(_hmac_sha256(_as_bytes(secret), message), received):
            return
    raise VerificationError("mismatch", f"{header} does not match the body.")


def verify_github_signature(
    secrets: Iterable[str | bytes], body: bytes, signature: str | None
) -> None:
    """Check GitHub's ``X-Hub-Signature-256`` header (``sha256=<hex>``) against ``body``."""
    received = _parse_hex_signature(signature, "sha256", "X-Hub-Signature-256")
    _require_match(secrets, body, received, "X-Hub-Signature-256")


def verify_slack_signature(
    secrets: Iterable[str | bytes],
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Check Slack's ``X-Slack-Signature`` (``v0=<hex>``) and ``X-Slack-Request-Timestamp``."""
    if not signature:
        raise VerificationError("missing", "X-Slack-Signature header is missing.")
    _check_timestamp(timestamp, "X-Slack-Request-Timestamp", tolerance, now)
    received = _parse_hex_signature(signature, "v0", "X-Slack-Signature")
    message = b"v0:" + str(timestamp).encode("ascii") + b":" + body
    _require_match(secrets, message, received, "X-Slack-Signature")


def decode_standard_webhooks_secret(secret: str | bytes) -> bytes | None:
    """The key bytes of a ``whsec_<base64>`` secret; ``None`` if it is not valid base64."""
    text = secret.decode("ascii", "replace") if isinstance(secret, bytes) else secret
    text = text.strip().removeprefix("whsec_")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def verify_standard_webhooks_signature(
    secrets: Iterable[str | bytes],
    body: bytes,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Check the Standard Webhooks headers (``webhook-id``, ``-timestamp``, ``-signature``).

    ``signature`` may list several space-separated ``v1,<base64>`` entries (a sender rotating
    its secret signs with both); one match is enough. Entries of other versions are ignored.
    """
    if not msg_id:
        raise VerificationError("missing", "webhook-id header is missing.")
    if not signature:
        raise VerificationError("missing", "webhook-signature header is missing.")
    _check_timestamp(timestamp, "webhook-timestamp", tolerance, now)
    received = []
    for entry in signature.split():
        version, _, value = entry.partition(",")
        if version != "v1":
            continue
        try:
            received.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not received:
        raise VerificationError("malformed", "webhook-signature has no 'v1,<base64>' entry.")
    message = f"{msg_id}.{timestamp}.".encode() + body
    for secret in secrets:
        key = decode_standard_webhooks_secret(secret)
        if key is None:
            continue
        expected = _hmac_sha256(key, message)
        if any(hmac.compare_digest(expected, candidate) for candidate in received):
            return
    raise VerificationError("mismatch", "webhook-signature does not match the body.")
