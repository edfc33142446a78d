"""Continuous-batching scheduler: owns every sequence's status and moves it from one to the next.

A step is ``schedule()`` → run the model → ``postprocess()``. ``schedule`` retires cancelled and expired
sequences, gives every decoding sequence a cache slot for this step's token, admits waiting ones while
blocks are free (oldest first) and plans the prompt chunks to feed; ``postprocess`` records what the run
did: prompt chunks now cached, sequences whose prompt is complete promoted to decoding, ended ones
finished and their blocks freed.

Preemption by recompute: when a decoding sequence needs a block and none is free (after evicting unheld
prefix-cache blocks), the most recently admitted running sequence gives its blocks back and goes to the
FRONT of the waiting queue; re-admitted, it prefills every token it had but the last (mostly from the
prefix cache, which kept its full blocks) without sampling, then decodes on. The oldest running sequence
can always take the blocks of all newer ones, and the engine clips ``max_new`` so that one sequence fits
the whole cache, so nothing deadlocks and no request fails for lack of blocks.

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
from services.inference.engine.kv_cache import PagedKVCache
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
        """Whether this chunk ends the sequence's prefill."""
        return self.start + self.count == self.seq.prefill_target

    @property
    def samples(self) -> bool:
        """Whether this chunk's last logits give the first token (it completes a prompt never sampled from)."""
        return self.completes and not self.seq.resuming


@dataclass(slots=True)
class ScheduledBatch:
    """What ``Scheduler.schedule`` decided for one step."""

    finished: list[Sequence] = field(default_factory=list)
    """Ended before running: cancelled, or past their deadline (FINISHED, blocks freed)."""
    admitted: list[Sequence] = field(default_factory=list)
    """Given cache blocks for the first time this step (WAITING → PREFILLING)."""
    resumed: list[Sequence] = field(default_factory=list)
    """Preempted earlier and given cache blocks again this step, to be recomputed."""
    preempted: list[Sequence] = field(default_factory=list)
    """Gave their blocks back this step (→ WAITING, at the front)."""
    prefill: list[PrefillChunk] = field(default_factory=list)
    """Prompt chunks to feed, oldest sequence first."""

    @property
    def completing(self) -> list[Sequence]:
        """The sequences whose first token this step's prefill gives, in chunk order."""
        return [chunk.seq for chunk in self.prefill if chunk.samples]


