"""The guarded upstream call: breaker admission, retry rules and outcome recording, on injected clocks."""

from __future__ import annotations

import time

import grpc
import pytest

from gateway.circuit import CircuitBreaker, CircuitConfig, CircuitState
from gateway.resilience import Attempt, CircuitOpen, RetryRule, UpstreamGuard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """Records the back-offs instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _breaker(guard: UpstreamGuard) -> CircuitBreaker:
    target = guard.choose(frozenset())
    assert target is not None
    return target.breaker


def _state(guard: UpstreamGuard) -> CircuitState:
    return _breaker(guard).state  # a call, so that mypy does not narrow the property between checks


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"{code.name} injected")


def _guard(
    attempts: int = 3, failures: int = 1, clock: Clock | None = None, sleeps: Sleeps | None = None
) -> UpstreamGuard:
    breaker = CircuitBreaker("upstream", CircuitConfig(failures, 2.0), clock or Clock())
    return UpstreamGuard(breaker, RetryRule(attempts), sleep=sleeps or Sleeps(), uniform=lambda low, high: high)


async def _run(
    guard: UpstreamGuard,
    outcomes: list[grpc.StatusCode],
    deadline: float | None = None,
    made: list[int] | None = None,
) -> list[int]:
    """Attempt numbers made (into ``made``) while each attempt fails with the next of ``outcomes`` (OK: succeeds)."""
    made = [] if made is None else made
    async for attempt in guard.attempts(deadline, "Call"):
        with attempt:
            made.append(attempt.number)
            code = outcomes[len(made) - 1]
            if code != grpc.StatusCode.OK:
                raise _error(code)
    return made


async def test_unavailable_is_retried_with_doubling_backoff_and_counts_once() -> None:
    sleeps = Sleeps()
    guard = _guard(attempts=4, failures=2, sleeps=sleeps)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _run(guard, [grpc.StatusCode.UNAVAILABLE] * 4)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sleeps.waits == [0.05, 0.1, 0.2], "full jitter under a ceiling that doubles (jitter pinned to its maximum)"
    assert _state(guard) is CircuitState.CLOSED, "four failed attempts are one failed request"
    with pytest.raises(grpc.aio.AioRpcError):
        await _run(guard, [grpc.StatusCode.UNAVAILABLE] * 4)
    assert _state(guard) is CircuitState.OPEN, "the second failed request opens a 2-failure circuit"


async def test_a_retry_that_succeeds_is_a_success() -> None:
    guard = _guard(attempts=3, failures=1)
    assert await _run(guard, [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK]) == [1, 2]
    assert _state(guard) is CircuitState.CLOSED


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_other_failures_are_not_retried(code: grpc.StatusCode) -> None:
    guard = _guard(attempts=3, failures=1)
    made: list[int] = []
    with pytest.raises(grpc.aio.AioRpcError):
        async for attempt in guard.attempts(None, "Call"):
            with attempt:
                made.append(attempt.number)
                raise _error(code)
    assert made == [1]
    expected = CircuitState.OPEN if code == grpc.StatusCode.INTERNAL else CircuitState.CLOSED
    assert _state(guard) is expected, "INTERNAL counts against the upstream; a deadline does not"


async def test_client_mistakes_are_neither_retried_nor_counted() -> None:
    guard = _guard(attempts=3, failures=1)
    with pytest.raises(grpc.aio.AioRpcError):
        await _run(guard, [grpc.StatusCode.INVALID_ARGUMENT])
    assert _state(guard) is CircuitState.CLOSED


async def test_an_attempt_that_committed_is_never_retried() -> None:
    guard = _guard(attempts=3, failures=1)
    made = 0
    with pytest.raises(grpc.aio.AioRpcError):
        async for attempt in guard.attempts(None, "Generate"):
            with attempt:
                made += 1
                attempt.commit()  # a first token went to the client
                assert not attempt.may_retry(grpc.StatusCode.UNAVAILABLE)
                raise _error(grpc.StatusCode.UNAVAILABLE)
    assert made == 1
    assert _state(guard) is CircuitState.CLOSED, "the stream had succeeded as far as the breaker is concerned"


async def test_an_open_circuit_refuses_without_calling_and_the_probe_is_not_retried() -> None:
    clock = Clock()
    guard = _guard(attempts=3, failures=1, clock=clock)
    with pytest.raises(grpc.aio.AioRpcError):
        await _run(guard, [grpc.StatusCode.INTERNAL])
    made: list[int] = []
    with pytest.raises(CircuitOpen, match="circuit is open"):
        await _run(guard, [grpc.StatusCode.OK], made=made)
    assert made == []
    clock.now += 2.0  # the cool-down is over: one probe
    with pytest.raises(grpc.aio.AioRpcError):
        await _run(guard, [grpc.StatusCode.UNAVAILABLE] * 3, made=made)
    assert made == [1], "the probe is not retried"
    assert _state(guard) is CircuitState.OPEN, "the failed probe reopened it at once"
    clock.now += 2.0
    assert await _run(guard, [grpc.StatusCode.OK]) == [1]
    assert _state(guard) is CircuitState.CLOSED, "the probe's success closed it"


async def test_a_probe_that_ends_without_an_outcome_frees_the_probe_slot() -> None:
    clock = Clock()
    guard = _guard(attempts=1, failures=1, clock=clock)
    with pytest.raises(grpc.aio.AioRpcError):
        await _run(guard, [grpc.StatusCode.INTERNAL])
    clock.now += 2.0
    with pytest.raises(ValueError, match="client mistake"):
        async for attempt in guard.attempts(None, "Call"):
            with attempt:
                raise ValueError("a client mistake found inside the call")
    assert _breaker(guard).can_execute(), "the next probe may go"


async def test_no_retry_when_the_backoff_would_not_fit_in_the_time_left() -> None:
    sleeps = Sleeps()
    guard = _guard(attempts=3, failures=5, sleeps=sleeps)
    with pytest.raises(grpc.aio.AioRpcError):
        await _run(guard, [grpc.StatusCode.UNAVAILABLE] * 3, deadline=time.monotonic() + 0.12)
    assert sleeps.waits == [], "0.05 s back-off + 0.1 s margins exceed the 0.12 s left"
    assert await _run(guard, [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK], deadline=time.monotonic() + 10) == [
        1,
        2,
    ]


async def test_callers_with_a_finer_rule_ask_for_another_attempt_themselves() -> None:
    guard = _guard(attempts=2, failures=1)
    seen: list[Attempt] = []
    async for attempt in guard.attempts(None, "InvokeMany"):
        with attempt:
            seen.append(attempt)
            if attempt.may_retry(grpc.StatusCode.UNAVAILABLE):
                attempt.succeeded()  # the stream worked, one of its calls is held for another try
                attempt.retry()
    assert [a.number for a in seen] == [1, 2]
    assert not seen[1].may_retry(grpc.StatusCode.UNAVAILABLE), "the last attempt may not retry"
    assert _state(guard) is CircuitState.CLOSED


def test_the_rule_is_checked() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryRule(0)
    with pytest.raises(ValueError, match="back-off"):
        RetryRule(2, -1.0)


async def test_a_side_call_s_success_does_not_close_the_circuit_its_failure_counts() -> None:
    breaker = CircuitBreaker("inference", CircuitConfig(2, 2.0), Clock())
    main = UpstreamGuard(breaker, RetryRule(1), sleep=Sleeps())
    side = UpstreamGuard(breaker, RetryRule(1), sleep=Sleeps(), side=True)  # CountTokens beside Generate
    with pytest.raises(grpc.aio.AioRpcError):
        await _run(main, [grpc.StatusCode.UNAVAILABLE])
    await _run(side, [grpc.StatusCode.OK])  # the replica counts tokens, and still fails every Generate
    with pytest.raises(grpc.aio.AioRpcError):
        await _run(main, [grpc.StatusCode.UNAVAILABLE])
    assert breaker.state is CircuitState.OPEN, "two Generate failures in a row, whatever the side call did"
    other = CircuitBreaker("inference", CircuitConfig(1, 2.0), Clock())
    with pytest.raises(grpc.aio.AioRpcError):
        await _run(UpstreamGuard(other, RetryRule(1), sleep=Sleeps(), side=True), [grpc.StatusCode.UNAVAILABLE])
    assert other.state is CircuitState.OPEN, "a side call that cannot reach the replica counts"
