"""The typed events of a generation (GatewayEvent of protos/genmesh/v1/gateway.proto) and the whole answer."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from genmesh.client.requests import MessageDict
from genmesh.errors import GenmeshError
from genmesh.status import error_from_status
from genmesh.tool_messages import StepTurns, openai_message, tool_result_content
from genmesh.v1 import common_pb2, gateway_pb2


@dataclass(frozen=True, slots=True)
class Passage:
    """A passage retrieval found: its ids, text, score and 1-based rank; ``start``/``end``: where its text lies in
    the document's, in code points (``document_text[start:end]``)."""

    chunk_id: str
    document_id: str
    title: str
    text: str
    score: float
    rank: int
    metadata: dict[str, str] = field(default_factory=dict)
    start: int = 0
    end: int = 0


@dataclass(frozen=True, slots=True)
class Sources:
    """The passages put in the prompt; sent before the first token."""

    passages: list[Passage]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """One tool call's outcome: ``result_json`` (``result`` parsed) or ``error`` (the call failed, not the stream);
    ``content``: what the model reads of it (``result_json``, or ``{"error": {"code", "message"}}``)."""

    call_id: str
    name: str
    result_json: str
    error: GenmeshError | None
    duration_ms: float
    content: str = ""

    @property
    def result(self) -> Any:
        """The result parsed from JSON; None for a failed call."""
        return json.loads(self.result_json) if self.error is None else None


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One alternative to a generated token, with its log-probability."""

    token_id: int
    text: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log-probability and, when asked for (``Sampling(logprobs=n)``), its top alternatives."""

    token_id: int
    logprob: float
    top: list[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Delta:
    """The next piece of the answer's text, with its token ids (and their log-probabilities when asked for)."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Degraded:
    """A stage (``retrieval``, ``tools``) that failed or ran late; the answer proceeds without it."""

    stage: str
    error: GenmeshError


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts; ``cached_tokens``: prompt tokens served from inference's prefix cache."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model made in ``step`` of the agent loop (``tools=``): ``executor`` ``gateway`` (a server
    tool: its ToolResult follows) or ``client`` (a function: the stream ends with finish reason ``tool_calls``, and
    the caller runs it and sends its result back as a ``tool`` message)."""

    step: int
    call_id: str
    name: str
    arguments_json: str
    executor: str

    @property
    def arguments(self) -> Any:
        """The arguments parsed from JSON (ValueError when the model wrote JSON that does not parse)."""
        return json.loads(self.arguments_json or "{}")


@dataclass(frozen=True, slots=True)
class StepEnd:
    """The end of one step's generation, before its tool calls run: ``finish_reason`` ``tool_calls`` when it made
    calls; ``usage``: the step's own tokens (Complete.usage sums every step's)."""

    step: int
    finish_reason: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class StageSpan:
    """When one stage (``retrieval``, ``tool:<call_id>``, ``inference``) ran, in ms from the request's start;
    ``step``: the agent loop's step it belongs to (0 before the loop and without tools), ``call_id``: the call a
    ``tool:`` span ran."""

    stage: str
    start_ms: float
    end_ms: float
    step: int = 0
    call_id: str = ""


@dataclass(frozen=True, slots=True)
class Timings:
    """Per-stage durations in milliseconds, as the gateway measured them; ``stages``: when each stage ran."""

    retrieval_ms: float
    tools_ms: float
    pre_inference_ms: float
    queue_ms: float
    time_to_first_token_ms: float
    total_ms: float
    stages: list[StageSpan] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Complete:
    """The last event of a stream that did not fail: why generation stopped (``stop``, ``length``,
    ``stop_sequence``, ``cancelled``, ``tool_calls``: the model called client functions), usage (summed over the
    agent loop's steps), timings and every degraded stage."""

    finish_reason: str
    usage: Usage
    timings: Timings
    degraded: list[Degraded]


Event = Sources | ToolResult | Delta | Degraded | Complete | ToolCall | StepEnd


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole generation: the text and everything that came with it; with tools, every call the model made
    (``tool_calls``; those with executor ``client`` are the caller's to run when ``finish_reason`` is
    ``tool_calls``), each step's end, and ``output_messages``: the steps as OpenAI-style messages
    (JobResult.output_messages': per step the assistant turn with its text and every call, then a ``tool``
    message per call the gateway ran, with its result)."""

    text: str
    sources: list[Passage]
    tool_results: list[ToolResult]
    degraded: list[Degraded]
    finish_reason: str
    usage: Usage
    timings: Timings
    tool_calls: list[ToolCall] = field(default_factory=list)
    steps: list[StepEnd] = field(default_factory=list)
    last_step_text: str = ""
    """The text of the last step alone (``text`` holds every step's)."""
    output_messages: list[MessageDict] = field(default_factory=list)

    @property
    def client_calls(self) -> list[ToolCall]:
        """The calls of client functions (executor ``client``) the caller runs."""
        return [call for call in self.tool_calls if call.executor == "client"]

    def continuation_messages(self) -> list[MessageDict]:
        """The messages to extend the request's ``messages`` with to continue the conversation (a copy of
        ``output_messages``; empty without tools): then add one ``{"role": "tool", "tool_call_id", "content"}``
        per client call."""
        return copy.deepcopy(self.output_messages)


def passage(proto: common_pb2.Passage) -> Passage:
    return Passage(
        proto.chunk_id,
        proto.document_id,
        proto.title,
        proto.text,
        proto.score,
        proto.rank,
        dict(proto.metadata),
        proto.start,
        proto.end,
    )


def delta(proto: common_pb2.TokenDelta) -> Delta:
    logprobs = [
        TokenLogprob(p.token_id, p.logprob, [TopLogprob(t.token_id, t.text, t.logprob) for t in p.top])
        for p in proto.logprobs
    ]
    return Delta(proto.text, list(proto.token_ids), logprobs)


def tool_result(proto: common_pb2.ToolResult) -> ToolResult:
    error = None
    if proto.HasField("error"):
        status = proto.error.status
        error = error_from_status(status, status.message or proto.error.message)
    content = tool_result_content(proto)
    return ToolResult(proto.call_id, proto.name, proto.result_json, error, proto.duration_ms, content)


def degraded(proto: common_pb2.Degraded) -> Degraded:
    return Degraded(proto.stage, error_from_status(proto.status, proto.status.message))


class _Enum(Protocol):
    def Name(self, number: Any) -> str: ...  # a protobuf enum's


def enum_name(enum: _Enum, value: int, prefix: str) -> str:
    """The lower-case name of ``value`` without ``prefix`` ("stop" for FINISH_REASON_STOP); ``unknown_<n>`` for a
    value this client does not know (a newer server's)."""
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return f"unknown_{value}"


def complete(proto: common_pb2.Completion) -> Complete:
    reason = enum_name(common_pb2.FinishReason, proto.finish_reason, "FINISH_REASON_")
    t = proto.timings
    stages = [StageSpan(s.stage, s.start_ms, s.end_ms, s.step, s.call_id) for s in t.stages]
    timings = Timings(
        t.retrieval_ms, t.tools_ms, t.pre_inference_ms, t.queue_ms, t.time_to_first_token_ms, t.total_ms, stages
    )
    return Complete(reason, usage(proto.usage), timings, [degraded(d) for d in proto.degraded])


def usage(proto: common_pb2.Usage) -> Usage:
    return Usage(proto.prompt_tokens, proto.completion_tokens, proto.cached_tokens)


def tool_call(proto: gateway_pb2.ToolCallEvent) -> ToolCall:
    executor = enum_name(gateway_pb2.ToolExecutor, proto.executor, "TOOL_EXECUTOR_")
    call = proto.call
    return ToolCall(proto.step, call.call_id, call.name, call.arguments_json, executor)


def step_end(proto: gateway_pb2.StepEnd) -> StepEnd:
    reason = enum_name(common_pb2.FinishReason, proto.finish_reason, "FINISH_REASON_")
    return StepEnd(proto.step, reason, usage(proto.usage))


def event_of(proto: gateway_pb2.GatewayEvent) -> Event | None:
    """The typed event of a GatewayEvent; None for a kind this client does not know (a newer server's)."""
    kind = proto.WhichOneof("event")
    if kind == "sources":
        return Sources([passage(p) for p in proto.sources.passages])
    if kind == "tool_result":
        return tool_result(proto.tool_result)
    if kind == "delta":
        return delta(proto.delta)
    if kind == "degraded":
        return degraded(proto.degraded)
    if kind == "complete":
        return complete(proto.complete)
    if kind == "tool_call":
        return tool_call(proto.tool_call)
    if kind == "step_end":
        return step_end(proto.step_end)
    return None


def answer_of(events: list[Event]) -> Answer:
    """The Answer of a stream's events (which end with Complete)."""
    done = next((e for e in events if isinstance(e, Complete)), None)
    if done is None:
        raise ValueError("the stream ended without a Complete event")
    sources = [p for e in events if isinstance(e, Sources) for p in e.passages]
    ends = [i for i, e in enumerate(events) if isinstance(e, StepEnd)]
    last_step = events[ends[-2] + 1 :] if len(ends) > 1 else events
    turns = StepTurns()
    for event in events:
        if isinstance(event, Delta):
            turns.text(event.text)
        elif isinstance(event, ToolCall):
            turns.call(event)
        elif isinstance(event, StepEnd):
            turns.end_step()
        elif isinstance(event, ToolResult):
            turns.result(event.call_id, event.content)
    return Answer(
        text="".join(e.text for e in events if isinstance(e, Delta)),
        sources=sources,
        tool_results=[e for e in events if isinstance(e, ToolResult)],
        degraded=done.degraded or [e for e in events if isinstance(e, Degraded)],
        finish_reason=done.finish_reason,
        usage=done.usage,
        timings=done.timings,
        tool_calls=[e for e in events if isinstance(e, ToolCall)],
        steps=[e for e in events if isinstance(e, StepEnd)],
        last_step_text="".join(e.text for e in last_step if isinstance(e, Delta)),
        output_messages=[cast(MessageDict, openai_message(m)) for m in turns.messages()],
    )
