"""A real service process started with --otlp-endpoint traces as ``genmesh-<service>``, continues its caller's
trace, logs the trace ids, and exports the spans still buffered when it stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from support.otlp_receiver import running_receiver

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.launcher import free_port, start_service, wait_ready
from genmesh.v1 import tools_pb2, tools_pb2_grpc

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


async def test_a_service_exports_its_spans_at_the_latest_when_it_stops(tmp_path: Path) -> None:
    async with running_receiver() as receiver:
        port = free_port()
        address = f"127.0.0.1:{port}"
        args = ["serve", "tools", "--port", str(port), "--retrieval-target", "", "--otlp-endpoint", receiver.endpoint]
        # A batch delay of an hour: whatever arrives was sent by the flush at stop.
        env = {"OTEL_BSP_SCHEDULE_DELAY": "3600000", "GENMESH_LOG_FORMAT": "text"}
        service = await start_service(mesh.TOOLS, args, address, tmp_path, env=env)
        try:
            await wait_ready(service, 60)
            async with open_channel(address) as channel:
                await tools_pb2_grpc.ToolsServiceStub(channel).ListTools(
                    tools_pb2.ListToolsRequest(),
                    metadata=(("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),),
                    timeout=10,
                )
            await asyncio.sleep(0.2)
            assert receiver.spans == []
        finally:
            if service.process.returncode is None:
                os.kill(service.process.pid, signal.SIGTERM)
            assert await asyncio.wait_for(service.process.wait(), 30) == 0
        spans = await receiver.wait_for(lambda spans: len(spans) >= 1, timeout_s=10)

    [span] = spans
    assert (span.service, span.name, span.kind) == ("genmesh-tools", "genmesh.v1.ToolsService/ListTools", "SERVER")
    assert (span.trace_id, span.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    assert span.instance.endswith(f":{service.process.pid}")
    assert service.log_path is not None
    [rpc_line] = [
        line
        for line in service.log_path.read_text().splitlines()
        if "method=/genmesh.v1.ToolsService/ListTools" in line
    ]
    assert f"trace_id={CLIENT_TRACE} span_id={span.span_id}" in rpc_line
