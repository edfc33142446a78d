"""The typed events of a generation (GatewayEvent of protos/genmesh/v1/gateway.proto) and the whole answer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from genmesh.errors import GenmeshError
from genmesh.status import error_from_status
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
    """One tool call's outcome: ``result_json`` (``result`` parsed) or ``error`` (the call failed, not the stream)."""

    call_id: str
    name: str
    result_json: str
    error: GenmeshError | None
    duration_ms: float

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
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class StageSpan:
    """When one stage (``retrieval``, ``tool:<call_id>``, ``inference``) ran, in ms from the request's start."""

    stage: str
    start_ms: float
    end_ms: float


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
    ``stop_sequence``, ``cancelled``), usage, timings and every degraded stage."""

    finish_reason: str
    usage: Usage
    timings: Timings
    degraded: list[Degraded]


Event = Sources | ToolResult | Delta | Degraded | Complete


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole generation: the text and everything that came with it."""

    text: str
    sources: list[Passage]
    tool_results: list[ToolResult]
    degraded: list[Degraded]
    finish_reason: str
    usage: Usage
    timings: Timings


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
    return ToolResult(proto.call_id, proto.name, proto.result_json, error, proto.duration_ms)


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
    stages = [StageSpan(s.stage, s.start_ms, s.end_ms) for s in t.stages]
    timings = Timings(
        t.retrieval_ms, t.tools_ms, t.pre_inference_ms, t.queue_ms, t.time_to_first_token_ms, t.total_ms, stages
    )
    usage = Usage(proto.usage.prompt_tokens, proto.usage.completion_tokens)
    return Complete(reason, usage, timings, [degraded(d) for d in proto.degraded])


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
    return None


def answer_of(events: list[Event]) -> Answer:
    """The Answer of a stream's events (which end with Complete)."""
    done = next((e for e in events if isinstance(e, Complete)), None)
    if done is None:
        raise ValueError("the stream ended without a Complete event")
    sources = [p for e in events if isinstance(e, Sources) for p in e.passages]
    return Answer(
        text="".join(e.text for e in events if isinstance(e, Delta)),
        sources=sources,
        tool_results=[e for e in events if isinstance(e, ToolResult)],
        degraded=done.degraded or [e for e in events if isinstance(e, Degraded)],
        finish_reason=done.finish_reason,
        usage=done.usage,
        timings=done.timings,
    )
