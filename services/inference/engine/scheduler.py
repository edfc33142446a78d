"""Continuous-batching scheduler: owns every sequence's status and moves it from one to the next.

A step is ``schedule()`` → run the model → ``postprocess()``. ``schedule`` retires cancelled and expired
sequences, admits waiting ones into free cache rows (oldest first) and plans the prompt chunks to feed;
``postprocess`` records what the run did: prompt chunks now cached, sequences whose prompt is complete
promoted to decoding, ended ones finished and their rows freed. The decode batch is kept in the first
rows of the cache, ``decode_batch()[i].row == i``, so a decode pass reads one contiguous block.

``add``, ``abort``, ``close``, ``load`` and the counts are called from the event loop; the rest from the engine
thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from genmesh.errors import DeadlineExceeded, Reason, ResourceExhausted
from services.inference.engine.config import EngineConfig
from services.inference.engine.kv_cache import SlotKVCache
from services.inference.engine.sequence import Sequence, SequenceStatus
from services.inference.engine.types import FinishReason, LoadStats


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """``count`` prompt tokens of ``seq`` from position ``start``, fed this step."""

    seq: Sequence
    start: int
    count: int

    @property
    def completes(self) -> bool:
        """Whether this chunk brings the whole prompt into the cache (its logits give the first token)."""
        return self.start + self.count == self.seq.num_prompt_tokens


@dataclass(slots=True)
class ScheduledBatch:
    """What ``Scheduler.schedule`` decided for one step."""

    finished: list[Sequence] = field(default_factory=list)
    """Ended before running: cancelled, or past their deadline (FINISHED, rows freed)."""
    admitted: list[Sequence] = field(default_factory=list)
    """Given a cache row this step (WAITING → PREFILLING)."""
    prefill: list[PrefillChunk] = field(default_factory=list)
    """Prompt chunks to feed, oldest sequence first."""

    @property
    def completing(self) -> list[Sequence]:
        """The sequences whose prompt this step's prefill completes, in chunk order."""
        return [chunk.seq for chunk in self.prefill if chunk.completes]


