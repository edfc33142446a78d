"""Request bytes that do not parse (random bytes, a truncated message, invalid UTF-8 in a string field) get
INVALID_ARGUMENT [MALFORMED_REQUEST] naming the message type, on every RPC of every service of the mesh (found
through reflection, so new RPCs are covered), health and reflection included; never UNKNOWN/INTERNAL; every
service stays SERVING. A malformed message in the middle of an UpsertStream loses nothing already committed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.malformed import Rpc, call_raw, malformed_cases, malformed_codes, served_rpcs

from genmesh.channels import channel_options
from genmesh.cli.launcher import Mesh
from genmesh.errors import Reason
from genmesh.status import error_info, field_violations
from genmesh.v1 import retrieval_pb2, retrieval_pb2_grpc

RANDOM_EXAMPLES = 300


@pytest.fixture(scope="module")
def sync_channels(mesh: Mesh) -> Iterator[dict[str, grpc.Channel]]:
    opened = {name: grpc.insecure_channel(mesh.address(name), options=channel_options()) for name in mesh.services}
    yield opened
    for channel in opened.values():
        channel.close()


@pytest.fixture(scope="module")
def rpcs(sync_channels: dict[str, grpc.Channel]) -> list[tuple[str, Rpc]]:
    """(service process, RPC) for every RPC each process serves."""
    return [(name, rpc) for name, channel in sync_channels.items() for rpc in served_rpcs(channel)]


def _assert_malformed(error: grpc.RpcError | None, rpc: Rpc, case: str) -> None:
    assert error is not None, f"{rpc.path} accepted the {case} case"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{rpc.path} ({case}): {error.code()} {error.details()}"
    info = error_info(error)
    assert info is not None and info.reason == Reason.MALFORMED_REQUEST, f"{rpc.path} ({case}): {info}"
    type_name = rpc.method.input_type.full_name
    assert f"could not be parsed as {type_name}" in (error.details() or ""), error.details()
    assert [v.field for v in field_violations(error)] == ["request"]


def _assert_all_serving(sync_channels: dict[str, grpc.Channel]) -> None:
    for name, channel in sync_channels.items():
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING, name


def test_the_rpcs_are_found_from_the_servers(rpcs: list[tuple[str, Rpc]]) -> None:
    paths = {rpc.path for _, rpc in rpcs}
    for expected in (
        "/genmesh.v1.GatewayService/Generate",
        "/genmesh.v1.JobService/WatchJob",
        "/genmesh.v1.RetrievalService/UpsertStream",
        "/genmesh.v1.InferenceService/WatchLoad",
        "/genmesh.v1.ToolsService/InvokeMany",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ):
        assert expected in paths


def test_every_rpc_answers_malformed_bytes_with_invalid_argument(
    rpcs: list[tuple[str, Rpc]], sync_channels: dict[str, grpc.Channel]
) -> None:
    for name, rpc in rpcs:
        for case, data in malformed_cases(rpc).items():
            _assert_malformed(call_raw(sync_channels[name], rpc, [data]), rpc, case)
    _assert_all_serving(sync_channels)


def test_the_reusable_count_finds_no_unknown(sync_channels: dict[str, grpc.Channel]) -> None:
    counts = malformed_codes({"retrieval": sync_channels["retrieval"]})
    assert set(counts) == {"INVALID_ARGUMENT"} and counts["INVALID_ARGUMENT"] >= 10 * 5, counts


def test_random_bytes(rpcs: list[tuple[str, Rpc]], sync_channels: dict[str, grpc.Channel]) -> None:
    @settings(
        max_examples=RANDOM_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(target=st.sampled_from(rpcs), data=st.binary(min_size=1, max_size=200))
    def send(target: tuple[str, Rpc], data: bytes) -> None:
        name, rpc = target
        if rpc.parses(data):  # a valid request could do something (a Delete); only malformed ones are sent
            return
        _assert_malformed(call_raw(sync_channels[name], rpc, [data]), rpc, f"random {data!r}")

    send()
    _assert_all_serving(sync_channels)


def test_a_malformed_message_mid_stream_keeps_what_was_committed(sync_channels: dict[str, grpc.Channel]) -> None:
    channel = sync_channels["retrieval"]
    collection, ingest_id = f"malformed-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    committed = [retrieval_pb2.Document(id=f"d{i}", text=f"passage number {i} about sockets") for i in range(70)]
    pending = [retrieval_pb2.Document(id=f"p{i}", text=f"pending passage {i}") for i in range(3)]
    frames = [
        retrieval_pb2.UpsertStreamRequest(collection=collection, ingest_id=ingest_id, documents=committed),
        retrieval_pb2.UpsertStreamRequest(documents=pending),
    ]
    stream = next(rpc for rpc in served_rpcs(channel) if rpc.method.name == "UpsertStream")
    bad = malformed_cases(stream)["invalid UTF-8 in a string field"]
    error = call_raw(channel, stream, [f.SerializeToString() for f in frames] + [bad])
    _assert_malformed(error, stream, "mid-stream")

    stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
    progress = stub.GetIngestProgress(retrieval_pb2.GetIngestProgressRequest(ingest_id=ingest_id), timeout=10).progress
    assert (progress.documents, progress.last_document_id, progress.completed) == (70, "d69", False)
    stats = stub.GetStats(retrieval_pb2.GetStatsRequest(collection=collection), timeout=10)
    assert stats.collections[0].documents == 70  # the batch committed before the bad message stays

    resumed = stub.UpsertStream(
        iter(
            [
                retrieval_pb2.UpsertStreamRequest(
                    collection=collection, ingest_id=ingest_id, resume=True, documents=pending
                )
            ]
        ),
        timeout=60,
    )
    assert (resumed.progress.documents, resumed.progress.completed) == (73, True)


def test_a_malformed_message_mid_reflection_stream(sync_channels: dict[str, grpc.Channel]) -> None:
    channel = sync_channels["tools"]
    info = next(rpc for rpc in served_rpcs(channel) if rpc.path.startswith("/grpc.reflection.v1."))
    from grpc_reflection.v1alpha import reflection_pb2

    good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    bad = malformed_cases(info)["truncated varint"]
    _assert_malformed(call_raw(channel, info, [good, bad]), info, "mid-stream")
    _assert_all_serving(sync_channels)
