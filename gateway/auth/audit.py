"""Audit lines: one log line per authentication failure and per limit hit, at most a few per second.

A flood of bad keys cannot fill the disk: past ``burst`` lines, events of a kind are counted, not written, until
the bucket refills; the next line written says how many were left out. Lines name the key by its display name
or ``apiKeys/{id}``, never by its secret.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("genmesh.audit")


class AuditLog:
    """Writes audit events as ``audit`` log lines, rate-limited per event kind (a token bucket per kind)."""

    def __init__(self, rate_per_s: float = 5.0, burst: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("audit rate must be positive and burst at least 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._tokens: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def event(self, kind: str, **fields: str | int | float) -> bool:
        """Record one event of ``kind`` (``auth_failed``, ``limit_hit``); whether a line was written."""
        now = self._clock()
        tokens = min(self._burst, self._tokens.get(kind, self._burst) + (now - self._last.get(kind, now)) * self._rate)
        self._last[kind] = now
        if tokens < 1.0:
            self._tokens[kind] = tokens
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._tokens[kind] = tokens - 1.0
        suppressed = self._suppressed.pop(kind, 0)
        extra: dict[str, str | int | float] = {"event": kind, **fields}
        if suppressed:
            extra["suppressed_before"] = suppressed
        log.warning("audit", extra=extra)
        return True


AUDIT = AuditLog()
"""The process's audit log."""
