"""n > 1 samples and the sampling controls end to end: a gateway served in-process over the real inference service
(the shipped model), called over gRPC and through the HTTP front with the official ``openai`` package. Each
sample streams under its index and ends with its own Completion; the usage sums the samples; a logit_bias id past
the vocabulary is refused by inference, named through the gateway and the front."""

from __future__ import annotations

from typing import Any

import grpc
import openai
import pytest
from support.model_mesh import ModelMesh

from genmesh.status import field_violations
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from http_front.front import Front

USER: Any = [{"role": "user", "content": "What does the with statement do?"}]
NO_RETRIEVAL = {"genmesh": {"retrieval": {"disabled": True}}}


def ask(sampling: common_pb2.SamplingParams) -> gateway_pb2.GatewayRequest:
    return gateway_pb2.GatewayRequest(
        question="What does the with statement do?",
        retrieval=gateway_pb2.RetrievalOptions(disabled=True),
        sampling=sampling,
    )


async def test_samples_stream_by_index_through_the_gateway(
    model_front: tuple[ModelMesh, grpc.aio.Channel, Front],
) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(model_front[1])
    request = ask(common_pb2.SamplingParams(max_tokens=6, n=3, seed=5, ignore_eos=True))
    events = [event async for event in stub.Generate(request, timeout=120)]
    completes = [e for e in events if e.HasField("complete")]
    assert sorted(e.index for e in completes) == [0, 1, 2] and events[-1].HasField("complete")
    texts = {i: "".join(e.delta.text for e in events if e.HasField("delta") and e.index == i) for i in range(3)}
    tokens = {i: sum(len(e.delta.token_ids) for e in events if e.HasField("delta") and e.index == i) for i in range(3)}
    assert tokens == {0: 6, 1: 6, 2: 6} and len(set(texts.values())) > 1  # seeds 5, 6, 7: different samples
    assert all(e.complete.usage.completion_tokens == 6 for e in completes)


async def test_choices_and_summed_usage_through_the_front(model_client: openai.AsyncOpenAI) -> None:
    whole = await model_client.chat.completions.create(
        model="genmesh-test", messages=USER, n=2, max_tokens=5, seed=1, extra_body={**NO_RETRIEVAL, "ignore_eos": True}
    )
    assert [c.index for c in whole.choices] == [0, 1] and all(c.finish_reason == "length" for c in whole.choices)
    assert whole.usage is not None and whole.usage.completion_tokens == 10
    stream = await model_client.chat.completions.create(
        model="genmesh-test",
        messages=USER,
        n=2,
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=NO_RETRIEVAL,
    )
    chunks = [chunk async for chunk in stream]
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts[0] == texts[1] != ""  # greedy: both samples say the same
    assert [c.usage.completion_tokens for c in chunks if c.usage is not None] == [10]


async def test_logit_bias_past_the_vocabulary_is_named(
    model_front: tuple[ModelMesh, grpc.aio.Channel, Front], model_client: openai.AsyncOpenAI
) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(model_front[1])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Generate(ask(common_pb2.SamplingParams(logit_bias={50000: 1.0})), timeout=60):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == ["sampling.logit_bias.50000"]
    with pytest.raises(openai.BadRequestError) as refused:
        await model_client.chat.completions.create(
            model="genmesh-test", messages=USER, logit_bias={"50000": 5}, extra_body=NO_RETRIEVAL
        )
    assert refused.value.param == "logit_bias.50000"


async def test_forced_token_through_the_front(model_client: openai.AsyncOpenAI) -> None:
    plain = await model_client.chat.completions.create(
        model="genmesh-test", messages=USER, max_tokens=4, temperature=0, extra_body=NO_RETRIEVAL
    )
    forced = await model_client.chat.completions.create(
        model="genmesh-test",
        messages=USER,
        max_tokens=4,
        temperature=0,
        logit_bias={"400": 100},
        extra_body=NO_RETRIEVAL,
    )
    assert forced.choices[0].message.content != plain.choices[0].message.content
    assert forced.usage is not None and forced.usage.completion_tokens == 4
