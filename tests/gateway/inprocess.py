"""Scriptable retrieval, tools and inference servicers on one real in-process grpc.aio server (loopback)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Sized
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.upstreams import UpstreamTargets
from genmesh import mesh
from genmesh.errors import GenmeshError
from genmesh.messages import template_messages
from genmesh.status import code_value, status_message, to_rpc_status
from genmesh.tasks import cancel_and_wait
from genmesh.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from services.inference.chat_template import ChatTemplate


class SizedTexts(Sized, Iterable[str], Protocol):
    """What a scripted generation's deltas may be: a list, or a test's own sized iterable."""


@dataclass
class Fault:
    """A status to fail calls with: the first ``times`` calls (None: every call)."""

    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    message: str = "scripted failure"
    times: int | None = None
    rich: GenmeshError | None = None
    """Sent with its details (BadRequest, ErrorInfo) instead of code and message."""

    def applies(self, call_number: int) -> bool:
        return self.times is None or call_number <= self.times


async def fail(context: grpc.aio.ServicerContext, fault: Fault) -> None:
    """End the call with ``fault``'s status (raises)."""
    if fault.rich is not None:
        await context.abort_with_status(to_rpc_status(fault.rich))
    await context.abort(fault.code, fault.message)


async def unimplemented(context: grpc.aio.ServicerContext) -> NoReturn:
    """The answer of the methods the gateway's request path never calls."""
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")
    raise AssertionError("abort returned")


class ScriptedRetrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    """Query answers ``passages`` after ``delay_s``, or fails with ``fault``; records every request."""

    def __init__(self) -> None:
        self.passages = [
            common_pb2.Passage(
                chunk_id="yield#0",
                document_id="yield",
                title="The yield expression",
                text="A yield expression suspends the generator and hands a value to its caller.",
                score=0.9,
                rank=1,
            )
        ]
        self.delay_s = 0.0
        self.fault: Fault | None = None
        self.requests: list[retrieval_pb2.QueryRequest] = []

    async def Query(
        self, request: retrieval_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.QueryResponse:
        self.requests.append(request)
        await asyncio.sleep(self.delay_s)
        if self.fault is not None and self.fault.applies(len(self.requests)):
            await fail(context, self.fault)
        return retrieval_pb2.QueryResponse(passages=self.passages[: request.top_k])

    async def Upsert(self, request: object, context: grpc.aio.ServicerContext) -> retrieval_pb2.UpsertResponse:
        await unimplemented(context)

    async def UpsertStream(
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.UpsertStreamResponse:
        await unimplemented(context)

    async def Delete(self, request: object, context: grpc.aio.ServicerContext) -> retrieval_pb2.DeleteResponse:
        await unimplemented(context)

    async def GetStats(self, request: object, context: grpc.aio.ServicerContext) -> retrieval_pb2.GetStatsResponse:
        await unimplemented(context)

    async def GetIngestProgress(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.GetIngestProgressResponse:
        await unimplemented(context)

    async def Embed(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.RetrievalServiceEmbedResponse:
        await unimplemented(context)

    async def GetEmbedderInfo(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.GetEmbedderInfoResponse:
        await unimplemented(context)


@dataclass
class ScriptedTool:
    """One tool of ScriptedTools: its ListTools entry and what a call of it does."""

    name: str
    result_json: str = '{"value": 42}'
    idempotent: bool = False
    delay_s: float = 0.0
    schema: dict[str, object] = field(default_factory=lambda: {"type": "object"})
    error: Fault | None = None
    """Reported in the call's own ToolResult (the stream goes on)."""


class ScriptedTools(tools_pb2_grpc.ToolsServiceServicer):
    """ListTools lists ``tools`` (``page_size`` a page); InvokeMany runs their calls concurrently, or fails the
    stream with ``stream_fault``; records every InvokeMany request."""

    def __init__(self, *tools: ScriptedTool) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.stream_fault: Fault | None = None
        self.page_size = 0
        """Tools per ListTools page; 0: all on one."""
        self.invocations: list[tools_pb2.InvokeManyRequest] = []
        self.listings = 0
        """ListTools calls answered (every page counts)."""

    async def ListTools(
        self, request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.ListToolsResponse:
        self.listings += 1
        specs = [
            tools_pb2.ToolSpec(
                name=tool.name,
                parameters_json_schema=json.dumps(tool.schema),
                idempotent=tool.idempotent,
                source="builtin",
                available=True,
            )
            for tool in self.tools.values()
        ]
        if not self.page_size:
            return tools_pb2.ListToolsResponse(tools=specs)
        start = int(request.page_token or 0)  # pages as a catalogue larger than one page (4 MiB) gets them
        end = start + self.page_size
        return tools_pb2.ListToolsResponse(tools=specs[start:end], next_page_token=str(end) if end < len(specs) else "")

    async def Invoke(self, request: object, context: grpc.aio.ServicerContext) -> tools_pb2.InvokeResponse:
        await unimplemented(context)

    async def InvokeMany(
        self, request: tools_pb2.InvokeManyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tools_pb2.InvokeManyResponse]:
        self.invocations.append(request)
        if self.stream_fault is not None and self.stream_fault.applies(len(self.invocations)):
            await fail(context, self.stream_fault)
        started = time.perf_counter()

        def ms() -> float:
            return (time.perf_counter() - started) * 1000.0

        async def run(index: int, call: common_pb2.ToolCall) -> tools_pb2.InvokeManyResponse:
            tool = self.tools[call.name]
            await asyncio.sleep(tool.delay_s)
            result = common_pb2.ToolResult(call_id=call.call_id, name=call.name, duration_ms=ms())
            if tool.error is None:
                result.result_json = tool.result_json
            else:
                code, message = tool.error.code, tool.error.message
                result.error.CopyFrom(
                    common_pb2.ToolError(code=code_value(code), message=message, status=status_message(code, message))
                )
            return tools_pb2.InvokeManyResponse(result=result, index=index, start_ms=0.0, end_ms=ms())

        running = [asyncio.ensure_future(run(i, call)) for i, call in enumerate(request.calls)]
        try:
            for finished in asyncio.as_completed(running):
                yield await finished
        finally:
            await cancel_and_wait(*running)


class ScriptedInference(inference_pb2_grpc.InferenceServiceServicer):
    """GetModelInfo reports ``context_length``; Generate streams ``deltas`` then a Completion (each once per sample
    of ``sampling.n``, tagged with its index), failing with
    ``fault`` before its first message or with ``fault_after_first`` right after it; records every request."""

    def __init__(self) -> None:
        self.context_length = 2048
        self.deltas: SizedTexts = ["Generators ", "yield ", "values."]
        self.delta_delay_s = 0.0
        self.fault: Fault | None = None
        self.fault_after_first: Fault | None = None
        self.requests: list[inference_pb2.GenerateRequest] = []
        self.tool_calls: list[list[common_pb2.ToolCall]] = []
        """The calls the k-th Generate makes after its deltas (it then ends with TOOL_CALLS); none past the list."""
        self.incomplete: set[int] = set()
        """The Generate calls (numbered from 1) whose stream ends without a Completion."""
        self.queue_ms = 0.0
        """Each Completion's timings.queue_ms."""

    @property
    def prompts(self) -> list[str]:
        """Each request's prompt, or its messages rendered as the shipped model's template does (no BOS)."""
        template = ChatTemplate(None)
        return [template.render(template_messages(r.messages)) if r.messages else r.prompt for r in self.requests]

    async def GetModelInfo(
        self, request: inference_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GetModelInfoResponse:
        return inference_pb2.GetModelInfoResponse(model="scripted", context_length=self.context_length, dtype="none")

    async def Abort(self, request: object, context: grpc.aio.ServicerContext) -> inference_pb2.AbortResponse:
        await unimplemented(context)

    async def GetLoad(self, request: object, context: grpc.aio.ServicerContext) -> inference_pb2.GetLoadResponse:
        await unimplemented(context)

    async def CountTokens(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CountTokensResponse:
        """As a replica of a release before CountTokens: the gateway guesses the prompt budget."""
        await unimplemented(context)

    async def WatchLoad(
        self, request: inference_pb2.WatchLoadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.WatchLoadResponse]:
        await unimplemented(context)
        yield inference_pb2.WatchLoadResponse()  # never reached: makes this a streaming handler

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        self.requests.append(request)
        number = len(self.requests)
        if self.fault is not None and self.fault.applies(number):
            await fail(context, self.fault)
        samples = range(max(1, request.sampling.n))  # n > 1: each delta once per sample, interleaved
        for i, text in enumerate(self.deltas):
            await asyncio.sleep(self.delta_delay_s)
            for index in samples:
                delta = common_pb2.TokenDelta(token_ids=[i], text=text)
                yield inference_pb2.GenerateResponse(delta=delta, index=index)
            if self.fault_after_first is not None and self.fault_after_first.applies(number):
                await fail(context, self.fault_after_first)
        calls = self.tool_calls[number - 1] if number <= len(self.tool_calls) else []
        for call in calls:
            yield inference_pb2.GenerateResponse(tool_call=call)
        usage = common_pb2.Usage(prompt_tokens=len(self.prompts[number - 1]) // 3, completion_tokens=len(self.deltas))
        finish = common_pb2.FINISH_REASON_TOOL_CALLS if calls else common_pb2.FINISH_REASON_STOP
        complete = common_pb2.Completion(finish_reason=finish, usage=usage)
        complete.timings.queue_ms = self.queue_ms
        if number in self.incomplete:
            return
        for index in samples:
            yield inference_pb2.GenerateResponse(complete=complete, index=index)


@dataclass
class ScriptedMesh:
    """The three upstream servicers, served on one loopback port."""

    retrieval: ScriptedRetrieval
    tools: ScriptedTools
    inference: ScriptedInference
    server: grpc.aio.Server
    address: str

    def targets(self) -> UpstreamTargets:
        return UpstreamTargets(self.address, self.address, self.address)

    async def stop(self) -> None:
        await self.server.stop(None)


async def start_scripted_mesh(*tools: ScriptedTool, health_service: bool = False) -> ScriptedMesh:
    """Serve fresh scripted upstreams (with ``tools``) on a free port of 127.0.0.1; with ``health_service``,
    also grpc.health.v1, SERVING (what a gateway's start-up waits for)."""
    retrieval, tools_servicer, inference = ScriptedRetrieval(), ScriptedTools(*tools), ScriptedInference()
    server = grpc.aio.server()
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(retrieval, server)
    tools_pb2_grpc.add_ToolsServiceServicer_to_server(tools_servicer, server)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(inference, server)
    health_servicer = health.aio.HealthServicer()
    if health_service:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in (mesh.RETRIEVAL.grpc_service, mesh.TOOLS.grpc_service):  # checked by the gateway's channels
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return ScriptedMesh(retrieval, tools_servicer, inference, server, f"127.0.0.1:{port}")
