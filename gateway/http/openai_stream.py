"""GatewayEvents as OpenAI objects: ``chat.completion.chunk`` / ``text_completion`` chunks (then a usage chunk with
``stream_options.include_usage``), the whole ``chat.completion`` / ``text_completion`` of a non-streamed request,
and genmesh's extra events (``genmesh.sources``, ``genmesh.tool_result``, ``genmesh.degraded``,
``genmesh.timings``) that SSE sends as named events and the WebSocket as typed messages.

Finish reasons: STOP and STOP_SEQUENCE are ``stop``, LENGTH ``length``, CANCELLED ``stop`` (OpenAI has none)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.http.openai_chat import ParsedRequest
from genmesh.client.events import complete, degraded, passage, tool_result
from genmesh.errors import GenmeshError
from genmesh.v1 import common_pb2, gateway_pb2

FINISH_REASONS = {"stop": "stop", "stop_sequence": "stop", "length": "length", "cancelled": "stop"}


@dataclass(frozen=True, slots=True)
class Chunk:
    """One OpenAI chunk (the ``data:`` of an unnamed SSE event)."""

    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Extra:
    """One of genmesh's extra events: ``name`` (``genmesh.sources``) and its data."""

    name: str
    data: dict[str, Any]


Output = Chunk | Extra


def error_json(error: GenmeshError) -> dict[str, Any]:
    return {"type": type(error).__name__, "reason": error.reason, "message": error.message}


@dataclass(slots=True)
class _Choice:
    """What one sample (``index``) has said so far."""

    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    started: bool = False


@dataclass(slots=True)
class Translator:
    """Turns one request's GatewayEvents into Outputs, and adds them up for a non-streamed answer.

    With n > 1 samples each chunk's choice carries its sample's ``index``; the usage (prompt tokens once,
    completion tokens summed over the samples) and the timings come after the last sample's Completion.
    """

    parsed: ParsedRequest
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    choices: dict[int, _Choice] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=lambda: {"sources": [], "tool_results": [], "degraded": []})
    usage: dict[str, int] | None = None
    _completed: int = 0

    def __post_init__(self) -> None:
        self.id = self.id or ("chatcmpl-" if self.parsed.chat else "cmpl-") + uuid.uuid4().hex

    @property
    def finish_reason(self) -> str | None:
        """Sample 0's finish reason (None before its Completion)."""
        return self._choice(0).finish_reason

    def _choice(self, index: int) -> _Choice:
        choice = self.choices.get(index)
        if choice is None:
            choice = self.choices[index] = _Choice()
        return choice

    def outputs(self, event: gateway_pb2.GatewayEvent) -> list[Output]:
        """What ``event`` becomes on the stream (and is added to the whole answer)."""
        kind = event.WhichOneof("event")
        if kind == "sources":
            passages = [asdict(passage(p)) for p in event.sources.passages]
            self.extras["sources"].extend(passages)
            return [Extra("genmesh.sources", {"passages": passages})]
        if kind == "tool_result":
            result = _tool_result(event.tool_result)
            self.extras["tool_results"].append(result)
            return [Extra("genmesh.tool_result", result)]
        if kind == "degraded":
            stage = _degraded(event.degraded)
            self.extras["degraded"].append(stage)
            return [Extra("genmesh.degraded", stage)]
        if kind == "delta":
            return self._delta(event.delta, event.index)
        if kind == "complete":
            return self._complete(event.complete, event.index)
        return []

    def _delta(self, delta: common_pb2.TokenDelta, index: int) -> list[Output]:
        state = self._choice(index)
        state.text.append(delta.text)
        top = self.parsed.top_logprobs
        logprobs = [_logprob(lp, delta, top) for lp in delta.logprobs] if self.parsed.logprobs else []
        state.logprobs.extend(logprobs)
        if self.parsed.chat:
            content: dict[str, Any] = {"content": delta.text}
            if not state.started:
                content = {"role": "assistant", **content}
            state.started = True
            choice = {"index": index, "delta": content, "logprobs": {"content": logprobs} if logprobs else None}
        else:
            choice = {
                "index": index,
                "text": delta.text,
                "logprobs": _completion_logprobs(logprobs) if logprobs else None,
            }
        return [Chunk(self._chunk({**choice, "finish_reason": None}))]

    def _complete(self, proto: common_pb2.Completion, index: int) -> list[Output]:
        done = complete(proto)
        state = self._choice(index)
        state.finish_reason = FINISH_REASONS.get(done.finish_reason, "stop")
        state.completion_tokens = done.usage.completion_tokens
        self._completed += 1
        last: dict[str, Any] = {"index": index, "finish_reason": state.finish_reason, "logprobs": None}
        last.update(
            {"delta": {} if state.started else {"role": "assistant", "content": ""}}
            if self.parsed.chat
            else {"text": ""}
        )
        outputs: list[Output] = [Chunk(self._chunk(last))]
        if self._completed < max(1, self.parsed.request.sampling.n):
            return outputs
        completion_tokens = sum(c.completion_tokens for c in self.choices.values())
        self.usage = {
            "prompt_tokens": done.usage.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": done.usage.prompt_tokens + completion_tokens,
        }
        timings = {**asdict(done.timings), "stages": [_span(s) for s in proto.timings.stages]}
        self.extras["timings"] = timings
        if not self.extras["degraded"]:
            self.extras["degraded"] = [_degraded(d) for d in proto.degraded]
        outputs.insert(0, Extra("genmesh.timings", timings))
        if self.parsed.include_usage:
            outputs.append(Chunk({**self._chunk(None), "usage": self.usage}))
        return outputs

    def _chunk(self, choice: dict[str, Any] | None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.parsed.chat else "text_completion",
            "created": self.created,
            "model": self.parsed.model,
            "choices": [] if choice is None else [choice],
        }
        if self.parsed.include_usage:
            chunk["usage"] = None
        return chunk

    def whole(self) -> dict[str, Any]:
        """The non-streamed answer, one choice per sample, with genmesh's extras under ``genmesh`` (clients ignore
        the field)."""
        choices = []
        for index in sorted(self.choices) or [0]:
            state = self._choice(index)
            text = "".join(state.text)
            choice: dict[str, Any] = {"index": index, "finish_reason": state.finish_reason}
            if self.parsed.chat:
                choice["message"] = {"role": "assistant", "content": text}
                choice["logprobs"] = {"content": state.logprobs} if state.logprobs else None
            else:
                choice["text"] = text
                choice["logprobs"] = _completion_logprobs(state.logprobs) if state.logprobs else None
            choices.append(choice)
        return {
            "id": self.id,
            "object": "chat.completion" if self.parsed.chat else "text_completion",
            "created": self.created,
            "model": self.parsed.model,
            "choices": choices,
            "usage": self.usage,
            "genmesh": self.extras,
        }


