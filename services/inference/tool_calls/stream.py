"""A generation's responses with its tool calls read out: each sample's text goes through its own parser, the
calls' text leaves the deltas (their token ids and logprobs stay), and each call is a GenerateResponse.tool_call
(call_id empty) of its sample.

Finish reason: a sample that made at least one call (an unreadable one included) ends with TOOL_CALLS when the
model ended it (STOP or a stop sequence); a cut (LENGTH, CANCELLED) keeps its reason, so a call cut off by
max_tokens comes as an unreadable tool_call followed by LENGTH.
"""

from __future__ import annotations

from genmesh.v1 import common_pb2, inference_pb2
from services.inference.tool_calls.base import Event, Parser
from services.inference.tool_calls.formats import ToolFormat

_ENDED_BY_MODEL = (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_STOP_SEQUENCE)


class ToolCallStream:
    """Rewrites one request's responses (all its samples) as they stream."""

    def __init__(self, fmt: ToolFormat) -> None:
        self._fmt = fmt
        self._parsers: dict[int, Parser] = {}
        self._called: set[int] = set()

    def _parser(self, index: int) -> Parser:
        parser = self._parsers.get(index)
        if parser is None:
            parser = self._parsers[index] = self._fmt.new_parser()
        return parser

    def delta(self, response: inference_pb2.GenerateResponse) -> list[inference_pb2.GenerateResponse]:
        """``response`` (a delta) as sent: its text up to the first call, then the calls and later text."""
        events = self._parser(response.index).feed(response.delta.text)
        head: list[str] = []
        while events and isinstance(events[0], str):
            head.append(events.pop(0))  # type: ignore[arg-type]
        response.delta.text = "".join(head)
        return [response, *self._responses(events, response.index)]

    def complete(self, response: inference_pb2.GenerateResponse) -> list[inference_pb2.GenerateResponse]:
        """The sample's held text and cut-off call, then ``response`` (its Completion), TOOL_CALLS when it called."""
        index = response.index
        out = self._responses(self._parser(index).finish(), index)
        if index in self._called and response.complete.finish_reason in _ENDED_BY_MODEL:
            response.complete.finish_reason = common_pb2.FINISH_REASON_TOOL_CALLS
        return [*out, response]

    def _responses(self, events: list[Event], index: int) -> list[inference_pb2.GenerateResponse]:
        out: list[inference_pb2.GenerateResponse] = []
        for event in events:
            if isinstance(event, str):
                out.append(inference_pb2.GenerateResponse(delta=common_pb2.TokenDelta(text=event), index=index))
                continue
            self._called.add(index)
            call = common_pb2.ToolCall(name=event.name, arguments_json=event.arguments_json)
            out.append(inference_pb2.GenerateResponse(tool_call=call, index=index))
        return out
