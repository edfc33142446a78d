"""The paged KV cache's two figures for bench/inference.py, each from engines in this process on the shipped model.

- ``prefix_ttft``: requests laid out as the gateway lays them out (the client's system text, then the same
  retrieved passages, then the question: gateway.prompt), sharing a prefix of about 400 tokens and differing in
  their last ~30, sent one at a time to two engines alike but for ``prefix_cache``, the two interleaved request by
  request so that the machine's drifts fall on both. Figure: p50 time to first token without over with the cache.
- ``kv_capacity``: a mixed workload (prompts of 20..200 tokens, 16..128 generated, all submitted at once) on a
  paged engine holding ``ROW_CACHE_ROWS`` rows' worth of tokens, ``max_running`` set high, the sequences holding
  cache blocks sampled through the run. Figure: their peak over the sequences the row-per-sequence cache admitted
  in that memory (``kv_cache_tokens // context_length``); their mean and the preemptions beside it. The prefix
  cache and the decode rows (memory beside the pool) are off there: the figure is the paging's alone, at the row
  cache's memory. (``LoadStats.running`` is not the count: it also counts
  the queued sequences a free running place awaits, all of them when ``max_running`` is high, so the benchmark
  reads ``Engine.holding_count``, the sequences prefilling or decoding.)
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass

from gateway.prompt import PromptPassage, conversation, prompt_char_budget
from genmesh.messages import template_messages
from genmesh.sampling import SamplingParams
from genmesh.v1 import common_pb2
from services.inference.chat_template import ChatTemplate
from services.inference.engine import Engine, EngineConfig, Finished, GenerationRequest, TokenChunk
from services.inference.models.loader import LoadedModel

SHARED_PREFIX_TOKENS = 400
QUESTION_TOKENS = 30
ROW_CACHE_ROWS = 4
SYSTEM_TEXT = "Answer from the passages below; say which passage you used, and say so when none of them answers."


@dataclass(frozen=True, slots=True)
class PrefixSettings:
    requests: int
    """Requests timed on each engine (after one warm-up each)."""


@dataclass(frozen=True, slots=True)
class CapacitySettings:
    requests: int


def gateway_prompt(chat: ChatTemplate, system: str, passages: list[PromptPassage], question: str) -> str:
    """The prompt text inference renders for a gateway request with the client's ``system`` text, the retrieved
    ``passages`` and ``question`` (gateway.prompt.conversation, then the model's chat template)."""
    turns = [
        common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=[common_pb2.ContentPart(text=system)]),
        common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=[common_pb2.ContentPart(text=question)]),
    ]
    messages, _ = conversation(question, turns, passages, [], prompt_char_budget(10**6, 0))
    return chat.render(template_messages(messages))


def _corpus_words() -> list[str]:
    from pydoc_data.topics import topics

    return " ".join(topics.values()).split()


def shared_prefix_prompts(loaded: LoadedModel, count: int, seed: int = 1) -> tuple[list[str], int]:
    """``count`` gateway prompts with the same system text and passages (about SHARED_PREFIX_TOKENS tokens in all)
    and distinct questions of about QUESTION_TOKENS tokens; and the tokens the first two share."""
    rng = random.Random(seed)
    words = _corpus_words()
    chat = ChatTemplate(loaded.chat_template, special_tokens=loaded.special_tokens)
    tokens = loaded.tokenizer

    def snippet(target: int) -> str:
        start = rng.randrange(len(words) - 4 * target)
        text, size = "", 0
        for word in words[start:]:
            text = f"{text} {word}".strip()
            size = len(tokens.encode(text).ids)
            if size >= target:
                break
        return text

    passages: list[PromptPassage] = []
    while (
        size := len(loaded.encode_rendered(gateway_prompt(chat, SYSTEM_TEXT, passages, "?")))
    ) < SHARED_PREFIX_TOKENS:
        room = SHARED_PREFIX_TOKENS - size - 6  # a title and the separators take a few tokens
        passages.append(PromptPassage(f"Passage {len(passages) + 1}", snippet(max(4, min(90, room)))))
    prompts = [gateway_prompt(chat, SYSTEM_TEXT, passages, snippet(QUESTION_TOKENS) + "?") for _ in range(count)]
    first, second = (loaded.encode_rendered(p) for p in prompts[:2])
    shared = next(
        (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), min(len(first), len(second))
    )
    return prompts, shared


async def _ttft_ms(engine: Engine, request: GenerationRequest) -> tuple[float, int]:
    """Milliseconds from sending ``request`` (alone on ``engine``) to its first token, and its cached tokens."""
    start, first, cached = time.perf_counter(), 0.0, 0
    async for item in engine.generate(request):
        if isinstance(item, TokenChunk) and item.token_ids and not first:
            first = time.perf_counter()
        elif isinstance(item, Finished):
            cached = item.cached_tokens
    return ((first or time.perf_counter()) - start) * 1000.0, cached


