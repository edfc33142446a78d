"""An example plugin module for the tests: typed functions turned into tools with ``@tool``.

Loaded by the tools service with ``--tools-module plugin_example:make_tools`` (the tests put tests/tools on
PYTHONPATH). ``make_tools`` is a factory so that the tools share a ledger of the sleeps they ran, which the
``sleep_probe`` tool reports: that is how a test observes, from the tool's side, that a call was cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from services.tools.plugins import tool


@tool(idempotent=True)
def greet(name: str, punctuation: Literal["!", "?", "."] = "!", times: int = 1) -> dict[str, str]:
    """Greet someone by name.

    Args:
        name: Who to greet.
        punctuation: How to end the greeting.
        times: How many times to say hello.
    """
    return {"greeting": " ".join(["Hello"] * times) + f", {name}{punctuation}"}


@dataclass
class SleepLedger:
    """What the sleep tool did, by tag: started, finished, cancelled (and so how many still run)."""

    counts: Counter[str] = field(default_factory=Counter)

    def running(self, tag: str) -> int:
        return self.counts[f"{tag}:started"] - self.counts[f"{tag}:finished"] - self.counts[f"{tag}:cancelled"]


def make_tools() -> list[Callable[..., Any]]:
    """The example tools: greet, sleep_ms and sleep_probe (sharing one ledger)."""
    ledger = SleepLedger()

    @tool(timeout_s=30.0)
    async def sleep_ms(ms: int, tag: str = "") -> dict[str, Any]:
        """Sleep for a while, then say how long it slept.

        Args:
            ms: Milliseconds to sleep.
            tag: Label under which sleep_probe counts this call.
        """
        ledger.counts[f"{tag}:started"] += 1
        started = time.monotonic()
        try:
            await asyncio.sleep(ms / 1000)
        except asyncio.CancelledError:
            ledger.counts[f"{tag}:cancelled"] += 1
            raise
        ledger.counts[f"{tag}:finished"] += 1
        return {"slept_ms": ms, "took_ms": (time.monotonic() - started) * 1000.0}

    @tool(idempotent=True)
    async def sleep_probe(tag: str = "") -> dict[str, int]:
        """How many sleep_ms calls with this tag started, finished, were cancelled and are running."""
        return {
            "started": ledger.counts[f"{tag}:started"],
            "finished": ledger.counts[f"{tag}:finished"],
            "cancelled": ledger.counts[f"{tag}:cancelled"],
            "running": ledger.running(tag),
        }

    return [greet, sleep_ms, sleep_probe]
