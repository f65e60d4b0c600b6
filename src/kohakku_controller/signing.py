"""HMAC signatures for the controller <-> dispatcher contracts.

This module imports nothing outside the standard library, so dispatcher authors can
vendor it as it is.

Both directions use the same scheme::

    X-Kohakku-Timestamp: <unix seconds>
    X-Kohakku-Signature: sha256=<hex>

where ``<hex>`` is ``HMAC-SHA256(key=secret, msg=b"<timestamp>." + raw_body)``. A receiver
rejects timestamps more than ``tolerance`` seconds away from its own clock and compares
signatures in constant time. During a secret rotation a receiver accepts any of the valid
secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureError",
    "compute_signature",
    "sign_request",
    "verify_signature",
]

TIMESTAMP_HEADER = "X-Kohakku-Timestamp"
SIGNATURE_HEADER = "X-Kohakku-Signature"
SIGNATURE_PREFIX = "sha256="
DEFAULT_TOLERANCE_SECONDS = 300
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")


class SignatureError(Exception):
    """The signature is missing, malformed, stale or does not match.

    ``reason`` is a short machine-readable word: ``missing``, ``malformed``, ``expired``
    or ``mismatch``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def compute_signature(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """Return ``sha256=<hex>`` for ``body`` sent at ``timestamp``."""
    message = str(timestamp).encode("ascii") + b"." + body
    digest = hmac.new(_as_bytes(secret), message, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def sign_request(secret: str | bytes, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Return the two signature headers for ``body``, stamped now unless told otherwise."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: compute_signature(secret, ts, body),
    }


def verify_signature(
    secrets: Iterable[str | bytes],
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Check the headers of a signed request; return ``None`` or raise ``SignatureError``.

    ``secrets`` may hold several keys (current and previous during a rotation); the
    request is valid if it was signed with any of them.
    """
    if not timestamp or not signature:
        raise SignatureError("missing", "signature headers are missing")
    timestamp = timestamp.strip()
    # Unix seconds in ASCII digits; int() alone would also take "1_700", other scripts'
    # digits and numbers too large for any clock.
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise SignatureError("malformed", "timestamp is not an integer of Unix seconds")
    ts = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        raise SignatureError("expired", f"timestamp is outside the {tolerance} s window")
    signature = signature.strip()
    if not signature.startswith(SIGNATURE_PREFIX):
        raise SignatureError("malformed", "signature must start with 'sha256='")
    matched = False
    for secret in secrets:
        expected = compute_signature(secret, ts, body)
        # Keep looping after a match so the time taken does not reveal which key matched.
        matched |= hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))
    if not matched:
        raise SignatureError("mismatch", "signature does not match")
