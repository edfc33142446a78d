"""Per-key limits (gateway/auth/limits.py) on an injected clock: refill, debt, retry hints, limit changes, streams,
eviction, job charges, audit lines."""

from __future__ import annotations

import logging

import pytest

from gateway.auth.audit import AuditLog
from gateway.auth.caller import Caller, Limits, Scope
from gateway.auth.limits import KeyLimiter
from genmesh.errors import QuotaViolation, Reason, ResourceExhausted


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(limits: Limits, name: str = "apiKeys/0123456789ab", display_name: str = "team-search") -> Caller:
    return Caller(name, display_name, frozenset({Scope.GENERATE, Scope.JOBS}), limits)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> KeyLimiter:
    return KeyLimiter(clock=clock, audit=AuditLog(clock=clock))


def refused(limiter: KeyLimiter, caller: Caller) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as error:
        limiter.admit_request(caller)
    return error.value


def stream_tokens(limiter: KeyLimiter, caller: Caller, *deltas: int) -> None:
    with limiter.stream(caller) as meter:
        assert meter is not None
        for tokens in deltas:
            meter.charge(tokens)


def test_requests_per_minute_refill_continuously_and_the_hint_is_when_one_is_back(
    limiter: KeyLimiter, clock: Clock
) -> None:
    caller = key(Limits(requests_per_minute=3))  # one request back every 20 s
    for _ in range(3):
        limiter.admit_request(caller)
    error = refused(limiter, caller)
    assert error.reason == Reason.RATE_LIMITED
    assert error.retry_after_s == pytest.approx(20.0)
    assert error.quota_violations == [QuotaViolation("apiKeys/0123456789ab", "requests_per_minute: 3")]
    assert "requests_per_minute limit of 3" in error.message and "retry in 20.0 s" in error.message
    assert "team-search" in error.message

    clock.now += 10.0  # half a request back: still refused, the hint counts down
    assert refused(limiter, caller).retry_after_s == pytest.approx(10.0)
    clock.now += 10.0
    limiter.admit_request(caller)
    assert refused(limiter, caller).retry_after_s == pytest.approx(20.0)

    clock.now += 3600.0  # a quiet hour refills to the limit, not beyond
    for _ in range(3):
        limiter.admit_request(caller)
    refused(limiter, caller)


def test_tokens_charged_per_delta_go_into_debt_and_the_next_request_waits_until_one_is_back(
    limiter: KeyLimiter, clock: Clock
) -> None:
    caller = key(Limits(tokens_per_minute=120))  # 2 tokens a second
    stream_tokens(limiter, caller, 100, 100, 50)  # a long answer counts in full: 130 tokens of debt
    state = limiter.state(caller.key_name)
    assert state is not None and state.buckets["tokens_per_minute"].level == pytest.approx(-130.0)

    error = refused(limiter, caller)
    assert error.reason == Reason.RATE_LIMITED
    assert error.retry_after_s == pytest.approx(131 / 2)  # back to one token
    assert error.quota_violations == [QuotaViolation(caller.key_name, "tokens_per_minute: 120")]
    clock.now += 131 / 2
    limiter.admit_request(caller)


def test_a_spent_daily_quota_is_quota_exhausted_and_every_limit_hit_is_named(limiter: KeyLimiter, clock: Clock) -> None:
    caller = key(Limits(requests_per_minute=1, tokens_per_day=8640))  # 0.1 token a second
    stream_tokens(limiter, caller, 8640)
    error = refused(limiter, caller)
    assert error.reason == Reason.QUOTA_EXHAUSTED
    assert [v.description for v in error.quota_violations] == ["tokens_per_day: 8640", "requests_per_minute: 1"]
    assert error.retry_after_s == pytest.approx(60.0)  # the longer wait: the request's (the tokens' is 10 s)
    assert error.metadata == {"key": caller.key_name, "limits": "tokens_per_day, requests_per_minute"}


