"""One guarded, retried upstream call: circuit-breaker admission, attempts with jittered back-off, one outcome.

Every call the gateway makes to an upstream goes through ``UpstreamGuard.attempts``::

    async for attempt in guard.attempts(deadline, "Query"):   # raises CircuitOpen when the breaker refuses
        with attempt:                                # records the outcome; always frees the probe slot
            response = await stub.Query(request, timeout=...)

The rules live here and nowhere else:

- an attempt is admitted by the breaker (``can_execute``); a refusal raises ``CircuitOpen`` (UNAVAILABLE) and
  is never retried: an open circuit means "fail fast";
- an attempt that fails with a retryable code (UNAVAILABLE) is tried again after a full-jitter exponential
  back-off while attempts and time remain, unless it was the half-open probe or it already committed
  (relayed a first message to the client);
- the breaker hears one outcome per request, after the retries: the success, or the last failure (a failed
  probe at once, so that it reopens the circuit without waiting for retries). An attempt that ends any other
  way (a client mistake raised from inside, a cancellation) only frees the probe slot.

An upstream with several replicas (inference) passes a chooser instead of one breaker: each attempt then
goes to the replica it picks, avoiding those the call already tried, and a failure that is retried counts
against the replica that failed (the next attempt goes elsewhere).

Callers with a finer rule (the tool stage retries only idempotent tools) record outcomes and ask for another
attempt themselves with ``succeeded``/``failed``/``retry``; what they do not record is recorded on exit.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import grpc

from gateway.circuit import CircuitBreaker, CircuitState, Outcome
from genmesh.deadlines import DEADLINE_MARGIN_S, left_s
from genmesh.errors import Unavailable

log = logging.getLogger("genmesh.gateway")

RETRY_BACKOFF_S = 0.05
"""First back-off between attempts; doubled each time, with full jitter."""


class CircuitOpen(Unavailable):
    """The upstream's circuit breaker refused the call (UNAVAILABLE, without trying)."""


class Target(Protocol):
    """Where an attempt goes: a replica (or the one upstream) and its breaker."""

    @property
    def name(self) -> str: ...

    @property
    def breaker(self) -> CircuitBreaker: ...


@dataclass(frozen=True, slots=True)
class SingleTarget:
    """An upstream reached through one channel: every attempt goes there."""

    breaker: CircuitBreaker

    @property
    def name(self) -> str:
        return self.breaker.name


Choose = Callable[[frozenset[str]], Target | None]
"""Picks the target of the next attempt, given the names already tried; None when there is none at all."""


