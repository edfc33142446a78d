"""Per-key limits at the gateway: requests and generated tokens per minute, tokens per day, open streams.

Each limit of a key is a token bucket that refills continuously: a key with ``requests_per_minute: 60`` may
send one request a second, or a burst of 60 after a quiet minute. A request (``Generate``, ``SubmitJob``) is let
in when its key's request bucket holds one request and each of its token buckets holds at least one token;
a stream's generated tokens are then charged as they stream, and a job's ``max_tokens`` is reserved when it is
submitted (its run charges nothing); either may take a token bucket into debt: the key's next request waits
until the bucket is back to one token. A stream in progress is never cut when it passes a token limit (see
``StreamMeter``). Refusals are ``RESOURCE_EXHAUSTED`` with RetryInfo (when the bucket will hold what is
needed) and QuotaFailure (the key and each limit hit), and one ``limit_hit`` audit line.

The counts live in this gateway process: behind N gateways a key may use up to N times its limits
(docs/SECURITY.md, "Per-key limits"). Each call uses the limits its Caller carries now, so an admin's change
applies from the key's next call; raising a limit grants the added room at once, lowering it caps what is left.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gateway.admission import MIN_RETRY_AFTER_S
from gateway.auth.audit import AUDIT, AuditLog
from gateway.auth.caller import Caller, Limits
from genmesh.errors import QuotaViolation, Reason, ResourceExhausted

REQUESTS_PER_MINUTE = "requests_per_minute"
TOKENS_PER_MINUTE = "tokens_per_minute"
TOKENS_PER_DAY = "tokens_per_day"
MAX_CONCURRENT_STREAMS = "max_concurrent_streams"
#: The period over which each bucket refills from empty to full.
WINDOW_S = {REQUESTS_PER_MINUTE: 60.0, TOKENS_PER_MINUTE: 60.0, TOKENS_PER_DAY: 86_400.0}
#: Idle keys whose buckets are full are forgotten (a new full bucket is the same) at most this often.
SWEEP_INTERVAL_S = 60.0
_STREAM_EWMA_WEIGHT = 0.1

NO_LIMITS = Limits()
_UNLIMITED: contextlib.nullcontext[None] = contextlib.nullcontext(None)


class Bucket:
    """``capacity`` units refilling at ``capacity / window_s`` per second; the level may go below zero (debt)."""

    __slots__ = ("capacity", "level", "rate", "stamp", "window_s")

    def __init__(self, capacity: int, window_s: float, now: float) -> None:
        self.window_s = window_s
        self.capacity = float(max(0, capacity))
        self.rate = self.capacity / window_s
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        """Add what flowed in since the last look, up to the capacity."""
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def resize(self, capacity: int) -> None:
        """A changed limit: the room added is granted at once; a lower limit caps the level."""
        new = float(max(0, capacity))
        self.level = min(new, self.level + max(0.0, new - self.capacity))
        self.capacity = new
        self.rate = new / self.window_s

    def wait_s(self, need: float = 1.0) -> float:
        """Seconds until the bucket holds ``need`` (a whole window when the limit is 0: only an admin helps)."""
        if self.level >= need:
            return 0.0
        if self.rate <= 0.0:
            return self.window_s
        return (need - self.level) / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely by ``now`` (forgetting it changes nothing)."""
        return self.level + max(0.0, now - self.stamp) * self.rate >= self.capacity


@dataclass(slots=True)
class KeyState:
    """One key's buckets (by limit name), its open streams, and the limits it was last seen with."""

    limits: Limits
    buckets: dict[str, Bucket] = field(default_factory=dict)
    streams: int = 0
    mean_stream_s: float = 1.0

    def bucket(self, name: str, limit: int | None, now: float) -> Bucket | None:
        """The bucket for ``name`` under the key's current ``limit``, refilled to ``now`` (None: no limit)."""
        if limit is None:
            self.buckets.pop(name, None)
            return None
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = Bucket(limit, WINDOW_S[name], now)
            return bucket
        bucket.refill(now)
        if bucket.capacity != max(0, limit):
            bucket.resize(limit)
        return bucket

    def charge(self, tokens: int, now: float) -> None:
        """Take ``tokens`` generated tokens from the token buckets, into debt if need be."""
        limits = self.limits
        for name, limit in ((TOKENS_PER_MINUTE, limits.tokens_per_minute), (TOKENS_PER_DAY, limits.tokens_per_day)):
            bucket = self.bucket(name, limit, now)
            if bucket is not None:
                bucket.level -= tokens


