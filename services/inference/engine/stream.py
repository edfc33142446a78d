"""Delivery to the consumer: what the engine thread produced, handed to the event loop in one call per flush."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from services.inference.engine.types import Finished, TokenChunk

Item = TokenChunk | Finished | BaseException
"""What a generation stream carries: chunks, then a Finished or an exception to raise."""


class Stream:
    """The consumer's end of one generation (event-loop thread only): unread items, coalesced."""

    def __init__(self) -> None:
        self.pending: deque[Item] = deque()
        self.ready = asyncio.Event()
        self.finished = False

    def push(self, item: Item) -> None:
        """Queue ``item``, merging it into an unread chunk; anything after the last item is dropped."""
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


class Outbox:
    """Items the engine thread produced, handed to the event loop in one call per flush.

    One ``call_soon_threadsafe`` per step rather than one per token keeps the engine thread and the
    event loop from trading the GIL for every token of a large batch.

    Stream interval (vLLM's ``--stream-interval``): with ``interval_tokens`` > 1 or ``interval_ms`` > 0, a
    stream's token chunks after its first are held and merged until ``interval_tokens`` tokens are held
    (when > 1) or ``interval_ms`` milliseconds have passed since the stream's last send (when > 0). The
    first chunk goes out at once; a Finished or an error goes out at once, after what was held. A flush
    also sends the chunks held for ``interval_ms`` or longer (no next token needed), and ``release`` sends a
    stream's held chunk at once (the engine's, for a preempted sequence). Fewer items mean fewer loop
    wake-ups and fewer gRPC messages; the text is the same.
    """

    def __init__(self, interval_tokens: int = 1, interval_ms: float = 0.0, clock: Callable[[], float] = time.monotonic):
        if interval_tokens < 1 or interval_ms < 0:
            raise ValueError(f"stream interval must be >= 1 token and >= 0 ms, got {interval_tokens}, {interval_ms}")
        self._items: list[tuple[Stream, Item]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokens = interval_tokens
        self._seconds = interval_ms / 1000.0
        self._clock = clock
        self._holding = interval_tokens > 1 or interval_ms > 0
        self._held: dict[tuple[Stream, int], _Held] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the consumers run on (the engine serves one loop)."""
        self._loop = loop

    def put(self, stream: Stream, item: Item) -> None:
        """Queue ``item`` for ``stream`` until the next flush (any thread), held back by the stream interval."""
        with self._lock:
            if not self._holding:
                self._items.append((stream, item))
                return
            key = (stream, getattr(item, "index", 0))  # a stream of n > 1 samples holds each apart
            if not isinstance(item, TokenChunk):  # an ending: its sample's held chunk, an error's every one
                keys = [key] if isinstance(item, Finished) else [k for k in self._held if k[0] is stream]
                for done in keys:
                    held = self._held.pop(done, None)
                    if held is not None and held.chunk is not None:
                        self._items.append((stream, held.chunk))
                self._items.append((stream, item))
                return
            now = self._clock()
            held = self._held.get(key)
            if held is None:  # the first chunk: at once
                self._held[key] = _Held(now)
                self._items.append((stream, item))
                return
            if held.chunk is None:
                held.chunk = item
            else:
                held.chunk.extend(item)
            if (self._tokens > 1 and len(held.chunk.token_ids) >= self._tokens) or (
                self._seconds > 0 and now - held.sent >= self._seconds
            ):
                self._send_held(stream, held, held.chunk, now)

    def release(self, stream: Stream, index: int = 0) -> None:
        """Queue the chunk held for sample ``index`` of ``stream``, if any, for the next flush (any thread)."""
        with self._lock:
            held = self._held.get((stream, index))
            if held is not None and held.chunk is not None:
                self._send_held(stream, held, held.chunk, self._clock())

    def _send_held(self, stream: Stream, held: _Held, chunk: TokenChunk, now: float) -> None:
        """Queue ``held``'s ``chunk`` for ``stream`` and start its interval again at ``now`` (under the lock)."""
        self._items.append((stream, chunk))
        held.chunk, held.sent = None, now

    def flush(self) -> None:
        """Hand everything queued to the loop in one call, with the chunks held for the ms interval or longer."""
        with self._lock:
            if self._seconds > 0:
                now = self._clock()
                for (stream, _), held in self._held.items():
                    if held.chunk is not None and now - held.sent >= self._seconds:
                        self._send_held(stream, held, held.chunk, now)
            batch, self._items = self._items, []
        if batch and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                self._loop.call_soon_threadsafe(_deliver, batch)


@dataclass(slots=True)
class _Held:
    """A stream's chunk held back by the stream interval, and when the stream last sent one."""

    sent: float
    chunk: TokenChunk | None = None


def _deliver(batch: list[tuple[Stream, Item]]) -> None:
    for stream, item in batch:
        stream.push(item)
