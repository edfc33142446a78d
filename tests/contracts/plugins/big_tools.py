"""A plugin of ten tools whose descriptions are about 1 MiB each, so that ListTools needs several 4 MiB pages.

Loaded by the tools service with ``--tools-module big_tools:make_tools`` (the test puts this folder on PYTHONPATH).
"""

from __future__ import annotations

from typing import Any

from services.tools.tool import Tool

COUNT = 10
DESCRIPTION_BYTES = 1_000_000


def _nothing(arguments: dict[str, Any]) -> dict[str, Any]:
    return {}


def make_tools() -> list[Tool]:
    """Tools big_00 .. big_09, each described by a megabyte of text."""
    return [
        Tool(
            name=f"big_{i:02d}",
            description=f"Tool {i}. " + "x" * DESCRIPTION_BYTES,
            parameters={"type": "object", "properties": {}},
            handler=_nothing,
            source="plugin",
        )
        for i in range(COUNT)
    ]
