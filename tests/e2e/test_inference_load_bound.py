"""A flood of Generate calls on an inference service with a small queue: the load it reports never passes its bounds.

Every `GetLoad` and `WatchLoad` snapshot taken during the flood has `running ≤ --max-running` and
`waiting ≤ --max-waiting`, and the calls beyond both are refused with `RESOURCE_EXHAUSTED` /
`INFERENCE_QUEUE_FULL`. Forward passes are slowed (50 ms, support.slow_inference), so that no admitted
generation ends during the flood: exactly `max_running + max_waiting` calls are admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from support.jobs_gateway import stop
from support.slow_inference import start_slow_inference

from genmesh.channels import open_channel
from genmesh.cli.launcher import ServiceProcess
from genmesh.status import error_info, retry_delay_s
from genmesh.v1 import inference_pb2, inference_pb2_grpc

MAX_RUNNING, MAX_WAITING = 2, 3
CALLS = 16


@pytest_asyncio.fixture(scope="module")
async def small_queue(log_root: Path) -> AsyncIterator[ServiceProcess]:
    flags = ["--threads", "1", "--max-running", str(MAX_RUNNING), "--max-waiting", str(MAX_WAITING)]
    service = await start_slow_inference(log_root / "small-queue-inference", *flags, step_delay_ms=50)
    yield service
    await stop(service)


async def _generate(stub: inference_pb2_grpc.InferenceServiceStub, n: int) -> grpc.StatusCode:
    """One call of the flood: OK once it streams (admitted), else the code it was refused with."""
    request = inference_pb2.GenerateRequest(request_id=f"flood-{n}", prompt="Tell me about generators.")
    request.sampling.max_tokens = 4096
    request.sampling.temperature = 0.0
    call = stub.Generate(request, timeout=120)
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            info = error_info(error)
            assert info is not None and info.reason == "INFERENCE_QUEUE_FULL", info
            assert info.metadata["maxWaiting"] == str(MAX_WAITING)
            assert (retry_delay_s(error) or 0) > 0
        return error.code()
    return grpc.StatusCode.OK


async def test_a_flood_never_reports_more_than_the_bounds_and_the_excess_is_refused(
    small_queue: ServiceProcess,
) -> None:
    seen: list[tuple[int, int]] = []  # (running, waiting) of every snapshot, both feeds
    async with open_channel(small_queue.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        full = asyncio.Event()

        async def watch_load() -> None:
            request = inference_pb2.WatchLoadRequest()
            request.report_interval.FromMilliseconds(100)
            async for report in stub.WatchLoad(request):
                seen.append((report.running_count, report.waiting_count))
                if report.waiting_count >= MAX_WAITING:
                    full.set()

        watcher = asyncio.create_task(watch_load())
        calls = [asyncio.create_task(_generate(stub, n)) for n in range(CALLS)]
        refused = 0
        try:
            # Poll until every call is decided: refused, or admitted (running or waiting, by GetLoad's count).
            while True:
                load = await stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=30)
                seen.append((load.running, load.waiting))
                refused = sum(c.done() and c.result() == grpc.StatusCode.RESOURCE_EXHAUSTED for c in calls)
                if refused + load.running + load.waiting == CALLS and full.is_set():
                    break
                assert not any(c.done() and c.result() != grpc.StatusCode.RESOURCE_EXHAUSTED for c in calls)
        finally:
            for task in (*calls, watcher):
                task.cancel()
            for task in (*calls, watcher):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    assert refused == CALLS - MAX_RUNNING - MAX_WAITING, "exactly the calls beyond both bounds are refused"
    assert (MAX_RUNNING, MAX_WAITING) in seen, "the flood filled the rows and the queue"
    over = [(running, waiting) for running, waiting in seen if running > MAX_RUNNING or waiting > MAX_WAITING]
    assert over == [], f"snapshots past the bounds ({MAX_RUNNING} running, {MAX_WAITING} waiting)"
