"""The engine's Prometheus metrics on the shipped model: each request's timings observed once, tokens counted as
the usage reports them, endings by reason, decode batches, and occupancy read from the load snapshot over HTTP."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.engine_steps import ForwardGate
from support.scrape import scrape_async

from genmesh.errors import DeadlineExceeded
from genmesh.metrics import Metrics, MetricsServer
from genmesh.sampling import SamplingParams
from services.inference.engine import Engine, EngineConfig, Finished, FinishReason, GenerationRequest, TokenChunk
from services.inference.metrics import InferenceMetrics
from services.inference.models.loader import LoadedModel

P = "genmesh_inference_"


def instrumented(loaded: LoadedModel, running: int = 4, waiting: int = 4) -> tuple[Engine, Metrics]:
    metrics = Metrics()
    engine = Engine(loaded, EngineConfig(max_running=running, max_waiting=waiting), InferenceMetrics(metrics))
    return engine, metrics


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def run(engine: Engine, request_id: str, max_tokens: int, prompt: str = "The with statement") -> Finished:
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    items = [item async for item in engine.generate(GenerationRequest(request_id, prompt, sampling))]
    assert isinstance(items[-1], Finished)
    return items[-1]


async def test_timings_once_per_request_and_tokens_as_the_usage_reports(loaded: LoadedModel) -> None:
    engine, metrics = instrumented(loaded)
    async with engine:
        done = await asyncio.gather(
            run(engine, "a", 5), run(engine, "b", 9, "Lists are"), run(engine, "c", 1), run(engine, "d", 12)
        )
    assert all(d.finish_reason is FinishReason.LENGTH for d in done), "max_tokens ends each: sampled = completion"
    for name in ("time_to_first_token_seconds", "request_queue_time_seconds", "e2e_request_latency_seconds"):
        assert value(metrics, f"{P}{name}_count") == 4, name
    assert value(metrics, f"{P}time_per_output_token_seconds_count") == 3, "not for the one-token request"
    assert value(metrics, f"{P}generation_tokens_total") == sum(d.completion_tokens for d in done) == 27
    assert value(metrics, f"{P}prompt_tokens_total") == sum(d.prompt_tokens for d in done)
    assert value(metrics, f"{P}request_generation_tokens_sum") == 27
    assert value(metrics, f"{P}request_success_total", finished_reason="length") == 4
    assert value(metrics, f"{P}aborted_requests_total", reason="cancelled") == 0
    # every token but a request's first comes from a decode pass, one per pass
    assert value(metrics, f"{P}decode_batch_size_sum") == sum(d.completion_tokens - 1 for d in done)
    passes = value(metrics, f"{P}decode_batch_size_count")
    assert max(d.completion_tokens for d in done) - 1 <= passes < sum(d.completion_tokens - 1 for d in done)
    ttft_sum = value(metrics, f"{P}time_to_first_token_seconds_sum")
    assert ttft_sum == pytest.approx(sum(d.ttft_ms for d in done) / 1000, abs=0.01)
    e2e_sum = value(metrics, f"{P}e2e_request_latency_seconds_sum")
    assert e2e_sum == pytest.approx(sum(d.total_ms for d in done) / 1000, abs=0.001)
    assert value(metrics, f"{P}num_preemptions_total") == 0


async def test_cancelled_and_expired_requests_are_aborts_not_completions(loaded: LoadedModel) -> None:
    engine, metrics = instrumented(loaded, running=1, waiting=1)
    async with engine:
        long = SamplingParams(temperature=0.0, max_tokens=400)
        gen = engine.generate(GenerationRequest("cancel-me", "The with statement", long))
        streamed = len(first.token_ids) if isinstance(first := await anext(gen), TokenChunk) else 0
        assert engine.abort("cancel-me")
        rest = [item async for item in gen]
        assert isinstance(rest[-1], Finished) and rest[-1].finish_reason is FinishReason.CANCELLED
        streamed += sum(len(item.token_ids) for item in rest if isinstance(item, TokenChunk))
        assert value(metrics, f"{P}generation_tokens_total") == rest[-1].completion_tokens == streamed
        assert value(metrics, f"{P}aborted_requests_total", reason="cancelled") == 1
        assert value(metrics, f"{P}time_to_first_token_seconds_count") == 1
        assert value(metrics, f"{P}e2e_request_latency_seconds_count") == 0, "an abandoned request has no latency"

        with ForwardGate(loaded.model) as passes:
            deadline = time.monotonic() + 1.0
            late = engine.generate(GenerationRequest("late", "The with statement", long, deadline))
            assert isinstance(await anext(late), TokenChunk)
            passes.hold()  # the consumer reads nothing: only the engine sees the deadline pass
            await asyncio.to_thread(passes.blocked.wait, 10)
            await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.05)
            passes.release()
            give_up = time.monotonic() + 30
            while engine.load().running:  # retired by the engine, not by its consumer (which would cancel it)
                assert time.monotonic() < give_up, engine.load()
                await asyncio.sleep(0.005)
            with pytest.raises(DeadlineExceeded):
                async for _ in late:
                    pass
        assert value(metrics, f"{P}aborted_requests_total", reason="deadline") == 1
        assert value(metrics, f"{P}request_success_total", finished_reason="length") == 0


async def scrape(url: str) -> dict[str, float]:
    """The samples without labels served at ``url``, by name."""
    return {name: seen for (name, labels), seen in (await scrape_async(url)).items() if not labels}


async def test_occupancy_gauges_read_the_load_snapshot_at_scrape_time(loaded: LoadedModel) -> None:
    engine, metrics = instrumented(loaded, running=1, waiting=2)
    exporter = MetricsServer(metrics, "127.0.0.1", 0)
    try:
        async with engine:
            with ForwardGate(loaded.model) as passes:
                tasks = [asyncio.create_task(run(engine, name, 400)) for name in ("x", "y", "z")]
                give_up = time.monotonic() + 30
                while not (engine.load().kv_used_tokens > 0 and engine.load().waiting == 2):
                    assert time.monotonic() < give_up, engine.load()
                    await asyncio.sleep(0.005)
                passes.hold()
                await asyncio.to_thread(passes.blocked.wait, 10)
                load = engine.load()
                seen = await scrape(exporter.url)
                for name in ("x", "y", "z"):
                    engine.abort(name)
            await asyncio.gather(*tasks)
            idle = await scrape(exporter.url)
    finally:
        await exporter.close()
    assert (load.running, load.waiting) == (1, 2) and load.kv_used_tokens > 0
    assert seen[f"{P}num_requests_running"] == 1 and seen[f"{P}num_requests_waiting"] == 2
    assert seen[f"{P}max_num_requests_running"] == 1 and seen[f"{P}max_num_requests_waiting"] == 2
    assert seen[f"{P}kv_cache_used_tokens"] == load.kv_used_tokens
    capacity = seen[f"{P}kv_cache_capacity_tokens"]
    assert capacity == load.kv_capacity_tokens and seen[f"{P}kv_cache_usage_ratio"] == load.kv_used_tokens / capacity
    assert idle[f"{P}num_requests_running"] == idle[f"{P}num_requests_waiting"] == 0
    assert idle[f"{P}kv_cache_used_tokens"] == 0
