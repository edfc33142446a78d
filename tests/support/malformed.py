"""Malformed request bytes for every RPC a running server serves, and the status codes they get back.

The RPCs are found through the server's own reflection (its ``list_services``) and the protobuf descriptors, so a
new RPC or service is covered without a change here. Every case is checked locally not to parse as the RPC's
request message before it is sent, so no malformed request can do anything on the server (a Delete, a job).

``malformed_codes`` is what the security bench reuses for its ``malformed_requests_unknown`` count.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import genmesh.v1
from genmesh.reflection import v1_file_descriptor

CALL_TIMEOUT_S = 10.0
FD = descriptor.FieldDescriptor
INVALID_UTF8 = b"\xff\xfe\xc3("

#: Bytes no protobuf message parses, whatever its fields.
ANY_MESSAGE: dict[str, bytes] = {
    "truncated length-delimited field": b"\x0a\x05ab",  # field 1, 5 bytes announced, 2 sent
    "truncated varint": b"\x08\x80",
    "invalid wire type": b"\x0f",  # field 1, wire type 7
    "end of a group never started": b"\x0c",
    "truncated after a valid field": b"\x08\x01\x12",
}


@dataclass(frozen=True, slots=True)
class Rpc:
    """One RPC of a server: its path and descriptor."""

    path: str
    method: descriptor.MethodDescriptor

    def parses(self, data: bytes) -> bool:
        """Whether ``data`` is a valid request message of this RPC (parsed as the server would)."""
        try:
            message_factory.GetMessageClass(self.method.input_type).FromString(data)
        except Exception:
            return False
        return True


def _load_descriptors() -> None:
    """Put every message a genmesh server may serve into the default pool."""
    for module in pkgutil.iter_modules(genmesh.v1.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"genmesh.v1.{module.name}")
    assert health_pb2.DESCRIPTOR and reflection_pb2.DESCRIPTOR
    v1_file_descriptor()


def served_rpcs(channel: grpc.Channel, metadata: Sequence[tuple[str, str]] = ()) -> list[Rpc]:
    """Every RPC of every service the server behind ``channel`` lists through reflection."""
    _load_descriptors()
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT_S, metadata=metadata))
    pool = descriptor_pool.Default()
    rpcs: list[Rpc] = []
    for service in sorted(s.name for s in response.list_services_response.service):
        for method in pool.FindServiceByName(service).methods:
            rpcs.append(Rpc(f"/{service}/{method.name}", method))
    return rpcs


def _string_field_paths(desc: descriptor.Descriptor, depth: int = 0) -> Iterator[list[FD]]:
    """Paths to the string fields of ``desc``, through singular nested messages (to depth 2)."""
    for field in desc.fields:
        if field.type == FD.TYPE_STRING:
            yield [field]
        elif (nested := field.message_type) is not None and depth < 2 and not nested.GetOptions().map_entry:
            for path in _string_field_paths(nested, depth + 1):
                yield [field, *path]


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def invalid_utf8(desc: descriptor.Descriptor) -> bytes | None:
    """A message of type ``desc`` with invalid UTF-8 in its first string field (None when it has none)."""
    path = next(_string_field_paths(desc), None)
    if path is None:
        return None
    data = INVALID_UTF8
    for field in reversed(path):
        data = _length_delimited(field.number, data)
    return data


def malformed_cases(rpc: Rpc) -> dict[str, bytes]:
    """Named malformed requests for ``rpc``, each checked not to parse."""
    cases = dict(ANY_MESSAGE)
    utf8 = invalid_utf8(rpc.method.input_type)
    if utf8 is not None:
        cases["invalid UTF-8 in a string field"] = utf8
    for name, data in cases.items():
        assert not rpc.parses(data), f"{rpc.path}: the {name} case parses"
    return cases


def multi_callable(
    channel: grpc.Channel,
    method: descriptor.MethodDescriptor,
    path: str,
    serialize: Callable[[Any], bytes] | None,
    deserialize: Callable[[bytes], Any] | None,
) -> Any:
    """The channel's callable for ``method``, of its kind (unary or streaming, each way) at ``path``."""
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    return kind(path, request_serializer=serialize, response_deserializer=deserialize)


def call_raw(
    channel: grpc.Channel, rpc: Rpc, frames: Sequence[bytes], metadata: Sequence[tuple[str, str]] = ()
) -> grpc.RpcError | None:
    """Send ``frames`` as they are (the first alone for a unary request), read the whole answer; the error the
    call ended with, if any."""
    streaming_in, streaming_out = rpc.method.client_streaming, rpc.method.server_streaming
    callable_ = multi_callable(channel, rpc.method, rpc.path, None, None)  # bytes in, bytes out
    argument = iter(frames) if streaming_in else frames[0]
    try:
        if streaming_out:
            for _ in callable_(argument, timeout=CALL_TIMEOUT_S, metadata=metadata):
                pass
        else:
            callable_(argument, timeout=CALL_TIMEOUT_S, metadata=metadata)
    except grpc.RpcError as error:
        return error
    return None


def malformed_codes(
    channels: Mapping[str, grpc.Channel] | Iterable[grpc.Channel], metadata: Sequence[tuple[str, str]] = ()
) -> Counter[str]:
    """Send every malformed case to every RPC each channel's server serves; how many calls ended with each status
    code (by name: ``INVALID_ARGUMENT`` is right, ``UNKNOWN``/``INTERNAL`` are the defect)."""
    counts: Counter[str] = Counter()
    for channel in channels.values() if isinstance(channels, Mapping) else channels:
        for rpc in served_rpcs(channel, metadata):
            for data in malformed_cases(rpc).values():
                error = call_raw(channel, rpc, [data], metadata)
                counts["OK" if error is None else error.code().name] += 1
    return counts
