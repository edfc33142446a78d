"""The engine on a paged KV cache: prefix caching and preemption never change an answer, and a request that
cannot fit the cache is refused or clipped, never failed later. The shipped model, on the CPU."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from support.engine_runs import run

from genmesh.errors import InvalidArgument
from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, Finished, GenerationRequest, TokenChunk
from services.inference.models.loader import LoadedModel

SHARED = "The with statement wraps a block with methods defined by a context manager. " * 3
TAILS = ["What does it do?", "Give an example.", "Why use it?", "Explain __exit__.", "And errors?", "Compare try."]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


async def alone(loaded: LoadedModel, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """Each prompt on its own, in an engine without the prefix cache (the reference)."""
    async with Engine(loaded, EngineConfig(max_running=1, prefix_cache=False)) as engine:
        return [
            (await run(engine, GenerationRequest(f"ref-{i}", p, greedy(max_tokens))))[0] for i, p in enumerate(prompts)
        ]


async def test_prefix_cache_hits_never_change_greedy_tokens_in_any_batch_mix(loaded: LoadedModel) -> None:
    prompts = [SHARED + tail for tail in TAILS]
    reference = await alone(loaded, prompts, 24)
    async with Engine(loaded, EngineConfig(max_running=4, prefill_chunk=32)) as engine:
        first, done = await run(engine, GenerationRequest("first", prompts[0], greedy(24)))
        assert first == reference[0] and done.cached_tokens == 0

        async def later(i: int) -> tuple[list[int], Finished]:
            await asyncio.sleep(0.02 * (i % 3))  # some join while others with the same prefix are still running
            return await run(engine, GenerationRequest(f"r{i}", prompts[i], greedy(24)))

        results = await asyncio.gather(*(later(i) for i in range(len(prompts))))
        assert [ids for ids, _ in results] == reference
        prefix_blocks = len(loaded.encode_prompt(SHARED)) // 16
        assert all(done.cached_tokens >= 16 * (prefix_blocks - 1) for _, done in results)
        again, done = await run(engine, GenerationRequest("again", prompts[0], greedy(24)))
        assert again == reference[0] and done.cached_tokens == 16 * ((done.prompt_tokens - 1) // 16)
        load = engine.load()
        assert 0.5 < load.prefix_hit_rate < 1 and load.blocks_used == 0


async def test_preemption_under_a_tiny_cache_finishes_every_request_with_the_tokens_it_gets_alone(
    loaded: LoadedModel,
) -> None:
    prompts = [f"{TAILS[i % len(TAILS)]} " * (1 + i % 4) for i in range(10)]
    reference = await alone(loaded, prompts, 40)
    for prefix_cache in (True, False):
        config = EngineConfig(max_running=8, max_waiting=16, kv_cache_tokens=160, prefix_cache=prefix_cache)
        async with Engine(loaded, config) as engine:
            requests = [GenerationRequest(f"p{i}", p, greedy(40)) for i, p in enumerate(prompts)]
            results = await asyncio.gather(*(run(engine, r) for r in requests))
            assert [ids for ids, _ in results] == reference, f"prefix_cache={prefix_cache}"
            assert all(done.completion_tokens == 40 for _, done in results)
            assert engine._scheduler.preemptions > 0, "the cache was too small for all at once"
            assert engine.load().blocks_used == 0


async def test_a_prompt_larger_than_the_cache_is_refused_and_max_tokens_is_clipped_to_it(loaded: LoadedModel) -> None:
    config = EngineConfig(max_running=2, kv_cache_tokens=48, block_size=16)
    async with Engine(loaded, config) as engine:
        with pytest.raises(InvalidArgument) as info:
            await run(engine, GenerationRequest("big", "word " * 80, greedy(4)))
        assert [v.field for v in info.value.violations] == ["prompt"] and "KV cache of 48" in info.value.message
        prompt = "Hello there"
        ids, done = await run(engine, GenerationRequest("clipped", prompt, greedy(400)))
        assert done.completion_tokens == 48 - done.prompt_tokens == len(ids)


async def test_a_truncated_prompt_is_cut_to_the_cache_when_it_is_smaller_than_the_context(loaded: LoadedModel) -> None:
    config = EngineConfig(max_running=2, kv_cache_tokens=48, block_size=16)
    async with Engine(loaded, config) as engine:
        request = GenerationRequest("long", "word " * 80, greedy(4), truncate_prompt=True)
        ids, done = await run(engine, request)
        assert (done.prompt_tokens, done.completion_tokens, len(ids)) == (48 - 4, 4, 4)
        ids, done = await run(engine, dataclasses.replace(request, request_id="most", sampling=greedy(400)))
        assert (done.prompt_tokens, done.completion_tokens) == (24, 24), "half the cache left to generate"


async def test_n_samples_are_seeded_apart_share_the_prompt_blocks_and_end_after_the_last(loaded: LoadedModel) -> None:
    sampled = SamplingParams(temperature=1.0, max_tokens=12, seed=77, n=3, ignore_eos=True)
    async with Engine(loaded, EngineConfig(max_running=4)) as engine:
        singles = [
            (await run(engine, GenerationRequest(f"one-{i}", SHARED, dataclasses.replace(sampled, n=1, seed=77 + i))))[
                0
            ]
            for i in range(3)
        ]
        ids: dict[int, list[int]] = {0: [], 1: [], 2: []}
        finished: list[Finished] = []
        fresh = "A generator function returns an iterator that yields values one at a time, lazily. " * 2
        async for item in engine.generate(GenerationRequest("many", fresh, sampled)):
            assert not finished or len(finished) < 3, "nothing after the last Finished"
            if isinstance(item, TokenChunk):
                ids[item.index].extend(item.token_ids)
            else:
                finished.append(item)
        assert sorted(done.index for done in finished) == [0, 1, 2]
        cached = {done.index: done.cached_tokens for done in finished}
        assert cached[0] == 0 and cached[1] >= 16 and cached[2] >= 16, "later samples share sample 0's prompt blocks"
        assert all(len(ids[i]) == 12 for i in range(3)) and len({tuple(v) for v in ids.values()}) > 1
        again: dict[int, list[int]] = {0: [], 1: [], 2: []}
        request = GenerationRequest("shared", SHARED, sampled)
        async for item in engine.generate(request):
            if isinstance(item, TokenChunk):
                again[item.index].extend(item.token_ids)
        assert [again[i] for i in range(3)] == singles, "sample i is the request alone with seed + i"


async def test_leaving_an_n_stream_early_cancels_every_sample(loaded: LoadedModel) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=200, n=4, ignore_eos=True)
    async with Engine(loaded, EngineConfig(max_running=8)) as engine:
        stream = engine.generate(GenerationRequest("early", SHARED, params))
        async for item in stream:
            if isinstance(item, TokenChunk) and item.index == 3:
                break
        await stream.aclose()
        deadline = asyncio.get_running_loop().time() + 10
        while engine.load().running or engine.load().blocks_used:
            assert asyncio.get_running_loop().time() < deadline, engine.load()
            await asyncio.sleep(0.01)
        assert not engine.abort("early")
