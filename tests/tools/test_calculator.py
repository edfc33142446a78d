"""The calculator tool: arithmetic equals Python's, and anything else is refused quickly and cleanly."""

from __future__ import annotations

import ast
import json
import math
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support.arithmetic import plain_arithmetic, python_value, same_number

from genmesh.errors import InvalidArgument
from genmesh.schema import check_schema
from services.tools.builtin.calculator import (
    MAX_EXPRESSION_CHARS,
    MAX_NESTING_DEPTH,
    MAX_RESULT_DIGITS,
    calculator_schema,
    calculator_tool,
    evaluate,
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % -3", -2),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("-2 ** 2", -4),
        ("+-+3", -3),
        ("1.5e3 + 0x10 + 1_000", 2516.0),
        ("2 ** 3 ** 2", 512),
        ("10 ** 999 // 10 ** 998", 10),
        (" 1 + 1 ", 2),
    ],
)
def test_arithmetic(expression: str, expected: float) -> None:
    value = evaluate(expression)
    assert value == expected
    assert type(value) is type(expected)


def test_long_operator_chains_do_not_recurse() -> None:
    chain = "+".join(["1"] * 500)
    assert len(chain) <= MAX_EXPRESSION_CHARS
    assert evaluate(chain) == 500
    assert evaluate("-" * 999 + "1") == -1


