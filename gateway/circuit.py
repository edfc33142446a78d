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

    def allow(self) -> bool:
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

    def record_success(self) -> None:
        """A call succeeded: the circuit closes."""
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._probe_since = None

    def record_failure(self, reason: str) -> None:
        """A call failed with a status that counts (see FAILURE_CODES)."""
        self._failures += 1
        if self._state is CircuitState.OPEN and self._probe_since is None:
            return  # a call that was already in flight when the circuit opened: no new cool-down
        if self._probe_since is not None or self._failures >= self.config.failures:
            self._open(f"{reason} ({self._failures} failures in a row)")

    def record(self, code: grpc.StatusCode, reason: str = "") -> None:
        """Record a call's outcome by its status: OK closes, FAILURE_CODES count, anything else only ends
        a probe (the upstream answered, so it is alive)."""
        if code == grpc.StatusCode.OK:
            self.record_success()
        elif code in FAILURE_CODES:
            self.record_failure(reason or code.name)
        else:
            self.release()

    def release(self) -> None:
        """A call ended without saying anything about the upstream (cancelled by its caller, say)."""
        self._probe_since = None

    def health(self, serving: bool, detail: str = "") -> None:
        """A health-check update: SERVING closes the circuit; anything else opens it at once."""
        if serving:
            self.record_success()
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
