"""Traces across two real in-process servers (genmesh.server.serve) exported by the OpenTelemetry SDK over OTLP/gRPC
to a real receiver: a span per RPC on each side of a hop, linked parent to child, a client's traceparent
continued, the sampling ratio applied at the root and followed downstream, trace ids in the log lines."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry import trace
from support.otlp_receiver import ReceivedSpan
from support.traced_pair import BACK, FRONT, traced_pair

from genmesh import tracing
from genmesh.channels import open_channel

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def _one(spans: list[ReceivedSpan], kind: str, name: str) -> ReceivedSpan:
    found = [span for span in spans if span.kind == kind and span.name == name]
    assert len(found) == 1, (kind, name, spans)
    return found[0]


def _traceparent(headers: dict[str, str]) -> tuple[str, str, bool]:
    """The trace id, parent span id and sampled flag of a W3C traceparent (version 00)."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


def _rpc(span: ReceivedSpan, service: str, method: str, code: int) -> None:
    assert span.attributes == {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": method,
        "rpc.grpc.status_code": code,
    }


async def test_one_call_is_one_trace_server_client_server_linked_parent_to_child() -> None:
    async with traced_pair() as pair:
        async with open_channel(pair.front) as channel:  # no span here: the call carries no trace context
            assert await channel.unary_unary(f"/{FRONT}/Ask")(b"hi", timeout=10) == b"hi"
        spans = await pair.exported(3)
    assert len(spans) == 3, spans

    front = _one(spans, "SERVER", f"{FRONT}/Ask")
    hop = _one(spans, "CLIENT", f"{BACK}/Ask")
    back = _one(spans, "SERVER", f"{BACK}/Ask")
    assert {span.trace_id for span in spans} == {front.trace_id}
    assert front.parent_span_id == ""  # the root: started at the first service
    assert hop.parent_span_id == front.span_id
    assert back.parent_span_id == hop.span_id
    for span, service in ((front, FRONT), (hop, BACK), (back, BACK)):
        _rpc(span, service, "Ask", 0)
        assert span.status == "UNSET"
        assert span.service == "genmesh-test"
        assert span.instance
    assert front.start_ns <= hop.start_ns <= back.start_ns <= back.end_ns <= hop.end_ns <= front.end_ns
    [(method, headers)] = pair.seen
    assert method == "Ask"
    assert _traceparent(headers) == (front.trace_id, hop.span_id, True)

    # Every line logged inside an RPC carries its trace and the span of the RPC it was logged in.
    def ids(line: dict[str, str]) -> tuple[str, str]:
        return line["trace_id"], line["span_id"]

    front_lines = [line for line in pair.log_lines if line["msg"] == "front asks back"]
    back_lines = [line for line in pair.log_lines if line["msg"] == "back answers"]
    assert [ids(line) for line in front_lines] == [(front.trace_id, front.span_id)]
    assert [ids(line) for line in back_lines] == [(back.trace_id, back.span_id)]
    assert ids(pair.rpc_line(f"/{FRONT}/Ask")) == (front.trace_id, front.span_id)
    assert ids(pair.rpc_line(f"/{BACK}/Ask")) == (back.trace_id, back.span_id)
    assert "trace_id" not in next(line for line in pair.log_lines if line["msg"] == "listening")


async def test_a_client_traceparent_is_continued_not_replaced() -> None:
    async with traced_pair() as pair:
        sent = (("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"), ("tracestate", "client=7"))
        async with open_channel(pair.front) as channel:
            await channel.unary_unary(f"/{FRONT}/Ask")(b"hi", metadata=sent, timeout=10)
        spans = await pair.exported(3)

    front = _one(spans, "SERVER", f"{FRONT}/Ask")
    hop = _one(spans, "CLIENT", f"{BACK}/Ask")
    assert {span.trace_id for span in spans} == {CLIENT_TRACE}
    assert front.parent_span_id == CLIENT_SPAN
    [(_, headers)] = pair.seen
    assert _traceparent(headers) == (CLIENT_TRACE, hop.span_id, True)
    assert headers["tracestate"] == "client=7"
    assert pair.rpc_line(f"/{FRONT}/Ask")["trace_id"] == CLIENT_TRACE


