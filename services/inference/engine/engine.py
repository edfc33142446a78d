"""The continuous-batching engine: an asyncio front over one engine thread that steps the whole batch.

The parts, each owning its state: the ``Scheduler`` (every sequence's status, the queues, admission,
preemption), the ``PagedKVCache`` (cache blocks, block tables, prefix cache), the ``ModelRunner`` (forward
passes), the ``OutputProcessor`` (sampling, text, stop matching, closing records) and the ``Outbox``
(delivery to the event loop).

Each step is ``schedule()`` → run → ``postprocess()``, twice: the scheduler retires cancelled and expired
sequences, preempts the newest running ones when decoding runs out of blocks, admits waiting requests
while blocks are free and plans prompt chunks within the step's token budget;
the runner feeds them, the outputs sample the first token of every prompt completed, and the scheduler
promotes those to decoding. Then one forward pass decodes a token for every decoding sequence, and the
scheduler finishes those that ended. A request that arrives mid-generation joins at the next step
instead of waiting for the batch to drain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer

from genmesh import tracing
from genmesh.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, quote
from genmesh.tasks import wait_within
from services.inference.constraints import GrammarCompiler
from services.inference.engine.config import EngineConfig
from services.inference.engine.kv_cache import PagedKVCache
from services.inference.engine.output import OutputProcessor, SequenceOutput
from services.inference.engine.runner import ModelRunner
from services.inference.engine.scheduler import Scheduler
from services.inference.engine.sequence import Sequence
from services.inference.engine.spans import PhaseSpans
from services.inference.engine.stream import Item, Outbox, Stream
from services.inference.engine.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    LoadStats,
    ModelInfo,
    TokenChunk,
)
from services.inference.models.loader import LoadedModel

if TYPE_CHECKING:
    from services.inference.metrics import InferenceMetrics

log = logging.getLogger("genmesh.inference.engine")


Sample = tuple[Sequence, Stream, SequenceOutput]
"""One of a request's n samples: its sequence, the stream it is delivered to, its output side."""


def sample_request(request: GenerationRequest, index: int) -> GenerationRequest:
    """The request of sample ``index`` (n > 1): its seed, when set, is ``seed + index``."""
    seed = request.sampling.seed
    if index == 0 or seed is None:
        return request
    return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, seed=seed + index))


