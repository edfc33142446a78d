"""The paged cache as the inference service reports it over real gRPC and /metrics: GetLoad fields 7..10,
WatchLoad's named metrics, Usage.cached_tokens, and the block, prefix-cache and preemption metrics."""

from __future__ import annotations

import grpc
from support.scrape import scrape_until, value
from support.served import served

from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference.engine import EngineConfig
from services.inference.server import DEFAULT_MODEL, InferenceService

P = "genmesh_inference_"
PROMPT = "The with statement wraps a block with methods defined by a context manager. " * 3 + "Why?"
GREEDY = common_pb2.SamplingParams(max_tokens=6, temperature=0.0)


async def completion(stub: inference_pb2_grpc.InferenceServiceStub) -> common_pb2.Completion:
    async for response in stub.Generate(inference_pb2.GenerateRequest(prompt=PROMPT, sampling=GREEDY), timeout=60):
        if response.HasField("complete"):
            done: common_pb2.Completion = response.complete
            return done
    raise AssertionError("the stream ended without a completion")


async def test_get_load_watch_load_usage_and_metrics_report_the_paged_cache() -> None:
    config = EngineConfig(max_running=4, kv_cache_tokens=1024, block_size=16)
    service = InferenceService(DEFAULT_MODEL, "cpu", config, threads=1)
    async with served(service) as where, grpc.aio.insecure_channel(where.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        idle = await stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=10)
        assert (idle.kv_block_size, idle.kv_blocks_used, idle.kv_blocks_free, idle.kv_capacity_tokens) == (
            16,
            0,
            64,
            1024,
        )
        assert idle.prefix_cache_hit_rate == 0.0
        first, second = await completion(stub), await completion(stub)
        assert first.usage.cached_tokens == 0
        assert second.usage.cached_tokens > 0 and second.usage.cached_tokens % 16 == 0
        assert second.usage.cached_tokens < second.usage.prompt_tokens == first.usage.prompt_tokens
        load = await stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=10)
        expected_rate = second.usage.cached_tokens / (2 * first.usage.prompt_tokens)
        assert (load.kv_blocks_used, load.kv_blocks_free) == (0, 64), "freed blocks stay cached but are free"
        assert abs(load.prefix_cache_hit_rate - expected_rate) < 1e-9
        async for report in stub.WatchLoad(inference_pb2.WatchLoadRequest(), timeout=10):
            named = dict(report.named_metrics)
            assert (named["kv_block_size"], named["kv_blocks_used"], named["kv_blocks_free"]) == (16, 0, 64)
            assert abs(named["prefix_cache_hit_rate"] - expected_rate) < 1e-9
            break
        samples = await scrape_until(where.metrics_url, lambda s: value(s, f"{P}prefix_cache_hits_total") > 0)
        assert value(samples, f"{P}prefix_cache_hits_total") == second.usage.cached_tokens
        assert value(samples, f"{P}prefix_cache_queries_total") == 2 * first.usage.prompt_tokens
        assert (value(samples, f"{P}kv_cache_blocks_used"), value(samples, f"{P}kv_cache_blocks_free")) == (0, 64)
        assert value(samples, f"{P}num_preemptions_total") == 0
