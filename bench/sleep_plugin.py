"""The benchmark's 200 ms tool: a plugin the tools service loads with ``--tools-module bench.sleep_plugin``.

Not a built-in: a sleeping tool is only useful to measure the fan-out machinery around it.
"""

from __future__ import annotations

import asyncio

from services.tools.plugins import tool


@tool(timeout_s=60.0, idempotent=True)
async def sleep_ms(ms: int) -> dict[str, int]:
    """Sleep for ms milliseconds on the event loop, then say so.

    Args:
        ms: Milliseconds to sleep.
    """
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}


@tool(timeout_s=60.0, idempotent=True)
async def nap() -> dict[str, int]:
    """Sleep 200 ms on the event loop, then say so (no arguments: an agent benchmark's model cannot get them wrong)."""
    await asyncio.sleep(0.2)
    return {"slept_ms": 200}
