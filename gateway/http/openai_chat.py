"""OpenAI request bodies (POST /v1/chat/completions and /v1/completions) as GatewayRequests.

Mapped: messages (string or text-part content; assistant tool_calls; tool messages), tools, tool_choice and
parallel_tool_calls (gateway/http/openai_tools.py), prompt (one string: the
question), max_tokens/max_completion_tokens, temperature, top_p, stop (string or list), seed, logprobs and
top_logprobs, presence_penalty, frequency_penalty, logit_bias (token id strings -> bias), n (1..16 choices),
vLLM's extra min_p, min_tokens and ignore_eos, stream, stream_options.include_usage, model (the served model or
absent), and the extension object ``genmesh: {retrieval: {top_k, collection, disabled, timeout_ms}, tool_calls:
[{name, arguments, id}], require_all_stages, max_steps, events}`` (``events``: send the named ``genmesh.*`` SSE events).
``user`` is accepted and not used. Anything else is a 400 naming the field, in OpenAI's error shape."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.http.errors import HttpError, bad_field
from gateway.http.openai_tools import TOOL_FIELDS, parse_tools
from gateway.http.response_format import NAMES as FORMAT_NAMES
from gateway.http.response_format import parse_response_format
from genmesh.client.errors import FieldError
from genmesh.client.requests import chat_message
from genmesh.v1 import common_pb2, gateway_pb2

_COMMON = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "stream",
        "stream_options",
        "user",
        "genmesh",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "min_p",
        "min_tokens",
        "ignore_eos",
        "response_format",
    }
)
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"} | TOOL_FIELDS
COMPLETION_FIELDS = _COMMON | {"prompt"}
_NEUTRAL = {"echo": False, "best_of": 1, "suffix": None}
"""Fields accepted only at their no-op value."""
_EXTENSION_FIELDS = frozenset({"retrieval", "tool_calls", "require_all_stages", "max_steps", "events"})
_RETRIEVAL_FIELDS = {"top_k": int, "collection": str, "disabled": bool, "timeout_ms": int}
INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
_RETRIEVAL_BOUNDS = {"top_k": (0, INT32[1]), "timeout_ms": UINT32}
_FORCED_CALL_FIELDS = frozenset({"name", "arguments", "id"})


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A request to answer: the GatewayRequest and how to answer it."""

    request: gateway_pb2.GatewayRequest
    chat: bool
    """/v1/chat/completions (else /v1/completions)."""
    stream: bool
    include_usage: bool
    logprobs: bool
    named_events: bool
    """Send genmesh's extra events (sources, tool results, degraded stages, timings) as named SSE events."""
    model: str
    top_logprobs: int = 0
    """The alternatives asked for per token (chat ``top_logprobs``, completions ``logprobs``)."""
    names: Mapping[str, str] = field(default_factory=dict)
    """GatewayRequest field paths -> this request's names for them (errors.openai_name)."""


def parse_request(body: Any, *, chat: bool, served_model: str, stream_default: bool = False) -> ParsedRequest:
    """The ParsedRequest of a JSON body; HttpError (400, or 404 model_not_found) naming the field otherwise."""
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object", param=None, code="invalid_json")
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for name, value in body.items():
        if name in allowed:
            continue
        if name in _NEUTRAL and value == _NEUTRAL[name]:
            continue
        raise bad_field(name, "not supported by genmesh", "unsupported_parameter")
    model = body.get("model")
    if model is not None and model != served_model:
        raise HttpError(
            404,
            f"The model {model!r} does not exist; this server serves {served_model!r}",
            param="model",
            code="model_not_found",
        )
    stream = _typed(body, "stream", bool)
    stream = stream_default if stream is None else stream
    options = _typed(body, "stream_options", dict) or {}
    include_usage = _typed(options, "include_usage", bool, "stream_options.") or False
    if options and not stream:
        raise bad_field("stream_options", "only allowed when stream is true")
    _typed(body, "user", str)
    request = gateway_pb2.GatewayRequest(sampling=_sampling(body, chat))
    response_format = parse_response_format(body.get("response_format"))
    if response_format is not None:
        request.response_format.CopyFrom(response_format)
    tool_names: dict[str, str] = {}
    if chat:
        request.messages.extend(_messages(body.get("messages")))
        tool_names = parse_tools(body, request)
    else:
        request.question = _prompt(body.get("prompt"))
    named_events = _extension(body.get("genmesh"), request)
    logprobs = bool(request.sampling.HasField("logprobs"))
    top = (_typed(body, "top_logprobs", int) if chat else _typed(body, "logprobs", int)) or 0
    names = _names(body, chat) | FORMAT_NAMES | tool_names
    return ParsedRequest(request, chat, stream, include_usage, logprobs, named_events, served_model, top, names)


