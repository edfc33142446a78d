"""ToolCall.call_id is at most 64 printable ASCII characters, checked the same way at the gateway
(``tool_calls[i].call_id``) and at the tools service (``calls[i].call_id``); the index default always passes."""

from __future__ import annotations

import pytest

from gateway.request import plan_request
from genmesh.errors import InvalidArgument
from genmesh.limits import MAX_CALL_ID_CHARS, call_id_violation
from genmesh.v1 import common_pb2, gateway_pb2, tools_pb2
from services.tools.server import _plan_calls

BAD = ["c" * 10_000, "c" * (MAX_CALL_ID_CHARS + 1), "café", "tab\there", "nul\x00"]
GOOD = ["", "0", "c" * MAX_CALL_ID_CHARS, "call-1 (weather)", "~!@#$%^&*()"]


def test_the_rule() -> None:
    for call_id in GOOD:
        assert call_id_violation(call_id, "x") is None, call_id
    for call_id in BAD:
        violation = call_id_violation(call_id, "x")
        assert violation is not None and violation.field == "x", call_id[:80]
        assert f"got {len(call_id)} characters" in violation.description


@pytest.mark.parametrize("call_id", BAD)
def test_the_gateway_names_the_field(call_id: str) -> None:
    request = gateway_pb2.GatewayRequest(question="Why?")
    request.tool_calls.add(name="clock")
    request.tool_calls.add(call_id=call_id, name="clock")
    with pytest.raises(InvalidArgument) as caught:
        plan_request(request, None)
    assert [v.field for v in caught.value.violations] == ["tool_calls[1].call_id"]


@pytest.mark.parametrize("call_id", BAD)
def test_the_tools_service_names_the_field(call_id: str) -> None:
    request = tools_pb2.InvokeManyRequest(
        calls=[common_pb2.ToolCall(name="clock"), common_pb2.ToolCall(call_id=call_id, name="clock")]
    )
    with pytest.raises(InvalidArgument) as caught:
        _plan_calls(request)
    assert [v.field for v in caught.value.violations] == ["calls[1].call_id"]
