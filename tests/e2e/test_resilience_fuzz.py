"""Hypothesis sends generated requests to every RPC of every genmesh service, found from the protobuf
descriptors (so RPCs added later are covered too): random field values, huge strings, NaN, negative numbers,
unknown enum values. No call may end INTERNAL or UNKNOWN, no service may crash, all stay SERVING. The gateway
requires API keys (so that ApiKeyService is served) and every call presents one with every scope."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.malformed import multi_callable

import genmesh.v1
from gateway.auth.caller import Scope
from gateway.auth.keystore import open_key_store
from genmesh.bearer import bearer_metadata
from genmesh.channels import channel_options
from genmesh.cli.launcher import Mesh, start_mesh

EXAMPLES_PER_RPC = 30
CALL_TIMEOUT_S = 10.0
MAX_STREAM_MESSAGES = 20
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
FD = descriptor.FieldDescriptor


def _services() -> list[descriptor.ServiceDescriptor]:
    found: list[descriptor.ServiceDescriptor] = []
    for module in pkgutil.iter_modules(genmesh.v1.__path__):
        if module.name.endswith("_pb2"):
            found.extend(importlib.import_module(f"genmesh.v1.{module.name}").DESCRIPTOR.services_by_name.values())
    return sorted(found, key=lambda s: s.full_name)


METHODS = {f"{s.name}.{m.name}": m for s in _services() for m in s.methods}

_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "python-reference", "calculator", "clock", "sleep_ms", "0", "{}", '{"a": 1}', "\x00"]),
    st.just("why " * 30_000),
)
_INT32 = st.one_of(st.integers(-3, 300), st.integers(-(2**31), 2**31 - 1))
_INT64 = st.one_of(st.integers(-3, 300), st.integers(-(2**63), 2**63 - 1))
_UINT32 = st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1))
_UINT64 = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FD.TYPE_STRING: _TEXT,
    FD.TYPE_BYTES: st.binary(max_size=64),
    FD.TYPE_BOOL: st.booleans(),
    FD.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    FD.TYPE_FLOAT: st.floats(allow_nan=True, allow_infinity=True, width=32),
    FD.TYPE_ENUM: st.integers(-3, 40),  # mostly values the enum does not define
    **dict.fromkeys((FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32), _INT32),
    **dict.fromkeys((FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64), _INT64),
    **dict.fromkeys((FD.TYPE_UINT32, FD.TYPE_FIXED32), _UINT32),
    **dict.fromkeys((FD.TYPE_UINT64, FD.TYPE_FIXED64), _UINT64),
}


def _value(field: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return messages(field.message_type, depth + 1)
    return _SCALARS[field.type]


@st.composite
def _message(draw: st.DrawFn, desc: descriptor.Descriptor, depth: int) -> Message:
    message = message_factory.GetMessageClass(desc)()
    for field in desc.fields:
        if not draw(st.booleans()):
            continue
        target = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            for key, value in draw(
                st.dictionaries(_value(key_field, depth), _value(value_field, depth), max_size=3)
            ).items():
                if value_field.type == FD.TYPE_MESSAGE:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.is_repeated:
            target.extend(draw(st.lists(_value(field, depth), max_size=3)))
        elif field.type == FD.TYPE_MESSAGE:
            target.CopyFrom(draw(_value(field, depth)))
        else:
            setattr(message, field.name, draw(_value(field, depth)))
    return message


def messages(desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of type ``desc``, nested messages to a depth of 3."""
    if depth > 3:
        return st.just(message_factory.GetMessageClass(desc)())
    return _message(desc, depth)


