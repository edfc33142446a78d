"""The stream interval of the engine's Outbox: token chunks after a stream's first are held by count or time; the
first chunk, a Finished and an error are never held; nothing is lost or reordered."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from support.engine_steps import ForwardGate

from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, GenerationRequest
from services.inference.engine.stream import Item, Outbox, Stream
from services.inference.engine.types import Finished, FinishReason, TokenChunk
from services.inference.models.loader import LoadedModel


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def chunk(token: int) -> TokenChunk:
    return TokenChunk([token], f"<{token}>")


def done() -> Finished:
    return Finished(FinishReason.LENGTH, 3, 5, 0.0, 0.0, 0.0)


async def sent(outbox: Outbox, stream: Stream) -> list[Item]:
    """Flush ``outbox`` and take what ``stream`` got (each item apart: nothing unread is merged)."""
    outbox.flush()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    taken = list(stream.pending)
    stream.pending.clear()
    return taken


async def test_off_by_default_sends_every_chunk() -> None:
    outbox, stream = Outbox(), Stream()
    outbox.bind(asyncio.get_running_loop())
    for token in range(3):
        outbox.put(stream, chunk(token))
        assert [c.token_ids for c in await sent(outbox, stream)] == [[token]]  # type: ignore[union-attr]


async def test_token_interval_holds_until_enough_tokens_and_the_first_is_at_once() -> None:
    outbox, stream = Outbox(interval_tokens=3), Stream()
    outbox.bind(asyncio.get_running_loop())
    outbox.put(stream, chunk(0))
    assert [c.token_ids for c in await sent(outbox, stream)] == [[0]]  # type: ignore[union-attr]
    outbox.put(stream, chunk(1))
    assert await sent(outbox, stream) == []
    outbox.put(stream, chunk(2))
    assert await sent(outbox, stream) == []
    outbox.put(stream, chunk(3))
    [merged] = await sent(outbox, stream)
    assert isinstance(merged, TokenChunk) and merged.token_ids == [1, 2, 3] and merged.text == "<1><2><3>"
    outbox.put(stream, chunk(4))
    assert await sent(outbox, stream) == []
    finished = done()
    outbox.put(stream, finished)  # the Finished goes out at once, after the held chunk
    rest = await sent(outbox, stream)
    assert isinstance(rest[0], TokenChunk) and rest[0].token_ids == [4]
    assert rest[1] is finished


async def test_time_interval_releases_after_the_interval_since_the_last_send() -> None:
    clock = Clock()
    outbox, stream = Outbox(interval_ms=50, clock=clock), Stream()
    outbox.bind(asyncio.get_running_loop())
    outbox.put(stream, chunk(0))
    assert len(await sent(outbox, stream)) == 1
    clock.now += 0.030
    outbox.put(stream, chunk(1))
    assert await sent(outbox, stream) == []
    clock.now += 0.019
    outbox.put(stream, chunk(2))
    assert await sent(outbox, stream) == []
    clock.now += 0.001  # 50 ms since the first send
    outbox.put(stream, chunk(3))
    [merged] = await sent(outbox, stream)
    assert merged.token_ids == [1, 2, 3]  # type: ignore[union-attr]
    clock.now += 0.049
    outbox.put(stream, chunk(4))
    assert await sent(outbox, stream) == []  # the clock restarted at the last send


async def test_an_error_releases_what_is_held_and_streams_are_apart() -> None:
    outbox, first, second = Outbox(interval_tokens=10), Stream(), Stream()
    outbox.bind(asyncio.get_running_loop())
    for token in range(3):
        outbox.put(first, chunk(token))
        outbox.put(second, chunk(10 + token))
    outbox.flush()
    await asyncio.sleep(0)
    assert [c.token_ids for c in first.pending] == [[0]]  # type: ignore[union-attr]
    assert [c.token_ids for c in second.pending] == [[10]]  # type: ignore[union-attr]
    first.pending.clear()
    error = RuntimeError("device failure")
    outbox.put(first, error)
    items = await sent(outbox, first)
    assert [i.token_ids for i in items[:1]] == [[1, 2]] and items[1] is error  # type: ignore[union-attr]
    second.pending.clear()
    assert await sent(outbox, second) == []  # the other stream's chunks stay held
    finished = done()
    outbox.put(second, finished)
    items = await sent(outbox, second)
    assert [i.token_ids for i in items[:1]] == [[11, 12]] and items[1] is finished  # type: ignore[union-attr]


async def test_a_flush_sends_a_chunk_held_for_the_interval_without_a_next_token() -> None:
    clock = Clock()
    outbox, stream = Outbox(interval_ms=50, clock=clock), Stream()
    outbox.bind(asyncio.get_running_loop())
    outbox.put(stream, chunk(0))
    outbox.put(stream, chunk(1))
    assert len(await sent(outbox, stream)) == 1
    clock.now += 0.049
    assert await sent(outbox, stream) == []
    clock.now += 0.001  # no new token, e.g. the sequence was preempted: the flush sends it
    assert [c.token_ids for c in await sent(outbox, stream)] == [[1]]  # type: ignore[union-attr]
    clock.now += 0.049
    outbox.put(stream, chunk(2))
    assert await sent(outbox, stream) == [], "the clock restarted at that send"


async def test_release_sends_a_samples_held_chunk_at_once() -> None:
    outbox, stream, other = Outbox(interval_tokens=100), Stream(), Stream()
    outbox.bind(asyncio.get_running_loop())
    for token in range(3):
        outbox.put(stream, chunk(token))
        outbox.put(other, chunk(10 + token))
    outbox.release(stream, 1)  # no such sample: nothing
    assert [c.token_ids for c in await sent(outbox, stream)] == [[0]]  # type: ignore[union-attr]
    outbox.release(stream)
    assert [c.token_ids for c in await sent(outbox, stream)] == [[1, 2]]  # type: ignore[union-attr]
    outbox.release(stream)
    assert await sent(outbox, stream) == [], "nothing held any more"
    other.pending.clear()
    assert await sent(outbox, other) == [], "the other stream's chunk stays held"


class Captured:
    """A stand-in loop that keeps the batches an Outbox hands over, in order."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def call_soon_threadsafe(self, _: object, batch: list[tuple[Stream, Item]]) -> None:
        self.items.extend(item for _, item in batch)


