"""GatewayEvents as OpenAI objects: ``chat.completion.chunk`` / ``text_completion`` chunks (then a usage chunk with
``stream_options.include_usage``), the whole ``chat.completion`` / ``text_completion`` of a non-streamed request,
and genmesh's extra events (``genmesh.sources``, ``genmesh.tool_result``, ``genmesh.degraded``,
``genmesh.timings``, and with tools ``genmesh.tool_call`` and ``genmesh.step_end``) that SSE sends as named events
and the WebSocket as typed messages.

Tools: a call of a client function is a chunk's ``delta.tool_calls`` entry (``index`` counts the answer's calls from
0; the arguments whole in that one chunk) and the whole answer's ``message.tool_calls`` (``content`` null when the
model only called). The calls the gateway runs (server tools) are genmesh's extra events; ``content`` is every
step's text, a blank line between steps (a stream cannot take back the text of a step that turns out to call a
tool). When the gateway ran calls, the answer carries ``genmesh.output_messages`` (the whole answer's ``genmesh``
field; streamed, the ``genmesh`` field of the chunk with the finish reason): the messages that continue the
conversation, per step the assistant turn with its own text and every call, then a tool message per call the
gateway ran (genmesh.tool_messages); the client adds its functions' tool messages.

Finish reasons: STOP and STOP_SEQUENCE are ``stop``, LENGTH ``length``, CANCELLED ``stop`` (OpenAI has none),
TOOL_CALLS ``tool_calls``."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.http.openai_chat import ParsedRequest
from genmesh.client.events import complete, degraded, passage, step_end, tool_call, tool_result
from genmesh.errors import GenmeshError
from genmesh.tool_messages import StepTurns, openai_message, openai_tool_call, tool_result_content
from genmesh.v1 import common_pb2, gateway_pb2

STEP_SEPARATOR = "\n\n"
"""Between the texts of two steps in ``content``."""
FINISH_REASONS = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "cancelled": "stop",
    "tool_calls": "tool_calls",
}


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
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """The client function calls, as OpenAI's message.tool_calls entries."""


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
    extras: dict[str, Any] = field(
        default_factory=lambda: {"sources": [], "tool_results": [], "degraded": [], "tool_calls": [], "steps": []}
    )
    usage: dict[str, int] | None = None
    turns: StepTurns = field(default_factory=StepTurns)
    """The agent loop's steps so far (sample 0's; tools take one sample)."""
    _completed: int = 0
    _step_wrote: bool = False
    """Whether the step under way has written text."""
    _earlier_wrote: bool = False
    """Whether an earlier step has written text (the next text starts with STEP_SEPARATOR)."""

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
            self.turns.result(event.tool_result.call_id, tool_result_content(event.tool_result))
            result = _tool_result(event.tool_result)
            self.extras["tool_results"].append(result)
            return [Extra("genmesh.tool_result", result)]
        if kind == "degraded":
            stage = _degraded(event.degraded)
            self.extras["degraded"].append(stage)
            return [Extra("genmesh.degraded", stage)]
        if kind == "tool_call":
            return self._tool_call(event.tool_call, event.index)
        if kind == "step_end":
            end = step_end(event.step_end)
            step = {"step": end.step, "finish_reason": end.finish_reason, "usage": asdict(end.usage)}
            self.turns.end_step()
            self._earlier_wrote, self._step_wrote = self._earlier_wrote or self._step_wrote, False
            self.extras["steps"].append(step)
            return [Extra("genmesh.step_end", step)]
        if kind == "delta":
            return self._delta(event.delta, event.index)
        if kind == "complete":
            return self._complete(event.complete, event.index)
        return []

    def _delta(self, delta: common_pb2.TokenDelta, index: int) -> list[Output]:
        """A chunk of the delta's text; after the first chunk (which says the answer started, as OpenAI's role chunk
        does), none for a delta with no text and no logprobs (a call's withheld tokens, an ignored EOS)."""
        state = self._choice(index)
        top = self.parsed.top_logprobs
        logprobs = [_logprob(lp, delta, top) for lp in delta.logprobs] if self.parsed.logprobs else []
        if not delta.text and not logprobs and state.started:
            return []
        text = delta.text
        if text and index == 0:
            self.turns.text(text)
            if self._earlier_wrote and not self._step_wrote:
                text = STEP_SEPARATOR + text
            self._step_wrote = True
        state.text.append(text)
        state.logprobs.extend(logprobs)
        first, state.started = not state.started, True
        if self.parsed.chat:
            content: dict[str, Any] = {"content": text}
            if first:
                content = {"role": "assistant", **content}
            choice = {"index": index, "delta": content, "logprobs": {"content": logprobs} if logprobs else None}
        else:
            choice = {
                "index": index,
                "text": text,
                "logprobs": _completion_logprobs(logprobs) if logprobs else None,
            }
        return [Chunk(self._chunk({**choice, "finish_reason": None}))]

    def _tool_call(self, proto: gateway_pb2.ToolCallEvent, index: int) -> list[Output]:
        """Every call is a ``genmesh.tool_call`` event; a client function's is a ``delta.tool_calls`` chunk too."""
        call = tool_call(proto)
        self.turns.call(call)
        extra = asdict(call)
        self.extras["tool_calls"].append(extra)
        outputs: list[Output] = [Extra("genmesh.tool_call", extra)]
        if call.executor != "client" or not self.parsed.chat:
            return outputs
        state = self._choice(index)
        entry = openai_tool_call(call)
        delta: dict[str, Any] = {"tool_calls": [{"index": len(state.tool_calls), **entry}]}
        if not state.started:
            delta = {"role": "assistant", "content": None, **delta}
        state.started = True
        state.tool_calls.append(entry)
        outputs.append(Chunk(self._chunk({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})))
        return outputs

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
        chunk = self._chunk(last)
        if index == 0 and self.turns.answered:
            self.extras["output_messages"] = [openai_message(m) for m in self.turns.messages()]
            chunk["genmesh"] = {"output_messages": self.extras["output_messages"]}
        outputs: list[Output] = [Chunk(chunk)]
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
                if state.tool_calls:  # OpenAI's: no text with the calls is null
                    choice["message"].update(content=text or None, tool_calls=state.tool_calls)
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
    out: dict[str, Any] = {"stage": span.stage, "start_ms": span.start_ms, "end_ms": span.end_ms}
    if span.step:
        out["step"] = span.step
    if span.call_id:
        out["call_id"] = span.call_id
    return out


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
