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
