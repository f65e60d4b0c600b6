"""Request parsers with a size cap and protection against pathological JSON."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from .conf import kohakku_settings
from .exceptions import PayloadTooLarge


def read_bounded(stream: Any, limit: int) -> bytes:
    """Read at most ``limit`` bytes from ``stream``; raise 413 if there is more."""
    data = stream.read(limit + 1) if stream is not None else b""
    if len(data) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes.")
    return data


class BoundedJSONParser(parsers.JSONParser):
    """JSON with a body cap (``MAX_JSON_BODY_BYTES``) and a clean 400 on any parse fault."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = read_bounded(stream, kohakku_settings.MAX_JSON_BODY_BYTES)
        if not raw:
            return {}
        try:
            return json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise ParseError(f"JSON parse error - {reason}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
