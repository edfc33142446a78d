"""When the client calls again: UNAVAILABLE, and RESOURCE_EXHAUSTED from a genmesh server (RetryInfo or genmesh's
ErrorInfo: not gRPC's own, such as a message over the size limit), after the server's RetryInfo delay (else
exponential backoff), within the call's deadline. Generate is retried only before its first event."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from genmesh.status import ERROR_DOMAIN, error_info, retry_delay_s

RETRYABLE = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` in all (1: no retries); without RetryInfo the n-th wait is ``backoff_s * 2**(n-1)``; a wait
    longer than ``max_delay_s`` (a quota spent until tomorrow) is not waited: the error is raised instead."""

    attempts: int = 3
    backoff_s: float = 0.2
    max_delay_s: float = 30.0

    def delay_s(
        self, error: grpc.aio.AioRpcError, attempt: int, deadline: float | None, *, unavailable: bool = True
    ) -> float | None:
        """The wait before attempt ``attempt + 1``, None when ``error`` is final: not retryable (UNAVAILABLE
        only when ``unavailable``), no attempts left, or the wait would run past ``deadline`` (monotonic)."""
        code = error.code()
        if code not in RETRYABLE or (code == grpc.StatusCode.UNAVAILABLE and not unavailable):
            return None
        if attempt >= self.attempts:
            return None
        told = retry_delay_s(error)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and told is None and not _from_genmesh(error):
            return None  # gRPC's own (a message over the size limit): the same call fails the same way
        delay = told if told is not None else self.backoff_s * 2 ** (attempt - 1)
        if delay > self.max_delay_s or (deadline is not None and time.monotonic() + delay >= deadline):
            return None
        return delay


def _from_genmesh(error: grpc.aio.AioRpcError) -> bool:
    """Whether a genmesh server refused the call (its status carries genmesh's ErrorInfo)."""
    info = error_info(error)
    return info is not None and info.domain == ERROR_DOMAIN


DEFAULT_RETRY = RetryPolicy()
NO_RETRIES = RetryPolicy(attempts=1)


def deadline_of(timeout_s: float | None) -> float | None:
    """The monotonic deadline of a call given ``timeout_s`` (None: no deadline)."""
    return None if timeout_s is None else time.monotonic() + timeout_s


def left_s(deadline: float | None) -> float | None:
    """The seconds left until ``deadline`` (at least a millisecond, so that gRPC reports DEADLINE_EXCEEDED)."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)