async def prefix_ttft(loaded: LoadedModel, settings: PrefixSettings) -> dict[str, object]:
    prompts, shared = shared_prefix_prompts(loaded, settings.requests + 1)
    sampling = SamplingParams(temperature=0.0, max_tokens=4)
    ttfts: dict[bool, list[float]] = {True: [], False: []}
    cached: dict[bool, int] = {True: 0, False: 0}
    async with (
        Engine(loaded, EngineConfig(max_running=4, max_waiting=4, prefix_cache=True)) as with_cache,
        Engine(loaded, EngineConfig(max_running=4, max_waiting=4, prefix_cache=False)) as without,
    ):
        engines = {True: with_cache, False: without}
        for on, engine in engines.items():  # warm-up: the model's first passes; the cache's first fill
            await _ttft_ms(engine, GenerationRequest(f"warm-{on}", prompts[0], sampling, rendered=True))
        for i, prompt in enumerate(prompts[1:]):
            for on in (True, False) if i % 2 == 0 else (False, True):
                ms, hit = await _ttft_ms(engines[on], GenerationRequest(f"p{i}-{on}", prompt, sampling, rendered=True))
                ttfts[on].append(ms)
                cached[on] += hit
    prompt_tokens = statistics.median(len(loaded.encode_rendered(p)) for p in prompts)
    p50_on, p50_off = statistics.median(ttfts[True]), statistics.median(ttfts[False])
    print(
        f"prefix cache: prompts of {prompt_tokens:.0f} tokens sharing {shared}; TTFT p50 {p50_off:.1f} ms without, "
        f"{p50_on:.1f} ms with ({cached[True] / settings.requests:.0f} tokens cached per request)",
        flush=True,
    )
    return {
        "prefix_shared_tokens": shared,
        "prefix_ttft_p50_ms_without": round(p50_off, 2),
        "prefix_ttft_p50_ms_with": round(p50_on, 2),
        "prefix_cached_tokens_per_request": round(cached[True] / settings.requests, 1),
        "prefix_ttft_ratio": round(p50_off / p50_on, 2),
    }


def mixed_requests(loaded: LoadedModel, count: int, seed: int = 2) -> list[GenerationRequest]:
    """Prompts of 20..200 tokens from distinct places of a corpus, 16..128 tokens each to generate (EOS ignored)."""
    rng = random.Random(seed)
    corpus = loaded.tokenizer.encode(" ".join(_corpus_words())).ids
    requests = []
    for i in range(count):
        length = rng.randint(20, 200)
        start = rng.randrange(len(corpus) - length)
        prompt = loaded.tokenizer.decode(corpus[start : start + length - 1])
        sampling = SamplingParams(temperature=0.0, max_tokens=rng.randint(16, 128), ignore_eos=True)
        requests.append(GenerationRequest(f"m{i}", prompt, sampling))
    return requests


async def kv_capacity(loaded: LoadedModel, settings: CapacitySettings) -> dict[str, object]:
    rows = ROW_CACHE_ROWS
    kv_tokens = rows * loaded.context_length
    requests = mixed_requests(loaded, settings.requests)
    config = EngineConfig(
        max_running=settings.requests,
        max_waiting=settings.requests,
        kv_cache_tokens=kv_tokens,
        prefix_cache=False,
        decode_rows=False,  # the same memory as the row cache: the rows would be memory beside the pool
    )
    peak, samples, total = 0, 0, 0
    async with Engine(loaded, config) as engine:

        async def drain(request: GenerationRequest) -> int:
            return sum([len(i.token_ids) async for i in engine.generate(request) if isinstance(i, TokenChunk)])

        runs = asyncio.gather(*(drain(r) for r in requests))
        start = time.perf_counter()
        while not runs.done():
            holding = engine.holding_count
            peak, samples, total = max(peak, holding), samples + 1, total + holding
            await asyncio.sleep(0.001)
        tokens = sum(await runs)
        seconds = time.perf_counter() - start
        preemptions = engine.preemptions
    mean = total / max(1, samples)
    print(
        f"KV capacity: {kv_tokens} cache tokens; at most {peak} sequences running at once, {mean:.1f} on average "
        f"(the row cache: {rows}), {preemptions} preemptions, {tokens / seconds:.0f} tok/s",
        flush=True,
    )
    return {
        "kv_cache_tokens": kv_tokens,
        "kv_peak_running": peak,
        "kv_mean_running": round(mean, 1),
        "kv_preemptions": preemptions,
        "kv_capacity_ratio": round(peak / rows, 2),
    }
