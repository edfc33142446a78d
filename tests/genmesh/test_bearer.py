"""A channel opened with an API key sends it as ``authorization: Bearer <key>`` on every kind of call (unary and
streaming both ways), next to the call's own metadata; a channel without one sends no authorization."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from genmesh.channels import open_channel

KINDS = ("UnaryUnary", "UnaryStream", "StreamUnary", "StreamStream")


def _server(seen: dict[str, list[tuple[str, str]]]) -> grpc.aio.Server:
    """A server whose four methods (one per kind of call) record the metadata they were called with."""

    def record(kind: str, context: grpc.aio.ServicerContext) -> None:
        seen[kind] = [(k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str)]

    async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        record("UnaryUnary", context)
        return b""

    async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        record("UnaryStream", context)
        yield b""

    async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        record("StreamUnary", context)
        return b"".join([r async for r in requests])

    async def stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        record("StreamStream", context)
        async for request in requests:
            yield request

    handlers = {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
        "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("probe.Probe", handlers),))
    return server


def _one() -> Iterator[bytes]:
    yield b"x"


async def _call_each_kind(address: str, api_key: str) -> None:
    own = (("x-request-id", "r1"),)
    async with open_channel(address, api_key=api_key) as channel:
        await channel.unary_unary("/probe.Probe/UnaryUnary")(b"", metadata=own, timeout=10)
        [_ async for _ in channel.unary_stream("/probe.Probe/UnaryStream")(b"", metadata=own, timeout=10)]
        await channel.stream_unary("/probe.Probe/StreamUnary")(_one(), metadata=own, timeout=10)
        [_ async for _ in channel.stream_stream("/probe.Probe/StreamStream")(_one(), metadata=own, timeout=10)]


@pytest.mark.parametrize("api_key", ["gmk_0123456789ab_secret", ""])
async def test_every_kind_of_call_carries_the_key_and_its_own_metadata(api_key: str) -> None:
    seen: dict[str, list[tuple[str, str]]] = {}
    server = _server(seen)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await _call_each_kind(f"127.0.0.1:{port}", api_key)
    finally:
        await server.stop(None)
    assert set(seen) == set(KINDS)
    for kind, metadata in seen.items():
        authorization = [value for key, value in metadata if key == "authorization"]
        assert authorization == ([f"Bearer {api_key}"] if api_key else []), kind
        assert ("x-request-id", "r1") in metadata, kind
