"""RPC metrics of the server bootstrap, scraped over HTTP from a real in-process server: calls counted by method and
code when they start and end, unary and streaming, errors and cancellations; in-flight back to 0 after a cancelled
stream; health checks counted, unknown methods not; with metrics off, no server, no /metrics and nothing counted."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.scrape import changed, recorded, scrape_async, scrape_until, value
from support.served import Hosted, served

from genmesh.errors import NotFound
from genmesh.metrics import Metrics, check_name, current
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc

SERVICE = "genmesh.v1.InferenceService"


class Servicer(inference_pb2_grpc.InferenceServiceServicer):
    """GetModelInfo answers, Abort fails; Generate streams ``max_tokens`` deltas, or one and then waits forever for
    the prompt ``hang``."""

    def __init__(self) -> None:
        self.hanging = asyncio.Event()

    async def GetModelInfo(
        self, request: inference_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GetModelInfoResponse:
        return inference_pb2.GetModelInfoResponse(model="fake")

    async def Abort(
        self, request: inference_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.AbortResponse:
        raise NotFound("no such request")

    async def GetLoad(
        self, request: inference_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GetLoadResponse:
        raise NotImplementedError

    async def WatchLoad(
        self, request: inference_pb2.WatchLoadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.WatchLoadResponse]:
        raise NotImplementedError
        yield

    async def CountTokens(
        self, request: inference_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CountTokensResponse:
        raise NotImplementedError

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        yield inference_pb2.GenerateResponse()
        if request.prompt == "hang":
            self.hanging.set()
            await asyncio.Event().wait()
        for _ in range(request.sampling.max_tokens - 1):
            yield inference_pb2.GenerateResponse()


class FakeService(Hosted):
    """The servicer, served; ``metrics_at_start`` is what its ``start()`` found."""

    def __init__(self) -> None:
        self.servicer = Servicer()
        super().__init__(SERVICE, partial(inference_pb2_grpc.add_InferenceServiceServicer_to_server, self.servicer))
        self.metrics_at_start: Metrics | str | None = "not started"

    async def start(self) -> None:
        self.metrics_at_start = current()


@asynccontextmanager
async def serving(metrics: bool) -> AsyncIterator[tuple[FakeService, grpc.aio.Channel, str]]:
    service = FakeService()
    async with served(service, metrics) as where, grpc.aio.insecure_channel(where.address) as channel:
        yield service, channel, where.metrics_url


Samples = dict[tuple[str, str, str, str], float]


async def scrape(url: str) -> Samples:
    """The genmesh_rpc_* samples of this test's service and health, by (name, type, method, code); no buckets."""
    found: Samples = {}
    for (name, labelset), seen in (await scrape_async(url)).items():
        labels = dict(labelset)
        ours = labels.get("grpc_service") in (SERVICE, "grpc.health.v1.Health")
        if name.startswith("genmesh_rpc_") and ours and "le" not in labels:
            found[(name, labels["grpc_type"], labels["grpc_method"], labels.get("grpc_code", ""))] = seen
    return found


async def test_unary_and_streaming_calls_are_counted_by_method_and_code() -> None:
    async with serving(metrics=True) as (service, channel, url):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        before = await scrape(url)
        for _ in range(2):
            await stub.GetModelInfo(inference_pb2.GetModelInfoRequest(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Abort(inference_pb2.AbortRequest(request_id="x"), timeout=10)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        request = inference_pb2.GenerateRequest(prompt="p", sampling=common_pb2.SamplingParams(max_tokens=3))
        assert len([r async for r in stub.Generate(request, timeout=10)]) == 3
        grown = changed(await scrape(url), before)
    assert grown == {
        ("genmesh_rpc_started_total", "unary", "GetModelInfo", ""): 2,
        ("genmesh_rpc_handled_total", "unary", "GetModelInfo", "OK"): 2,
        ("genmesh_rpc_handling_seconds_count", "unary", "GetModelInfo", ""): 2,
        ("genmesh_rpc_handling_seconds_sum", "unary", "GetModelInfo", ""): pytest.approx(0, abs=1),
        ("genmesh_rpc_started_total", "unary", "Abort", ""): 1,
        ("genmesh_rpc_handled_total", "unary", "Abort", "NotFound"): 1,
        ("genmesh_rpc_handling_seconds_count", "unary", "Abort", ""): 1,
        ("genmesh_rpc_handling_seconds_sum", "unary", "Abort", ""): pytest.approx(0, abs=1),
        ("genmesh_rpc_started_total", "server_stream", "Generate", ""): 1,
        ("genmesh_rpc_handled_total", "server_stream", "Generate", "OK"): 1,
        ("genmesh_rpc_handling_seconds_count", "server_stream", "Generate", ""): 1,
        ("genmesh_rpc_handling_seconds_sum", "server_stream", "Generate", ""): pytest.approx(0, abs=1),
    }
    assert isinstance(service.metrics_at_start, Metrics), "the service's start() finds the metrics"


async def test_a_cancelled_stream_is_in_flight_until_it_ends_cancelled() -> None:
    in_flight = ("genmesh_rpc_in_flight", "server_stream", "Generate", "")
    canceled = ("genmesh_rpc_handled_total", "server_stream", "Generate", "Canceled")
    async with serving(metrics=True) as (service, channel, url):
        before = await scrape(url)
        call = inference_pb2_grpc.InferenceServiceStub(channel).Generate(
            inference_pb2.GenerateRequest(prompt="hang", sampling=common_pb2.SamplingParams(max_tokens=3))
        )
        await call.read()
        await service.servicer.hanging.wait()
        running = await scrape(url)
        assert running[in_flight] == 1
        call.cancel()
        generate = {"grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "Generate"}
        await scrape_until(url, lambda samples: value(samples, "genmesh_rpc_in_flight", **generate) == 0, 5.0)
        after = await scrape(url)
    assert after[in_flight] == 0
    assert after[canceled] - before.get(canceled, 0) == 1


async def test_health_checks_are_counted_and_unknown_methods_are_not() -> None:
    async with serving(metrics=True) as (_, channel, url):
        before = await scrape(url)
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await channel.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"", timeout=10)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        after = await scrape(url)
    check = ("genmesh_rpc_handled_total", "unary", "Check", "OK")
    assert after[check] - before.get(check, 0) >= 1
    assert not [key for key in after if key[2] == "NoSuchMethod"]


async def test_process_metrics_are_served() -> None:
    async with serving(metrics=True) as (_, _channel, url):
        names = {name for name, _ in await scrape_async(url)}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "genmesh_build_info"} <= names
    for name in {n for n in names if n.startswith("genmesh_")}:
        base = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum").removesuffix("_created")
        check_name(base, "counter" if base.endswith("_total") else "gauge")


async def test_metrics_off_serve_nothing_and_count_nothing() -> None:
    before = recorded("genmesh_rpc_")
    async with serving(metrics=False) as (service, channel, url):
        await inference_pb2_grpc.InferenceServiceStub(channel).GetModelInfo(
            inference_pb2.GetModelInfoRequest(), timeout=10
        )
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
    assert service.metrics_at_start is None, "the service instruments nothing"
    assert recorded("genmesh_rpc_") == before