def _names(body: Mapping[str, Any], chat: bool) -> dict[str, str]:
    """The request's own names of the fields whose OpenAI name depends on the route or on the body."""
    if not chat:
        return {"question": "prompt", "sampling.logprobs": "logprobs"}
    names = {"sampling.logprobs": "top_logprobs" if body.get("top_logprobs") is not None else "logprobs"}
    if body.get("max_completion_tokens") is not None:
        names["sampling.max_tokens"] = "max_completion_tokens"
    return names


def _typed(body: Mapping[str, Any], name: str, kind: type, prefix: str = "", bounds: tuple[int, int] = INT32) -> Any:
    """``body[name]`` checked to be a ``kind`` (null: absent), an integer within ``bounds`` (the proto field's
    range), a number finite and within float32's; 400 naming it otherwise."""
    value = body.get(name)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise bad_field(prefix + name, "is out of range") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_field(prefix + name, f"must be {_KIND_NAMES[kind]}", "invalid_type")
    if isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
        raise bad_field(prefix + name, f"must be {bounds[0]}..{bounds[1]}")
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
        raise bad_field(prefix + name, "must be a finite number")
    return value


_FLOAT32_MAX = 3.4028234663852886e38


_KIND_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    str: "a string",
    dict: "an object",
    list: "an array",
}


def _sampling(body: Mapping[str, Any], chat: bool) -> common_pb2.SamplingParams:
    params = common_pb2.SamplingParams()
    max_tokens = _typed(body, "max_completion_tokens", int) if chat else None
    max_tokens = _typed(body, "max_tokens", int) if max_tokens is None else max_tokens
    if max_tokens is not None:
        params.max_tokens = max_tokens
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p"):
        value = _typed(body, name, float)
        if value is not None:
            setattr(params, name, value)
    for name in ("n", "min_tokens"):
        value = _typed(body, name, int)
        if value is not None:
            setattr(params, name, value)
    params.ignore_eos = _typed(body, "ignore_eos", bool) or False
    params.logit_bias.update(_logit_bias(body))
    seed = _typed(body, "seed", int, bounds=UINT64)
    if seed is not None:
        params.seed = seed
    stop = body.get("stop")
    if isinstance(stop, str):
        params.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        params.stop.extend(stop)
    elif stop is not None:
        raise bad_field("stop", "must be a string or an array of strings", "invalid_type")
    _logprobs(body, chat, params)
    return params


def _logit_bias(body: Mapping[str, Any]) -> dict[int, float]:
    """``{"<token id>": bias}``: keys decimal token ids (uint32), values numbers; the ranges are the gateway's to
    check (``sampling.logit_bias.<id>``, named ``logit_bias.<id>`` here)."""
    value = _typed(body, "logit_bias", dict) or {}
    bias: dict[int, float] = {}
    for key in value:
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and int(key) <= UINT32[1]):
            raise bad_field(f"logit_bias.{key}", "keys must be token ids (decimal integers)", "invalid_type")
        number = _typed(value, key, float, "logit_bias.")
        if number is None:
            raise bad_field(f"logit_bias.{key}", "must be a number", "invalid_type")
        bias[int(key)] = number
    return bias


