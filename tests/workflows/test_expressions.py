"""JMESPath truthiness, rendering and compile errors."""

from __future__ import annotations

import pytest

from kohakku_controller.workflows.expressions import (
    MAX_EXPRESSION_DEPTH,
    ExpressionError,
    check_conditions,
    compile_expression,
    evaluate,
    is_truthy,
    render_input,
)

DOC = {"source": "github", "event": "push", "headers": {}, "payload": {"ref": "refs/heads/x"}}


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (None, False),
        (False, False),
        ("", False),
        ([], False),
        ({}, False),
        (0, True),
        (0.0, True),
        ("0", True),
        ([0], True),
        (True, True),
    ],
)
def test_jmespath_truthiness(value, truthy):
    assert is_truthy(value) is truthy


def test_conditions_stop_at_the_first_falsy_one():
    results = check_conditions(
        ["source == 'github'", "event == 'pull_request'", "payload.ref"], DOC
    )
    assert [(r.index, r.truthy) for r in results] == [(0, True), (1, False)]
    assert "false" in results[1].reason


def test_a_condition_that_raises_is_falsy_with_the_error():
    results = check_conditions(["starts_with(payload.missing, 'x')"], DOC)
    assert results[0].truthy is False
    assert "starts_with" in results[0].error


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("payload", {"ref": "refs/heads/x"}),
        ("{ref: payload.ref, src: source}", {"ref": "refs/heads/x", "src": "github"}),
        ("merge(payload, {extra: `1`})", {"ref": "refs/heads/x", "extra": 1}),
    ],
)
def test_render_input(template, expected):
    assert render_input(template, DOC) == expected


@pytest.mark.parametrize(
    ("template", "kind"),
    [("payload.ref", "a string"), ("payload.nothing", "null"), ("[payload]", "an array")],
)
def test_render_input_must_be_an_object(template, kind):
    with pytest.raises(ExpressionError, match=f"got {kind}"):
        render_input(template, DOC)


@pytest.mark.parametrize(
    "document",
    [
        {"payload": {"x": "1e999"}},  # ceil() of infinity
        {"payload": {"x": [10**400, 10**400]}},  # avg() of integers beyond a float
    ],
)
def test_arithmetic_failures_are_falsy_with_the_error(document):
    expression = (
        "ceil(to_number(payload.x)) > `0`"
        if isinstance(document["payload"]["x"], str)
        else "avg(payload.x) > `0`"
    )
    results = check_conditions([expression], document)
    assert results[0].truthy is False
    assert results[0].error


@pytest.mark.parametrize(
    "expression",
    ["", "   ", "payload.[", "foo(", "a" * 5000, "(" * 2000 + "a" + ")" * 2000, "!" * 4000 + "a"],
)
def test_compile_errors(expression):
    with pytest.raises(ExpressionError):
        compile_expression(expression)


@pytest.mark.parametrize(
    "build",
    [
        lambda n: "|".join(["a"] * n),
        lambda n: "||".join(["a"] * n),
        lambda n: "!" * (n - 1) + "a",
        lambda n: "[" * (n - 1) + "a" + "]" * (n - 1),
    ],
    ids=["pipes", "ors", "nots", "lists"],
)
def test_an_expression_deeper_than_the_cap_is_refused_and_one_at_the_cap_evaluates(build):
    # Each of these compiles; past the cap, evaluating it would run out of stack on every
    # event (a condition that silently never matches, a template that always fails).
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression(build(MAX_EXPRESSION_DEPTH + 1))
    deepest = build(MAX_EXPRESSION_DEPTH)
    evaluate(deepest, {"a": 1})  # no error
