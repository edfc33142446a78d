"""A client's strings never enter a log whole: a rejected megabyte request_id adds a short line to the service's
log, not a megabyte; the formatters bound every message and field value, noting the original length."""

from __future__ import annotations

import logging

import grpc
import pytest
from support.streams import violated_fields

from genmesh.cli.launcher import Mesh
from genmesh.logs import JsonFormatter, LogfmtFormatter
from genmesh.v1 import retrieval_pb2, retrieval_pb2_grpc

MEGABYTE = 1_000_000
FEW_KB = 4096


async def test_a_megabyte_request_id_adds_a_short_line(
    mesh: Mesh, retrieval: retrieval_pb2_grpc.RetrievalServiceStub
) -> None:
    log_path = mesh.services["retrieval"].log_path
    assert log_path is not None
    before = log_path.stat().st_size
    request = retrieval_pb2.QueryRequest(request_id="R" * MEGABYTE, text="sockets")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await retrieval.Query(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["request_id"]
    added = log_path.read_bytes()[before:]  # the call's line is written before its status is sent
    assert b"status=INVALID_ARGUMENT" in added
    assert len(added) < FEW_KB, len(added)
    assert b"RRRRRRRRRRRRRRRR" not in added  # logged under a fresh id, not the rejected one


def test_the_formatters_bound_messages_and_fields() -> None:
    record = logging.LogRecord("genmesh.test", logging.INFO, __file__, 1, "m" * MEGABYTE, None, None)
    record.tool = "t" * MEGABYTE
    record.count = 7
    for formatter in (JsonFormatter(), LogfmtFormatter()):
        line = formatter.format(record)
        assert len(line) < 2 * FEW_KB, (type(formatter).__name__, len(line))
        assert line.count(f"({MEGABYTE} characters)") == 2
        assert "count=7" in line or '"count": 7' in line
