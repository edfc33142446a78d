"""The official ``openai`` package against the HTTP front over a real gateway (scripted upstreams): chat and
completions, streamed and not, usage chunks, the model check, and bad input as openai's BadRequestError naming
the field."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio
from inprocess import ScriptedTool
from openai.types.chat import ChatCompletionMessageParam
from served import ServedGateway, served_gateway

from http_front.front import MODEL, Front, served_front

QUESTION = "What does yield do?"


@pytest_asyncio.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[ServedGateway, Front]]:
    tmp = tmp_path_factory.mktemp("http")
    async with served_gateway(tmp, ScriptedTool("lookup"), metrics=False) as served, served_front(served.channel) as f:
        yield served, f


@pytest_asyncio.fixture(scope="module")
async def client(mesh: tuple[ServedGateway, Front]) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=mesh[1].url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


async def test_chat_whole_answer(client: openai.AsyncOpenAI, mesh: tuple[ServedGateway, Front]) -> None:
    answer = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        max_tokens=16,
        temperature=0,
        stop=["###"],
        seed=7,
        extra_body={"genmesh": {"retrieval": {"top_k": 1, "collection": "notes"}}},
    )
    assert answer.choices[0].message.content == "Generators yield values."
    assert answer.choices[0].finish_reason == "stop" and answer.model == MODEL
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    extras = answer.model_extra["genmesh"]  # type: ignore[index]
    assert [p["document_id"] for p in extras["sources"]] == ["yield"]
    assert extras["timings"]["total_ms"] > 0
    sent = mesh[0].replicas.replicas[0].servicer.requests[-1]
    assert (sent.sampling.max_tokens, sent.sampling.temperature, list(sent.sampling.stop)) == (16, 0.0, ["###"])
    assert sent.sampling.seed == 7
    assert [m.content[0].text for m in sent.messages][-1] == QUESTION
    assert mesh[0].upstreams.retrieval.requests[-1].collection == "notes"


async def test_chat_stream_with_usage_chunk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"genmesh": {"tool_calls": [{"name": "lookup", "arguments": {"key": "yield"}}]}},
    )
    chunks = [chunk async for chunk in stream]
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == ["Generators ", "yield ", "values."]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1]) and len({c.id for c in chunks}) == 1


async def test_completions_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    whole = await client.completions.create(model=MODEL, prompt=QUESTION, max_tokens=8)
    stream = await client.completions.create(model=MODEL, prompt=QUESTION, stream=True)
    texts = [chunk.choices[0].text async for chunk in stream]
    assert whole.choices[0].text == "Generators yield values." and whole.object == "text_completion"
    assert "".join(texts) == "Generators yield values."


async def test_n_samples_are_choices_by_index_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    whole = await client.chat.completions.create(model=MODEL, messages=messages, n=3)
    assert [(c.index, c.message.content) for c in whole.choices] == [(i, "Generators yield values.") for i in range(3)]
    assert whole.usage is not None and whole.usage.completion_tokens == 9  # 3 tokens per sample, summed
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=messages,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    texts: dict[int, str] = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "Generators yield values.", 1: "Generators yield values."}
    ends = [
        (c.choices[0].index, c.choices[0].finish_reason) for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert ends == [(0, "stop"), (1, "stop")]
    assert [c.usage.completion_tokens for c in chunks if c.usage is not None] == [6]  # once, after the last sample


async def test_sampling_controls_reach_inference(client: openai.AsyncOpenAI, mesh: tuple[ServedGateway, Front]) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    await client.chat.completions.create(
        model=MODEL,
        messages=messages,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"42": -100},
        extra_body={"min_p": 0.05, "min_tokens": 2, "ignore_eos": True},
    )
    sampling = mesh[0].replicas.replicas[0].servicer.requests[-1].sampling
    assert (sampling.presence_penalty, sampling.frequency_penalty, dict(sampling.logit_bias)) == (0.5, -0.5, {42: -100})
    assert sampling.min_p == pytest.approx(0.05) and (sampling.min_tokens, sampling.ignore_eos) == (2, True)
    with pytest.raises(openai.BadRequestError) as biased:
        await client.chat.completions.create(model=MODEL, messages=messages, logit_bias={"42": 101})
    with pytest.raises(openai.BadRequestError) as penalty:
        await client.chat.completions.create(model=MODEL, messages=messages, presence_penalty=2.5)
    with pytest.raises(openai.BadRequestError) as min_tokens:
        await client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=4,
            extra_body={"min_tokens": 5},
        )
    assert (biased.value.param, penalty.value.param, min_tokens.value.param) == (
        "logit_bias.42",
        "presence_penalty",
        "min_tokens",
    )


async def test_bad_input_is_a_bad_request_naming_the_field(client: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    with pytest.raises(openai.BadRequestError) as too_hot:
        await client.chat.completions.create(model=MODEL, messages=messages, temperature=9)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as two:
        await client.chat.completions.create(model=MODEL, messages=messages, n=17)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as tools:
        await client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            tools=[{"type": "custom", "custom": {"name": "f"}}],
        )
    with pytest.raises(openai.NotFoundError) as other_model:
        await client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as empty_prompt:
        await client.completions.create(model=MODEL, prompt="")
    assert too_hot.value.param == "temperature" and "temperature" in too_hot.value.message
    assert two.value.param == "n" and tools.value.param == "tools[0].type"
    assert other_model.value.code == "model_not_found"
    assert empty_prompt.value.param == "prompt"
