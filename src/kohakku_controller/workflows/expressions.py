"""JMESPath conditions and input templates: compile, validate and evaluate.

Expressions are evaluated against the *event document*::

    {"source": "github", "event": "pull_request", "headers": {...}, "payload": {...}}

``headers`` has lower-case names, with credentials (signatures, cookies, authorization)
redacted, so no template can copy a secret into a task input.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

#: Longest expression accepted, in characters.
MAX_EXPRESSION_LENGTH = 4096
#: Deepest an expression may nest (``a | b | c`` nests once per pipe): evaluation recurses
#: once per level, and must stay well inside Python's recursion limit.
MAX_EXPRESSION_DEPTH = 64
#: Most conditions one workflow may have.
MAX_CONDITIONS = 32


class ExpressionError(ValueError):
    """An expression does not compile, or failed on a given event."""


@functools.lru_cache(maxsize=2048)
def compile_expression(expression: str) -> ParsedResult:
    """Compile a JMESPath expression (cached); raise :class:`ExpressionError` if invalid."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("Expression must be a non-empty string.")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"Expression is longer than {MAX_EXPRESSION_LENGTH} characters.")
    try:
        compiled = jmespath.compile(expression)
    except JMESPathError as exc:
        raise ExpressionError(f"Invalid JMESPath expression: {_one_line(exc)}") from None
    except RecursionError:
        compiled = None
    if compiled is None or _depth(compiled.parsed) > MAX_EXPRESSION_DEPTH:
        # Evaluating recurses once per level: a deeper expression would fail on every event.
        raise ExpressionError(
            f"Invalid JMESPath expression: nested too deeply (more than {MAX_EXPRESSION_DEPTH} "
            "levels)."
        )
    return compiled


def _depth(node: dict[str, Any]) -> int:
    """How deeply the parsed expression ``node`` nests (counted without recursing)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend(
            (child, depth + 1) for child in current.get("children", []) if isinstance(child, dict)
        )
    return deepest


def evaluate(expression: str, document: dict[str, Any]) -> Any:
    """Evaluate ``expression`` over ``document``; raise :class:`ExpressionError` on failure."""
    compiled = compile_expression(expression)
    try:
        return compiled.search(document)
    except (JMESPathError, TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        # ArithmeticError: ceil() of 1e999, avg() of integers too large for a float.
        raise ExpressionError(_one_line(exc) or type(exc).__name__) from None


def is_truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false; every number is true."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


@dataclass
class ConditionResult:
    index: int
    expression: str
    truthy: bool
    value: Any = None
    error: str | None = None

    @property
    def reason(self) -> str:
        if self.error:
            return f"error: {self.error}"
        verdict = "truthy" if self.truthy else "not truthy"
        return f"evaluated to {_short_json(self.value)}, which is {verdict}"


@dataclass
class Evaluation:
    """Why a workflow did or did not match one event, and the input it would queue."""

    matched: bool
    source_matched: bool
    event_matched: bool
    conditions: list[ConditionResult] = field(default_factory=list)
    failed_condition: ConditionResult | None = None
    input: dict[str, Any] | None = None
    input_error: str | None = None

    @property
    def reason(self) -> str:
        if not self.source_matched:
            return "source does not match"
        if not self.event_matched:
            return "event does not match"
        if self.failed_condition is not None:
            fc = self.failed_condition
            return f"condition {fc.index} ({fc.expression}) {fc.reason}"
        if self.input_error:
            return f"input template failed: {self.input_error}"
        return "matched"


def check_conditions(conditions: list[str], document: dict[str, Any]) -> list[ConditionResult]:
    """Evaluate conditions in order, stopping at the first that is not truthy.

    A condition that raises (for example ``starts_with(payload.ref, 'x')`` on an event
    without ``ref``) counts as not truthy; the error is kept as the reason.
    """
    results = []
    for index, expression in enumerate(conditions):
        try:
            value = evaluate(expression, document)
        except ExpressionError as exc:
            results.append(ConditionResult(index, expression, False, error=str(exc)))
            break
        result = ConditionResult(index, expression, is_truthy(value), value=value)
        results.append(result)
        if not result.truthy:
            break
    return results


def render_input(template: str, document: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the input template; it must yield a JSON object."""
    value = evaluate(template, document)
    if not isinstance(value, dict):
        raise ExpressionError(
            f"The input template must yield a JSON object, got {_json_type(value)}."
        )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def json_writable(value: Any) -> bool:
    """True if ``value`` can be written as JSON: no NaN, infinity or oversized integer."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _short_json(value: Any, limit: int = 80) -> str:
    if not json_writable(value):
        return f"{_json_type(value)} that JSON cannot hold"
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