def test_samples_sharing_a_stream_are_held_apart() -> None:
    outbox, stream, loop = Outbox(interval_tokens=2), Stream(), Captured()
    outbox.bind(loop)  # type: ignore[arg-type]
    zero, one, two = chunk(0), replace(chunk(1), index=1), replace(chunk(2), index=1)
    outbox.put(stream, zero)
    outbox.put(stream, one)  # another sample's first chunk: at once too
    outbox.put(stream, two)  # held: sample 1 has one token waiting
    finished = done()
    outbox.put(stream, finished)  # sample 0 ends: sample 1's held token stays held
    outbox.flush()
    assert loop.items == [zero, one, finished]
    last = replace(done(), index=1)
    outbox.put(stream, last)
    outbox.flush()
    assert loop.items[3:] == [two, last]


def test_config_refuses_bad_intervals() -> None:
    with pytest.raises(ValueError, match="stream_interval_tokens must be at least 1"):
        EngineConfig(stream_interval_tokens=0)
    with pytest.raises(ValueError, match="stream_interval_ms must not be negative"):
        EngineConfig(stream_interval_ms=-1)
    with pytest.raises(ValueError, match="stream interval"):
        Outbox(interval_tokens=0)


# -- through the engine, on the shipped model ----------------------------------------------------------------

GREEDY = SamplingParams(temperature=0.0, max_tokens=30)


async def generation(loaded: LoadedModel, tokens: int = 1, ms: int = 0) -> tuple[list[TokenChunk], Finished]:
    config = EngineConfig(max_running=2, max_waiting=2, stream_interval_tokens=tokens, stream_interval_ms=ms)
    async with Engine(loaded, config) as engine:
        items = [item async for item in engine.generate(GenerationRequest("r", "The with statement", GREEDY))]
    assert isinstance(items[-1], Finished)
    return [i for i in items if isinstance(i, TokenChunk)], items[-1]