@dataclass(frozen=True, slots=True)
class RetryRule:
    """How often a call is tried, after what back-off, and for which codes."""

    attempts: int = 1
    first_backoff_s: float = RETRY_BACKOFF_S
    retry_codes: frozenset[grpc.StatusCode] = field(default=frozenset({grpc.StatusCode.UNAVAILABLE}))

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.first_backoff_s < 0:
            raise ValueError(f"back-off must not be negative, got {self.first_backoff_s}")

    def backoff_s(self, attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
        """The wait after attempt number ``attempt`` (1-based) failed: full jitter over a doubling ceiling."""
        return uniform(0.0, self.first_backoff_s * 2 ** (attempt - 1))


class Attempt:
    """One try of a guarded call; a context manager that records what the breaker must hear."""

    def __init__(
        self, guard: UpstreamGuard, target: Target, number: int, probe: bool, backoff_s: float, deadline: float | None
    ) -> None:
        self.target = target
        self.number = number
        self.probe = probe
        """Whether this attempt is the half-open circuit's probe."""
        self.backoff_s = backoff_s
        self._guard = guard
        self._deadline = deadline
        self._recorded = False
        self._committed = False
        self.retry_requested = False
        self.swallowed: grpc.aio.AioRpcError | None = None
        """The failure this attempt ended with when the guard chose to try again."""

    def is_last(self) -> bool:
        """No attempt follows this one: the count is used up, or the back-off would not fit in the time left."""
        return (
            self.number >= self._guard.rule.attempts or left_s(self._deadline) < self.backoff_s + 2 * DEADLINE_MARGIN_S
        )

    def may_retry(self, code: grpc.StatusCode) -> bool:
        """Whether a failure with ``code`` may be tried again by another attempt."""
        return code in self._guard.rule.retry_codes and not (self.probe or self._committed or self.is_last())

    def commit(self) -> None:
        """The call has produced something the client saw (a stream's first message): it succeeded as far as
        the breaker is concerned, and it is never tried again."""
        if not self._committed:
            self._committed = True
            self.succeeded()

    def succeeded(self) -> None:
        """Tell the breaker the upstream answered well (once per attempt)."""
        self._record(Outcome.SUCCESS, "")

    def failed(self, code: grpc.StatusCode, reason: str, *, counts: bool = False) -> None:
        """Tell the breaker the call failed with ``code``; ``counts`` makes it a failure whatever the code
        (a stage that missed its own budget: the upstream was too slow)."""
        self._record(Outcome.FAILURE if counts else Outcome.of(code), reason)

    def retry(self) -> None:
        """Ask for another attempt after the back-off (the caller checked ``may_retry``)."""
        self.retry_requested = True

    def _record(self, outcome: Outcome, reason: str) -> None:
        if not self._recorded:
            self._recorded = True
            if self._guard.side and outcome is Outcome.SUCCESS:
                outcome = Outcome.NEUTRAL  # a side call answering says nothing of the main call's health
            self.target.breaker.record_outcome(outcome, reason)

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        if isinstance(error, grpc.aio.AioRpcError) and not self._recorded:
            code = error.code()
            if self.may_retry(code):
                self.swallowed = error
                self.retry()
                # retried on the same upstream: only the last attempt's outcome counts; on another replica:
                # this one failed
                self._record(Outcome.of(code) if self._guard.several() else Outcome.NEUTRAL, "")
                return True  # swallowed: the loop makes the next attempt
            self.failed(code, f"{self.target.name} {code.name}")
        elif error is None and not self.retry_requested:
            self.succeeded()
        self._record(Outcome.NEUTRAL, "")  # ended any other way: frees the probe slot
        return False


class UpstreamGuard:
    """The breaker(s) and retry rule of calls to one upstream; ``attempts`` runs a call under them.

    ``targets`` is the upstream's one breaker, or a chooser over its replicas (``several`` then says whether
    there is more than one); ``retried`` is called once per attempt after the first."""

    def __init__(
        self,
        targets: CircuitBreaker | Choose,
        rule: RetryRule | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        uniform: Callable[[float, float], float] = random.uniform,
        several: Callable[[], bool] = lambda: False,
        retried: Callable[[], None] | None = None,
        side: bool = False,
    ) -> None:
        if isinstance(targets, CircuitBreaker):
            single = SingleTarget(targets)
            self.choose: Choose = lambda tried: single
        else:
            self.choose = targets
        self.several = several
        self.side = side
        """Calls beside the upstream's main one (CountTokens beside Generate): their failures count against the
        circuit, their successes do not close it (a replica counting tokens may still fail every Generate)."""
        self.retried = retried
        """Counts each attempt after the first (the gateway's metrics), when given."""
        self.rule = rule or RetryRule()
        self._sleep = sleep
        self._uniform = uniform

    def attempts(self, deadline: float | None, call: str) -> Attempts:
        """The attempts of one ``call`` (its name, for the log) that must end by ``deadline``
        (time.monotonic; None: no deadline)."""
        return Attempts(self, deadline, call)


class Attempts:
    """Async iterator over the attempts of one call: the next one comes only when the last asked to retry."""

    def __init__(self, guard: UpstreamGuard, deadline: float | None, call: str) -> None:
        self._guard = guard
        self._deadline = deadline
        self._call = call
        self._last: Attempt | None = None
        self._tried: frozenset[str] = frozenset()

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> Attempt:
        last = self._last
        if last is not None:
            if not last.retry_requested:
                raise StopAsyncIteration
            detail = last.swallowed.details() if last.swallowed is not None else "some calls are held"
            log.info(f"retrying {self._call}", extra={"attempt": last.number + 1, "detail": detail})
            if self._guard.retried is not None:
                self._guard.retried()
            await self._guard._sleep(last.backoff_s)
        number = 1 if last is None else last.number + 1
        target = self._guard.choose(self._tried)
        if target is None:
            raise Unavailable(f"no replica to call {self._call} on: the target resolves to no address")
        breaker = target.breaker
        probe = breaker.state is not CircuitState.CLOSED
        if not breaker.can_execute():
            raise CircuitOpen(breaker.describe())
        self._tried |= {target.name}
        backoff_s = self._guard.rule.backoff_s(number, self._guard._uniform)
        self._last = Attempt(self._guard, target, number, probe, backoff_s, self._deadline)
        return self._last
