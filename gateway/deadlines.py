"""Time budgets of a gateway request's stages, inside the client's deadline."""

from __future__ import annotations

from dataclasses import dataclass

from genmesh.deadlines import timeout

# A tool stage's RPC outlives its InvokeMany budget by this much, so that the tools service's reports of the
# calls it cut off (DEADLINE_EXCEEDED, one per call) still arrive.
REPORT_GRACE_S = 0.25
MAX_BUDGET_MS = 600_000
DEADLINE_SHARE = 0.5
"""Most of the client's deadline (of what is left when the request starts) that retrieval and the tool calls may
take; the rest is inference's, so a slow stage degrades the answer instead of leaving no time to give it."""


@dataclass(frozen=True, slots=True)
class StageBudgets:
    """How long retrieval and the tool calls may take, inside the client's deadline (seconds)."""

    retrieval_s: float = 3.0
    tools_s: float = 10.0
    deadline_share: float = DEADLINE_SHARE
    """The share of the client's remaining deadline the pre-inference stages may take, in (0, 1]."""

    def __post_init__(self) -> None:
        for name, value in (("retrieval", self.retrieval_s), ("tools", self.tools_s)):
            if not 0 < value <= MAX_BUDGET_MS / 1000:
                raise ValueError(f"{name} budget must be in (0, {MAX_BUDGET_MS // 1000}] s, got {value}")
        if not 0 < self.deadline_share <= 1:
            raise ValueError(f"stage deadline share must be in (0, 1], got {self.deadline_share}")

    def stage_deadline(self, deadline: float | None, now: float) -> float | None:
        """When retrieval and the tool calls of a request that starts at ``now`` must be done (time.monotonic):
        ``deadline_share`` of the time left to the client's ``deadline``; None without a deadline."""
        if deadline is None:
            return None
        return now + max(0.0, deadline - now) * self.deadline_share


def budget_timeout(deadline: float | None, budget_s: float) -> float:
    """A stage's timeout: its budget, cut short by the request's deadline."""
    left = timeout(deadline)
    return budget_s if left is None else min(left, budget_s)