def _logprobs(body: Mapping[str, Any], chat: bool, params: common_pb2.SamplingParams) -> None:
    """Chat: ``logprobs: true`` with ``top_logprobs`` 0..20 alternatives; completions: ``logprobs`` 0..5. The
    contract has no "chosen token only" yet, so 0 alternatives asks inference for one; the answer carries only the
    requested count (ParsedRequest.top_logprobs)."""
    if chat:
        wanted = _typed(body, "logprobs", bool)
        top = _typed(body, "top_logprobs", int)
        if top is not None and not wanted:
            raise bad_field("top_logprobs", "requires logprobs: true")
        if top is not None and not 0 <= top <= 20:
            raise bad_field("top_logprobs", "must be 0..20")
        if wanted:
            params.logprobs = max(top or 0, 1)
        return
    if "top_logprobs" in body:
        raise bad_field("top_logprobs", "not supported by /v1/completions: use logprobs", "unsupported_parameter")
    count = _typed(body, "logprobs", int)
    if count is not None:
        if not 0 <= count <= 5:
            raise bad_field("logprobs", "must be 0..5")
        params.logprobs = max(count, 1)


def _messages(value: Any) -> list[common_pb2.ChatMessage]:
    if value is None:
        raise bad_field("messages", "is required", "missing_required_parameter")
    if not isinstance(value, list) or not value:
        raise bad_field("messages", "must be a non-empty array", "invalid_type")
    return [_message(m, f"messages[{i}]") for i, m in enumerate(value)]


def _message(value: Any, at: str) -> common_pb2.ChatMessage:
    """One message, by the client's own rules (genmesh.client.requests.chat_message); a null key is absent, as
    OpenAI's clients send an answer's message back (``"refusal": null``)."""
    if isinstance(value, dict):
        value = {key: item for key, item in value.items() if item is not None}
    try:
        return chat_message(value, at)
    except FieldError as error:
        raise bad_field(error.path, error.message) from None


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise bad_field("prompt", "must be one string", "invalid_type")
    return value


def _extension(value: Any, request: gateway_pb2.GatewayRequest) -> bool:
    """Fill ``request`` from the ``genmesh`` object; whether it asks for the named events."""
    if value is None:
        return False
    if not isinstance(value, dict):
        raise bad_field("genmesh", "must be an object", "invalid_type")
    for name in value:
        if name not in _EXTENSION_FIELDS:
            raise bad_field(f"genmesh.{name}", "unknown field; known: " + ", ".join(sorted(_EXTENSION_FIELDS)))
    retrieval = _typed(value, "retrieval", dict, "genmesh.") or {}
    for name, kind in _RETRIEVAL_FIELDS.items():
        field_value = _typed(retrieval, name, kind, "genmesh.retrieval.", _RETRIEVAL_BOUNDS.get(name, INT32))
        if field_value is not None:
            setattr(request.retrieval, name, field_value)
    unknown = sorted(set(retrieval) - set(_RETRIEVAL_FIELDS))
    if unknown:
        raise bad_field(f"genmesh.retrieval.{unknown[0]}", "unknown field")
    calls = _typed(value, "tool_calls", list, "genmesh.") or []
    request.tool_calls.extend(_forced_call(c, f"genmesh.tool_calls[{i}]") for i, c in enumerate(calls))
    request.require_all_stages = _typed(value, "require_all_stages", bool, "genmesh.") or False
    max_steps = _typed(value, "max_steps", int, "genmesh.")
    if max_steps is not None:
        request.max_steps = max_steps
    return bool(_typed(value, "events", bool, "genmesh."))


def _forced_call(value: Any, at: str) -> common_pb2.ToolCall:
    """``{name, arguments (object or JSON string), id}``: a tool the gateway runs before generation."""
    if not isinstance(value, dict):
        raise bad_field(at, "must be {name, arguments, id}", "invalid_type")
    unknown = sorted(set(value) - _FORCED_CALL_FIELDS)
    if unknown:
        raise bad_field(f"{at}.{unknown[0]}", "unknown field; known: arguments, id, name")
    arguments = value.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return common_pb2.ToolCall(
        call_id=_typed(value, "id", str, f"{at}.") or "",
        name=_typed(value, "name", str, f"{at}.") or "",
        arguments_json=arguments,
    )