def test_changed_limits_apply_from_the_next_call(limiter: KeyLimiter, clock: Clock) -> None:
    limiter.admit_request(key(Limits(requests_per_minute=2)))
    limiter.admit_request(key(Limits(requests_per_minute=2)))
    refused(limiter, key(Limits(requests_per_minute=2)))
    raised = key(Limits(requests_per_minute=5))  # an admin raised the limit: the 3 added are there at once
    for _ in range(3):
        limiter.admit_request(raised)
    assert refused(limiter, raised).retry_after_s == pytest.approx(12.0)  # at the new rate

    clock.now += 60.0
    lowered = key(Limits(requests_per_minute=1))  # full at 5, lowered to 1: one left
    limiter.admit_request(lowered)
    refused(limiter, lowered)
    limiter.admit_request(key(Limits()))  # no limits any more
    limiter.admit_request(key(Limits(tokens_per_minute=10)))  # the request limit is gone with it
    state = limiter.state(lowered.key_name)
    assert state is not None and set(state.buckets) == {"tokens_per_minute"}


def test_concurrent_streams_are_counted_and_released_however_they_end(limiter: KeyLimiter) -> None:
    caller = key(Limits(max_concurrent_streams=2, requests_per_minute=10))
    with limiter.stream(caller), limiter.stream(caller):
        with pytest.raises(ResourceExhausted) as error, limiter.stream(caller):
            pass
        assert error.value.reason == Reason.RATE_LIMITED
        assert error.value.quota_violations == [QuotaViolation(caller.key_name, "max_concurrent_streams: 2")]
        assert error.value.retry_after_s is not None and error.value.retry_after_s > 0
    state = limiter.state(caller.key_name)
    assert state is not None and state.streams == 0
    assert state.buckets["requests_per_minute"].level == pytest.approx(8.0)  # the refused one cost nothing

    with pytest.raises(RuntimeError), limiter.stream(caller):
        raise RuntimeError("the stream failed")
    assert state.streams == 0


def test_no_caller_or_no_limits_costs_nothing_and_tracks_nothing(limiter: KeyLimiter) -> None:
    with limiter.stream(None) as meter:
        assert meter is None
    with limiter.stream(key(Limits())) as meter:
        assert meter is None
    limiter.admit_request(None)
    limiter.admit_request(key(Limits()))
    assert limiter.tracked_keys == 0


def test_idle_keys_whose_buckets_refilled_are_forgotten(clock: Clock) -> None:
    limiter = KeyLimiter(clock=clock, audit=AuditLog(clock=clock), sweep_interval_s=60.0)
    quiet, indebted, streaming = (
        key(Limits(requests_per_minute=60, tokens_per_minute=60), f"apiKeys/{n}") for n in "abc"
    )
    limiter.admit_request(quiet)
    stream_tokens(limiter, indebted, 600)
    with limiter.stream(streaming):
        clock.now += 0.5
        assert limiter.sweep() == 0  # nothing full yet
        clock.now += 0.5
        assert limiter.sweep() == 1  # the quiet key: full again, no stream
        assert limiter.state(quiet.key_name) is None
        assert limiter.state(streaming.key_name) is not None
    clock.now += 600.0
    limiter.admit_request(streaming)  # the sweep interval passed: admission sweeps the paid-back key
    assert limiter.state(indebted.key_name) is None
    assert limiter.tracked_keys == 1


def test_a_request_reserving_tokens_is_let_in_with_one_token_left_and_takes_the_bucket_into_debt(
    limiter: KeyLimiter,
) -> None:
    caller = key(Limits(tokens_per_minute=60))
    limiter.admit_request(caller, reserve_tokens=100)  # a SubmitJob with max_tokens 100: 60 -> -40
    assert refused(limiter, caller).retry_after_s == pytest.approx(41.0)  # back to one token


def test_each_refusal_writes_a_limit_hit_audit_line_naming_the_key_not_its_secret(
    limiter: KeyLimiter, caplog: pytest.LogCaptureFixture
) -> None:
    caller = key(Limits(requests_per_minute=1))
    limiter.admit_request(caller)
    with caplog.at_level(logging.WARNING, logger="genmesh.audit"):
        refused(limiter, caller)
    (line,) = [r for r in caplog.records if r.name == "genmesh.audit"]
    assert line.__dict__["event"] == "limit_hit"
    assert line.__dict__["key"] == "team-search" and line.__dict__["key_name"] == caller.key_name
    assert line.__dict__["limit"] == "requests_per_minute"
    assert line.__dict__["retry_after_s"] == pytest.approx(60.0)


def test_a_zero_limit_refuses_everything_with_a_hint_of_one_window(limiter: KeyLimiter) -> None:
    error = refused(limiter, key(Limits(requests_per_minute=0)))
    assert error.retry_after_s == pytest.approx(60.0)
    assert error.quota_violations[0].description == "requests_per_minute: 0"
