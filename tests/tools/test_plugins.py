"""Tests for user plugins: schemas from type hints and docstrings, @tool, loading by spec and entry point."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from genmesh.errors import InvalidArgument
from services.tools.plugins import (
    TOOL_ATTRIBUTE,
    PluginError,
    collect_tools,
    function_tool,
    load_entry_points,
    load_spec,
    parse_docstring,
    schema_for,
    tool,
)
from services.tools.registry import ToolRegistry
from services.tools.tool import Tool


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


def _typed(
    city: str,
    count: int,
    ratio: float = 0.5,
    loud: bool = False,
    unit: Literal["C", "F"] = "C",
    tags: list[str] | None = None,
    weights: dict[str, float] | None = None,
    mode: Mode = Mode.SAFE,
    note: Annotated[str, "free text"] = "",
    maybe: int | None = None,
) -> None:
    """Summary line
    that wraps.

    Args:
        city (str): The city,
            continued here.
        count: How many.

    Returns:
        Nothing.
    """


def test_schema_comes_from_type_hints_defaults_and_docstring() -> None:
    schema = schema_for(_typed, parse_docstring(_typed.__doc__ or "")[1])
    assert schema["required"] == ["city", "count"] and schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["city"] == {"type": "string", "description": "The city, continued here."}
    assert props["count"] == {"type": "integer", "description": "How many."}
    assert props["ratio"] == {"type": "number", "default": 0.5}
    assert props["loud"] == {"type": "boolean", "default": False}
    assert props["unit"] == {"enum": ["C", "F"], "type": "string", "default": "C"}
    assert props["tags"] == {"type": ["array", "null"], "items": {"type": "string"}, "default": None}
    assert props["weights"]["additionalProperties"] == {"type": "number"}
    assert props["mode"] == {"enum": ["fast", "safe"], "default": "safe"}
    assert props["note"] == {"type": "string", "description": "free text", "default": ""}
    assert props["maybe"] == {"type": ["integer", "null"], "default": None}


def test_numpy_style_docstrings() -> None:
    summary, args = parse_docstring(
        """Find things.

        Parameters
        ----------
        query : str
            What to find,
            in words.
        limit : int
            At most this many.

        Returns
        -------
        list
        """
    )
    assert summary == "Find things."
    assert args == {"query": "What to find, in words.", "limit": "At most this many."}


def test_decorator_keeps_the_function_and_attaches_a_tool() -> None:
    @tool(idempotent=True, timeout_s=3)
    def add(a: int, b: int = 2) -> int:
        """Add two integers."""
        return a + b

    @tool
    async def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    assert add(1) == 3, "the function is still a function"
    made: Tool = getattr(add, TOOL_ATTRIBUTE)
    assert (made.name, made.description, made.idempotent, made.timeout_s, made.blocking, made.source) == (
        "add",
        "Add two integers.",
        True,
        3,
        True,
        "plugin",
    )
    assert getattr(shout, TOOL_ATTRIBUTE).blocking is False, "async tools run on the event loop"


async def test_plugin_tools_run_through_the_registry_with_validation() -> None:
    @tool
    def pick(mode: Mode, times: int = 1) -> dict[str, Any]:
        """Echo an enum member back."""
        assert isinstance(mode, Mode), "JSON values become enum members"
        return {"mode": mode.value, "times": times}

    with ToolRegistry(max_workers=1) as registry:
        registry.register(getattr(pick, TOOL_ATTRIBUTE))
        result = await registry.invoke("pick", '{"mode": "fast"}')
        assert json.loads(result.result_json) == {"mode": "fast", "times": 1}
        with pytest.raises(InvalidArgument) as caught:
            await registry.invoke("pick", '{"mode": "slow", "times": "x"}', field_prefix="arguments_json")
        assert [v.field for v in caught.value.violations] == ["arguments_json.mode", "arguments_json.times"]


def test_unsupported_signatures_are_refused_at_decoration() -> None:
    def no_hint(x) -> None:  # type: ignore[no-untyped-def]
        """x."""

    def var_args(*numbers: int) -> None:
        """x."""

    def bad_type(path: Path) -> None:
        """x."""

    def bad_default(items: list[int] = [1]) -> None:  # noqa: B006
        """x."""

    cases: list[tuple[Callable[..., Any], str]] = [
        (no_hint, "type hint"),
        (var_args, "args"),
        (bad_type, "Path"),
        (bad_default, "defaults"),
    ]
    for fn, needle in cases:
        with pytest.raises(PluginError, match=needle):
            function_tool(fn)

    async def coroutine(x: int) -> int:
        return x

    with pytest.raises(PluginError, match="blocking"):
        function_tool(coroutine, blocking=True)
    with pytest.raises(PluginError, match="tool name"):
        function_tool(lambda: None, name="has space")


def test_collect_tools_accepts_tools_lists_modules_and_factories() -> None:
    import plugin_example

    by_factory = collect_tools(plugin_example.make_tools, "test")
    assert [t.name for t in by_factory] == ["greet", "sleep_ms", "sleep_probe"]
    assert [t.name for t in collect_tools(plugin_example, "test")] == ["greet"], "a module: its @tool functions"
    assert [t.name for t in load_spec("plugin_example:greet")] == ["greet"]
    assert [t.name for t in load_spec("plugin_example:make_tools")] == ["greet", "sleep_ms", "sleep_probe"]
    greet = by_factory[0]
    assert greet.parameters["properties"]["punctuation"]["enum"] == ["!", "?", "."]
    assert greet.parameters["properties"]["name"]["description"] == "Who to greet."
    for spec, needle in [
        ("no_such_module_xyz:tools", "cannot import"),
        ("plugin_example:nope", "no attribute"),
        ("plugin_example:", "module:attr"),
        ("plugin_example:SleepLedger", "calling it failed|not a tool"),
        ("json", "no @tool functions"),
    ]:
        with pytest.raises(PluginError, match=needle):
            load_spec(spec)


def test_entry_points_are_loaded_and_broken_ones_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "genmesh_demo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: genmesh-demo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[genmesh.tools]\ndemo = plugin_example:make_tools\nbroken = no_such_module_xyz:tools\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert str(tmp_path) in sys.path
    loaded = load_entry_points()
    assert [t.name for t in loaded] == ["greet", "sleep_ms", "sleep_probe"]