def _tool_result(proto: common_pb2.ToolResult) -> dict[str, Any]:
    result = tool_result(proto)
    out: dict[str, Any] = {"call_id": result.call_id, "name": result.name, "duration_ms": result.duration_ms}
    if result.error is not None:
        out["error"] = error_json(result.error)
    else:
        try:
            out["result"] = result.result
        except ValueError:
            out["result_json"] = result.result_json
    return out


def _degraded(proto: common_pb2.Degraded) -> dict[str, Any]:
    stage = degraded(proto)
    return {"stage": stage.stage, "error": error_json(stage.error)}


def _span(span: common_pb2.StageSpan) -> dict[str, Any]:
    return {"stage": span.stage, "start_ms": span.start_ms, "end_ms": span.end_ms}


def _logprob(lp: common_pb2.TokenLogprob, delta: common_pb2.TokenDelta, requested: int) -> dict[str, Any]:
    """OpenAI's ``{token, logprob, bytes, top_logprobs}`` with the ``requested`` number of alternatives. The chosen
    token's text is its alternative's when it is among them, else the delta's text when the delta is that one
    token, else empty (the contract has no text for it yet)."""
    top = [{"token": t.text, "logprob": t.logprob, "bytes": list(t.text.encode())} for t in lp.top[:requested]]
    token = next((t.text for t in lp.top if t.token_id == lp.token_id), None)
    if token is None:
        token = delta.text if len(delta.token_ids) == 1 else ""
    return {"token": token, "logprob": lp.logprob, "bytes": list(token.encode()), "top_logprobs": top}


def _completion_logprobs(logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    offsets, at = [], 0
    for lp in logprobs:
        offsets.append(at)
        at += len(lp["token"])
    return {
        "tokens": [lp["token"] for lp in logprobs],
        "token_logprobs": [lp["logprob"] for lp in logprobs],
        "top_logprobs": [{t["token"]: t["logprob"] for t in lp["top_logprobs"]} for lp in logprobs],
        "text_offset": offsets,
    }


def sse(output: Output | None) -> bytes:
    """``output`` as one SSE event; None: ``data: [DONE]``."""
    if output is None:
        return b"data: [DONE]\n\n"
    data = json.dumps(output.data, separators=(",", ":"))
    if isinstance(output, Extra):
        return f"event: {output.name}\ndata: {data}\n\n".encode()
    return f"data: {data}\n\n".encode()


def sse_error(body: dict[str, Any]) -> bytes:
    """A failure after the stream started: an ``error`` event (then the caller sends [DONE])."""
    return f"event: error\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()
