"""The continuous-batching engine: an asyncio front over one engine thread that steps the whole batch.

Each step (1) retires cancelled and expired sequences, (2) admits waiting requests into free KV-cache
rows, (3) feeds prompt chunks of the sequences still prefilling, within the step's token budget, and
(4) decodes one token for every sequence in the decode block in one forward pass. A request that
arrives mid-generation joins at the next step instead of waiting for the batch to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator

import torch

from genmesh.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from services.inference.engine.kv_cache import SlotKVCache
from services.inference.engine.runner import ModelRunner, sample_batch
from services.inference.engine.scheduler import EngineConfig, Scheduler
from services.inference.engine.sequence import Item, Sequence
from services.inference.engine.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    LoadStats,
    ModelInfo,
    TokenChunk,
)
from services.inference.models.loader import LoadedModel

log = logging.getLogger("genmesh.inference.engine")


def keep_prompt_tail(ids: list[int], context: int, max_tokens: int, bos_token_id: int | None) -> list[int]:
    """The prompt cut to its last tokens so that it leaves ``min(max_tokens, context // 2)`` positions to generate.

    A leading BOS token is kept.
    """
    room = context - min(max_tokens, context // 2)
    if len(ids) <= room:
        return ids
    head = ids[:1] if bos_token_id is not None and ids[0] == bos_token_id else []
    return head + ids[len(ids) - (room - len(head)) :]


class _Stream:
    """The consumer's end of one generation (event-loop thread only): unread items, coalesced."""

    def __init__(self) -> None:
        self.pending: deque[Item] = deque()
        self.ready = asyncio.Event()
        self.finished = False

    def push(self, item: Item) -> None:
        if self.finished:
            return
        last = self.pending[-1] if self.pending else None
        if isinstance(item, TokenChunk) and isinstance(last, TokenChunk):
            last.extend(item)
        else:
            self.pending.append(item)
        if not isinstance(item, TokenChunk):
            self.finished = True
        self.ready.set()


class _Outbox:
    """Items the engine thread produced, handed to the event loop in one call per flush.

    One ``call_soon_threadsafe`` per step rather than one per token keeps the engine thread and the
    event loop from trading the GIL for every token of a large batch.
    """

    def __init__(self) -> None:
        self._items: list[tuple[_Stream, Item]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the consumers run on (the engine serves one loop)."""
        self._loop = loop

    def put(self, stream: _Stream, item: Item) -> None:
        with self._lock:
            self._items.append((stream, item))

    def flush(self) -> None:
        with self._lock:
            batch, self._items = self._items, []
        if batch and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                self._loop.call_soon_threadsafe(_deliver, batch)


def _deliver(batch: list[tuple[_Stream, Item]]) -> None:
    for stream, item in batch:
        stream.push(item)


class Engine:
    """Generates for many requests at once, batching them step by step on a dedicated engine thread.

    Public methods are called from the event loop's thread; the model never runs on it. Items cross
    back with ``loop.call_soon_threadsafe``; a consumer that reads slowly gets its unread chunks merged.
    """

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self._loaded = loaded
        self.config = config or EngineConfig()
        self._cache = SlotKVCache(loaded.model, self.config.max_running, loaded.context_length)
        self._scheduler = Scheduler(self.config, self._cache)
        self._runner = ModelRunner(loaded.model, self._cache, loaded.device)
        self._eos = frozenset(loaded.eos_token_ids)
        self._active: dict[str, tuple[Sequence, _Stream]] = {}
        self._outbox = _Outbox()
        self._service_s = 1.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="genmesh-engine", daemon=True)
        self._thread.start()

    # -- event-loop side -------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk | Finished, None]:
        """Stream the completion of ``request``: TokenChunks, then exactly one Finished.

        Raises at the first step, before anything is streamed: InvalidArgument (prompt too long or empty,
        request id in use), ResourceExhausted (waiting queue full), DeadlineExceeded (deadline already
        passed), FailedPrecondition (engine closed). Raises DeadlineExceeded mid-stream when the deadline
        passes. Leaving the iteration early (cancellation, ``aclose()``) stops the generation at the next step.
        """
        seq, stream = self._admit(request)
        try:
            while True:
                item = await self._next(seq, stream)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            if not stream.finished:
                seq.cancel.set()
                self._scheduler.wake()
            if self._active.get(request.request_id, (None,))[0] is seq:
                del self._active[request.request_id]

    def abort(self, request_id: str) -> bool:
        """Stop ``request_id``; its stream ends with a cancelled Finished. False when it is not active."""
        found = self._active.get(request_id)
        if found is None or found[1].finished or found[0].cancel.is_set():
            return False
        found[0].cancel.set()
        self._scheduler.wake()
        return True

    def load(self) -> LoadStats:
        """Current occupancy."""
        return LoadStats(
            running=self._scheduler.running_count,
            waiting=self._scheduler.waiting_count,
            kv_used_tokens=self._cache.used_tokens(),
            kv_capacity_tokens=self._cache.capacity_tokens,
        )

    def info(self) -> ModelInfo:
        """What this engine serves."""
        loaded = self._loaded
        return ModelInfo(
            name=loaded.name,
            context_length=loaded.context_length,
            vocab_size=loaded.config.vocab_size,
            dtype=str(loaded.dtype).removeprefix("torch."),
            device=str(loaded.device),
            eos_token_ids=list(loaded.eos_token_ids),
        )

    async def close(self) -> None:
        """Stop the engine thread; requests still waiting end cancelled."""
        if self._closed:
            return
        self._closed = True
        for seq in self._scheduler.close():
            seq.finish(FinishReason.CANCELLED)
        self._outbox.flush()
        await asyncio.to_thread(self._thread.join)

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _admit(self, request: GenerationRequest) -> tuple[Sequence, _Stream]:
        if self._closed:
            raise FailedPrecondition("the inference engine is closed")
        if request.request_id in self._active:
            raise InvalidArgument.field("request_id", f"a request with id {request.request_id!r} is already active")
        if request.deadline is not None and request.deadline <= time.monotonic():
            raise DeadlineExceeded(f"request {request.request_id} reached its deadline before it started")
        loaded = self._loaded
        ids = loaded.encode_prompt(request.prompt)
        context = loaded.context_length
        if not ids:
            raise InvalidArgument.field("prompt", "must not be empty (the model has no BOS token to start from)")
        if request.truncate_prompt:
            ids = keep_prompt_tail(ids, context, request.sampling.max_tokens, loaded.bos_token_id)
        if len(ids) > context - 1:
            raise InvalidArgument.field(
                "prompt",
                f"the prompt of {len(ids)} tokens exceeds the context length of {context} "
                f"(at most {context - 1} prompt tokens leave room to generate)",
            )
        stream = _Stream()
        self._outbox.bind(asyncio.get_running_loop())

        def post(item: Item) -> None:
            self._outbox.put(stream, item)

        max_new = min(request.sampling.max_tokens, context - len(ids))
        seq = Sequence(request, ids, max_new, loaded.tokenizer, self._eos, post, threading.Event())
        self._scheduler.submit(seq, retry_after_s=round(max(0.1, self._service_s), 3))
        self._active[request.request_id] = (seq, stream)
        return seq, stream

    async def _next(self, seq: Sequence, stream: _Stream) -> Item:
        deadline = seq.request.deadline
        while not stream.pending:
            stream.ready.clear()
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise DeadlineExceeded(f"request {seq.request.request_id} exceeded its deadline")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.ready.wait(), timeout)
        item = stream.pending.popleft()
        if isinstance(item, Finished):
            self._service_s = 0.8 * self._service_s + 0.2 * item.total_ms / 1000.0
        return item

    # -- engine thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while self._scheduler.wait_for_work():
                try:
                    self._step()
                except Exception as error:  # a bug or a device failure: fail the batch, keep serving
                    log.exception("engine step failed; failing the running requests")
                    self._fail_running(error)
                finally:
                    self._outbox.flush()
        for seq in [*self._scheduler.prefilling, *self._decoding()]:
            self._end(seq, FinishReason.CANCELLED)
        self._outbox.flush()

    def _step(self) -> None:
        self._retire()
        now = time.monotonic()
        for seq in self._scheduler.admit():
            seq.started = now
        for seq, count in self._scheduler.prefill_plan():
            logits = self._runner.prefill(seq, count)
            if logits is None:
                continue
            self._scheduler.prefilling.remove(seq)
            reason = seq.accept(sample_batch([seq], logits.unsqueeze(0))[0])
            if reason is None:
                self._cache.promote(seq)
            else:
                self._end(seq, reason)
        self._outbox.flush()  # first tokens go out before the decode pass
        decoding = self._decoding()
        if not decoding:
            return
        tokens = sample_batch(decoding, self._runner.decode(decoding))
        ended = [(seq, reason) for seq, token in zip(decoding, tokens, strict=True) if (reason := seq.accept(token))]
        for seq, reason in ended:
            self._end(seq, reason)

    def _decoding(self) -> list[Sequence]:
        owners = self._cache.decoding()
        return [owner for owner in owners if isinstance(owner, Sequence)]

    def _retire(self) -> None:
        """End sequences whose consumer left, that were aborted, or whose deadline passed."""
        for seq in self._scheduler.drop_cancelled_waiting():
            seq.finish(FinishReason.CANCELLED)
        now = time.monotonic()
        for seq in [*self._scheduler.prefilling, *self._decoding()]:
            if seq.cancel.is_set():
                self._end(seq, FinishReason.CANCELLED)
            elif seq.request.deadline is not None and now >= seq.request.deadline:
                seq.post(DeadlineExceeded(f"request {seq.request.request_id} exceeded its deadline"))
                self._end(seq, None)

    def _end(self, seq: Sequence, reason: FinishReason | None) -> None:
        if seq in self._scheduler.prefilling:
            self._scheduler.prefilling.remove(seq)
        self._cache.release(seq)
        if reason is not None:
            seq.finish(reason)

    def _fail_running(self, error: Exception) -> None:
        for seq in [*self._scheduler.prefilling, *self._decoding()]:
            seq.post(error)
            self._end(seq, None)
