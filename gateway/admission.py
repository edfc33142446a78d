"""Admission control: the gateway runs at most ``max_streams`` Generate streams at once and refuses the rest at once."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from genmesh.errors import Reason, ResourceExhausted

MIN_RETRY_AFTER_S = 0.05
_EWMA_WEIGHT = 0.1


class StreamLimiter:
    """Counts the streams in flight; past the cap, RESOURCE_EXHAUSTED with a RetryInfo hint instead of a queue.

    The hint is the time until a slot is likely to free: the recent mean stream duration spread over the
    streams in flight.
    """

    def __init__(self, max_streams: int, initial_duration_s: float = 1.0) -> None:
        if max_streams < 1:
            raise ValueError(f"max streams must be at least 1, got {max_streams}")
        self.max_streams = max_streams
        self.active = 0
        self._mean_duration_s = initial_duration_s

    def retry_after_s(self) -> float:
        """Suggested wait before trying again."""
        return max(MIN_RETRY_AFTER_S, self._mean_duration_s / max(1, self.active))

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a slot for the duration of the block; raises ResourceExhausted when none is free."""
        if self.active >= self.max_streams:
            raise ResourceExhausted(
                f"the gateway is serving its maximum of {self.max_streams} concurrent streams; retry later",
                round(self.retry_after_s(), 3),
                reason=Reason.GATEWAY_STREAM_LIMIT,
                metadata={"maxStreams": str(self.max_streams)},
            )
        self.active += 1
        start = time.monotonic()
        try:
            yield
        finally:
            self.active -= 1
            duration = time.monotonic() - start
            self._mean_duration_s += _EWMA_WEIGHT * (duration - self._mean_duration_s)
