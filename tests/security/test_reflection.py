"""Server reflection answers under grpc.reflection.v1 (what current grpcurl, Postman and grpcui ask first) and
grpc.reflection.v1alpha: services are listed, and the descriptors a client fetches (v1's own included) build
working clients. ``--reflection off`` leaves both UNIMPLEMENTED while the service itself answers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2

from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, free_port, start_service, wait_ready
from genmesh.v1 import tools_pb2, tools_pb2_grpc

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def _ask(
    channel: grpc.aio.Channel, path: str, request: Message, response_type: type[Message] | None = None
) -> Any:
    """One request on a reflection stream; its one response (parsed as ``response_type``, v1alpha's by default)."""
    parse = (response_type or reflection_pb2.ServerReflectionResponse).FromString
    call = channel.stream_stream(path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=parse)
    responses = [response async for response in call(iter([request]), timeout=10)]
    assert len(responses) == 1
    return responses[0]


def _pool_of(files: list[bytes]) -> descriptor_pool.DescriptorPool:
    """A fresh pool holding the served file descriptors (dependencies first, in whatever order they came)."""
    pool = descriptor_pool.DescriptorPool()
    pending = [descriptor_pb2.FileDescriptorProto.FromString(data) for data in files]
    while pending:
        ready = [f for f in pending if all(_has(pool, d) for d in f.dependency)]
        assert ready, [f.name for f in pending]
        for proto in ready:
            pool.Add(proto)
            pending.remove(proto)
    return pool


def _has(pool: descriptor_pool.DescriptorPool, name: str) -> bool:
    try:
        pool.FindFileByName(name)
    except KeyError:
        return False
    return True


async def test_v1_lists_services_and_describes_itself(mesh: Mesh) -> None:
    async with open_channel(mesh.address("gateway")) as channel:
        listed = await _ask(channel, V1, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert {"genmesh.v1.GatewayService", "grpc.reflection.v1.ServerReflection"} <= names
        assert "grpc.reflection.v1alpha.ServerReflection" in names

        own = await _ask(
            channel,
            V1,
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        )
        pool = _pool_of(list(own.file_descriptor_response.file_descriptor_proto))
        method = pool.FindServiceByName("grpc.reflection.v1.ServerReflection").methods_by_name["ServerReflectionInfo"]
        assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
        assert method.client_streaming and method.server_streaming

        # A client built only from that descriptor talks v1.
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        asked = request_type(file_containing_symbol="genmesh.v1.GatewayService")
        described = await _ask(channel, V1, asked, response_type)
        files = list(described.file_descriptor_response.file_descriptor_proto)
        service = _pool_of(files).FindServiceByName("genmesh.v1.GatewayService")
        assert "Generate" in service.methods_by_name


async def test_v1alpha_still_answers(channels: dict[str, grpc.aio.Channel]) -> None:
    for name, channel in channels.items():
        listed = await _ask(channel, V1ALPHA, reflection_pb2.ServerReflectionRequest(list_services=""))
        assert "grpc.reflection.v1.ServerReflection" in {s.name for s in listed.list_services_response.service}, name


@contextlib.asynccontextmanager
async def _tools_service(tmp_path: Path, *flags: str) -> AsyncIterator[grpc.aio.Channel]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = ["serve", "tools", "--port", str(port), "--retrieval-target", "", *flags]
    service = await start_service(topology.TOOLS, args, address, tmp_path)
    try:
        await wait_ready(service, 60)
        async with open_channel(address) as channel:
            yield channel
    finally:
        service.process.terminate()
        await service.process.wait()


async def test_reflection_off(tmp_path: Path) -> None:
    async with _tools_service(tmp_path, "--reflection", "off") as channel:
        for path in (V1, V1ALPHA):
            # A stream that sends nothing: a request written after the server already answered UNIMPLEMENTED
            # would fail on the client's side (INTERNAL, "Failed execute_batch"), a race of the client library.
            call = channel.stream_stream(path)(timeout=10)
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.UNIMPLEMENTED, path
        listed = await tools_pb2_grpc.ToolsServiceStub(channel).ListTools(tools_pb2.ListToolsRequest(), timeout=10)
        assert listed.tools
