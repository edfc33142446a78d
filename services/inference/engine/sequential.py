"""A one-request-at-a-time engine: model steps on one worker thread, streamed to asyncio consumers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch

from genmesh.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, ResourceExhausted
from services.inference.detokenizer import IncrementalDetokenizer, StopSequenceFilter
from services.inference.engine.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    LoadStats,
    ModelInfo,
    TokenChunk,
    TokenLogprob,
)
from services.inference.models.loader import LoadedModel
from services.inference.sampler import Sampler

Item = TokenChunk | Finished | BaseException
PostFn = Callable[[Item], None]


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000.0, 3)


class _Job:
    """One admitted request: its state on both threads and the hand-off of items to its consumer."""

    def __init__(self, request: GenerationRequest, prompt_ids: list[int], max_new: int) -> None:
        self.request = request
        self.prompt_ids = prompt_ids
        self.max_new = max_new
        self.arrival = time.monotonic()
        self.started: float | None = None
        self.cancel = threading.Event()
        self.pending: deque[Item] = deque()
        self.ready = asyncio.Event()
        self.finished = False

    def push(self, item: Item) -> None:
        """Queue an item for the consumer (loop thread only), merging consecutive unread chunks."""
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

    def cancelled_record(self) -> Finished:
        """The Finished item of a request cancelled before it started."""
        now = time.monotonic()
        return Finished(
            FinishReason.CANCELLED, len(self.prompt_ids), 0, _ms(self.arrival, now), 0.0, _ms(self.arrival, now)
        )


def keep_prompt_tail(ids: list[int], context: int, max_tokens: int, bos_token_id: int | None) -> list[int]:
    """The prompt cut to its last tokens so that it leaves ``min(max_tokens, context // 2)`` positions to generate.

    A leading BOS token is kept.
    """
    room = context - min(max_tokens, context // 2)
    if len(ids) <= room:
        return ids
    head = ids[:1] if bos_token_id is not None and ids[0] == bos_token_id else []
    return head + ids[len(ids) - (room - len(head)) :]


class SequentialEngine:
    """Generates for one request at a time on a dedicated worker thread; others wait in a bounded queue.

    All public methods are called from the event loop's thread. Model steps never run on the loop:
    the worker posts chunks back with ``loop.call_soon_threadsafe``; unread chunks are coalesced, so a
    slow consumer costs memory proportional to its unread text, not to the number of steps.
    """

    def __init__(self, loaded: LoadedModel, max_waiting: int = 16, torch_threads: int | None = None) -> None:
        if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0:
            raise ValueError(f"max_waiting must be a non-negative integer, got {max_waiting!r}")
        if torch_threads is not None and torch_threads <= 0:
            raise ValueError(f"torch_threads must be positive, got {torch_threads!r}")
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self._loaded = loaded
        self._max_waiting = max_waiting
        self._eos = frozenset(loaded.eos_token_ids)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genmesh-engine")
        self._jobs: dict[str, _Job] = {}
        self._waiting: deque[_Job] = deque()
        self._running: _Job | None = None
        self._running_future: asyncio.Future[None] | None = None
        self._kv_used = 0
        self._service_s: float | None = None
        self._closed = False

    # -- consumer side (event loop thread) ---------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk | Finished, None]:
        """Stream the completion of ``request``: TokenChunks, then exactly one Finished.

        Raises at the first step, before anything is streamed: InvalidArgument (prompt too long or
        empty, request id in use), ResourceExhausted (waiting queue full), DeadlineExceeded (deadline
        already passed), FailedPrecondition (engine closed). Raises DeadlineExceeded mid-stream when the
        deadline passes. Leaving the iteration early (cancellation, ``aclose()``) stops the generation.
        """
        job = self._admit(request)
        try:
            while True:
                item = await self._next(job)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            self._release(job)

    def abort(self, request_id: str) -> bool:
        """Stop ``request_id`` (its stream ends with a cancelled Finished); False when it is not active."""
        job = self._jobs.get(request_id)
        if job is None or job.finished or job.cancel.is_set():
            return False
        job.cancel.set()
        if job in self._waiting:
            self._waiting.remove(job)
            job.push(job.cancelled_record())
        return True

    def load(self) -> LoadStats:
        """Current occupancy."""
        return LoadStats(
            running=1 if self._running is not None else 0,
            waiting=len(self._waiting),
            kv_used_tokens=self._kv_used if self._running is not None else 0,
            kv_capacity_tokens=self._loaded.context_length,
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
        """Cancel waiting and running requests, wait for the worker to stop, release the thread."""
        self._closed = True
        while self._waiting:
            job = self._waiting.popleft()
            job.cancel.set()
            job.push(job.cancelled_record())
        if self._running is not None:
            self._running.cancel.set()
        if self._running_future is not None:
            await asyncio.gather(self._running_future, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> SequentialEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _admit(self, request: GenerationRequest) -> _Job:
        if self._closed:
            raise FailedPrecondition("the inference engine is closed")
        if request.request_id in self._jobs:
            raise InvalidArgument.field("request_id", f"a request with id {request.request_id!r} is already active")
        if request.deadline is not None and request.deadline <= time.monotonic():
            raise DeadlineExceeded(f"request {request.request_id} reached its deadline before it started")
        ids = self._loaded.encode_prompt(request.prompt)
        context = self._loaded.context_length
        if not ids:
            raise InvalidArgument.field("prompt", "must not be empty (the model has no BOS token to start from)")
        if request.truncate_prompt:
            ids = keep_prompt_tail(ids, context, request.sampling.max_tokens, self._loaded.bos_token_id)
        if len(ids) > context - 1:
            raise InvalidArgument.field(
                "prompt",
                f"the prompt of {len(ids)} tokens exceeds the context length of {context} "
                f"(at most {context - 1} prompt tokens leave room to generate)",
            )
        max_new = min(request.sampling.max_tokens, context - len(ids))
        job = _Job(request, ids, max_new)
        if self._running is None and not self._waiting:
            self._jobs[request.request_id] = job
            self._start(job)
        elif len(self._waiting) >= self._max_waiting:
            retry = round(max(0.1, self._service_s if self._service_s is not None else 1.0), 3)
            raise ResourceExhausted(
                f"the inference engine is busy ({len(self._waiting)} requests waiting)", retry_after_s=retry
            )
        else:
            self._jobs[request.request_id] = job
            self._waiting.append(job)
        return job

    async def _next(self, job: _Job) -> Item:
        deadline = job.request.deadline
        while not job.pending:
            job.ready.clear()
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise DeadlineExceeded(f"request {job.request.request_id} exceeded its deadline")
            try:
                await asyncio.wait_for(job.ready.wait(), timeout)
            except TimeoutError:
                continue
        return job.pending.popleft()

    def _release(self, job: _Job) -> None:
        """The consumer is gone: stop the job if still active and forget it."""
        if not job.finished:
            job.cancel.set()
            if job in self._waiting:
                self._waiting.remove(job)
            job.finished = True
        if self._jobs.get(job.request.request_id) is job:
            del self._jobs[job.request.request_id]

    def _start(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        self._running = job
        future = loop.run_in_executor(self._executor, self._run, job, loop)
        self._running_future = future
        future.add_done_callback(partial(self._on_done, job))

    def _on_done(self, job: _Job, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            job.push(future.exception() or RuntimeError("worker failed"))
        if job.started is not None:
            took = time.monotonic() - job.started
            self._service_s = took if self._service_s is None else 0.8 * self._service_s + 0.2 * took
        self._running = None
        self._running_future = None
        self._kv_used = 0
        while self._waiting and not self._closed:
            nxt = self._waiting.popleft()
            if not nxt.cancel.is_set():
                self._start(nxt)
                break

    # -- worker side (engine thread) -----------------------------------------------------------------

    def _run(self, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        def post(item: Item) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                loop.call_soon_threadsafe(job.push, item)

        job.started = time.monotonic()
        try:
            with torch.inference_mode():
                self._generate(job, post)
        except Exception as exc:  # delivered to the consumer, who re-raises it
            post(exc)

    def _generate(self, job: _Job, post: PostFn) -> None:
        loaded, request = self._loaded, job.request
        params = request.sampling
        tokenizer = loaded.tokenizer
        sampler = Sampler(params)
        detok = IncrementalDetokenizer(tokenizer, job.prompt_ids)
        stops = StopSequenceFilter(params.stop)
        n_prompt = len(job.prompt_ids)
        device = loaded.device
        cache = loaded.model.new_cache(max_len=n_prompt + job.max_new)
        self._kv_used = n_prompt
        prompt = torch.tensor([job.prompt_ids], device=device)
        logits = loaded.model(prompt, torch.arange(n_prompt, device=device).unsqueeze(0), cache, last_only=True)
        history = list(job.prompt_ids)
        generated = 0
        first_token_at: float | None = None
        reason: FinishReason | None = None
        while reason is None:
            if job.cancel.is_set():
                reason = FinishReason.CANCELLED
                break
            if request.deadline is not None and time.monotonic() >= request.deadline:
                raise DeadlineExceeded(f"request {request.request_id} exceeded its deadline")
            token = sampler.sample(logits[0, -1], history)
            generated += 1
            history.append(token.token_id)
            if first_token_at is None:
                first_token_at = time.monotonic()
            chunk = TokenChunk([], "")
            if token.token_id in self._eos:
                reason = FinishReason.STOP
            else:
                chunk.token_ids.append(token.token_id)
                if token.logprob is not None:
                    top = [(i, tokenizer.decode([i], skip_special_tokens=False), lp) for i, lp in token.top]
                    chunk.logprobs.append(TokenLogprob(token.token_id, token.logprob, top))
                chunk.text = stops.feed(detok.add(token.token_id))
                if stops.stopped:
                    reason = FinishReason.STOP_SEQUENCE
                elif generated >= job.max_new:
                    reason = FinishReason.LENGTH
            if reason in (FinishReason.STOP, FinishReason.LENGTH):
                chunk.text += stops.feed(detok.flush())
                chunk.text += stops.flush()
                if stops.stopped:
                    reason = FinishReason.STOP_SEQUENCE
            if chunk.token_ids or chunk.text:
                post(chunk)
            if reason is None:
                position = n_prompt + generated - 1
                self._kv_used = position + 1
                step = torch.tensor([[token.token_id]], device=device)
                logits = loaded.model(step, torch.tensor([[position]], device=device), cache, last_only=True)
        now = time.monotonic()
        started = job.started if job.started is not None else now
        post(
            Finished(
                finish_reason=reason,
                prompt_tokens=n_prompt,
                completion_tokens=generated - (reason == FinishReason.STOP),
                queue_ms=_ms(job.arrival, started),
                ttft_ms=_ms(job.arrival, first_token_at) if first_token_at is not None else 0.0,
                total_ms=_ms(job.arrival, now),
            )
        )