def _call(channel: grpc.Channel, method: descriptor.MethodDescriptor, request: Any, key: str) -> grpc.StatusCode:
    """Make one call of any kind; read a few messages of a response stream, then cancel it."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    streaming_in, streaming_out = method.client_streaming, method.server_streaming
    callable_ = multi_callable(channel, method, path, lambda m: m.SerializeToString(), response_class.FromString)
    argument = iter(request) if streaming_in else request
    try:
        if streaming_out:
            responses = callable_(argument, timeout=CALL_TIMEOUT_S, metadata=bearer_metadata(key))
            try:
                for i, _ in enumerate(responses):
                    if i >= MAX_STREAM_MESSAGES:
                        break
            finally:
                responses.cancel()
        else:
            callable_(argument, timeout=CALL_TIMEOUT_S, metadata=bearer_metadata(key))
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        assert code not in FORBIDDEN, f"{path} -> {code.name}: {error.details()}"
        return code
    return grpc.StatusCode.OK


@pytest_asyncio.fixture(scope="module")
async def fuzz_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The fuzz gateway's key store, and the secret of a key with every scope and no limits."""
    path = tmp_path_factory.mktemp("fuzz-keys") / "keys.json"
    store = open_key_store(str(path))
    await store.open()
    try:
        _, secret = await store.create("fuzz", frozenset(Scope))
    finally:
        await store.close()
    return path, secret


@pytest_asyncio.fixture(scope="module")
async def fuzz_mesh(
    log_root: Path, tmp_path_factory: pytest.TempPathFactory, fuzz_keys: tuple[Path, str]
) -> AsyncIterator[Mesh]:
    """A mesh of its own, with its own (empty) retrieval store, job queue and key store: fuzzed Deletes, jobs and
    keys stay here."""
    data = tmp_path_factory.mktemp("fuzz-data")
    running = await start_mesh(
        log_dir=log_root / "fuzz",
        extra_args={
            "inference": ["--threads", "1"],
            "retrieval": ["--seed-demo", "false"],
            "gateway": ["--api-keys", str(fuzz_keys[0])],
        },
        env={"GENMESH_RETRIEVAL_DATA_DIR": str(data / "retrieval"), "GENMESH_GATEWAY_JOBS_DB": str(data / "jobs.db")},
    )
    yield running
    await running.stop(grace_s=2.0)


@pytest.fixture(scope="module")
def fuzz_channels(fuzz_mesh: Mesh) -> Iterator[dict[str, grpc.Channel]]:
    opened = {
        name: grpc.insecure_channel(fuzz_mesh.address(name), options=channel_options()) for name in fuzz_mesh.services
    }
    yield opened
    for channel in opened.values():
        channel.close()


@pytest.fixture(scope="module")
def hosts(fuzz_channels: dict[str, grpc.Channel], fuzz_keys: tuple[Path, str]) -> dict[str, str]:
    """Which process serves each service: the one that does not answer an empty request with UNIMPLEMENTED."""
    found: dict[str, str] = {}
    for method in METHODS.values():
        service = method.containing_service.full_name
        for name, channel in fuzz_channels.items():
            if service not in found:
                empty = message_factory.GetMessageClass(method.input_type)()
                request = [empty] if method.client_streaming else empty
                if _call(channel, method, request, fuzz_keys[1]) != grpc.StatusCode.UNIMPLEMENTED:
                    found[service] = name
    return found


@pytest.mark.parametrize("rpc", sorted(METHODS))
def test_generated_requests(
    rpc: str,
    fuzz_mesh: Mesh,
    fuzz_channels: dict[str, grpc.Channel],
    hosts: dict[str, str],
    fuzz_keys: tuple[Path, str],
) -> None:
    method = METHODS[rpc]
    host = hosts.get(method.containing_service.full_name)
    assert host is not None, f"no process of the mesh serves {method.containing_service.full_name}"
    requests = messages(method.input_type)
    strategy = st.lists(requests, max_size=3) if method.client_streaming else requests

    @settings(
        max_examples=EXAMPLES_PER_RPC,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(request=strategy)
    def fuzz(request: Any) -> None:
        _call(fuzz_channels[host], method, request, fuzz_keys[1])
        assert fuzz_mesh.services[host].process.returncode is None, f"{host} died"

    fuzz()
    for name, channel in fuzz_channels.items():
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING, f"{name} is not SERVING after {rpc}"
