"""An oracle for the calculator tool: whether an expression is plain arithmetic, and what Python makes of it."""

from __future__ import annotations

import ast

_BINARY = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_UNARY = (ast.UAdd, ast.USub)

Number = int | float


def plain_arithmetic(expression: str) -> ast.Expression | None:
    """The parsed expression if it holds only int/float literals, unary + and -, and + - * / // % **, else None.

    Everything else (names, calls, attributes, lambdas, subscripts, strings, booleans, comparisons, other
    operators, text that does not parse) is what the calculator must refuse, whatever Python would make of it.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, *_BINARY, *_UNARY)):
            continue
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY):
            continue
        if isinstance(node, ast.BinOp) and isinstance(node.op, _BINARY):
            continue
        return None
    return tree


def python_value(tree: ast.Expression) -> object:
    """What Python computes for a plain-arithmetic tree (only call it where the work is known to be bounded)."""
    return eval(compile(tree, "<calculator oracle>", "eval"), {"__builtins__": {}}, {})


def same_number(value: object, expected: object) -> bool:
    """Equal in value and in type (an int is not a float: ``7 // 2`` is 3, ``7 / 2`` is 3.5)."""
    return type(value) is type(expected) and value == expected
