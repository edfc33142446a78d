"""The sampling controls on the real inference server (in-process bootstrap, the shipped model): bad values are
INVALID_ARGUMENT naming ``sampling.<field>`` (logit_bias ids checked against the vocabulary here), good ones change
the tokens, and every response carries its sample's ``index``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from support.served import served

from genmesh.status import field_violations
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference.engine import EngineConfig
from services.inference.server import DEFAULT_MODEL, InferenceService

PROMPT = "The with statement"


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[inference_pb2_grpc.InferenceServiceStub]:
    service = InferenceService(DEFAULT_MODEL, "cpu", EngineConfig(max_running=4, max_waiting=8), threads=1)
    async with served(service, metrics=False) as where, grpc.aio.insecure_channel(where.address) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


async def responses(
    stub: inference_pb2_grpc.InferenceServiceStub, sampling: common_pb2.SamplingParams
) -> list[inference_pb2.GenerateResponse]:
    request = inference_pb2.GenerateRequest(prompt=PROMPT, sampling=sampling)
    return [response async for response in stub.Generate(request, timeout=60)]


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        (common_pb2.SamplingParams(min_p=1.5), "sampling.min_p"),
        (common_pb2.SamplingParams(presence_penalty=-2.5), "sampling.presence_penalty"),
        (common_pb2.SamplingParams(frequency_penalty=2.5), "sampling.frequency_penalty"),
        (common_pb2.SamplingParams(logit_bias={3: 150.0}), "sampling.logit_bias.3"),
        (common_pb2.SamplingParams(logit_bias={i: 1.0 for i in range(301)}), "sampling.logit_bias"),
        (common_pb2.SamplingParams(logit_bias={4096: 1.0}), "sampling.logit_bias.4096"),  # the vocabulary: 4096
        (common_pb2.SamplingParams(max_tokens=4, min_tokens=5), "sampling.min_tokens"),
        (common_pb2.SamplingParams(min_tokens=-1), "sampling.min_tokens"),
        (common_pb2.SamplingParams(n=0), "sampling.n"),
        (common_pb2.SamplingParams(n=17), "sampling.n"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_bad_values_are_invalid_argument_naming_the_field(
    stub: inference_pb2_grpc.InferenceServiceStub, sampling: common_pb2.SamplingParams, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await responses(stub, sampling)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert [v.field for v in field_violations(caught.value)] == [field]


async def test_controls_change_the_tokens_and_responses_carry_index_zero(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    forced = await responses(
        stub, common_pb2.SamplingParams(max_tokens=6, temperature=0.0, logit_bias={123: 100.0}, ignore_eos=True)
    )
    ids = [t for r in forced if r.HasField("delta") for t in r.delta.token_ids]
    assert ids == [123] * 6 and all(r.index == 0 for r in forced)
    done = forced[-1].complete
    assert done.finish_reason == common_pb2.FINISH_REASON_LENGTH and done.usage.completion_tokens == 6
    ended = await responses(stub, common_pb2.SamplingParams(max_tokens=6, logit_bias={1: 100.0}, min_tokens=3))
    assert ended[-1].complete.usage.completion_tokens == 3  # EOS (id 1) held off for three tokens
    assert ended[-1].complete.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_n_samples_each_end_with_their_own_completion(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    got = await responses(stub, common_pb2.SamplingParams(max_tokens=5, n=3, seed=11))
    completes = [r for r in got if r.HasField("complete")]
    assert sorted(r.index for r in completes) == [0, 1, 2] and got[-1].HasField("complete")
    for index in range(3):
        tokens = [t for r in got if r.index == index and r.HasField("delta") for t in r.delta.token_ids]
        assert len(tokens) == 5
