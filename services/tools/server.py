"""The tools service's gRPC server: a thin servicer over the tool registry, and its entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from genmesh import mesh
from genmesh.config import add_server_flags, add_upstream_tls_flags, parse, parse_bool
from genmesh.deadlines import DEADLINE_MARGIN_S
from genmesh.errors import FieldViolation, GenmeshError, InvalidArgument, quote
from genmesh.limits import call_id_violation
from genmesh.metrics import current as current_metrics
from genmesh.paging import check_page_size, decode_page_token, encode_page_token, fitting
from genmesh.server import run
from genmesh.status import code_value, status_code_of, status_message, status_of
from genmesh.targets import parse_target
from genmesh.tls import ClientTLS, server_name
from genmesh.v1 import common_pb2, tools_pb2, tools_pb2_grpc
from services.tools.builtin.search_docs import search_docs_tool
from services.tools.fanout import DEFAULT_MAX_CONCURRENCY, MAX_CALLS, CallOutcome, CallSpec, invoke_many
from services.tools.mcp_provider import McpProvider, McpServerConfig, parse_mcp_server
from services.tools.metrics import ToolsMetrics, code_of
from services.tools.plugins import load_entry_points, load_spec
from services.tools.registry import DEFAULT_MAX_WORKERS, ToolRegistry, default_registry
from services.tools.retrieval_client import RetrievalSearcher
from services.tools.tool import DEFAULT_TOOL_TIMEOUT_S

log = logging.getLogger("genmesh.tools")


class ToolsServicer(tools_pb2_grpc.ToolsServiceServicer):
    """Protobuf in, protobuf out; the registry validates and runs the tools."""

    def __init__(self, registry: ToolRegistry, max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> None:
        self._registry = registry
        self._max_concurrency = max_concurrency
        self.metrics: ToolsMetrics | None = None
        """Where calls are counted (set by ``ToolsService.start`` when metrics are on)."""

    async def ListTools(
        self, request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.ListToolsResponse:
        check_page_size(request.page_size)
        # By name, so that a page token (the last name sent) survives tools coming and going.
        tools = sorted(self._registry.tools(), key=lambda tool: tool.name)
        response = tools_pb2.ListToolsResponse()
        if request.page_token:
            (after,) = decode_page_token(request.page_token, "tools", 1)
            tools = [t for t in tools if t.name > after]
        else:
            response.providers.extend(
                tools_pb2.ToolProvider(
                    name=p.name,
                    tool_prefix=p.prefix,
                    available=p.available,
                    restarts=p.restarts,
                    last_error=p.last_error,
                )
                for p in self._registry.providers()
            )
        specs = [
            tools_pb2.ToolSpec(
                name=t.name,
                description=t.description,
                parameters_json_schema=json.dumps(t.parameters),
                timeout_ms=int(t.timeout_s * 1000),
                idempotent=t.idempotent,
                source=t.source,
                available=self._registry.is_available(t),
            )
            for t in tools[: request.page_size or len(tools)]
        ]
        count = fitting(specs, response.ByteSize())
        response.tools.extend(specs[:count])
        if count < len(tools):
            response.next_page_token = encode_page_token("tools", specs[count - 1].name)
        return response

    async def Invoke(
        self, request: tools_pb2.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.InvokeResponse:
        metrics = self.metrics
        if metrics is None:
            return await self._invoke(request, context)
        started = time.perf_counter()
        try:
            response = await self._invoke(request, context)
        except Exception as error:
            metrics.called(request.call.name, code_of(error), time.perf_counter() - started)
            raise
        metrics.called(request.call.name, grpc.StatusCode.OK, time.perf_counter() - started)
        return response

    async def _invoke(
        self, request: tools_pb2.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.InvokeResponse:
        call = request.call
        if (violation := call_id_violation(call.call_id, "call.call_id")) is not None:
            raise InvalidArgument(violation)
        if not call.name:
            raise InvalidArgument.field("call.name", "must not be empty")
        budgets = [context.time_remaining()]
        if call.HasField("timeout_ms"):
            if call.timeout_ms == 0:
                raise InvalidArgument.field("call.timeout_ms", "must be positive")
            budgets.append(call.timeout_ms / 1000.0)
        timeout_s = min((b for b in budgets if b is not None), default=None)
        result = await self._registry.invoke(
            call.name, call.arguments_json or "{}", timeout_s, field_prefix="call.arguments_json"
        )
        return tools_pb2.InvokeResponse(
            result=common_pb2.ToolResult(
                call_id=call.call_id, name=call.name, result_json=result.result_json, duration_ms=result.duration_ms
            )
        )

    async def InvokeMany(
        self, request: tools_pb2.InvokeManyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tools_pb2.InvokeManyResponse]:
        calls, rejected = _plan_calls(request)
        concurrency = self._max_concurrency
        if request.HasField("max_concurrency"):
            if not 1 <= request.max_concurrency <= MAX_CALLS:
                raise InvalidArgument.field("max_concurrency", f"must be between 1 and {MAX_CALLS}")
            concurrency = min(concurrency, request.max_concurrency)
        budgets: list[float] = []
        if request.HasField("timeout_ms"):
            if request.timeout_ms == 0:
                raise InvalidArgument.field("timeout_ms", "must be positive")
            budgets.append(request.timeout_ms / 1000.0)
        remaining = context.time_remaining()
        if remaining is not None:  # end early, so that DEADLINE_EXCEEDED results still reach the client
            budgets.append(max(0.0, remaining - DEADLINE_MARGIN_S))
        timeout_s = min(budgets) if budgets else None

        for outcome in rejected:  # calls that cannot run at all are reported first
            yield self._answer(outcome)
        if not calls:
            return
        outcomes = invoke_many(self._registry, calls, concurrency, timeout_s)
        async with contextlib.aclosing(outcomes):
            async for outcome in outcomes:
                yield self._answer(outcome)

    def _answer(self, outcome: CallOutcome) -> tools_pb2.InvokeManyResponse:
        if self.metrics is not None:
            self.metrics.called(outcome.call.name, code_of(outcome.error), outcome.duration_ms / 1000.0)
        return _response(outcome)


def _plan_calls(request: tools_pb2.InvokeManyRequest) -> tuple[list[CallSpec], list[CallOutcome]]:
    """The calls to run, and the outcomes of those rejected up front (a zero timeout_ms).

    Raises InvalidArgument for request-level mistakes: no calls, too many, duplicate call ids.
    """
    if not request.calls:
        raise InvalidArgument.field("calls", "must hold at least one call")
    if len(request.calls) > MAX_CALLS:
        raise InvalidArgument.field("calls", f"must hold at most {MAX_CALLS} calls, got {len(request.calls)}")
    specs: list[CallSpec] = []
    seen: dict[str, int] = {}
    bad_ids: list[FieldViolation] = []
    for i, call in enumerate(request.calls):
        call_id = call.call_id or str(i)
        if (violation := call_id_violation(call_id, f"calls[{i}].call_id")) is not None:
            bad_ids.append(violation)
        elif call_id in seen:
            bad_ids.append(
                FieldViolation(f"calls[{i}].call_id", f"duplicate call id {quote(call_id)} (as calls[{seen[call_id]}])")
            )
        seen.setdefault(call_id, i)
        timeout_s = call.timeout_ms / 1000.0 if call.HasField("timeout_ms") else None
        specs.append(CallSpec(i, call_id, call.name, call.arguments_json, timeout_s))
    if bad_ids:
        raise InvalidArgument(bad_ids)
    rejected = [
        CallOutcome(spec, None, InvalidArgument.field("timeout_ms", "must be positive"), 0.0, 0.0, 0.0)
        for spec in specs
        if spec.timeout_s == 0
    ]
    return [spec for spec in specs if spec.timeout_s != 0], rejected


def _response(outcome: CallOutcome) -> tools_pb2.InvokeManyResponse:
    call = outcome.call
    result = common_pb2.ToolResult(call_id=call.call_id, name=call.name, duration_ms=outcome.duration_ms)
    if outcome.error is None:
        result.result_json = outcome.result_json or "null"
    else:
        result.error.CopyFrom(_tool_error(outcome.error))
    return tools_pb2.InvokeManyResponse(
        result=result, index=call.index, start_ms=outcome.start_s * 1000.0, end_ms=outcome.end_s * 1000.0
    )


def _tool_error(error: BaseException) -> common_pb2.ToolError:
    if not isinstance(error, GenmeshError):
        text = f"internal error: {type(error).__name__}"
        internal = grpc.StatusCode.INTERNAL
        return common_pb2.ToolError(code=code_value(internal), message=text, status=status_message(internal, text))
    # code, message and field_violations are deprecated in favour of status, and kept filled
    code = code_value(status_code_of(error))
    message = common_pb2.ToolError(code=code, message=error.message, status=status_of(error))
    if isinstance(error, InvalidArgument):
        message.field_violations.extend(
            common_pb2.FieldViolation(field=v.field, description=v.description) for v in error.violations
        )
    return message


@dataclass(frozen=True, slots=True)
class ToolsConfig:
    """What the tools service serves besides the built-ins."""

    max_workers: int = DEFAULT_MAX_WORKERS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    retrieval_target: str = ""
    tools_modules: tuple[str, ...] = ()
    entry_points: bool = True
    mcp_servers: tuple[McpServerConfig, ...] = ()
    mcp_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S
    mcp_start_timeout_s: float = 30.0
    retrieval_tls: ClientTLS | None = None
    """TLS of the channel to retrieval (search_docs); plaintext when None."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_concurrency <= MAX_CALLS:
            raise ValueError(f"max concurrency must be between 1 and {MAX_CALLS}")
        if self.retrieval_tls is not None and self.retrieval_target:
            server_name(parse_target(self.retrieval_target))  # one name to check retrieval's certificates for