async def test_engine_sends_fewer_chunks_with_the_same_text(loaded: LoadedModel) -> None:
    plain, plain_done = await generation(loaded)
    held, held_done = await generation(loaded, tokens=4)
    assert "".join(c.text for c in held) == "".join(c.text for c in plain)
    assert [t for c in held for t in c.token_ids] == [t for c in plain for t in c.token_ids]
    assert len(held[0].token_ids) == 1 and all(len(c.token_ids) >= 4 for c in held[1:-1])
    assert len(held) <= 1 + math.ceil((GREEDY.max_tokens - 1) / 4)  # 30 tokens: at most 9 chunks, not 30
    assert held_done.completion_tokens == plain_done.completion_tokens == GREEDY.max_tokens


async def test_engine_sends_the_first_token_and_the_finish_at_once(loaded: LoadedModel) -> None:
    config = EngineConfig(max_running=2, max_waiting=2, stream_interval_tokens=1000, stream_interval_ms=600_000)
    async with Engine(loaded, config) as engine:
        with ForwardGate(loaded.model) as gate:
            gate.hold()
            stream = engine.generate(GenerationRequest("r", "The with statement", GREEDY))
            first = asyncio.ensure_future(anext(stream))
            await asyncio.to_thread(gate.blocked.wait, 30)
            gate.release()
            gate.hold()  # the prefill pass runs, the first decode pass waits
            item = await asyncio.wait_for(first, 30)
            assert isinstance(item, TokenChunk) and len(item.token_ids) == 1 and gate.count == 1
            gate.release()
            rest = await asyncio.wait_for(_drain(stream), 30)
    # the held tokens go out with the Finished, which is not held
    assert [type(i) for i in rest] == [TokenChunk, Finished]
    assert len(rest[0].token_ids) == GREEDY.max_tokens - 1  # type: ignore[union-attr]


async def _drain(stream: AsyncIterator[TokenChunk | Finished]) -> list[TokenChunk | Finished]:
    return [item async for item in stream]


async def test_a_preempted_sequence_sends_its_held_tokens_before_it_is_recomputed(loaded: LoadedModel) -> None:
    """A 4-block cache, two requests: the newer is preempted when both need a third block; what its stream held
    goes out then, while the engine is frozen and before its recompute (which waits for the older to end)."""
    config = EngineConfig(max_running=2, max_waiting=2, kv_cache_tokens=64, block_size=16, stream_interval_tokens=1000)
    params = replace(GREEDY, max_tokens=40, ignore_eos=True)
    async with Engine(loaded, config) as engine:
        older = engine.generate(GenerationRequest("older", "The with statement", params))
        newer = engine.generate(GenerationRequest("newer", "A context manager", params))
        assert isinstance(await anext(older), TokenChunk)
        with ForwardGate(loaded.model) as gate:
            first = await asyncio.wait_for(anext(newer), 30)
            assert isinstance(first, TokenChunk) and len(first.token_ids) == 1
            gate.hold()
            while engine.preemptions == 0:  # one forward pass at a time until the preemption
                await asyncio.wait_for(asyncio.to_thread(gate.blocked.wait, 30), 35)
                passes = gate.count
                gate.release()
                while gate.count == passes:
                    await asyncio.sleep(0.001)
                gate.hold()
            await asyncio.wait_for(asyncio.to_thread(gate.blocked.wait, 30), 35)
            held = await asyncio.wait_for(anext(newer), 10)  # the engine is frozen: no token comes meanwhile
            assert isinstance(held, TokenChunk) and len(held.token_ids) > 1
            assert engine.holding_count == 1, "the newer one waits to be recomputed"
        rest = [held, *[item async for item in newer]]
        assert isinstance(rest[-1], Finished) and rest[-1].completion_tokens == 40
        assert 1 + sum(len(c.token_ids) for c in rest if isinstance(c, TokenChunk)) == 40
        await _drain(older)
