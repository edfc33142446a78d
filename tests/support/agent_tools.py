"""Tools for the agent loop's tests, loaded in-process by a real tools service (``support.agent_tools:TOOLS``):
their ledger is this module's, so a test sees from the tool's side when a call started, ended or was cancelled.

Their arguments are closed (Literal values, no extra properties), so that a call generated under the tools'
grammar by the shipped model is always one of a few known ones.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from services.tools.plugins import tool

NAP_S = 0.3
"""How long ``nap`` sleeps."""
STALL_TIMEOUT_S = 0.3
"""``stall``'s own time budget (it would sleep for a minute)."""
DUMP_LINES = 400
"""Lines of ``dump``'s report: some 3,000 tokens."""


@dataclass
class Ledger:
    """What the tools did: (start, end) of each finished nap, and the calls cancelled mid-sleep."""

    naps: list[tuple[float, float]] = field(default_factory=list)
    started: int = 0
    cancelled: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def clear(self) -> None:
        self.naps.clear()
        self.started = self.cancelled = 0

    async def wait(self, done: Any, timeout_s: float = 30.0) -> None:
        """Until ``done()`` holds (each change wakes it)."""
        async with asyncio.timeout(timeout_s):
            while not done():
                self.changed.clear()
                await self.changed.wait()

    def _note(self) -> None:
        self.changed.set()


LEDGER = Ledger()


async def _sleep(seconds: float) -> float:
    LEDGER.started += 1
    LEDGER._note()
    started = time.monotonic()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        LEDGER.cancelled += 1
        LEDGER._note()
        raise
    return started


@tool(idempotent=True)
def weather(city: Literal["Paris", "Rome"]) -> dict[str, Any]:
    """The temperature in a city.

    Args:
        city: Which city.
    """
    return {"city": city, "celsius": 21}


@tool
async def nap() -> dict[str, float]:
    """Sleep a little, then say so."""
    started = await _sleep(NAP_S)
    LEDGER.naps.append((started, time.monotonic()))
    LEDGER._note()
    return {"slept_s": NAP_S}


@tool(timeout_s=STALL_TIMEOUT_S)
async def stall() -> dict[str, float]:
    """Sleep for a minute (past its own time budget)."""
    await _sleep(60.0)
    return {"slept_s": 60.0}


@tool(timeout_s=120.0)
async def hang() -> dict[str, float]:
    """Sleep for a minute."""
    await _sleep(60.0)
    return {"slept_s": 60.0}


@tool(idempotent=True)
def dump() -> dict[str, str]:
    """A long report (far more than the shipped model's context)."""
    return {"report": " ".join(f"line {i} of the report." for i in range(DUMP_LINES))}


TOOLS = [weather, nap, stall, hang, dump]
