"""gRPC statuses as HTTP statuses through the HTTP front before a gateway that requires API keys: no key 401, a
key over its rate limit 429 with Retry-After, a good key (sent as ``Authorization: Bearer``) answers; and the table
of every mapped code."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import openai
import pytest
from served import served_gateway

from gateway.auth.caller import Limits, Scope
from gateway.auth.file_keys import FileKeyStore
from gateway.http.errors import http_error, openai_name
from gateway.http.openai_chat import parse_request
from genmesh import errors
from genmesh.errors import ResourceExhausted
from genmesh.status import to_rpc_status
from http_front.front import MODEL, served_front

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "What does yield do?"}]}
USER = CHAT["messages"]


async def test_keys_pass_through_and_refusals_have_their_http_status(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "api-keys.json")
    _, once = await store.create("once", [Scope.GENERATE], Limits(requests_per_minute=1))
    async with served_gateway(tmp_path, api_keys=store, metrics=False) as served, served_front(served.channel) as f:
        async with openai.AsyncOpenAI(base_url=f.url + "/v1", api_key=once, max_retries=0) as client:
            answer = await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        async with httpx.AsyncClient() as http:
            anonymous = await http.post(f.url + "/v1/chat/completions", json=CHAT)
            wrong = await http.post(
                f.url + "/v1/completions", json={"prompt": "x"}, headers={"authorization": "Bearer gm_no"}
            )
    assert answer.choices[0].message.content == "Generators yield values."
    assert limited.value.status_code == 429 and limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
    assert anonymous.json()["error"]["code"] == "api_key_missing"
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "api_key_invalid"


def failed(code: grpc.StatusCode, details: str = "", error: errors.GenmeshError | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if error is not None:
        status = to_rpc_status(error)
        code, details = status.code, status.details
        trailing = grpc.aio.Metadata(*status.trailing_metadata)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_each_code_has_its_http_status(code: grpc.StatusCode, status: int) -> None:
    assert http_error(failed(code, "why")).status == status


def test_resource_exhausted_is_429_with_retry_after_rounded_up_or_one_without_retry_info() -> None:
    error = http_error(failed(grpc.StatusCode.RESOURCE_EXHAUSTED, error=ResourceExhausted("full", 2.2)))
    assert (error.status, error.headers["Retry-After"], error.code) == (429, "3", "rate_limit_exceeded")
    bare = http_error(failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "full"))
    assert (bare.status, bare.headers["Retry-After"]) == (429, "1")


def test_gateway_fields_are_named_as_the_openai_request_names_them() -> None:
    assert openai_name("sampling.max_tokens") == "max_tokens"
    assert openai_name("retrieval.top_k") == "genmesh.retrieval.top_k"
    assert openai_name("tool_calls[1].name") == "genmesh.tool_calls[1].name"
    assert openai_name("question", {"question": "prompt"}) == "prompt" and openai_name("question") == "messages"
    assert openai_name("messages[0].role") == "messages[0].role"


@pytest.mark.parametrize(
    ("body", "chat", "param"),
    [
        ({"prompt": "q", "logprobs": 2}, False, "logprobs"),
        ({"messages": USER, "logprobs": True, "top_logprobs": 2}, True, "top_logprobs"),
        ({"messages": USER, "logprobs": True}, True, "logprobs"),
        ({"messages": USER, "max_completion_tokens": 5}, True, "max_completion_tokens"),
        ({"messages": USER, "max_tokens": 5}, True, "max_tokens"),
        ({"prompt": "q", "max_tokens": 5}, False, "max_tokens"),
    ],
)
def test_a_gateway_field_is_named_as_the_request_named_it(body: dict[str, object], chat: bool, param: str) -> None:
    parsed = parse_request(body, chat=chat, served_model="m")
    path = "sampling.logprobs" if "logprobs" in param else "sampling.max_tokens"
    bad = errors.InvalidArgument.field(path, "out of range")
    assert http_error(failed(grpc.StatusCode.INVALID_ARGUMENT, error=bad), parsed.names).param == param
    question = errors.InvalidArgument.field("question", "too long")
    expected = "messages" if chat else "prompt"
    assert http_error(failed(grpc.StatusCode.INVALID_ARGUMENT, error=question), parsed.names).param == expected
