"""The calculator tool: safe arithmetic by walking a bounded Python expression AST, never eval."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from genmesh.errors import InvalidArgument
from services.tools.tool import Tool

MAX_EXPRESSION_CHARS = 1000
"""Longest expression accepted, in characters."""
MAX_NESTING_DEPTH = 50
"""Deepest parenthesis nesting accepted."""
MAX_EXPONENT = 1000
"""Largest absolute exponent accepted by ``**``."""
MAX_RESULT_DIGITS = 1000
"""Integers (intermediate or final) must have fewer decimal digits than this."""
_INT_LIMIT = 10**MAX_RESULT_DIGITS
_MAX_BITS = math.ceil(MAX_RESULT_DIGITS * math.log2(10)) + 1

Number = int | float

_BINARY: Mapping[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = MappingProxyType(
    {
        ast.Add: ("+", operator.add),
        ast.Sub: ("-", operator.sub),
        ast.Mult: ("*", operator.mul),
        ast.Div: ("/", operator.truediv),
        ast.FloorDiv: ("//", operator.floordiv),
        ast.Mod: ("%", operator.mod),
        ast.Pow: ("**", operator.pow),
    }
)

_REJECTED: tuple[tuple[tuple[type[ast.AST], ...], str], ...] = (
    ((ast.Name,), "names are not allowed"),
    ((ast.Attribute,), "attribute access is not allowed"),
    ((ast.Call,), "function calls are not allowed"),
    ((ast.Lambda,), "lambdas are not allowed"),
    ((ast.Subscript, ast.Slice), "subscripts are not allowed"),
    ((ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp), "comprehensions are not allowed"),
    ((ast.JoinedStr, ast.FormattedValue), "strings are not allowed"),
    ((ast.List, ast.Tuple, ast.Set, ast.Dict, ast.Starred), "lists, tuples, sets and dicts are not allowed"),
    ((ast.Compare,), "comparisons are not allowed"),
    ((ast.BoolOp,), "boolean operators are not allowed"),
    ((ast.IfExp,), "conditional expressions are not allowed"),
    ((ast.NamedExpr,), "assignment expressions are not allowed"),
    ((ast.Await, ast.Yield, ast.YieldFrom), "await and yield are not allowed"),
)


def _bad(field: str, description: str) -> InvalidArgument:
    return InvalidArgument.field(field, description)


def _check_nesting(expression: str, field: str) -> None:
    """Reject unbalanced or too deeply nested brackets on the raw text, before the parser sees it."""
    depth = 0
    for char in expression:
        if char in "([{":
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                raise _bad(field, f"is nested more than {MAX_NESTING_DEPTH} levels deep")
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                raise _bad(field, "has an unmatched closing parenthesis")
    if depth:
        raise _bad(field, "has an unclosed parenthesis")


def _check_node(node: ast.AST, field: str) -> None:
    """Reject anything that is not a real numeric constant or an allowed arithmetic operator."""
    where = f" (column {node.col_offset + 1})" if isinstance(node, ast.expr) else ""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            raise _bad(field, f"booleans are not allowed{where}")
        if isinstance(value, str | bytes):
            raise _bad(field, f"strings are not allowed{where}")
        if isinstance(value, complex):
            raise _bad(field, f"complex numbers are not allowed{where}")
        if not isinstance(value, int | float):
            raise _bad(field, f"only numbers are allowed, found {type(value).__name__}{where}")
        _check_value(value, field)
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.UAdd | ast.USub):
            raise _bad(field, f"only unary + and - are allowed{where}")
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise _bad(field, f"only + - * / // % ** are allowed{where}")
        return
    if isinstance(node, ast.Expression | ast.operator | ast.unaryop | ast.expr_context):
        return
    for kinds, message in _REJECTED:
        if isinstance(node, kinds):
            raise _bad(field, f"{message}{where}")
    raise _bad(field, f"{type(node).__name__} is not allowed{where}")


def _check_value(value: Number, field: str) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(field, "the result is not a finite number")
    if isinstance(value, int) and abs(value) >= _INT_LIMIT:
        raise _bad(field, f"the result has more than {MAX_RESULT_DIGITS} digits")
    return value


def _check_operands(symbol: str, left: Number, right: Number, field: str) -> None:
    """Refuse operations whose result would be too large before computing them."""
    if symbol == "**":
        if abs(right) > MAX_EXPONENT:
            raise _bad(field, f"exponents must be within ±{MAX_EXPONENT}")
        if right > 0 and abs(left) > 1 and right * math.log10(abs(left)) >= MAX_RESULT_DIGITS:
            raise _bad(field, f"the result has more than {MAX_RESULT_DIGITS} digits")
    elif (
        symbol == "*"
        and isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right.bit_length() > _MAX_BITS + 1
    ):
        raise _bad(field, f"the result has more than {MAX_RESULT_DIGITS} digits")


def _apply(symbol: str, function: Callable[[Any, Any], Any], left: Number, right: Number, field: str) -> Number:
    _check_operands(symbol, left, right, field)
    try:
        result = function(left, right)
    except ZeroDivisionError:
        if symbol == "**":
            raise _bad(field, "zero cannot be raised to a negative power") from None
        raise _bad(field, "division by zero") from None
    except OverflowError:
        raise _bad(field, "the result is too large") from None
    if isinstance(result, complex):
        raise _bad(field, "the result is not a real number")
    return _check_value(result, field)


def _evaluate(tree: ast.Expression, field: str) -> Number:
    """Post-order evaluation with an explicit stack, so long operator chains cannot exhaust recursion."""
    values: list[Number] = []
    pending: list[tuple[ast.expr, bool]] = [(tree.body, False)]
    while pending:
        node, expanded = pending.pop()
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float):  # pragma: no cover - _check_node rejected it
                raise _bad(field, "only numbers are allowed")
            values.append(node.value)
        elif isinstance(node, ast.UnaryOp):
            if not expanded:
                pending.extend([(node, True), (node.operand, False)])
            elif isinstance(node.op, ast.USub):
                values.append(_check_value(-values.pop(), field))
        elif isinstance(node, ast.BinOp):
            if not expanded:
                pending.extend([(node, True), (node.right, False), (node.left, False)])
            else:
                right, left = values.pop(), values.pop()
                symbol, function = _BINARY[type(node.op)]
                values.append(_apply(symbol, function, left, right, field))
        else:  # pragma: no cover - _check_node has rejected every other node
            raise _bad(field, f"{type(node).__name__} is not allowed")
    return values.pop()


def evaluate(expression: str, field: str = "expression") -> Number:
    """Evaluate an arithmetic expression of numbers, + - * / // % ** and parentheses.

    Raises InvalidArgument on ``field`` for anything else (names, calls, attributes, strings…), for input
    over MAX_EXPRESSION_CHARS or nested over MAX_NESTING_DEPTH, for exponents beyond ±MAX_EXPONENT, integers
    of MAX_RESULT_DIGITS digits or more, division by zero and non-finite or complex results. Work is bounded:
    no step ever builds a number larger than the limits allow.
    """
    if not isinstance(expression, str):
        raise _bad(field, "must be a string")
    if not expression.strip():
        raise _bad(field, "must not be empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise _bad(field, f"must be at most {MAX_EXPRESSION_CHARS} characters, got {len(expression)}")
    _check_nesting(expression, field)
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise _bad(field, f"is not a valid expression: {error.msg}") from None
    except (ValueError, MemoryError, RecursionError):
        raise _bad(field, "is not a valid expression") from None
    for node in ast.walk(tree):
        _check_node(node, field)
    return _evaluate(tree, field)


def _handle(arguments: dict[str, Any]) -> dict[str, Any]:
    expression = arguments["expression"]
    return {"expression": expression, "value": evaluate(expression)}


def calculator_schema() -> dict[str, Any]:
    """The JSON Schema of the calculator's arguments (a fresh copy)."""
    return {
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "Arithmetic with numbers, + - * / // % ** and parentheses, e.g. (2 + 3) * 4 ** 2.",
                "minLength": 1,
                "maxLength": MAX_EXPRESSION_CHARS,
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    }


def calculator_tool() -> Tool:
    """The built-in ``calculator`` tool; returns ``{"expression": str, "value": number}``."""
    return Tool(
        name="calculator",
        description="Evaluate an arithmetic expression exactly (integers) or in double precision (floats).",
        parameters=calculator_schema(),
        handler=_handle,
        timeout_s=2.0,
        idempotent=True,
        blocking=True,
    )
