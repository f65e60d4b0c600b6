"""Request parsers with a size cap and protection against pathological JSON."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError, ValidationError

from .conf import kohakku_settings
from .exceptions import IncompleteBody, PayloadTooLarge


def declared_length(meta: Any) -> int | None:
    """The request's ``Content-Length`` as a number, or ``None`` when absent or malformed."""
    value = str(meta.get("CONTENT_LENGTH") or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def read_bounded(
    stream: Any, limit: int, *, declared: int | None = None, what: str = "Request body"
) -> bytes:
    """Read at most ``limit`` bytes from ``stream``; raise 413 if there is more (or if
    ``declared`` says so, before reading). ``what`` names the body in the 413's words.

    With ``declared`` (the ``Content-Length``), a body that ends before it, because the
    client closed its side early, is a 400: the server would otherwise hand on the part
    that arrived as if it were the whole request.
    """
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"{what} is larger than {limit} bytes.")
    data = stream.read(limit + 1) if stream is not None else b""
    if len(data) > limit:
        raise PayloadTooLarge(f"{what} is larger than {limit} bytes.")
    if declared is not None and len(data) < declared:
        raise IncompleteBody(len(data), declared)
    return data


class BoundedJSONParser(parsers.JSONParser):
    """JSON with a body cap (``MAX_JSON_BODY_BYTES``) and a clean 400 on any parse fault."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        request = (parser_context or {}).get("request")
        declared = declared_length(request.META) if request is not None else None
        raw = read_bounded(stream, kohakku_settings.MAX_JSON_BODY_BYTES, declared=declared)
        if not raw:
            return {}
        try:
            return load_json(raw)
        except ValueError as exc:
            raise json_error(exc) from None


def json_error(exc: ValueError) -> ParseError | ValidationError:
    """The 400 for a body :func:`load_json` refused: a field error when a field is to blame."""
    if isinstance(exc, UnstorableText) and exc.field is not None:
        return ValidationError({exc.field: [exc.sentence]})
    return ParseError(f"JSON parse error - {exc}")


class UnstorableText(ValueError):
    """A decoded document holds a string no text column can hold.

    ``field`` is the top-level key it sits under (``None`` when the document is not an
    object); ``sentence`` is the reason as a sentence, for a field error.
    """

    def __init__(self, reason: str, field: str | None) -> None:
        super().__init__(reason)
        self.field = field
        self.sentence = as_sentence(reason)


def load_json(raw: bytes | str) -> Any:
    """Decode JSON from the network, refusing what the controller could not store.

    Beyond ``json.loads``: ``NaN`` and ``Infinity`` are refused (they are not JSON), and so
    is a number too large for a float (``1e400`` would decode to infinity, which no JSON
    answer or ``jsonb`` column can hold); objects and arrays nested deeper than
    ``MAX_JSON_DEPTH`` are refused (the code that later encodes, stores or evaluates the
    document recurses too), and so are strings that no text column can hold: a NUL
    character (``\\u0000``; PostgreSQL refuses it in text and ``jsonb``) or half of a
    surrogate pair (not Unicode), as :class:`UnstorableText`. Raises ``ValueError`` saying
    what and where.
    """
    limit = kohakku_settings.MAX_JSON_DEPTH
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(_too_deep(limit)) from None
    # Only a document with more brackets than the limit can be nested past it.
    opening = (b"[", b"{") if isinstance(raw, bytes) else ("[", "{")
    if raw.count(opening[0]) + raw.count(opening[1]) > limit and nested_deeper_than(value, limit):
        raise ValueError(_too_deep(limit))
    # In UTF-8 bytes such strings can only come from \u escapes: skip the walk when there
    # are none. Text (a form field's JSON) is always walked.
    if isinstance(raw, str) or _SUSPECT_ESCAPE.search(raw):
        found = _find_unstorable(value, "")
        if found is not None:
            raise UnstorableText(found[1], found[0])
    return value


def _too_deep(limit: int) -> str:
    return f"nested too deeply (more than {limit} levels of objects and arrays)"


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True if ``value`` nests objects and arrays more than ``limit`` levels deep.

    Iterative, so it answers for any depth (the encoder and decoder themselves give up at a
    depth that depends on the Python version and the stack).
    """
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def find_unstorable_text(value: Any, where: str = "") -> str | None:
    """Why ``value`` (decoded JSON, or a dict of form fields) cannot be stored, or ``None``.

    Names the first string or key holding a NUL character or an unpaired surrogate, by its
    path under ``where`` (``input.files[2]``).
    """
    found = _find_unstorable(value, where)
    return None if found is None else found[1]


def _find_unstorable(value: Any, where: str) -> tuple[str | None, str] | None:
    """(the top-level key it is under, the reason) for the first unstorable string."""
    pending: list[tuple[Any, str, str | None]] = [(value, where, None)]
    while pending:
        item, path, top = pending.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return top, f"the string at {path or 'the top level'} {problem}"
        elif isinstance(item, dict):
            for key, child in item.items():
                field = key if top is None else top
                problem = _text_problem(key)
                if problem:
                    return top, f"a key in {path or 'the top-level object'} {problem}"
                pending.append((child, f"{path}.{key}" if path else key, field))
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{index}]", top) for index, child in enumerate(item))
    return None


_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _text_problem(text: str) -> str | None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000), which text cannot hold"
    return "contains half of a surrogate pair, which is not Unicode"


def as_sentence(reason: str) -> str:
    """``reason`` (as :func:`find_unstorable_text` words it) as a sentence of a field error."""
    return f"{reason[0].upper()}{reason[1:]}."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


#: The largest number a positive-integer query parameter may hold (a 32-bit integer column).
MAX_QUERY_INT = 2**31 - 1
#: A query integer as written: ASCII digits only (``int()`` also takes ``1_0``, other
#: scripts' digits and thousands of digits), few enough for a 32-bit column.
ASCII_DIGITS = re.compile(r"[0-9]{1,10}")


def positive_int_param(request: Any, name: str, *, maximum: int = MAX_QUERY_INT) -> int | None:
    """The query parameter ``name`` as an integer from 1 to ``maximum``; ``None`` if absent or
    empty. Anything else is a 400 naming it: ``int()`` alone would also take ``"1_0"``,
    superscript and other scripts' digits, or thousands of digits."""
    raw = request.query_params.get(name, "")
    if raw == "":
        return None
    if not ASCII_DIGITS.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise ValidationError({name: ["Must be a positive integer."]})
    return int(raw)