async def test_ratio_zero_records_nothing_started_here_but_still_propagates_the_trace() -> None:
    async with traced_pair(sample_ratio=0.0) as pair, open_channel(pair.front) as channel:
        ask = channel.unary_unary(f"/{FRONT}/Ask")
        await ask(b"unsampled", timeout=10)
        assert await pair.exported() == []
        line = pair.rpc_line(f"/{FRONT}/Ask")  # the trace exists, unrecorded: ids in the logs and headers
        [(_, headers)] = pair.seen
        trace_id, _, sampled = _traceparent(headers)
        assert (trace_id, sampled) == (line["trace_id"], False)  # not sampled: Back records nothing either
        assert pair.rpc_line(f"/{BACK}/Ask")["trace_id"] == line["trace_id"]

        # A caller that samples its trace is followed (ParentBased), whatever the ratio.
        await ask(b"sampled", metadata=(("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),), timeout=10)
        spans = await pair.exported(3)
    assert {span.trace_id for span in spans} == {CLIENT_TRACE}
    assert len(spans) == 3


async def test_every_kind_of_call_is_traced_and_errors_are_marked() -> None:
    def one() -> Iterator[bytes]:
        yield b"x"

    async with traced_pair() as pair:
        async with open_channel(pair.back) as channel:
            with tracing.tracer().start_as_current_span("test") as root:
                await channel.unary_unary(f"/{BACK}/Ask")(b"x", timeout=10)
                assert [r async for r in channel.unary_stream(f"/{BACK}/Stream")(b"x", timeout=10)] == [b"x"] * 3
                assert await channel.stream_unary(f"/{BACK}/Upload")(one(), timeout=10) == b"x"
                assert [r async for r in channel.stream_stream(f"/{BACK}/Chat")(one(), timeout=10)] == [b"x"]
                for method, code in (("Fail", grpc.StatusCode.INTERNAL), ("Refuse", grpc.StatusCode.INVALID_ARGUMENT)):
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await channel.unary_unary(f"/{BACK}/{method}")(b"x", timeout=10)
                    assert failed.value.code() == code
                forever = channel.unary_stream(f"/{BACK}/Forever")(b"x", timeout=10)
                await forever.read()
                forever.cancel()
            root_id = trace.format_span_id(root.get_span_context().span_id)
            root_trace = trace.format_trace_id(root.get_span_context().trace_id)
        spans = await pair.exported(1 + 2 * 7)

    codes = {"Ask": 0, "Stream": 0, "Upload": 0, "Chat": 0, "Fail": 13, "Refuse": 3, "Forever": 1}
    for method, code in codes.items():
        client = _one(spans, "CLIENT", f"{BACK}/{method}")
        server = _one(spans, "SERVER", f"{BACK}/{method}")
        assert client.parent_span_id == root_id
        assert server.parent_span_id == client.span_id
        _rpc(client, BACK, method, code)
        _rpc(server, BACK, method, code)
        # A client span is an error on any failure; a server span only on the server's faults.
        assert client.status == ("UNSET" if code == 0 else "ERROR")
        assert server.status == ("ERROR" if method == "Fail" else "UNSET")
    assert {_traceparent(headers)[0] for _, headers in pair.seen} == {root_trace}


async def test_without_an_endpoint_nothing_is_traced() -> None:
    assert not tracing.install("test", tracing.TraceSettings(""))
    assert not tracing.enabled()
    assert isinstance(tracing.tracer(), trace.NoOpTracer)
    async with traced_pair(traced=False) as pair:
        headers = (("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),)
        async with open_channel(pair.front) as channel:
            await channel.unary_unary(f"/{FRONT}/Ask")(b"hi", metadata=headers, timeout=10)
        assert pair.seen == [("Ask", {})]  # no span, so nothing to propagate
        assert all("trace_id" not in line for line in pair.log_lines)
        assert pair.receiver.exports == 0
