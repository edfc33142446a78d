"""Continuous batching: requests join a running batch at the next step, and batching never changes an answer."""

from __future__ import annotations

import asyncio
import random

from support.engine_runs import run

from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, Finished, GenerationRequest, TokenChunk
from services.inference.models.loader import LoadedModel

TOPICS = ["The with statement", "A generator function", "The import system", "Class definitions", "Exceptions"]


def _prompts(count: int) -> list[str]:
    """Mixed lengths: from a few tokens to a few hundred (several prefill chunks)."""
    rng = random.Random(3)
    return [" ".join([TOPICS[i % len(TOPICS)]] * rng.choice([1, 3, 10, 40, 90])) for i in range(count)]


async def test_greedy_output_is_the_same_alone_and_in_a_batch(loaded: LoadedModel) -> None:
    prompts = _prompts(16)
    greedy = [SamplingParams(temperature=0.0, max_tokens=24 + 8 * (i % 4)) for i in range(16)]
    # prefill_chunk 64 makes the long prompts take several steps while others decode.
    config = EngineConfig(max_running=16, max_waiting=16, max_batched_tokens=512, prefill_chunk=64)
    async with Engine(loaded, config) as engine:
        alone = [(await run(engine, GenerationRequest(f"alone-{i}", p, greedy[i])))[0] for i, p in enumerate(prompts)]

        async def later(i: int) -> list[int]:
            await asyncio.sleep(0.01 * (i % 5))  # arrivals spread over the first steps
            return (await run(engine, GenerationRequest(f"batched-{i}", prompts[i], greedy[i])))[0]

        batched = await asyncio.gather(*(later(i) for i in range(16)))
    assert batched == alone


async def test_seeded_sampling_is_the_same_alone_and_in_a_batch(loaded: LoadedModel) -> None:
    sampled = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=20, seed=1234)
    async with Engine(loaded, EngineConfig(max_running=8)) as engine:
        alone, _ = await run(engine, GenerationRequest("alone", TOPICS[0], sampled))
        others = [
            run(engine, GenerationRequest(f"other-{i}", TOPICS[i % 5], SamplingParams(temperature=1.0, max_tokens=20)))
            for i in range(6)
        ]
        together = await asyncio.gather(run(engine, GenerationRequest("seeded", TOPICS[0], sampled)), *others)
    assert together[0][0] == alone


async def test_a_new_request_joins_the_running_batch(loaded: LoadedModel) -> None:
    long_ids: list[int] = []
    async with Engine(loaded, EngineConfig(max_running=4)) as engine:

        async def run_long() -> Finished:
            long = GenerationRequest("long", TOPICS[2], SamplingParams(temperature=0.0, max_tokens=300))
            async for item in engine.generate(long):
                if isinstance(item, TokenChunk):
                    long_ids.extend(item.token_ids)
                else:
                    return item
            raise AssertionError("no Finished")

        long_task = asyncio.create_task(run_long())
        while not long_ids:
            await asyncio.sleep(0.005)
        short_ids: list[int] = []
        long_ids_when_short_ended = -1
        async for item in engine.generate(
            GenerationRequest("short", TOPICS[1], SamplingParams(temperature=0.0, max_tokens=5))
        ):
            if isinstance(item, TokenChunk):
                short_ids.extend(item.token_ids)
            else:
                short_done = item
                long_ids_when_short_ended = len(long_ids)
        long_done = await long_task
    assert len(short_ids) == short_done.completion_tokens == 5
    assert long_done.completion_tokens == len(long_ids) == 300, "greedy here runs to max_tokens (no EOS)"
    # Deliveries keep step order, so the long request's tokens counted here are those of the steps before.
    assert long_ids_when_short_ended < 300, "the short request ended while the long one was still generating"


async def test_load_counts_running_waiting_and_cache(loaded: LoadedModel) -> None:
    config = EngineConfig(max_running=2, max_waiting=8)
    async with Engine(loaded, config) as engine:
        params = SamplingParams(temperature=0.0, max_tokens=200)
        tasks = [asyncio.create_task(run(engine, GenerationRequest(f"r{i}", TOPICS[i], params))) for i in range(4)]
        while engine.load().running < 2 or engine.load().kv_used_tokens == 0:
            await asyncio.sleep(0.005)
        load = engine.load()
        assert (load.running, load.waiting) == (2, 2)
        assert 0 < load.kv_used_tokens <= load.kv_capacity_tokens == 2 * loaded.context_length
        assert load.kv_used_tokens == load.blocks_used * load.block_size and load.block_size == 16
        assert load.blocks_used + load.blocks_free == load.kv_capacity_tokens // 16
        for i in range(4):
            engine.abort(f"r{i}")
        await asyncio.gather(*tasks)
        idle = engine.load()
        assert (idle.running, idle.waiting, idle.kv_used_tokens, idle.blocks_used) == (0, 0, 0, 0)
        assert idle.blocks_free == load.kv_capacity_tokens // 16
