"""The continuous-batching engine on the shipped model: streaming, stops, limits, queueing, cancellation, batching."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
import torch
from support.engine_steps import ForwardGate

from genmesh.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from genmesh.sampling import SamplingParams
from services.inference.engine import (
    Engine,
    EngineConfig,
    Finished,
    FinishReason,
    GenerationRequest,
    TokenChunk,
)
from services.inference.engine.engine import keep_prompt_tail
from services.inference.models.loader import LoadedModel

PROMPT = "The with statement"
GREEDY = SamplingParams(temperature=0.0, max_tokens=40)


@pytest_asyncio.fixture
async def engine(loaded: LoadedModel) -> AsyncIterator[Engine]:
    async with make_engine(loaded) as eng:
        yield eng


def make_engine(loaded: LoadedModel, running: int = 4, waiting: int = 4) -> Engine:
    return Engine(loaded, EngineConfig(max_running=running, max_waiting=waiting))


def request(
    request_id: str, prompt: str = PROMPT, sampling: SamplingParams = GREEDY, deadline: float | None = None
) -> GenerationRequest:
    return GenerationRequest(request_id, prompt, sampling, deadline)


async def collect(engine: Engine, req: GenerationRequest) -> tuple[list[TokenChunk], Finished]:
    items = [item async for item in engine.generate(req)]
    assert isinstance(items[-1], Finished)
    assert sum(isinstance(i, Finished) for i in items) == 1
    chunks = [i for i in items if isinstance(i, TokenChunk)]
    return chunks, items[-1]


def text_of(chunks: list[TokenChunk]) -> str:
    return "".join(c.text for c in chunks)


def ids_of(chunks: list[TokenChunk]) -> list[int]:
    return [i for c in chunks for i in c.token_ids]


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    end = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_streamed_text_equals_the_decode_of_the_streamed_ids(engine: Engine, loaded: LoadedModel) -> None:
    chunks, done = await collect(engine, request("stream"))
    ids = ids_of(chunks)
    assert ids and done.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert text_of(chunks) == loaded.tokenizer.decode(ids)
    assert done.prompt_tokens == len(loaded.encode_prompt(PROMPT))
    assert done.completion_tokens == len(ids)
    assert 0 <= done.queue_ms <= done.ttft_ms <= done.total_ms
    assert len(text_of(chunks).split()) >= 5, "the trained model should produce words"


async def test_logprobs_align_with_token_ids(engine: Engine) -> None:
    chunks, done = await collect(engine, request("lp", sampling=SamplingParams(max_tokens=8, logprobs=3, seed=5)))
    assert sum(len(chunk.logprobs) for chunk in chunks) == done.completion_tokens > 0
    for chunk in chunks:
        assert [lp.token_id for lp in chunk.logprobs] == chunk.token_ids
        for lp in chunk.logprobs:
            assert len(lp.top) == 3 and lp.logprob <= lp.top[0][2] + 1e-6
            assert all(isinstance(text, str) for _, text, _ in lp.top)


async def test_same_seed_reproduces_the_completion(engine: Engine) -> None:
    sampling = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=42)
    first, _ = await collect(engine, request("seed-a", sampling=sampling))
    second, _ = await collect(engine, request("seed-b", sampling=sampling))
    assert ids_of(first) == ids_of(second)


async def test_stop_sequence_stops_generation_and_is_excluded(engine: Engine) -> None:
    chunks, _ = await collect(engine, request("free", sampling=SamplingParams(temperature=0.0, max_tokens=60)))
    full = text_of(chunks)
    assert len(full) > 20
    stop = full[12:16]
    assert stop.strip(), "pick a stop sequence with visible text"
    stopped, done = await collect(
        engine, request("stopped", sampling=SamplingParams(temperature=0.0, max_tokens=60, stop=("zzzq", stop)))
    )
    assert done.finish_reason == FinishReason.STOP_SEQUENCE
    assert text_of(stopped) == full[: full.index(stop)]
    assert stop not in text_of(stopped)
    assert done.completion_tokens == len(ids_of(stopped)) < len(ids_of(chunks))


async def test_max_tokens_finishes_with_length(engine: Engine) -> None:
    chunks, done = await collect(engine, request("len", sampling=SamplingParams(temperature=0.0, max_tokens=5)))
    assert done.finish_reason == FinishReason.LENGTH
    assert done.completion_tokens == 5 == len(ids_of(chunks))


async def test_max_tokens_is_clipped_to_the_context(engine: Engine, loaded: LoadedModel) -> None:
    from pydoc_data.topics import topics

    ids = loaded.tokenizer.encode(topics["specialnames"], add_special_tokens=False).ids
    context = loaded.context_length
    prompt = loaded.tokenizer.decode(ids[: context - 12])
    n_prompt = len(loaded.encode_prompt(prompt))
    assert n_prompt < context - 1
    _, done = await collect(engine, request("clip", prompt, SamplingParams(temperature=0.0, max_tokens=4096)))
    assert done.prompt_tokens == n_prompt
    assert done.finish_reason == FinishReason.LENGTH
    assert done.completion_tokens == context - n_prompt


async def test_prompt_longer_than_the_context_is_invalid(engine: Engine, loaded: LoadedModel) -> None:
    with pytest.raises(InvalidArgument) as info:
        await collect(engine, request("long", "word " * (loaded.context_length + 10)))
    assert info.value.violations[0].field == "prompt"
    assert f"context length of {loaded.context_length}" in info.value.message
    assert engine.load().running == 0


async def test_duplicate_request_id_is_rejected(engine: Engine) -> None:
    gen = engine.generate(request("dup", sampling=SamplingParams(max_tokens=200, temperature=0.0)))
    await anext(gen)
    with pytest.raises(InvalidArgument) as info:
        await collect(engine, request("dup"))
    assert info.value.violations[0].field == "request_id"
    await gen.aclose()


async def test_full_waiting_queue_raises_resource_exhausted_at_once(loaded: LoadedModel) -> None:
    long = SamplingParams(temperature=0.0, max_tokens=400)
    async with make_engine(loaded, running=1, waiting=1) as engine:
        with ForwardGate(loaded.model) as gate:
            running = asyncio.create_task(collect(engine, request("a", sampling=long)))
            waiting = asyncio.create_task(collect(engine, request("b", sampling=long)))
            await wait_until(lambda: engine.load().running == 1 and engine.load().waiting == 1)
            gate.hold()
            await wait_until(gate.blocked.is_set)
            # The engine is frozen, so no row frees up: a request queued instead of refused would never end.
            refused = asyncio.create_task(collect(engine, request("c")))
            await asyncio.wait({refused}, timeout=2)
            assert refused.done(), "the request beyond the queue's bound was queued, not refused"
            with pytest.raises(ResourceExhausted) as info:
                refused.result()
            retry_after_s = info.value.retry_after_s
            assert retry_after_s is not None and retry_after_s > 0 and info.value.reason == "INFERENCE_QUEUE_FULL"
            assert (engine.load().running, engine.load().waiting) == (1, 1)
        assert engine.abort("b") and engine.abort("a")
        (_, done_a), (chunks_b, done_b) = await asyncio.gather(running, waiting)
        assert done_a.finish_reason == done_b.finish_reason == FinishReason.CANCELLED
        assert chunks_b == [] and done_b.completion_tokens == 0
    assert engine.load().running == 0


async def test_abort_cancels_a_running_request(engine: Engine) -> None:
    items: list[TokenChunk | Finished] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for item in engine.generate(
            request("abort-me", sampling=SamplingParams(max_tokens=400, temperature=0.0))
        ):
            items.append(item)
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    assert engine.abort("abort-me")
    await asyncio.wait_for(task, 10)
    assert isinstance(items[-1], Finished) and items[-1].finish_reason == FinishReason.CANCELLED
    assert items[-1].completion_tokens < 400
    assert not engine.abort("abort-me") and not engine.abort("unknown")
    _, done = await collect(engine, request("after-abort", sampling=SamplingParams(max_tokens=3, temperature=0.0)))
    assert done.finish_reason == FinishReason.LENGTH


@pytest.mark.parametrize("how", ["cancel-task", "aclose"])
async def test_consumer_going_away_frees_the_engine(loaded: LoadedModel, how: str) -> None:
    # 450 greedy tokens of PROMPT end by length (the model emits no EOS there): ~450 steps if left running.
    async with make_engine(loaded, running=1, waiting=0) as engine:
        with ForwardGate(loaded.model) as passes:
            gen = engine.generate(request("gone", sampling=SamplingParams(max_tokens=450, temperature=0.0)))
            if how == "aclose":
                await anext(gen)
                await gen.aclose()
            else:
                started = asyncio.Event()

                async def consume() -> None:
                    async for _ in gen:
                        started.set()

                task = asyncio.create_task(consume())
                await started.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            departed_at = passes.count
            await wait_until(lambda: engine.load().running == 0, within=60)
            # The pass in flight when the consumer left, at most; the next step retires the sequence.
            assert passes.count - departed_at <= 2, "the engine went on generating for a consumer that left"
            assert engine.load().kv_used_tokens == 0
        _, done = await collect(engine, request("next", sampling=SamplingParams(max_tokens=3, temperature=0.0)))
        assert done.finish_reason == FinishReason.LENGTH


async def test_a_deadline_passing_mid_generation_frees_the_row_even_while_the_consumer_waits(
    loaded: LoadedModel,
) -> None:
    """The engine retires an expired sequence itself: its consumer may not be reading (a slow gRPC client)."""
    async with make_engine(loaded, running=1, waiting=0) as engine:
        with ForwardGate(loaded.model) as passes:
            deadline = time.monotonic() + 1.5
            sampling = SamplingParams(max_tokens=450, temperature=0.0)
            gen = engine.generate(request("late", sampling=sampling, deadline=deadline))
            assert isinstance(await anext(gen), TokenChunk), "the first token comes well before the deadline"
            passes.hold()
            await wait_until(passes.blocked.is_set)
            assert engine.load().running == 1
            await wait_until(lambda: time.monotonic() > deadline)
            expired_at = passes.count
            passes.release()
            await wait_until(lambda: engine.load().running == 0, within=60)
            assert passes.count - expired_at <= 2, "the engine went on generating past the deadline"
            assert engine.load().kv_used_tokens == 0
        with pytest.raises(DeadlineExceeded):
            async for _ in gen:
                pass
        with pytest.raises(DeadlineExceeded):
            await collect(engine, request("dead", deadline=time.monotonic() - 1))


async def test_slow_consumer_gets_coalesced_chunks(engine: Engine) -> None:
    gen = engine.generate(request("slow", sampling=SamplingParams(temperature=0.0, max_tokens=30)))
    first = await anext(gen)
    assert isinstance(first, TokenChunk)
    await wait_until(lambda: engine.load().running == 0)  # everything produced, nothing read
    rest = [item async for item in gen]
    assert len(rest) == 2 and isinstance(rest[0], TokenChunk) and isinstance(rest[1], Finished)
    assert len(first.token_ids) + len(rest[0].token_ids) == 30


async def test_model_runs_on_one_worker_thread_off_the_loop(engine: Engine, loaded: LoadedModel) -> None:
    threads: set[str] = set()
    hook = loaded.model.register_forward_pre_hook(lambda *_: threads.add(threading.current_thread().name))
    try:
        await collect(engine, request("t1", sampling=SamplingParams(max_tokens=4, temperature=0.0)))
        await collect(engine, request("t2", sampling=SamplingParams(max_tokens=4, temperature=0.0)))
    finally:
        hook.remove()
    assert len(threads) == 1
    assert threads.pop().startswith("genmesh-engine")


async def test_info_and_load(engine: Engine, loaded: LoadedModel) -> None:
    info = engine.info()
    assert info.name == "genmesh-tiny-llama" and info.context_length == loaded.context_length
    assert info.vocab_size == loaded.config.vocab_size and info.dtype == "float32" and info.device == "cpu"
    assert info.eos_token_ids == loaded.eos_token_ids and info.eos_token_ids
    load = engine.load()
    assert (load.running, load.waiting, load.kv_used_tokens) == (0, 0, 0)
    assert load.kv_capacity_tokens == engine.config.max_running * loaded.context_length
    assert torch.get_num_threads() >= 1


def test_keep_prompt_tail_leaves_room_to_generate() -> None:
    ids = list(range(1000))
    assert keep_prompt_tail(ids[:100], context=512, max_tokens=64, bos_token_id=0) == ids[:100]
    kept = keep_prompt_tail(ids, context=512, max_tokens=64, bos_token_id=0)
    assert kept[0] == 0 and kept[1:] == ids[-447:] and len(kept) == 448
    assert keep_prompt_tail(ids, context=512, max_tokens=4096, bos_token_id=None) == ids[-256:]


async def test_truncate_prompt_accepts_an_overlong_prompt(engine: Engine) -> None:
    long_prompt = "The import statement loads a module. " * 400
    with pytest.raises(InvalidArgument):
        await collect(engine, request("too-long", long_prompt))
    truncated = GenerationRequest("truncated", long_prompt, SamplingParams(temperature=0.0, max_tokens=8), None, True)
    _, done = await collect(engine, truncated)
    assert done.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert done.prompt_tokens == 512 - 8


async def test_a_failing_step_fails_the_running_requests_and_the_engine_keeps_serving(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(seqs: object) -> torch.Tensor:
        raise RuntimeError("device lost")

    with monkeypatch.context() as patch:
        patch.setattr(engine._runner, "decode", broken)
        with pytest.raises(RuntimeError, match="device lost"):
            await collect(engine, request("doomed", sampling=SamplingParams(temperature=0.0, max_tokens=5)))
    await wait_until(lambda: (engine.load().running, engine.load().waiting, engine.load().blocks_used) == (0, 0, 0))
    _, done = await collect(engine, request("after", sampling=SamplingParams(temperature=0.0, max_tokens=3)))
    assert done.finish_reason == FinishReason.LENGTH and done.completion_tokens == 3