class Scheduler:
    """Queues, admission and status transitions of every sequence."""

    def __init__(self, config: EngineConfig, cache: PagedKVCache) -> None:
        self.config = config
        self.cache = cache
        self._waiting: deque[Sequence] = deque()
        self._prefilling: list[Sequence] = []
        self._decoding: list[Sequence] = []
        self._admitted: list[Sequence] = []  # running, in admission order
        self.preemptions = 0
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._closed = False

    # -- event-loop side ---------------------------------------------------------------------------------

    @property
    def waiting_count(self) -> int:
        """Sequences queued for cache blocks."""
        return len(self._waiting)

    @property
    def running_count(self) -> int:
        """Sequences holding cache blocks (prefilling or decoding)."""
        return len(self._prefilling) + len(self._decoding)

    def load(self) -> LoadStats:
        """Occupancy as balancers see it, read at one moment (under the lock the engine thread takes to change it).

        A queued sequence for which a running place is free counts as running: the next step admits it
        (blocks allowing). So ``running`` never exceeds ``max_running``, nor ``waiting`` ``max_waiting``.
        """
        with self._lock:
            running, waiting = self._occupancy()
            cache = self.cache
            return LoadStats(
                running,
                waiting,
                cache.used_tokens(),
                cache.capacity_tokens,
                block_size=cache.block_size,
                blocks_used=cache.blocks_used,
                blocks_free=cache.blocks_free,
                prefix_hit_rate=cache.hit_rate,
            )

    def add(self, seq: Sequence | list[Sequence], retry_after_s: float) -> None:
        """Queue a new sequence (or the samples of one request, all or none); ResourceExhausted at once when the
        waiting queue is full.

        The queue holds ``max_waiting`` sequences beyond the running places still free, so a burst on an idle
        engine is not refused before its first step admits it (those count as running in ``load``); a group is
        refused when all of it would not fit.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            group = seq if isinstance(seq, list) else [seq]
            for one in group:
                if one.status is not SequenceStatus.WAITING or one.block_table:
                    raise ValueError(f"sequence {one.request_id} was already scheduled ({one.status.value})")
            running, waiting = self._occupancy()
            if waiting + len(group) - max(0, self.config.max_running - running) > self.config.max_waiting:
                raise ResourceExhausted(
                    f"the inference engine is busy ({running} running, {waiting} waiting)",
                    retry_after_s,
                    reason=Reason.INFERENCE_QUEUE_FULL,
                    metadata={"maxWaiting": str(self.config.max_waiting)},
                )
            self._waiting.extend(group)
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
        """The decoding sequences, each holding a cache slot for the position it decodes next."""
        return list(self._decoding)

    def schedule(self, now: float) -> ScheduledBatch:
        """Retire cancelled and expired sequences, admit waiting ones, and plan this step's prompt chunks.

        A cancelled or expired waiting sequence ends without ever holding a block (again). Each decoding sequence,
        oldest first, gets a block for its next position if it needs one, preempting the newest running sequences
        when none is free. Admission (not in a step that preempted) is oldest first while fewer than
        ``max_running`` run and the cache has blocks for the next one's uncached prefill; a gated later sample
        (``_gated``) is passed over, the others keep their order. Prompt chunks go
        oldest first within the step's token budget (``max_batched_tokens`` less one token per decoding
        sequence); the first chunk that does not fit ends the plan, so no sequence overtakes an older one.
        """
        batch = ScheduledBatch()
        with self._lock:
            for seq in [*self._waiting, *self._prefilling, *self._decoding]:
                if seq.abort_requested:
                    self._finish(seq, FinishReason.CANCELLED)
                elif seq.deadline is not None and now >= seq.deadline:
                    self._finish(seq, None, DeadlineExceeded(f"request {seq.request_id} exceeded its deadline"))
                else:
                    continue
                batch.finished.append(seq)
            for seq in list(self._admitted):
                if seq.status is SequenceStatus.DECODING:
                    while not self.cache.reserve(seq):
                        victim = self._admitted[-1]
                        self._preempt(victim)
                        batch.preempted.append(victim)
                        if victim is seq:
                            break
            skipped = 0  # gated samples at the queue's front, passed over
            while not batch.preempted and len(self._waiting) > skipped and self.running_count < self.config.max_running:
                seq = self._waiting[skipped]
                if self._gated(seq):
                    skipped += 1
                    continue
                if not self.cache.allocate(seq):
                    break
                del self._waiting[skipped]
                seq.status = SequenceStatus.PREFILLING
                self._prefilling.append(seq)
                self._admitted.append(seq)
                (batch.resumed if seq.preemptions else batch.admitted).append(seq)
        budget = self.config.max_batched_tokens - len(self._decoding)
        for seq in self._prefilling:
            count = min(self.config.prefill_chunk, seq.prefill_target - seq.prefilled)
            if count > budget:
                break
            batch.prefill.append(PrefillChunk(seq, seq.prefilled, count))
            budget -= count
        return batch

    def postprocess(
        self, ended: Iterable[tuple[Sequence, FinishReason]], prefill: Iterable[PrefillChunk] = ()
    ) -> list[Sequence]:
        """Record a run: ``prefill``'s chunks are cached, and each ``ended`` sequence stopped for its reason.

        Ended sequences finish and free their blocks; those whose prefill is now complete and that did not
        end move to the decode batch. Full blocks are registered in the prefix cache. Returns the sequences
        finished here.
        """
        finished = []
        with self._lock:
            chunks = list(prefill)
            for chunk in chunks:
                if chunk.seq.status is not SequenceStatus.PREFILLING or chunk.seq.prefilled != chunk.start:
                    raise RuntimeError(f"sequence {chunk.seq.request_id} was not fed the chunk from {chunk.start}")
                chunk.seq.prefilled += chunk.count
                self.cache.register_full(chunk.seq)
            for seq in self._decoding:
                self.cache.register_full(seq)
            for seq, reason in ended:
                self._finish(seq, reason)
                finished.append(seq)
            for chunk in chunks:
                if chunk.completes and chunk.seq.status is SequenceStatus.PREFILLING:
                    self._promote(chunk.seq)
        return finished

    def finish_running(self, reason: FinishReason | None, error: Exception | None = None) -> list[Sequence]:
        """End every sequence holding blocks (prefilling first, then decoding); returns them."""
        with self._lock:
            running = [*self._prefilling, *self._decoding]
            for seq in running:
                self._finish(seq, reason, error)
            return running

    # -- under the lock ----------------------------------------------------------------------------------

    def _occupancy(self) -> tuple[int, int]:
        """(running, waiting), the queued sequences a free running place awaits counted as running."""
        holding = self.running_count
        reserved = min(len(self._waiting), max(0, self.config.max_running - holding))
        return holding + reserved, len(self._waiting) - reserved

    def _gated(self, seq: Sequence) -> bool:
        """Whether ``seq`` is a later sample waiting for sample 0's prompt to be cached, to share its blocks (only
        with the prefix cache: without it there is nothing to share)."""
        first = seq.after
        return (
            self.cache.prefix_cache
            and first is not None
            and first.status in (SequenceStatus.WAITING, SequenceStatus.PREFILLING)
        )

    def _promote(self, seq: Sequence) -> None:
        """PREFILLING → DECODING."""
        self._prefilling.remove(seq)
        self._decoding.append(seq)
        seq.status = SequenceStatus.DECODING

    def _release(self, seq: Sequence) -> None:
        """Take ``seq`` off the running lists and give its blocks back (full ones stay in the prefix cache)."""
        (self._prefilling if seq.status is SequenceStatus.PREFILLING else self._decoding).remove(seq)
        self._admitted.remove(seq)
        self.cache.register_full(seq)
        self.cache.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        """Running → WAITING at the queue's front; it will prefill all its tokens but the last again."""
        self._release(seq)
        seq.prefilled = 0
        seq.prefill_target = len(seq.token_ids) - 1 if seq.num_generated else seq.num_prompt_tokens
        seq.preemptions += 1
        seq.status = SequenceStatus.WAITING
        self._waiting.appendleft(seq)
        self.preemptions += 1

    def _finish(self, seq: Sequence, reason: FinishReason | None, error: Exception | None = None) -> None:
        """Any status → FINISHED, freeing its blocks."""
        if seq.status is SequenceStatus.FINISHED:
            raise RuntimeError(f"sequence {seq.request_id} has already finished")
        if (reason is None) == (error is None):
            raise ValueError("a sequence finishes with either a reason or an error")
        if seq.status is SequenceStatus.WAITING:
            self._waiting.remove(seq)
        else:
            self._release(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.error = error
