"""A mesh started as `genmesh up` starts it, with metrics: every process serves /metrics on its own port, and one
answer through the gateway shows on each service's RPC metrics, in the inference engine's token counts, and as
the retrieval query and the tool call it made."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.scrape import Samples, scrape, value
from support.streams import collect

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.launcher import start_mesh
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


def handled(samples: Samples, service: str, method: str, code: str = "OK") -> float:
    wanted = {("grpc_service", f"genmesh.v1.{service}"), ("grpc_method", method), ("grpc_code", code)}
    return float(
        sum(v for (name, labels), v in samples.items() if name == "genmesh_rpc_handled_total" and wanted <= labels)
    )


async def test_every_service_serves_metrics_and_one_answer_shows_on_each(tmp_path: Path) -> None:
    running = await start_mesh(log_dir=tmp_path / "logs", extra_args={"inference": ["--threads", "1"]}, metrics=True)
    try:
        urls = {name: service.metrics_url for name, service in running.services.items()}
        assert sorted(urls) == sorted(spec.name for spec in mesh.SERVICES)
        assert len(set(urls.values())) == 4 and all(url.startswith("http://127.0.0.1:") for url in urls.values())
        request = gateway_pb2.GatewayRequest(
            request_id="metrics-e2e",
            question="How does the with statement use a context manager?",
            tool_calls=[common_pb2.ToolCall(call_id="sum", name="calculator", arguments_json='{"expression": "1+1"}')],
            sampling=common_pb2.SamplingParams(max_tokens=16, temperature=0.0),
        )
        async with open_channel(running.address("gateway")) as channel:
            got = await collect(gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=120))
        usage = got.completion.usage
        seen = {name: await asyncio.to_thread(scrape, url) for name, url in urls.items()}
    finally:
        await running.stop(grace_s=2.0)

    for name, samples in seen.items():
        names = {metric for metric, _ in samples}
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "genmesh_build_info"} <= names, name
        assert any(metric == "genmesh_rpc_started_total" for metric in names), name
    assert handled(seen["gateway"], "GatewayService", "Generate") == 1
    assert handled(seen["retrieval"], "RetrievalService", "Query") >= 1
    assert handled(seen["tools"], "ToolsService", "InvokeMany") + handled(seen["tools"], "ToolsService", "Invoke") >= 1
    assert handled(seen["inference"], "InferenceService", "Generate") == 1
    assert value(seen["tools"], "genmesh_tools_calls_total", tool="calculator", code="OK") == 1
    assert value(seen["retrieval"], "genmesh_retrieval_query_duration_seconds_count", mode="hybrid") >= 1

    inference = seen["inference"]
    assert inference[("genmesh_inference_generation_tokens_total", frozenset())] == usage.completion_tokens > 0
    assert inference[("genmesh_inference_prompt_tokens_total", frozenset())] == usage.prompt_tokens
    assert inference[("genmesh_inference_time_to_first_token_seconds_count", frozenset())] == 1
    assert inference[("genmesh_inference_num_requests_running", frozenset())] == 0
    assert inference[("genmesh_inference_kv_cache_capacity_tokens", frozenset())] > 0
