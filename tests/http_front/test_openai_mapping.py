"""The OpenAI adapter without a network: request bodies as GatewayRequests (unions, the extension object, 400s
naming the field) and logprobs in OpenAI's chat and completions shapes."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.http.errors import HttpError
from gateway.http.openai_chat import parse_request
from gateway.http.openai_stream import Chunk, Translator
from genmesh.v1 import common_pb2, gateway_pb2

CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
USER = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]


def test_unions_and_the_extension_map_to_the_gateway_request() -> None:
    body = {
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "assistant", "tool_calls": [CALL], "refusal": None},  # as the openai package sends it back
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            *USER,
        ],
        "stop": "###",
        "max_completion_tokens": 5,
        "max_tokens": 9,
        "logprobs": True,
        "top_logprobs": 2,
        "genmesh": {"retrieval": {"disabled": True}, "tool_calls": [{"name": "calc", "arguments": {"x": 1}}],
                    "require_all_stages": True},
    }  # fmt: skip
    parsed = parse_request(body, chat=True, served_model="m")
    request = parsed.request
    assert [m.role for m in request.messages] == [
        common_pb2.ROLE_SYSTEM, common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_TOOL, common_pb2.ROLE_USER,
    ]  # fmt: skip
    assert request.messages[1].tool_calls[0].call_id == "c1" and request.messages[2].tool_call_id == "c1"
    assert [p.text for p in request.messages[3].content] == ["a", "b"]
    assert list(request.sampling.stop) == ["###"] and request.sampling.max_tokens == 5
    assert request.sampling.logprobs == 2 and parsed.logprobs and parsed.model == "m"
    assert request.retrieval.disabled and request.require_all_stages
    assert (request.tool_calls[0].name, request.tool_calls[0].arguments_json) == ("calc", '{"x": 1}')
    completion = parse_request({"prompt": ["q"], "logprobs": 0}, chat=False, served_model="m")
    assert completion.request.question == "q" and completion.request.sampling.logprobs == 1


def test_sampling_controls_map_to_the_gateway_request() -> None:
    body = {
        "messages": USER, "n": 3, "presence_penalty": 0.5, "frequency_penalty": -1.25, "min_p": 0.1, "min_tokens": 4,
        "ignore_eos": True, "logit_bias": {"17": 100, "4": -2.5},
    }  # fmt: skip
    sampling = parse_request(body, chat=True, served_model="m").request.sampling
    assert (sampling.n, sampling.presence_penalty, sampling.frequency_penalty) == (3, 0.5, -1.25)
    assert sampling.min_p == pytest.approx(0.1) and (sampling.min_tokens, sampling.ignore_eos) == (4, True)
    assert dict(sampling.logit_bias) == {17: 100.0, 4: -2.5}
    plain = parse_request({"prompt": "q"}, chat=False, served_model="m").request.sampling
    assert not any(plain.HasField(name) for name in ("n", "presence_penalty", "min_p", "min_tokens"))
    assert not plain.ignore_eos and not plain.logit_bias


def test_samples_become_choices_with_their_index_and_summed_usage() -> None:
    parsed = parse_request({"messages": USER, "n": 2, "stream": True, "stream_options": {"include_usage": True}},
                           chat=True, served_model="m")  # fmt: skip
    translator = Translator(parsed)

    def delta(text: str, index: int) -> gateway_pb2.GatewayEvent:
        return gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(token_ids=[1], text=text), index=index)

    def done(index: int, tokens: int, reason: common_pb2.FinishReason.ValueType) -> gateway_pb2.GatewayEvent:
        usage = common_pb2.Usage(prompt_tokens=7, completion_tokens=tokens)
        return gateway_pb2.GatewayEvent(complete=common_pb2.Completion(finish_reason=reason, usage=usage), index=index)

    chunks = [
        o.data
        for e in (
            delta("a", 1),
            delta("b", 0),
            delta("c", 1),
            done(1, 2, common_pb2.FINISH_REASON_STOP),
            delta("d", 0),
            done(0, 5, common_pb2.FINISH_REASON_LENGTH),
        )
        for o in translator.outputs(e)
        if isinstance(o, Chunk)
    ]
    assert [c["choices"][0]["index"] for c in chunks[:-1]] == [1, 0, 1, 1, 0, 0]
    assert [c["choices"][0]["delta"].get("role") for c in chunks[:3]] == ["assistant", "assistant", None]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop" and chunks[5]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 7, "total_tokens": 14}  # once, summed
    whole = translator.whole()
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in whole["choices"]] == [
        (0, "bd", "length"), (1, "ac", "stop"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"messages": USER, "n": "3"}, "n", 400),
        ({"messages": USER, "frequency_penalty": "high"}, "frequency_penalty", 400),
        ({"messages": USER, "presence_penalty": True}, "presence_penalty", 400),
        ({"messages": USER, "min_p": [0.1]}, "min_p", 400),
        ({"messages": USER, "min_tokens": 1.5}, "min_tokens", 400),
        ({"messages": USER, "ignore_eos": "yes"}, "ignore_eos", 400),
        ({"messages": USER, "logit_bias": [1, 2]}, "logit_bias", 400),
        ({"messages": USER, "logit_bias": {"abc": 1}}, "logit_bias.abc", 400),
        ({"messages": USER, "logit_bias": {"-3": 1}}, "logit_bias.-3", 400),
        ({"messages": USER, "logit_bias": {"99999999999": 1}}, "logit_bias.99999999999", 400),
        ({"messages": USER, "logit_bias": {"5": "x"}}, "logit_bias.5", 400),
        ({"messages": USER, "logit_bias": {"5": None}}, "logit_bias.5", 400),
        ({"messages": USER, "response_format": {"type": "yaml"}}, "response_format.type", 400),
        ({"messages": USER, "stop": [1]}, "stop", 400),
        ({"messages": USER, "temperature": "hot"}, "temperature", 400),
        ({"messages": USER, "top_logprobs": 2}, "top_logprobs", 400),
        ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options", 400),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", 400),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]", 400),
        ({"messages": USER, "genmesh": {"retrieval": {"k": 1}}}, "genmesh.retrieval.k", 400),
        ({"messages": USER, "model": "gpt-4o"}, "model", 404),
        ({}, "messages", 400),
        ({"messages": USER, "max_tokens": 10**12}, "max_tokens", 400),
        ({"messages": USER, "max_completion_tokens": -(2**31) - 1}, "max_completion_tokens", 400),
        ({"messages": USER, "seed": 2**64}, "seed", 400),
        ({"messages": USER, "seed": -1}, "seed", 400),
        ({"messages": USER, "logprobs": True, "top_logprobs": 10**12}, "top_logprobs", 400),
        ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs", 400),
        ({"messages": USER, "genmesh": {"retrieval": {"timeout_ms": 10**12}}}, "genmesh.retrieval.timeout_ms", 400),
        ({"messages": USER, "genmesh": {"retrieval": {"top_k": -1}}}, "genmesh.retrieval.top_k", 400),
        ({"messages": [{"role": ["x"], "content": "x"}]}, "messages[0].role", 400),
        ({"messages": [{"role": "user", "content": "x", "contents": "y"}]}, "messages[0].contents", 400),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}]},
            "messages[0].tool_calls[0]",
            400,
        ),
        ({"messages": USER, "temperature": 10**400}, "temperature", 400),
        ({"messages": USER, "top_p": 1e300}, "top_p", 400),
        ({"messages": USER, "genmesh": {"tool_calls": [{"name": "f", "args": {}}]}}, "genmesh.tool_calls[0].args", 400),
    ],
)
def test_bad_bodies_name_the_field(body: dict[str, Any], param: str, status: int) -> None:
    with pytest.raises(HttpError) as refused:
        parse_request(body, chat=True, served_model="m")
    assert (refused.value.param, refused.value.status) == (param, status)
    assert refused.value.body()["error"]["param"] == param


def _delta_with_logprobs() -> gateway_pb2.GatewayEvent:
    top = [
        common_pb2.TopLogprob(token_id=7, text="Hi", logprob=-0.1),
        common_pb2.TopLogprob(token_id=8, text="Yo", logprob=-2.5),
    ]
    logprob = common_pb2.TokenLogprob(token_id=7, logprob=-0.1, top=top)
    return gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(token_ids=[7], text="Hi", logprobs=[logprob]))


def test_logprobs_in_chat_and_completions_shapes() -> None:
    chat = Translator(
        parse_request({"messages": USER, "logprobs": True, "top_logprobs": 2}, chat=True, served_model="m")
    )
    (chunk,) = chat.outputs(_delta_with_logprobs())
    assert isinstance(chunk, Chunk)
    (entry,) = chunk.data["choices"][0]["logprobs"]["content"]
    assert (entry["token"], entry["logprob"], entry["bytes"]) == ("Hi", pytest.approx(-0.1), [72, 105])
    assert [t["token"] for t in entry["top_logprobs"]] == ["Hi", "Yo"]
    for top, expected in ((None, []), (0, []), (1, ["Hi"])):
        body = {"messages": USER, "logprobs": True, "top_logprobs": top}
        (fewer,) = Translator(parse_request(body, chat=True, served_model="m")).outputs(_delta_with_logprobs())
        assert isinstance(fewer, Chunk)
        (only,) = fewer.data["choices"][0]["logprobs"]["content"]
        assert [t["token"] for t in only["top_logprobs"]] == expected and only["token"] == "Hi"
    one = Translator(parse_request({"prompt": "q", "logprobs": 1}, chat=False, served_model="m"))
    one.outputs(_delta_with_logprobs())
    assert one.whole()["choices"][0]["logprobs"]["top_logprobs"] == [{"Hi": pytest.approx(-0.1)}]
    plain = Translator(parse_request({"prompt": "q", "logprobs": 2}, chat=False, served_model="m"))
    plain.outputs(_delta_with_logprobs())
    logprobs = plain.whole()["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["Hi"] and logprobs["text_offset"] == [0]
    assert set(logprobs["top_logprobs"][0]) == {"Hi", "Yo"}


def test_the_first_token_starts_the_answer_even_without_text_and_later_empty_ones_make_no_chunk() -> None:
    """An answer whose first tokens have no text (an ignored EOS, a withheld call) still shows it started at once."""
    for chat, first in ((True, {"role": "assistant", "content": ""}), (False, "")):
        body: dict[str, Any] = {"messages": USER} if chat else {"prompt": "q"}
        translator = Translator(parse_request({**body, "stream": True}, chat=chat, served_model="m"))
        empty = gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(token_ids=[2], text=""))
        text = gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(token_ids=[7], text="Hi"))
        outputs = [o for event in (empty, empty, text) for o in translator.outputs(event)]
        choices = [o.data["choices"][0] for o in outputs if isinstance(o, Chunk)]
        assert [c["delta"] if chat else c["text"] for c in choices] == [first, {"content": "Hi"} if chat else "Hi"]
