"""Continuous-batching scheduler: a bounded waiting queue, admission into cache rows, and each step's prefill plan."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from genmesh.errors import ResourceExhausted
from services.inference.engine.kv_cache import SlotKVCache
from services.inference.engine.sequence import Sequence


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Knobs of the engine.

    - ``max_running``: sequences generating at once (the KV cache holds one row per sequence);
    - ``max_waiting``: admitted requests waiting for a row; past it, RESOURCE_EXHAUSTED;
    - ``max_batched_tokens``: tokens one step may feed (one per decoding sequence plus prefill chunks);
    - ``prefill_chunk``: most prompt tokens fed for one sequence in one step. Chunk boundaries do not
      depend on load, so a request computes the same numbers alone or in a batch.
    """

    max_running: int = 32
    max_waiting: int = 64
    max_batched_tokens: int = 2048
    prefill_chunk: int = 256

    def __post_init__(self) -> None:
        for name in ("max_running", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must not be negative, got {self.max_waiting}")
        if self.max_batched_tokens < self.max_running + self.prefill_chunk:
            raise ValueError(
                f"max_batched_tokens ({self.max_batched_tokens}) must cover a full decode batch plus one prefill "
                f"chunk ({self.max_running} + {self.prefill_chunk})"
            )


class Scheduler:
    """Decides what each step runs. ``submit`` is called from the event loop; the rest from the engine thread."""

    def __init__(self, config: EngineConfig, cache: SlotKVCache) -> None:
        self.config = config
        self.cache = cache
        self.prefilling: list[Sequence] = []
        self._waiting: deque[Sequence] = deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._closed = False

    @property
    def waiting_count(self) -> int:
        """Requests admitted but without a cache row yet."""
        return len(self._waiting)

    @property
    def running_count(self) -> int:
        """Sequences holding a cache row."""
        return len(self.prefilling) + self.cache.decode_rows

    def submit(self, seq: Sequence, retry_after_s: float) -> None:
        """Queue a new sequence; ResourceExhausted at once when the waiting queue is full."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            free_rows = max(0, self.config.max_running - self.running_count)
            if len(self._waiting) >= self.config.max_waiting + free_rows:
                raise ResourceExhausted(
                    f"the inference engine is busy ({len(self._waiting)} requests waiting)", retry_after_s
                )
            self._waiting.append(seq)
            self._work.notify()

    def wake(self) -> None:
        """Wake the engine thread (after a cancellation, or to stop)."""
        with self._lock:
            self._work.notify()

    def close(self) -> list[Sequence]:
        """Stop accepting work; the sequences still waiting, for the caller to finish."""
        with self._lock:
            self._closed = True
            left = list(self._waiting)
            self._waiting.clear()
            self._work.notify()
            return left

    def wait_for_work(self) -> bool:
        """Block until there is something to run; False once closed."""
        with self._lock:
            while not self._closed and not self._waiting and not self.running_count:
                self._work.wait()
            return not self._closed

    def drop_cancelled_waiting(self) -> list[Sequence]:
        """Remove and return waiting sequences whose consumer went away or that were aborted."""
        with self._lock:
            gone = [seq for seq in self._waiting if seq.cancel.is_set()]
            for seq in gone:
                self._waiting.remove(seq)
            return gone

    def admit(self) -> list[Sequence]:
        """Give waiting sequences free rows, oldest first, up to ``max_running``."""
        admitted = []
        with self._lock:
            while self._waiting and self.running_count < self.config.max_running and self.cache.can_allocate():
                seq = self._waiting.popleft()
                self.cache.allocate(seq)
                self.prefilling.append(seq)
                admitted.append(seq)
        return admitted

    def prefill_plan(self) -> list[tuple[Sequence, int]]:
        """The prompt chunks this step feeds: oldest sequence first, within the step's token budget."""
        budget = self.config.max_batched_tokens - self.cache.decode_rows
        plan = []
        for seq in self.prefilling:
            count = min(self.config.prefill_chunk, len(seq.prompt_ids) - seq.prefilled)
            if count > budget:
                break
            plan.append((seq, count))
            budget -= count
        return plan