def keep_prompt_tail(ids: list[int], context: int, max_tokens: int, bos_token_id: int | None) -> list[int]:
    """The prompt cut to its last tokens so that it leaves ``min(max_tokens, context // 2)`` positions to generate.

    A leading BOS token is kept.
    """
    room = context - min(max_tokens, context // 2)
    if len(ids) <= room:
        return ids
    head = ids[:1] if bos_token_id is not None and ids[0] == bos_token_id else []
    return head + ids[len(ids) - (room - len(head)) :]


class Engine:
    """Generates for many requests at once, batching them step by step on a dedicated engine thread.

    Public methods are called from the event loop's thread; the model never runs on it. Items cross
    back with ``loop.call_soon_threadsafe``; a consumer that reads slowly gets its unread chunks merged. With
    ``metrics``, the engine records its requests' timings, tokens and endings there and reports its load.
    """

    def __init__(
        self, loaded: LoadedModel, config: EngineConfig | None = None, metrics: InferenceMetrics | None = None
    ) -> None:
        self._loaded = loaded
        self.config = config or EngineConfig()
        cfg = self.config
        storage = loaded.model.new_paged_cache(cfg.num_blocks(loaded.context_length), cfg.block_size)
        self._cache = PagedKVCache(storage, cfg.prefix_cache)
        self._scheduler = Scheduler(self.config, self._cache)
        rows = cfg.max_running if cfg.uses_decode_rows(loaded.device.type) else 0
        self._runner = ModelRunner(loaded.model, self._cache, loaded.device, rows)
        self._outputs = OutputProcessor(metrics)
        self._grammars = GrammarCompiler(loaded.tokenizer, loaded.eos_token_ids)
        self._metrics = metrics
        if metrics is not None:
            metrics.attach(self._scheduler.load, self.config)
        self._eos = frozenset(loaded.eos_token_ids)
        self._active: dict[str, list[Sample]] = {}
        self._outbox = Outbox(self.config.stream_interval_tokens, self.config.stream_interval_ms)
        self._service_s = 1.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="genmesh-engine", daemon=True)
        self._thread.start()

    # -- event-loop side -------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk | Finished, None]:
        """Stream the completion of ``request``: TokenChunks, then exactly one Finished, per sample.

        With ``sampling.n`` > 1 the request runs as n sequences (sample i seeded ``seed + i``; samples after the
        first admitted once the first's prompt is cached, so they share its blocks); items carry their sample's
        ``index``, interleaved, and the stream ends after the last Finished. Cancelling cancels every sample.

        Raises at the first step, before anything is streamed: InvalidArgument (prompt too long or empty,
        request id in use), ResourceExhausted (waiting queue full), DeadlineExceeded (deadline already
        passed), FailedPrecondition (engine closed). Raises DeadlineExceeded mid-stream when the deadline
        passes. Leaving the iteration early (cancellation, ``aclose()``) stops the generation at the next step.
        While tracing is on, the request's phases become spans (``spans.PhaseSpans``) of the current one.
        """
        samples = self._admit(request)
        seq, stream, out = samples[0]
        spans = PhaseSpans() if tracing.enabled() else None
        done: Finished | None = None
        error: BaseException | None = None
        left = len(samples)
        try:
            while left:
                item = await (self._next(seq, stream) if len(samples) == 1 else self._next_of(samples))
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Finished):
                    left -= 1
                    done = item if item.index == 0 else done
                yield item
        except BaseException as raised:
            error = raised
            raise
        finally:
            for one, its_stream, _ in samples:
                if not its_stream.finished:
                    self._scheduler.abort(one)
            if self._active.get(request.request_id) is samples:
                del self._active[request.request_id]
            if spans is not None:
                spans.end(seq, out, done, error)

    def abort(self, request_id: str) -> bool:
        """Stop ``request_id``; its stream ends with a cancelled Finished. False when it is not active."""
        live = [seq for seq, stream, _ in self._active.get(request_id, []) if not stream.finished]
        return any([self._scheduler.abort(seq) for seq in live])  # a list: every sample is asked

    def load(self) -> LoadStats:
        """Current occupancy, every figure read at one moment (``Scheduler.load``)."""
        return self._scheduler.load()

    @property
    def holding_count(self) -> int:
        """Sequences holding KV-cache blocks now (prefilling or decoding); ``load().running`` also counts the queued
        ones a free running place awaits, so it cannot show how many the cache fits."""
        return self._scheduler.running_count

    @property
    def preemptions(self) -> int:
        """Sequences preempted (to be recomputed) since start, for lack of KV-cache blocks."""
        return self._scheduler.preemptions

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (for counting; the engine thread encodes nothing with it)."""
        return self._loaded.tokenizer

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
        self._outputs.finish(self._scheduler.close())
        self._outbox.flush()
        await asyncio.to_thread(self._thread.join)

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _admit(self, request: GenerationRequest) -> list[Sample]:
        if self._closed:
            raise FailedPrecondition("the inference engine is closed")
        if request.request_id in self._active:
            raise InvalidArgument.field(
                "request_id", f"a request with id {quote(request.request_id)} is already active"
            )
        if request.deadline is not None and request.deadline <= time.monotonic():
            raise DeadlineExceeded(f"request {request.request_id} reached its deadline before it started")
        loaded = self._loaded
        ids = loaded.encode_rendered(request.prompt) if request.rendered else loaded.encode_prompt(request.prompt)
        context = loaded.context_length
        if not ids:
            raise InvalidArgument.field("prompt", "must not be empty (the model has no BOS token to start from)")
        capacity = self._cache.capacity_tokens
        if request.truncate_prompt:  # to what one sequence may hold: the context, or a smaller KV cache
            ids = keep_prompt_tail(ids, min(context, capacity), request.sampling.max_tokens, loaded.bos_token_id)
        if len(ids) > context - 1:
            raise InvalidArgument.field(
                "prompt",
                f"the prompt of {len(ids)} tokens exceeds the context length of {context} "
                f"(at most {context - 1} prompt tokens leave room to generate)",
            )
        if len(ids) + 1 > capacity:
            raise InvalidArgument.field(
                "prompt", f"the prompt of {len(ids)} tokens does not fit the KV cache of {capacity} tokens"
            )
        # clipped like the context: one sequence alone always fits the whole cache, so preemption never deadlocks
        max_new = min(request.sampling.max_tokens, context - len(ids), capacity - len(ids))
        self._outbox.bind(asyncio.get_running_loop())
        samples: list[Sample] = []
        for index in range(max(1, getattr(request.sampling, "n", 1))):
            first = samples[0][0] if samples else None
            seq = Sequence(request.request_id, ids, max_new, request.deadline, after=first)
            stream = Stream()
            out = SequenceOutput(
                sample_request(request, index),
                ids,
                loaded.tokenizer,
                self._eos,
                self._deliverer(stream, index),
                self._grammars.constraint(request.response_format),
            )
            self._outputs.add(seq, out)
            samples.append((seq, stream, out))
        try:
            self._scheduler.add([seq for seq, _, _ in samples], retry_after_s=round(max(0.1, self._service_s), 3))
        except BaseException:
            for seq, _, _ in samples:
                self._outputs.discard(seq)
            raise
        self._active[request.request_id] = samples
        return samples

    def _deliverer(self, stream: Stream, index: int) -> Callable[[Item], None]:
        """Hands sample ``index``'s items to ``stream`` through the outbox (engine thread), tagged with the index."""
        outbox = self._outbox

        def deliver(item: Item) -> None:
            if index and isinstance(item, (TokenChunk, Finished)):
                item.index = index
            outbox.put(stream, item)

        return deliver

    async def _next_of(self, samples: list[Sample]) -> Item:
        """The next item of any of ``samples``' streams (n > 1), in sample order when several are ready."""
        deadline = samples[0][0].deadline
        while True:
            for seq, stream, _ in samples:
                if stream.pending:
                    return await self._next(seq, stream)
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise DeadlineExceeded(f"request {samples[0][0].request_id} exceeded its deadline")
            waits = []
            for _, stream, _ in samples:
                stream.ready.clear()
                waits.append(asyncio.ensure_future(stream.ready.wait()))
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def _next(self, seq: Sequence, stream: Stream) -> Item:
        deadline = seq.deadline
        while not stream.pending:
            stream.ready.clear()
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise DeadlineExceeded(f"request {seq.request_id} exceeded its deadline")
            await wait_within(stream.ready.wait(), timeout)  # no task per wait, as wait_for's
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
                    self._outputs.finish(self._scheduler.finish_running(None, error))
                finally:
                    self._outbox.flush()
        self._outputs.finish(self._scheduler.finish_running(FinishReason.CANCELLED))
        self._outbox.flush()

    def _step(self) -> None:
        batch = self._scheduler.schedule(time.monotonic())
        self._outputs.finish(batch.finished)
        self._release_held(batch.preempted)
        self._outputs.mark_started(batch.admitted, time.monotonic())
        if self._metrics is not None:
            self._metrics.scheduled(batch.admitted, len(batch.preempted))
        if batch.prefill:
            logits = self._runner.prefill(batch.prefill)
            ended = [] if logits is None else self._outputs.process(batch.completing, logits, len(batch.prefill))
            self._outputs.finish(self._scheduler.postprocess(ended, batch.prefill))
        self._outbox.flush()  # first tokens go out before the decode pass
        decoding = self._scheduler.decode_batch()
        if decoding:
            if self._metrics is not None:
                self._metrics.decoded(len(decoding))
            self._outputs.prefetch_masks(decoding)  # filled on a worker while the forward pass runs
            ended = self._outputs.process(decoding, self._runner.decode(decoding))
            self._outputs.finish(self._scheduler.postprocess(ended))

    def _release_held(self, preempted: list[Sequence]) -> None:
        """Send what the stream interval holds of ``preempted`` sequences: their next token waits for a recompute."""
        for seq in preempted:
            for index, (one, stream, _) in enumerate(self._active.get(seq.request_id, ())):
                if one is seq:
                    self._outbox.release(stream, index)
