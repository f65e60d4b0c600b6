"""The event document that conditions and input templates see."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Shown in place of a redacted header value.
REDACTED = "[redacted]"

# A header whose lower-case name contains one of these words carries a credential.
_SENSITIVE_WORDS = (
    "authorization",
    "cookie",
    "signature",
    "secret",
    "token",
    "password",
    "api-key",
    "apikey",
    "auth",  # x-auth, x-auth-token, proxy-authenticate …
    "credential",
    "private",
    "sig",  # x-api-sig, x-hub-signature …
    "session",
)


def is_sensitive_header(name: str) -> bool:
    """True for headers that carry credentials: signatures, cookies, authorization, tokens."""
    lowered = name.lower()
    return any(word in lowered for word in _SENSITIVE_WORDS)


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-case header names, with the values of credential headers replaced."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        str(name).lower(): (REDACTED if is_sensitive_header(str(name)) else str(value))
        for name, value in items
    }


def build_event_document(
    source: str, event: str, headers: Mapping[str, str], payload: Any
) -> dict[str, Any]:
    """``{"source", "event", "headers", "payload"}`` with headers lower-cased and redacted."""
    return {
        "source": source,
        "event": event,
        "headers": redact_headers(headers),
        "payload": payload,
    }
