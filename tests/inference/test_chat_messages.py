"""GenerateRequest.messages on the inference service (served in-process by the real bootstrap, the shipped model):
rendered with the model's chat template, checked field by field, refused as INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from support.served import served

from genmesh.server import StartupFailed
from genmesh.status import field_violations
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference.engine import EngineConfig
from services.inference.server import DEFAULT_MODEL, InferenceService

QUESTION = "What does the with statement do?"
GREEDY = common_pb2.SamplingParams(max_tokens=8, temperature=0.0)


def text(role: common_pb2.Role.ValueType, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=[common_pb2.ContentPart(text=content)])


@pytest.fixture
async def stub() -> AsyncIterator[inference_pb2_grpc.InferenceServiceStub]:
    service = InferenceService(DEFAULT_MODEL, "cpu", EngineConfig(), threads=1)
    async with served(service, metrics=False) as where, grpc.aio.insecure_channel(where.address) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


async def generate(
    stub: inference_pb2_grpc.InferenceServiceStub, request: inference_pb2.GenerateRequest
) -> tuple[list[int], common_pb2.Completion]:
    ids: list[int] = []
    async for response in stub.Generate(request, timeout=60):
        if response.HasField("delta"):
            ids.extend(response.delta.token_ids)
        else:
            return ids, response.complete
    raise AssertionError("the stream ended without a completion")


async def refusal(stub: inference_pb2_grpc.InferenceServiceStub, request: inference_pb2.GenerateRequest) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(stub, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return [v.field for v in field_violations(caught.value)]


async def test_a_question_as_messages_is_the_prompt_the_model_was_always_given(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    as_messages = inference_pb2.GenerateRequest(messages=[text(common_pb2.ROLE_USER, QUESTION)], sampling=GREEDY)
    as_prompt = inference_pb2.GenerateRequest(prompt=f"Question: {QUESTION}\nAnswer:", sampling=GREEDY)
    ids, done = await generate(stub, as_messages)
    prompt_ids, prompt_done = await generate(stub, as_prompt)
    assert ids and ids == prompt_ids
    assert done.usage.prompt_tokens == prompt_done.usage.prompt_tokens  # one BOS, not two


async def test_earlier_turns_are_in_the_prompt(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    turns = [
        text(common_pb2.ROLE_SYSTEM, "Answer from the Python reference."),
        text(common_pb2.ROLE_USER, "Name a statement."),
        text(common_pb2.ROLE_ASSISTANT, "The with statement."),
        text(common_pb2.ROLE_USER, QUESTION),
    ]
    ids, done = await generate(stub, inference_pb2.GenerateRequest(messages=turns, sampling=GREEDY))
    _, alone = await generate(stub, inference_pb2.GenerateRequest(messages=turns[-1:], sampling=GREEDY))
    assert ids and done.usage.prompt_tokens > alone.usage.prompt_tokens


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (inference_pb2.GenerateRequest(), "prompt"),
        (inference_pb2.GenerateRequest(prompt="x", messages=[text(common_pb2.ROLE_USER, "x")]), "messages"),
        (inference_pb2.GenerateRequest(messages=[text(common_pb2.ROLE_UNSPECIFIED, "x")]), "messages[0].role"),
        (
            inference_pb2.GenerateRequest(messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER)]),
            "messages[0].content",
        ),
        (
            inference_pb2.GenerateRequest(
                messages=[
                    common_pb2.ChatMessage(
                        role=common_pb2.ROLE_USER, content=[common_pb2.ContentPart(image=common_pb2.Image(uri="x"))]
                    )
                ]
            ),
            "messages[0].content[0].image",
        ),
        (inference_pb2.GenerateRequest(messages=[text(common_pb2.ROLE_USER, "the " * 5000)]), "messages"),
    ],
    ids=["neither", "both", "no-role", "no-content", "image", "too-long-for-the-context"],
)
async def test_bad_messages_are_refused_naming_the_field(
    stub: inference_pb2_grpc.InferenceServiceStub, request_: inference_pb2.GenerateRequest, field: str
) -> None:
    assert field in await refusal(stub, request_)


def model_with_template(tmp_path: Path, template: str) -> Path:
    """A copy of the shipped model whose tokenizer_config.json carries ``template``."""
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    config_path.write_text(json.dumps(config), encoding="utf-8")
    return model


async def test_a_conversation_the_template_refuses_is_invalid_argument_naming_messages(tmp_path: Path) -> None:
    strict = (
        "{% if messages[-1]['role'] != 'user' %}{{ raise_exception('the last message must be the user') }}{% endif %}x"
    )
    service = InferenceService(model_with_template(tmp_path, strict), "cpu", EngineConfig(), threads=1)
    async with served(service, metrics=False) as where, grpc.aio.insecure_channel(where.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        turns = [text(common_pb2.ROLE_USER, "hi"), text(common_pb2.ROLE_ASSISTANT, "hello")]
        request = inference_pb2.GenerateRequest(messages=turns, sampling=GREEDY)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generate(stub, request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [violation] = field_violations(caught.value)
        assert violation.field == "messages" and "the last message must be the user" in violation.description
        ok = inference_pb2.GenerateRequest(messages=[text(common_pb2.ROLE_USER, "hi")], sampling=GREEDY)
        _, done = await generate(stub, ok)
        assert done.usage.prompt_tokens == 1  # "x": the template's own text, nothing added


async def test_a_template_that_does_not_compile_fails_start_up_naming_its_file(tmp_path: Path) -> None:
    model = model_with_template(tmp_path, "{% for m in messages %}")
    service = InferenceService(model, "cpu", EngineConfig(), 1)
    try:
        with pytest.raises(StartupFailed) as failed:
            await service.start()
    finally:
        await service.stop()
    assert str(failed.value) == (
        f"{model / 'tokenizer_config.json'}: the chat template does not compile: line 1: "
        "Unexpected end of template. Jinja was looking for the following tags: 'endfor' or 'else'. "
        "The innermost block that needs to be closed is 'for'."
    )
