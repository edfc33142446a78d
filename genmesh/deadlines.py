"""Deadlines passed hop by hop: a downstream call gets what is left of its caller's time, less a margin."""

from __future__ import annotations

import time

DEADLINE_MARGIN_S = 0.05
"""Downstream calls get the caller's remaining time minus this, so the caller can still answer in time."""


def deadline_after(time_remaining: float | None) -> float | None:
    """The absolute deadline (time.monotonic) of a call with ``time_remaining`` seconds left."""
    return None if time_remaining is None else time.monotonic() + time_remaining


def timeout(deadline: float | None) -> float | None:
    """The timeout of a downstream call: what is left of ``deadline``, less the margin."""
    if deadline is None:
        return None
    return max(0.001, deadline - time.monotonic() - DEADLINE_MARGIN_S)


def left_s(deadline: float | None) -> float:
    """Seconds left to ``deadline`` (infinity without one)."""
    return float("inf") if deadline is None else deadline - time.monotonic()
