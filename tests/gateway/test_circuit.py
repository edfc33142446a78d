"""The circuit breaker's state machine, on an injected clock."""

from __future__ import annotations

import grpc
import pytest

from gateway.circuit import CircuitBreaker, CircuitConfig, CircuitState, Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _state(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state  # a call, so that mypy does not narrow the property between checks


def _breaker(clock: Clock, failures: int = 3, cooldown_s: float = 2.0) -> CircuitBreaker:
    return CircuitBreaker("inference", CircuitConfig(failures, cooldown_s), clock)


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    breaker.record_outcome(Outcome.FAILURE, "boom")
    breaker.record_outcome(Outcome.FAILURE, "boom")
    breaker.record_outcome(Outcome.SUCCESS)
    breaker.record_outcome(Outcome.FAILURE, "boom")
    breaker.record_outcome(Outcome.FAILURE, "boom")
    assert _state(breaker) is CircuitState.CLOSED and breaker.can_execute()
    breaker.record_outcome(Outcome.FAILURE, "boom")
    assert _state(breaker) is CircuitState.OPEN
    assert not breaker.can_execute()
    assert breaker.retry_after_s() == pytest.approx(2.0)
    assert "3 failures in a row" in breaker.describe()


def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes_it() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_outcome(Outcome.FAILURE, "boom")
    clock.now += 1.9
    assert not breaker.can_execute()
    clock.now += 0.1
    assert _state(breaker) is CircuitState.HALF_OPEN
    assert breaker.can_execute(), "the probe"
    assert not breaker.can_execute(), "only one probe at a time"
    breaker.record_outcome(Outcome.SUCCESS)
    assert _state(breaker) is CircuitState.CLOSED
    assert breaker.can_execute() and breaker.can_execute()


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_outcome(Outcome.FAILURE, "boom")
    clock.now += 2.0
    assert breaker.can_execute()
    breaker.record_outcome(Outcome.FAILURE, "still down")
    assert _state(breaker) is CircuitState.OPEN
    assert not breaker.can_execute()
    clock.now += 2.0
    assert breaker.can_execute()


def test_a_probe_that_never_reports_is_given_up_after_a_cooldown() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_outcome(Outcome.FAILURE, "boom")
    clock.now += 2.0
    assert breaker.can_execute()
    clock.now += 1.0
    assert not breaker.can_execute()
    clock.now += 1.0
    assert breaker.can_execute(), "the lost probe no longer blocks the next one"


def test_a_released_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_outcome(Outcome.FAILURE, "boom")
    clock.now += 2.0
    assert breaker.can_execute()
    breaker.record_outcome(Outcome.NEUTRAL)
    assert breaker.can_execute()


def test_failures_of_calls_already_in_flight_do_not_extend_the_cooldown() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_outcome(Outcome.FAILURE, "boom")
    clock.now += 1.5
    breaker.record_outcome(Outcome.FAILURE, "late")
    assert breaker.retry_after_s() == pytest.approx(0.5)


def test_health_feeds_it() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    breaker.health(False, "unreachable (UNAVAILABLE)")
    assert _state(breaker) is CircuitState.OPEN
    assert "health check: unreachable" in breaker.describe()
    breaker.health(True)
    assert _state(breaker) is CircuitState.CLOSED
    assert breaker.can_execute()


def test_statuses_count_by_what_they_say_about_the_upstream() -> None:
    clock = Clock()
    breaker = _breaker(clock, failures=2)
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED):
        breaker.record_outcome(Outcome.of(code))
        breaker.record_outcome(Outcome.of(code))
    assert _state(breaker) is CircuitState.CLOSED, "client mistakes, busy and cancelled calls do not count"
    breaker.record_outcome(Outcome.of(grpc.StatusCode.UNAVAILABLE))
    breaker.record_outcome(Outcome.of(grpc.StatusCode.INTERNAL))
    assert _state(breaker) is CircuitState.OPEN
    clock.now += 2.0
    assert breaker.can_execute()
    breaker.record_outcome(
        Outcome.of(grpc.StatusCode.NOT_FOUND)
    )  # the upstream answered: the probe ends, the circuit stays half-open
    assert breaker.can_execute()
    breaker.record_outcome(Outcome.of(grpc.StatusCode.OK))
    assert _state(breaker) is CircuitState.CLOSED


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="failures"):
        CircuitConfig(0, 1.0)
    with pytest.raises(ValueError, match="cool-down"):
        CircuitConfig(3, 0.0)
