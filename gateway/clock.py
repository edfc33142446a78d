"""When each stage of one gateway request started and ended, for the Completion's timing breakdown."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class StageClock:
    """Start and end of every stage, in ms since the request arrived."""

    origin: float = field(default_factory=time.perf_counter)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    """The agent loop's step of a span (``inference#2``, ``tool:<call_id>``); spans not in it are step 0."""

    def now_ms(self) -> float:
        return (time.perf_counter() - self.origin) * 1000.0

    async def timed(self, stage: str, work: Awaitable[T]) -> T:
        """Await ``work``, recording its span under ``stage`` (also when it fails)."""
        start = self.now_ms()
        try:
            return await work
        finally:
            self.spans[stage] = (start, self.now_ms())

    def span_ms(self, prefix: str) -> float:
        """From the first start to the last end of the stages whose names start with ``prefix`` (0 if none)."""
        matching = [span for name, span in self.spans.items() if name.startswith(prefix)]
        if not matching:
            return 0.0
        return max(end for _, end in matching) - min(start for start, _ in matching)

    def union_ms(self, prefix: str) -> float:
        """How long at least one of the stages whose names start with ``prefix`` ran: their spans' union (0 if
        none), so that the gaps between them (an agent loop's generations between its steps' calls) are left out."""
        total, reached = 0.0, float("-inf")
        for start, end in sorted(span for name, span in self.spans.items() if name.startswith(prefix)):
            if end > reached:
                total += end - max(start, reached)
                reached = end
        return total