class Scheduler:
    """Queues, admission and status transitions of every sequence."""

    def __init__(self, config: EngineConfig, cache: SlotKVCache) -> None:
        if cache.rows < config.max_running:
            raise ValueError(f"the KV cache has {cache.rows} rows, fewer than max_running ({config.max_running})")
        self.config = config
        self.cache = cache
        self._waiting: deque[Sequence] = deque()
        self._prefilling: list[Sequence] = []
        self._decoding: list[Sequence] = []
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._closed = False

    # -- event-loop side ---------------------------------------------------------------------------------

    @property
    def waiting_count(self) -> int:
        """Sequences queued for a cache row."""
        return len(self._waiting)

    @property
    def running_count(self) -> int:
        """Sequences holding a cache row (prefilling or decoding)."""
        return len(self._prefilling) + len(self._decoding)

    def load(self) -> LoadStats:
        """Occupancy as balancers see it, read at one moment (under the lock the engine thread takes to change it).

        A queued sequence for which a row is free counts as running: the next step admits it, it does not
        wait for a row. So ``running`` never exceeds ``max_running``, nor ``waiting`` ``max_waiting``.
        """
        with self._lock:
            running, waiting = self._occupancy()
            return LoadStats(running, waiting, self.cache.used_tokens(), self.cache.capacity_tokens)

    def add(self, seq: Sequence, retry_after_s: float) -> None:
        """Queue a new sequence; ResourceExhausted at once when the waiting queue is full.

        The queue holds ``max_waiting`` sequences beyond the rows still free, so a burst on an idle
        engine is not refused before its first step admits it (those count as running in ``load``).
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            if seq.status is not SequenceStatus.WAITING or seq.row >= 0:
                raise ValueError(f"sequence {seq.request_id} was already scheduled ({seq.status.value})")
            running, waiting = self._occupancy()
            if waiting >= self.config.max_waiting and running >= self.config.max_running:
                raise ResourceExhausted(
                    f"the inference engine is busy ({running} running, {waiting} waiting)",
                    retry_after_s,
                    reason=Reason.INFERENCE_QUEUE_FULL,
                    metadata={"maxWaiting": str(self.config.max_waiting)},
                )
            self._waiting.append(seq)
            self._work.notify()

    def abort(self, seq: Sequence) -> bool:
        """Ask for ``seq`` to end cancelled at the next step; False when that was asked already."""
        with self._lock:
            if seq.abort_requested:
                return False
            seq.abort_requested = True
            self._work.notify()
            return True

    def close(self) -> list[Sequence]:
        """Stop accepting work; the sequences still waiting end cancelled and are returned."""
        with self._lock:
            self._closed = True
            left = list(self._waiting)
            for seq in left:
                self._finish(seq, FinishReason.CANCELLED)
            self._work.notify()
            return left

    # -- engine thread -----------------------------------------------------------------------------------

    def wait_for_work(self) -> bool:
        """Block until there is something to run; False once closed."""
        with self._lock:
            while not self._closed and not self._waiting and not self.running_count:
                self._work.wait()
            return not self._closed

    def decode_batch(self) -> list[Sequence]:
        """The decoding sequences in cache-row order (the i-th holds row i)."""
        return list(self._decoding)

    def schedule(self, now: float) -> ScheduledBatch:
        """Retire cancelled and expired sequences, admit waiting ones, and plan this step's prompt chunks.

        A cancelled waiting sequence ends without ever holding a row. Admission is oldest first while a
        row is free and fewer than ``max_running`` run. Prompt chunks go oldest first within the step's
        token budget (``max_batched_tokens`` less one token per decoding sequence); the first chunk that
        does not fit ends the plan, so no sequence overtakes an older one.
        """
        batch = ScheduledBatch()
        with self._lock:
            for seq in [seq for seq in self._waiting if seq.abort_requested]:
                self._finish(seq, FinishReason.CANCELLED)
                batch.finished.append(seq)
            for seq in [*self._prefilling, *self._decoding]:
                if seq.abort_requested:
                    self._finish(seq, FinishReason.CANCELLED)
                elif seq.deadline is not None and now >= seq.deadline:
                    self._finish(seq, None, DeadlineExceeded(f"request {seq.request_id} exceeded its deadline"))
                else:
                    continue
                batch.finished.append(seq)
            while self._waiting and self.running_count < self.config.max_running and self.cache.can_allocate():
                seq = self._waiting.popleft()
                self.cache.allocate(seq)
                seq.status = SequenceStatus.PREFILLING
                self._prefilling.append(seq)
                batch.admitted.append(seq)
        budget = self.config.max_batched_tokens - len(self._decoding)
        for seq in self._prefilling:
            count = min(self.config.prefill_chunk, seq.num_prompt_tokens - seq.prefilled)
            if count > budget:
                break
            batch.prefill.append(PrefillChunk(seq, seq.prefilled, count))
            budget -= count
        return batch

    def postprocess(
        self, ended: Iterable[tuple[Sequence, FinishReason]], prefill: Iterable[PrefillChunk] = ()
    ) -> list[Sequence]:
        """Record a run: ``prefill``'s chunks are cached, and each ``ended`` sequence stopped for its reason.

        Ended sequences finish and free their rows; those whose prompt is now complete and that did not
        end move to the decode batch. Returns the sequences finished here.
        """
        finished = []
        with self._lock:
            chunks = list(prefill)
            for chunk in chunks:
                if chunk.seq.status is not SequenceStatus.PREFILLING or chunk.seq.prefilled != chunk.start:
                    raise RuntimeError(f"sequence {chunk.seq.request_id} was not fed the chunk from {chunk.start}")
                chunk.seq.prefilled += chunk.count
            for seq, reason in ended:
                self._finish(seq, reason)
                finished.append(seq)
            for chunk in chunks:
                if chunk.completes and chunk.seq.status is SequenceStatus.PREFILLING:
                    self._promote(chunk.seq)
        return finished

    def finish_running(self, reason: FinishReason | None, error: Exception | None = None) -> list[Sequence]:
        """End every sequence holding a row (prefilling first, then decoding); returns them."""
        with self._lock:
            running = [*self._prefilling, *self._decoding]
            for seq in running:
                self._finish(seq, reason, error)
            return running

    # -- under the lock ----------------------------------------------------------------------------------

    def _occupancy(self) -> tuple[int, int]:
        """(running, waiting), the queued sequences a free row awaits counted as running."""
        holding = self.running_count
        reserved = min(len(self._waiting), max(0, self.config.max_running - holding))
        return holding + reserved, len(self._waiting) - reserved

    def _promote(self, seq: Sequence) -> None:
        """PREFILLING → DECODING: the sequence joins the end of the decode block."""
        self._prefilling.remove(seq)
        self.cache.relocate(seq, len(self._decoding))
        self._decoding.append(seq)
        seq.status = SequenceStatus.DECODING

    def _finish(self, seq: Sequence, reason: FinishReason | None, error: Exception | None = None) -> None:
        """Any status → FINISHED, freeing the row; the last decoding row fills the hole a decoder leaves."""
        if seq.status is SequenceStatus.FINISHED:
            raise RuntimeError(f"sequence {seq.request_id} has already finished")
        if (reason is None) == (error is None):
            raise ValueError("a sequence finishes with either a reason or an error")
        if seq.status is SequenceStatus.WAITING:
            self._waiting.remove(seq)
        elif seq.status is SequenceStatus.PREFILLING:
            self._prefilling.remove(seq)
            self.cache.deallocate(seq)
        else:
            index = self._decoding.index(seq)
            self.cache.deallocate(seq)
            last = self._decoding.pop()
            if last is not seq:
                self._decoding[index] = last
                self.cache.relocate(last, index)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.error = error
