"""Gathers a run's GatewayEvents into the job's result."""

from __future__ import annotations

from genmesh.tool_messages import StepTurns, tool_result_content
from genmesh.v1 import gateway_pb2, jobs_pb2


class ResultCollector:
    """Adds each event of a run to one JobResult: answer text, sources, tool results, completion; with tools, the
    output messages (genmesh.tool_messages.StepTurns: per step the assistant turn, then a ROLE_TOOL message per
    result, in call order) and steps.

    With n > 1 samples the answer and completion are sample 0's, its usage counting every sample's tokens.
    """

    def __init__(self) -> None:
        self._result = jobs_pb2.JobResult()
        self._answer: list[str] = []
        self._other_tokens = 0
        """Completion tokens of the samples other than 0."""
        self._turns = StepTurns()

    def add(self, event: gateway_pb2.GatewayEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "delta":
            if event.index == 0:
                self._answer.append(event.delta.text)
                self._turns.text(event.delta.text)
        elif kind == "sources":
            self._result.sources.extend(event.sources.passages)
        elif kind == "tool_result":
            self._result.tool_results.append(event.tool_result)
            # kept for a loop step's call; a result of the request's own calls matches no step's call
            self._turns.result(event.tool_result.call_id, tool_result_content(event.tool_result))
        elif kind == "tool_call":
            self._turns.call(event.tool_call.call)
        elif kind == "step_end":
            self._result.steps.append(event.step_end)
            self._turns.end_step()
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
        self._result.output_messages.extend(self._turns.messages())
        return self._result
