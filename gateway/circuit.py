"""Circuit breaker per upstream: consecutive failures (or a failed health check) open it for a cool-down.

While open, callers fail fast instead of piling up on a dead or drowning service. When the cool-down
is over one call at a time is let through as a probe (half-open): its success closes the circuit, its
failure opens it for another cool-down. The health-check stream feeds it too: a service that stops
SERVING opens the circuit at once, and one that reports SERVING again closes it.

Callers record one outcome per request, after their own retries: a request that needed three attempts
is one failure or one success, so that a few unlucky requests at a modest failure rate do not open it.

The clock is injected, so the state machine is tested without sleeping.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

# Statuses that say the upstream itself is in trouble; client mistakes, RESOURCE_EXHAUSTED (alive but busy)
# and cancellations do not count for or against it.
FAILURE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)


class Outcome(enum.Enum):
    """What one call (after its retries) says about its upstream."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"

    @classmethod
    def of(cls, code: grpc.StatusCode) -> Outcome:
        """OK is a success, FAILURE_CODES are failures, anything else says nothing about the upstream."""
        if code == grpc.StatusCode.OK:
            return cls.SUCCESS
        return cls.FAILURE if code in FAILURE_CODES else cls.NEUTRAL


class CircuitState(enum.Enum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitConfig:
    """``failures`` in a row open the circuit for ``cooldown_s``."""

    failures: int = 5
    cooldown_s: float = 2.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError(f"circuit failures must be at least 1, got {self.failures}")
        if not 0 < self.cooldown_s <= 3600:
            raise ValueError(f"circuit cool-down must be in (0, 3600] s, got {self.cooldown_s}")


class CircuitBreaker:
    """The breaker of one upstream. Not thread-safe: used from one event loop."""

    def __init__(
        self, name: str, config: CircuitConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.config = config or CircuitConfig()
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_since: float | None = None
        self.reason = ""
        """Why the circuit last opened."""

    @property
    def state(self) -> CircuitState:
        """The current state (an open circuit whose cool-down is over reads as half-open)."""
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self.config.cooldown_s:
            return CircuitState.HALF_OPEN
        return self._state

    def retry_after_s(self) -> float:
        """Seconds until the circuit lets a probe through (0 when it would now)."""
        if self._state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self.config.cooldown_s - (self._clock() - self._opened_at))

    def can_execute(self) -> bool:
        """Whether a call may go out now. In half-open state only one probe at a time is allowed; a probe
        whose outcome never came back (its caller vanished) is given up after one cool-down."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        now = self._clock()
        if self._probe_since is not None and now - self._probe_since < self.config.cooldown_s:
            return False
        self._state = CircuitState.HALF_OPEN
        self._probe_since = now
        return True

    def record_outcome(self, outcome: Outcome, reason: str = "") -> None:
        """What a call let through by ``can_execute`` found: a success closes the circuit, a failure counts
        towards opening it (or reopens it at once when it was the probe), and a neutral end (a client mistake,
        a cancellation, RESOURCE_EXHAUSTED: the upstream answered) only frees the probe slot."""
        if outcome is Outcome.SUCCESS:
            self._state = CircuitState.CLOSED
            self._failures = 0
            self._probe_since = None
        elif outcome is Outcome.FAILURE:
            self._failures += 1
            if self._state is CircuitState.OPEN and self._probe_since is None:
                return  # a call that was already in flight when the circuit opened: no new cool-down
            if self._probe_since is not None or self._failures >= self.config.failures:
                self._open(f"{reason or 'failure'} ({self._failures} failures in a row)")
        else:
            self._probe_since = None

    def health(self, serving: bool, detail: str = "") -> None:
        """A health-check update: SERVING closes the circuit; anything else opens it at once."""
        if serving:
            self.record_outcome(Outcome.SUCCESS)
        else:
            self._open(f"health check: {detail or 'not serving'}")

    def _open(self, reason: str) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._probe_since = None
        self.reason = reason

    def describe(self) -> str:
        """A message for a call refused by the open circuit."""
        return f"{self.name} circuit is open after {self.reason}; next probe in {self.retry_after_s():.1f} s"