@pytest.mark.parametrize(
    ("expression", "needle"),
    [
        ("x + 1", "names are not allowed"),
        ("__import__('os')", "function calls are not allowed"),
        ("().__class__.__bases__[0]", "not allowed"),
        ("(1).real", "attribute access is not allowed"),
        ("lambda: 1", "lambdas are not allowed"),
        ("[1, 2][0]", "not allowed"),
        ("[i for i in (1, 2)]", "comprehensions are not allowed"),
        ("'a' * 3", "strings are not allowed"),
        ("f'{1}'", "strings are not allowed"),
        ("True + 1", "booleans are not allowed"),
        ("1j * 1j", "complex numbers are not allowed"),
        ("1 < 2", "comparisons are not allowed"),
        ("1 and 2", "boolean operators are not allowed"),
        ("1 << 2000", "only + - * / // % ** are allowed"),
        ("~1", "only unary + and - are allowed"),
        ("...", "only numbers are allowed"),
        ("1 +", "is not a valid expression"),
        ("1; 2", "is not a valid expression"),
        ("1\x00", "is not a valid expression"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("1 / 0", "division by zero"),
        ("1 // 0.0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "negative power"),
        ("9 ** 9 ** 9", "exponents must be within"),
        ("10 ** 100000", "exponents must be within"),
        ("10 ** 1000", "more than 1000 digits"),
        ("(10 ** 600) * (10 ** 600)", "more than 1000 digits"),
        ("1e308 * 10", "not a finite number"),
        ("1e999", "not a finite number"),
        ("10.0 ** 400", "too large"),
        ("(10 ** 999) / 1", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("(" * 51 + "1" + ")" * 51, f"nested more than {MAX_NESTING_DEPTH}"),
        ("(1))", "unmatched closing parenthesis"),
        ("((1)", "unclosed parenthesis"),
        ("1" * (MAX_EXPRESSION_CHARS + 1), "at most 1000 characters"),
    ],
)
def test_rejections_name_the_expression_field(expression: str, needle: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        evaluate(expression)
    [violation] = caught.value.violations
    assert violation.field == "expression"
    assert needle in violation.description


def test_nesting_limit_is_inclusive() -> None:
    assert evaluate("(" * MAX_NESTING_DEPTH + "1" + ")" * MAX_NESTING_DEPTH) == 1


def test_field_name_is_configurable() -> None:
    with pytest.raises(InvalidArgument) as caught:
        evaluate("x", field="tool_calls[0].arguments.expression")
    assert caught.value.violations[0].field == "tool_calls[0].arguments.expression"


def test_tool_definition_is_valid_and_json_friendly() -> None:
    check_schema(calculator_schema())
    tool = calculator_tool()
    assert tool.name == "calculator" and tool.blocking
    result = tool.handler({"expression": "6 * 7"})
    assert json.loads(json.dumps(result)) == {"expression": "6 * 7", "value": 42}


_ATOMS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["0", "1", "9", "1e308", "0.0", "10**100000", "9**9**9", "True", "None", "1j", "'s'", "..."]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    st.sampled_from(["().__class__.__bases__[0]", "__import__('os').system('true')", "lambda: 1", "[x for x in ()]"]),
)
_BINARY_OPS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<<", "&", "|", "^", "@", "and", "<", "."])


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, _BINARY_OPS, children).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        children.map(lambda c: f"({c})"),
        st.tuples(st.sampled_from(["-", "+", "~", "not "]), children).map("".join),
        st.tuples(children, st.from_regex(r"[a-z_]{1,10}", fullmatch=True)).map(lambda t: f"({t[0]}).{t[1]}"),
        st.tuples(children, children).map(lambda t: f"{t[0]}[{t[1]}]"),
        children.map(lambda c: f"abs({c})"),
        children.map(lambda c: f"lambda: {c}"),
    )


_EXPRESSIONS = st.recursive(_ATOMS, _combine, max_leaves=12)
_DEEP = st.integers(min_value=1, max_value=5000).map(lambda n: "(" * n + "1" + ")" * n)
_HOSTILE = st.one_of(
    _EXPRESSIONS, _DEEP, st.text(max_size=300), st.text(alphabet="()+-*/%.0123456789e ", max_size=1200)
)


CPU_BUDGET_S = 0.5
"""CPU time of this thread (so a busy machine does not count) that one evaluation may take. The slowest input
here, 999 unary minus signs, takes about 0.1 s (parsing); what the limits forbid (``9**9**9``) takes hours."""


@settings(deadline=None, max_examples=400)
@given(_HOSTILE)
@example("9**9**9")
@example("10**100000")
@example("(10**999)**999")
@example("().__class__.__bases__[0]")
@example("__import__('os').system('true')")
@example("(lambda: 1)()")
@example("True + 1")
@example("~1")
@example("6 << 2")
@example("1 if 1 else 2")
@example("(" * 3000 + "1" + ")" * 3000)
@example("(" * 499 + "1" + ")" * 499)
@example("-" * 999 + "1")
@example("2**" * 333 + "2")
@example("(2**1000)" + "*(2**1000)" * 50)
def test_hostile_input_is_refused_or_computed_exactly(expression: str) -> None:
    """Anything but plain arithmetic is refused; plain arithmetic gives Python's own number or a refusal."""
    started = time.thread_time()
    try:
        value: object = evaluate(expression)
    except InvalidArgument as error:
        assert [violation.field for violation in error.violations] == ["expression"]
        value = None
    assert time.thread_time() - started < CPU_BUDGET_S
    tree = plain_arithmetic(expression)
    if tree is None:
        assert value is None, f"{expression!r} is not plain arithmetic, yet it evaluated to {value!r}"
    elif value is not None:
        # It was computed within the limits, so Python's own evaluation of the same tree is bounded too.
        assert same_number(value, python_value(tree)), expression


_SMALL = st.one_of(
    st.integers(min_value=-1000, max_value=1000).map(str),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(repr),
)
_ARITHMETIC = st.recursive(
    _SMALL,
    lambda children: st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "//", "%"]), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(children, st.integers(min_value=-3, max_value=3)).map(lambda t: f"({t[0]}) ** {t[1]}"),
        st.tuples(st.sampled_from(["-", "+"]), children).map("".join),
    ),
    max_leaves=10,
)


@settings(deadline=None, max_examples=300)
@given(_ARITHMETIC)
def test_plain_arithmetic_equals_python(expression: str) -> None:
    """Small arithmetic is exactly what Python computes (value and int/float type), refused only where Python
    fails (division by zero, overflow) or the result is out of bounds (not finite, 1000 digits, not real)."""
    try:
        expected = python_value(ast.parse(expression, mode="eval"))
    except (ZeroDivisionError, OverflowError):
        expected = None
    out_of_bounds = expected is None or (
        isinstance(expected, complex)
        or (isinstance(expected, float) and not math.isfinite(expected))
        or (isinstance(expected, int) and abs(expected) >= 10**MAX_RESULT_DIGITS)
    )
    try:
        value = evaluate(expression)
    except InvalidArgument:
        assert out_of_bounds, f"{expression!r} was refused; Python gives {expected!r}"
    else:
        assert same_number(value, expected), (expression, value, expected)
