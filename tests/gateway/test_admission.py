"""The stream limiter admits up to its cap and refuses the rest at once, with a retry hint."""

from __future__ import annotations

import contextlib

import pytest

from gateway.admission import MIN_RETRY_AFTER_S, StreamLimiter
from genmesh.errors import ResourceExhausted


def test_refuses_past_the_cap_and_frees_slots() -> None:
    limiter = StreamLimiter(2)
    with contextlib.ExitStack() as held:
        held.enter_context(limiter.admit())
        held.enter_context(limiter.admit())
        with pytest.raises(ResourceExhausted) as refused, limiter.admit():
            pass
        assert "2 concurrent streams" in refused.value.message
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= MIN_RETRY_AFTER_S
        assert limiter.active == 2
    assert limiter.active == 0
    with limiter.admit():
        assert limiter.active == 1


def test_a_failing_stream_frees_its_slot() -> None:
    limiter = StreamLimiter(1)
    with pytest.raises(RuntimeError), limiter.admit():
        raise RuntimeError("stream failed")
    assert limiter.active == 0


def test_cap_is_checked() -> None:
    with pytest.raises(ValueError):
        StreamLimiter(0)