class ToolsService:
    """The tools service as the server bootstrap runs it."""

    service_name = mesh.TOOLS.grpc_service
    also_serves: tuple[str, ...] = ()
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()

    def __init__(self, config: ToolsConfig) -> None:
        self._config = config
        self._registry = default_registry(config.max_workers)
        self._searcher: RetrievalSearcher | None = None
        self._providers = [McpProvider(server, tool_timeout_s=config.mcp_timeout_s) for server in config.mcp_servers]
        self._servicer = ToolsServicer(self._registry, config.max_concurrency)
        plugins = load_entry_points() if config.entry_points else []
        for spec in config.tools_modules:
            plugins.extend(load_spec(spec))
        for plugin in plugins:
            self._registry.register(plugin)
        for provider in self._providers:
            self._registry.add_provider(provider)

    def register(self, server: grpc.aio.Server) -> None:
        # The retrieval channel belongs to the running event loop, so it is opened here, not in __init__.
        if self._config.retrieval_target:
            self._searcher = RetrievalSearcher(self._config.retrieval_target, self._config.retrieval_tls)
            self._registry.register(search_docs_tool(self._searcher))
        tools_pb2_grpc.add_ToolsServiceServicer_to_server(self._servicer, server)

    async def start(self) -> None:
        """Start the MCP servers and wait for each one's first connection (up or failed, never forever)."""
        registry = current_metrics()
        metrics = None if registry is None else ToolsMetrics(registry, self._registry.knows)
        if metrics is not None:
            metrics.watch_mcp(self._providers)
        self._servicer.metrics = metrics
        for provider in self._providers:
            await provider.start(None if metrics is None else metrics.mcp_restarted)
        ready = await asyncio.gather(*(p.wait_first_attempt(self._config.mcp_start_timeout_s) for p in self._providers))
        for provider, up in zip(self._providers, ready, strict=True):
            if not up:
                log.warning("MCP server not up yet", extra={"server": provider.name, "error": provider.last_error})
        log.info("tools", extra={"tools": ",".join(t.name for t in self._registry.tools())})

    def drain(self) -> None:
        """Nothing to announce: health already reports NOT_SERVING."""

    async def stop(self) -> None:
        for provider in self._providers:
            await provider.stop()
        if self._searcher is not None:
            await self._searcher.close()
        self._registry.close(wait=False)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the tools service until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="genmesh serve tools", description=__doc__)
    flags = add_server_flags(parser, "tools", mesh.TOOLS.default_port)
    flags.add("--max-workers", type=int, default=DEFAULT_MAX_WORKERS, help="threads for blocking tools")
    flags.add(
        "--max-concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        help="calls one InvokeMany runs at once (a request may ask for fewer)",
    )
    flags.add(
        "--retrieval-target",
        default=f"127.0.0.1:{mesh.RETRIEVAL.default_port}",
        help="host:port of the retrieval service, for the search_docs tool ('' leaves the tool out)",
    )
    add_upstream_tls_flags(flags)
    flags.add_repeated("--tools-module", metavar="MODULE[:ATTR]", help="load plugin tools from a module", separator=",")
    flags.add(
        "--plugin-entry-points",
        type=parse_bool,
        default=True,
        help="load the plugins of the 'genmesh.tools' entry-point group (true/false)",
    )
    flags.add_repeated("--mcp-server", metavar="NAME=COMMAND", help="run an MCP server over stdio as a tool provider")
    flags.add("--mcp-timeout", type=float, default=DEFAULT_TOOL_TIMEOUT_S, help="default timeout of MCP tools, s")
    flags.add(
        "--mcp-start-timeout",
        type=float,
        default=30.0,
        help="seconds start-up waits for each MCP server's first answer",
    )
    args = parse(parser, argv)
    try:
        config = ToolsConfig(
            max_workers=args.max_workers,
            max_concurrency=args.max_concurrency,
            retrieval_target=args.retrieval_target,
            tools_modules=tuple(args.tools_module),
            entry_points=args.plugin_entry_points,
            mcp_servers=tuple(parse_mcp_server(text) for text in args.mcp_server),
            mcp_timeout_s=args.mcp_timeout,
            mcp_start_timeout_s=args.mcp_start_timeout,
            retrieval_tls=ClientTLS.from_flags(args.upstream_tls_ca, args.upstream_tls_cert, args.upstream_tls_key),
        )
    except ValueError as error:
        parser.error(str(error))
    run("tools", args, lambda: ToolsService(config))


if __name__ == "__main__":
    main()
