"""plan_request: the defaults a gateway request gets, and every bad field it reports by its path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.request import MAX_QUESTION_CHARS, AnswerPlan, plan_request
from genmesh.errors import InvalidArgument
from genmesh.logs import REQUEST_ID
from genmesh.mesh import DEFAULT_COLLECTION
from genmesh.sampling import SamplingParams
from genmesh.v1 import common_pb2, gateway_pb2

Schemas = dict[str, dict[str, Any]]
SCHEMAS: Schemas = {
    "calculator": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
        "additionalProperties": False,
    },
    "clock": {"type": "object", "properties": {}},
}

Request = gateway_pb2.GatewayRequest
Options = gateway_pb2.RetrievalOptions
Call = common_pb2.ToolCall


def plan(
    request: Request, schemas: dict[str, dict[str, Any]] | None = SCHEMAS, prefixes: tuple[str, ...] = ()
) -> AnswerPlan:
    return plan_request(request, schemas, prefixes)


def bad_fields(request: Request, schemas: Schemas | None = SCHEMAS, prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """The violations plan_request reports, as {field path: description}."""
    with pytest.raises(InvalidArgument) as raised:
        plan_request(request, schemas, prefixes)
    return {v.field: v.description for v in raised.value.violations}


@pytest.fixture
def request_id_in_context() -> Iterator[str]:
    token = REQUEST_ID.set("ctx-req-7")
    try:
        yield "ctx-req-7"
    finally:
        REQUEST_ID.reset(token)


def test_defaults(request_id_in_context: str) -> None:
    got = plan(Request(question="  What is yield?  ", tool_calls=[Call(name="clock"), Call(name="clock")]))
    assert got.question == "What is yield?"
    assert got.request_id == request_id_in_context
    assert got.top_k == 3
    assert got.collection == DEFAULT_COLLECTION
    assert got.retrieval_enabled is True
    assert got.retrieval_budget_s is None
    assert got.require_all_stages is False
    assert got.sampling == SamplingParams()
    assert [(c.index, c.call_id, c.name, c.arguments_json, c.timeout_ms) for c in got.tool_calls] == [
        (0, "0", "clock", "{}", None),
        (1, "1", "clock", "{}", None),
    ]


def test_the_request_s_own_values_win(request_id_in_context: str) -> None:
    got = plan(
        Request(
            request_id="mine",
            question="q?",
            retrieval=Options(top_k=100, collection="docs", timeout_ms=250, disabled=True),
            tool_calls=[Call(call_id="sum", name="calculator", arguments_json='{"expression": "1+1"}', timeout_ms=5)],
            sampling=common_pb2.SamplingParams(max_tokens=7, temperature=0.0),
            require_all_stages=True,
        )
    )
    assert got.request_id == "mine"
    assert (got.top_k, got.collection, got.retrieval_enabled) == (100, "docs", False)
    assert got.retrieval_budget_s == pytest.approx(0.25)
    assert got.require_all_stages is True
    assert (got.sampling.max_tokens, got.sampling.greedy) == (7, True)
    assert got.sampling_proto.max_tokens == 7
    (call,) = got.tool_calls
    assert (call.call_id, call.arguments_json, call.timeout_ms) == ("sum", '{"expression": "1+1"}', 5)


def test_limits_are_inclusive() -> None:
    got = plan(Request(question="x" * MAX_QUESTION_CHARS, retrieval=Options(top_k=1, timeout_ms=600_000)))
    assert got.top_k == 1
    assert plan(Request(question="q", retrieval=Options(timeout_ms=1))).retrieval_budget_s == pytest.approx(0.001)
    assert len(plan(Request(question="q", tool_calls=[Call(name="clock")] * 16)).tool_calls) == 16


@pytest.mark.parametrize("question", ["", "   \n\t "])
def test_empty_question(question: str) -> None:
    assert bad_fields(Request(question=question)) == {"question": "must not be empty"}


def test_question_too_long() -> None:
    assert bad_fields(Request(question="x" * (MAX_QUESTION_CHARS + 1))) == {
        "question": "must be at most 4096 characters"
    }


@pytest.mark.parametrize("top_k", [0, -1, 101])
def test_top_k_out_of_range(top_k: int) -> None:
    assert list(bad_fields(Request(question="q", retrieval=Options(top_k=top_k)))) == ["retrieval.top_k"]


@pytest.mark.parametrize("timeout_ms", [0, 600_001])
def test_retrieval_timeout_out_of_range(timeout_ms: int) -> None:
    assert list(bad_fields(Request(question="q", retrieval=Options(timeout_ms=timeout_ms)))) == ["retrieval.timeout_ms"]


def test_too_many_tool_calls() -> None:
    assert list(bad_fields(Request(question="q", tool_calls=[Call(name="clock")] * 17))) == ["tool_calls"]


def test_duplicate_call_ids_including_defaulted_ones() -> None:
    explicit = [Call(call_id="a", name="clock"), Call(call_id="a", name="clock")]
    assert bad_fields(Request(question="q", tool_calls=explicit)) == {"tool_calls[1].call_id": "duplicate call id 'a'"}
    # call 1 without an id gets "1", which call 0 already took
    clash = [Call(call_id="1", name="clock"), Call(name="clock")]
    assert list(bad_fields(Request(question="q", tool_calls=clash))) == ["tool_calls[1].call_id"]


def test_call_ids_are_bounded() -> None:
    calls = [Call(call_id="c" * 64, name="clock"), Call(call_id="c" * 65, name="clock")]
    assert bad_fields(Request(question="q", tool_calls=calls)) == {
        "tool_calls[1].call_id": "must be at most 64 printable ASCII characters, got 65 characters"
    }


def test_empty_tool_name() -> None:
    calls = [Call(name="clock"), Call(name="")]
    assert bad_fields(Request(question="q", tool_calls=calls)) == {"tool_calls[1].name": "must not be empty"}


def test_unknown_tool_lists_the_known_ones() -> None:
    fields = bad_fields(Request(question="q", tool_calls=[Call(name="weather")]))
    assert list(fields) == ["tool_calls[0].name"]
    assert "'weather'" in fields["tool_calls[0].name"]
    assert "calculator, clock" in fields["tool_calls[0].name"]


def test_arguments_against_the_tool_schema() -> None:
    calls = [
        Call(name="calculator", arguments_json='{"expression": "1"}'),
        Call(name="calculator", arguments_json='{"expression": 3, "extra": true}'),
        Call(name="calculator"),
    ]
    fields = bad_fields(Request(question="q", tool_calls=calls))
    assert set(fields) == {
        "tool_calls[1].arguments_json.expression",
        "tool_calls[1].arguments_json.extra",
        "tool_calls[2].arguments_json.expression",
    }
    assert fields["tool_calls[2].arguments_json.expression"] == "is required"


@pytest.mark.parametrize(
    "arguments",
    ["[1, 2]", '"text"', "{not json", '{"a":' * 30_000, '{"x": NaN}', '{"x": "' + "y" * 70_000 + '"}'],
    ids=["array", "string", "malformed", "deep", "nan", "huge"],
)
def test_arguments_must_be_an_object_when_schemas_are_unknown(arguments: str) -> None:
    calls = [Call(name="anything", arguments_json=arguments)]
    (field,) = bad_fields(Request(question="q", tool_calls=calls), schemas=None)
    assert field == "tool_calls[0].arguments_json"


def test_names_are_not_checked_when_schemas_are_unknown() -> None:
    got = plan(Request(question="q", tool_calls=[Call(name="anything", arguments_json='{"a": 1}')]), schemas=None)
    assert [c.name for c in got.tool_calls] == ["anything"]


def test_unverifiable_prefixes_skip_the_name_check_only() -> None:
    prefixes = ("weather__",)
    got = plan(Request(question="q", tool_calls=[Call(name="weather__now")]), prefixes=prefixes)
    assert [c.name for c in got.tool_calls] == ["weather__now"]
    calls = [Call(name="weather__now", arguments_json="[]"), Call(name="news__today")]
    assert set(bad_fields(Request(question="q", tool_calls=calls), prefixes=prefixes)) == {
        "tool_calls[0].arguments_json",
        "tool_calls[1].name",
    }


def test_tool_timeout_zero() -> None:
    calls = [Call(name="clock", timeout_ms=0)]
    assert bad_fields(Request(question="q", tool_calls=calls)) == {"tool_calls[0].timeout_ms": "must be positive"}


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        (common_pb2.SamplingParams(max_tokens=0), "sampling.max_tokens"),
        (common_pb2.SamplingParams(temperature=2.5), "sampling.temperature"),
        (common_pb2.SamplingParams(top_p=0.0), "sampling.top_p"),
        (common_pb2.SamplingParams(stop=[""]), "sampling.stop[0]"),
        (common_pb2.SamplingParams(min_p=-0.5), "sampling.min_p"),
        (common_pb2.SamplingParams(presence_penalty=3.0), "sampling.presence_penalty"),
        (common_pb2.SamplingParams(frequency_penalty=-3.0), "sampling.frequency_penalty"),
        (common_pb2.SamplingParams(logit_bias={7: -100.5}), "sampling.logit_bias.7"),
        (common_pb2.SamplingParams(max_tokens=2, min_tokens=3), "sampling.min_tokens"),
        (common_pb2.SamplingParams(n=17), "sampling.n"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_bad_sampling_knobs(sampling: common_pb2.SamplingParams, field: str) -> None:
    assert list(bad_fields(Request(question="q", sampling=sampling))) == [field]


def test_every_violation_is_reported_together() -> None:
    request = Request(
        question=" ",
        retrieval=Options(top_k=0, timeout_ms=0),
        tool_calls=[Call(name="weather"), Call(call_id="0", name="calculator", arguments_json="{}", timeout_ms=0)],
        sampling=common_pb2.SamplingParams(max_tokens=5000, logprobs=21),
    )
    with pytest.raises(InvalidArgument) as raised:
        plan(request)
    assert [v.field for v in raised.value.violations] == [
        "question",
        "retrieval.top_k",
        "retrieval.timeout_ms",
        "tool_calls[0].name",
        "tool_calls[1].call_id",
        "tool_calls[1].arguments_json.expression",
        "tool_calls[1].timeout_ms",
        "sampling.max_tokens",
        "sampling.logprobs",
    ]
    assert "question: must not be empty" in raised.value.message


def test_retrieval_searches_a_long_last_message_s_tail_within_its_bound() -> None:
    long = "x" * MAX_QUESTION_CHARS + " what does yield do?"
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=[common_pb2.ContentPart(text=long)])
    planned = plan(Request(messages=[message]))
    assert planned.question == long[-MAX_QUESTION_CHARS:] and planned.question.endswith("yield do?")
