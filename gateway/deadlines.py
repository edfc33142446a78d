"""Time budgets of a gateway request: the client's deadline, hop by hop, and each stage's own budget inside it."""

from __future__ import annotations

import time
from dataclasses import dataclass

# Downstream calls get the caller's remaining time minus this margin, so that the gateway
# can still answer before its own deadline.
DEADLINE_MARGIN_S = 0.05
# A tool stage's RPC outlives its InvokeMany budget by this much, so that the tools service's reports of the
# calls it cut off (DEADLINE_EXCEEDED, one per call) still arrive.
REPORT_GRACE_S = 0.25
MAX_BUDGET_MS = 600_000


@dataclass(frozen=True, slots=True)
class StageBudgets:
    """How long retrieval and the tool calls may take, inside the client's deadline (seconds)."""

    retrieval_s: float = 3.0
    tools_s: float = 10.0

    def __post_init__(self) -> None:
        for name, value in (("retrieval", self.retrieval_s), ("tools", self.tools_s)):
            if not 0 < value <= MAX_BUDGET_MS / 1000:
                raise ValueError(f"{name} budget must be in (0, {MAX_BUDGET_MS // 1000}] s, got {value}")


def deadline_after(time_remaining: float | None) -> float | None:
    """The absolute deadline (time.monotonic) of a call with ``time_remaining`` seconds left."""
    return None if time_remaining is None else time.monotonic() + time_remaining


def timeout(deadline: float | None) -> float | None:
    """The timeout of a downstream call: what is left of ``deadline``, less the margin."""
    if deadline is None:
        return None
    return max(0.001, deadline - time.monotonic() - DEADLINE_MARGIN_S)


def budget_timeout(deadline: float | None, budget_s: float) -> float:
    """A stage's timeout: its budget, cut short by the request's deadline."""
    left = timeout(deadline)
    return budget_s if left is None else min(left, budget_s)


def left_s(deadline: float | None) -> float:
    """Seconds left to ``deadline`` (infinity without one)."""
    return float("inf") if deadline is None else deadline - time.monotonic()