class KeyLimiter:
    """The per-key limits of one gateway process, keyed by ``Caller.key_name``."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        audit: AuditLog = AUDIT,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self._clock = clock
        self._audit = audit
        self._sweep_interval_s = sweep_interval_s
        self._states: dict[str, KeyState] = {}
        self._next_sweep = clock() + sweep_interval_s

    # --- admission -------------------------------------------------------------------------------------------

    def admit_request(self, caller: Caller | None, reserve_tokens: int = 0) -> None:
        """Let one request of ``caller`` in (``SubmitJob``) and take ``reserve_tokens`` from its token buckets
        (into debt if need be), or raise ResourceExhausted naming the limits hit."""
        if caller is not None and caller.limits != NO_LIMITS:
            self._admit(caller, stream=False, reserve_tokens=reserve_tokens)

    def stream(self, caller: Caller | None) -> contextlib.AbstractContextManager[StreamMeter | None]:
        """Hold one of ``caller``'s streams for the block (``Generate``), after letting its request in; the meter
        charges the tokens it generates. None (and no cost) when there is no caller or the key has no limits."""
        if caller is None or caller.limits == NO_LIMITS:
            return _UNLIMITED
        return self._held_stream(caller)

    @contextlib.contextmanager
    def _held_stream(self, caller: Caller) -> Iterator[StreamMeter]:
        state = self._admit(caller, stream=True)
        state.streams += 1
        start = self._clock()
        try:
            yield StreamMeter(state, self._clock)
        finally:
            # Reached on completion, error and client cancel alike (GeneratorExit/CancelledError at a yield).
            state.streams -= 1
            state.mean_stream_s += _STREAM_EWMA_WEIGHT * (self._clock() - start - state.mean_stream_s)

    def _admit(self, caller: Caller, *, stream: bool, reserve_tokens: int = 0) -> KeyState:
        now = self._clock()
        if now >= self._next_sweep:
            self.sweep()
        limits = caller.limits
        state = self._states.get(caller.key_name)
        if state is None:
            state = self._states[caller.key_name] = KeyState(limits)
        state.limits = limits
        hits: list[tuple[str, int, float]] = []  # (limit, value, seconds until it lets the request in)
        requests = state.bucket(REQUESTS_PER_MINUTE, limits.requests_per_minute, now)
        for name, limit in ((TOKENS_PER_MINUTE, limits.tokens_per_minute), (TOKENS_PER_DAY, limits.tokens_per_day)):
            bucket = state.bucket(name, limit, now)
            if bucket is not None and bucket.level < 1.0:
                hits.append((name, int(bucket.capacity), bucket.wait_s()))
        if requests is not None and requests.level < 1.0:
            hits.append((REQUESTS_PER_MINUTE, int(requests.capacity), requests.wait_s()))
        most = limits.max_concurrent_streams
        if stream and most is not None and state.streams >= most:
            hits.append((MAX_CONCURRENT_STREAMS, most, max(MIN_RETRY_AFTER_S, state.mean_stream_s / max(1, most))))
        if hits:
            raise self._refuse(caller, hits)
        if requests is not None:
            requests.level -= 1.0
        if reserve_tokens:
            state.charge(reserve_tokens, now)
        return state

    def _refuse(self, caller: Caller, hits: list[tuple[str, int, float]]) -> ResourceExhausted:
        retry_after_s = max(wait for _, _, wait in hits)
        names = ", ".join(name for name, _, _ in hits)
        self._audit.event(
            "limit_hit",
            key=caller.display_name,
            key_name=caller.key_name,
            limit=names,
            retry_after_s=round(retry_after_s, 3),
        )
        reached = "; ".join(f"its {name} limit of {value}" for name, value, _ in hits)
        return ResourceExhausted(
            f"API key {caller.display_name!r} ({caller.key_name}) reached {reached}; retry in {retry_after_s:.1f} s",
            round(retry_after_s, 3),
            reason=Reason.QUOTA_EXHAUSTED if any(n == TOKENS_PER_DAY for n, _, _ in hits) else Reason.RATE_LIMITED,
            metadata={"key": caller.key_name, "limits": names},
            quota_violations=[QuotaViolation(caller.key_name, f"{name}: {value}") for name, value, _ in hits],
        )

    # --- memory ----------------------------------------------------------------------------------------------

    def sweep(self) -> int:
        """Forget the keys with no open stream whose buckets are all full again; how many were forgotten."""
        now = self._clock()
        self._next_sweep = now + self._sweep_interval_s
        idle = [
            name
            for name, state in self._states.items()
            if not state.streams and all(bucket.full(now) for bucket in state.buckets.values())
        ]
        for name in idle:
            del self._states[name]
        return len(idle)

    def state(self, key_name: str) -> KeyState | None:
        """What this gateway counts for ``key_name`` (None: nothing; for tests and introspection)."""
        return self._states.get(key_name)

    @property
    def tracked_keys(self) -> int:
        """How many keys this gateway holds counts for."""
        return len(self._states)


class StreamMeter:
    """Charges the tokens of one open stream to its key as they are generated.

    A stream is not cut when it passes a token limit, and a request's ``max_tokens`` is not capped by the tokens
    left: cutting would throw away tokens already computed (and paid for) and leave the client an answer ending
    mid-sentence with an error it cannot resume from, while the overshoot is bounded by one request's
    ``max_tokens``. The debt it leaves is paid back before the key's next request is let in.
    """

    __slots__ = ("_clock", "_state")

    def __init__(self, state: KeyState, clock: Callable[[], float]) -> None:
        self._state = state
        self._clock = clock

    def charge(self, tokens: int) -> None:
        """Charge ``tokens`` generated tokens (one delta's) to the stream's key."""
        self._state.charge(tokens, self._clock())
