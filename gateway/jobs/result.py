"""Gathers a run's GatewayEvents into the job's result."""

from __future__ import annotations

from dataclasses import dataclass, field

from genmesh.tool_messages import assistant_turn, tool_result_content, tool_turn
from genmesh.v1 import common_pb2, gateway_pb2, jobs_pb2


@dataclass(slots=True)
class _Step:
    """One agent loop step as the result keeps it: its assistant turn and its calls' results."""

    message: common_pb2.ChatMessage
    results: dict[str, common_pb2.ToolResult] = field(default_factory=dict)


class ResultCollector:
    """Adds each event of a run to one JobResult: answer text, sources, tool results, completion; with tools, the
    output messages (per step the assistant turn, then a ROLE_TOOL message per result, in call order) and steps.

    With n > 1 samples the answer and completion are sample 0's, its usage counting every sample's tokens.
    """

    def __init__(self) -> None:
        self._result = jobs_pb2.JobResult()
        self._answer: list[str] = []
        self._other_tokens = 0
        """Completion tokens of the samples other than 0."""
        self._text: list[str] = []
        """The text of the step under way."""
        self._calls: list[common_pb2.ToolCall] = []
        self._steps: list[_Step] = []

    def add(self, event: gateway_pb2.GatewayEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "delta":
            if event.index == 0:
                self._answer.append(event.delta.text)
                self._text.append(event.delta.text)
        elif kind == "sources":
            self._result.sources.extend(event.sources.passages)
        elif kind == "tool_result":
            self._result.tool_results.append(event.tool_result)
            if self._steps:  # a loop step's call, not one of the request's own
                self._steps[-1].results[event.tool_result.call_id] = event.tool_result
        elif kind == "tool_call":
            self._calls.append(event.tool_call.call)
        elif kind == "step_end":
            self._result.steps.append(event.step_end)
            self._steps.append(_Step(assistant_turn("".join(self._text), self._calls)))
            self._text, self._calls = [], []
        elif kind == "complete" and event.index != 0:
            self._other_tokens += event.complete.usage.completion_tokens
        elif kind == "complete":
            self._result.completion.CopyFrom(event.complete)

    @property
    def completed(self) -> bool:
        """Whether the run's final event arrived."""
        return self._result.HasField("completion")

    def result(self) -> jobs_pb2.JobResult:
        """The result so far."""
        self._result.answer = "".join(self._answer)
        if self._result.HasField("completion"):
            usage = self._result.completion.usage
            usage.completion_tokens += self._other_tokens
            self._other_tokens = 0
        del self._result.output_messages[:]
        for step in self._steps:
            self._result.output_messages.append(step.message)
            for call in step.message.tool_calls:
                if call.call_id in step.results:
                    self._result.output_messages.append(
                        tool_turn(call.call_id, tool_result_content(step.results[call.call_id]))
                    )
        return self._result
