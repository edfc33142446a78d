"""Server reflection under both names clients ask for: ``grpc.reflection.v1`` (current grpcurl, Postman, grpcui)
and ``grpc.reflection.v1alpha`` (older clients).

grpcio-reflection implements v1alpha only. v1 is the same protocol under another package name, so one servicer
answers both; the v1 file descriptor, which ``describe grpc.reflection.v1.ServerReflection`` must find, is
v1alpha's with the package renamed, added to the default descriptor pool once.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA_SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PREFIX = ".grpc.reflection.v1alpha."
_V1_PREFIX = ".grpc.reflection.v1."


def _renamed(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        if field.HasField("type_name"):  # setting it on a scalar field, even to "", would break the descriptor
            field.type_name = field.type_name.replace(_V1ALPHA_PREFIX, _V1_PREFIX)
    for nested in message.nested_type:
        _renamed(nested)


def v1_file_descriptor() -> descriptor.FileDescriptor:
    """The descriptor of grpc/reflection/v1/reflection.proto in the default pool (added on first use)."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(V1_FILE)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    for message in proto.message_type:
        _renamed(message)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(_V1ALPHA_PREFIX, _V1_PREFIX)
            method.output_type = method.output_type.replace(_V1ALPHA_PREFIX, _V1_PREFIX)
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindFileByName(V1_FILE)


class _V1RequestParser:
    """Parses a v1 request into v1alpha's message class (the same encoding), which the shared servicer reads."""

    message_name = "grpc.reflection.v1.ServerReflectionRequest"

    def __call__(self, data: bytes) -> reflection_pb2.ServerReflectionRequest:
        return reflection_pb2.ServerReflectionRequest.FromString(data)


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection of ``service_names`` (and of both reflection services) under v1 and v1alpha."""
    v1_file_descriptor()
    servicer = ReflectionServicer([*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=_V1RequestParser(),
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),)
    )
