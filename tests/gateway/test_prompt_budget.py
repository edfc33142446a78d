"""The prompt budget counted by the model's tokenizer (gateway.prompt_budget, InferenceService.CountTokens on the
real inference service and the shipped model): passages that do not fit are dropped by their real token counts,
a conversation too long for the context is refused naming the field, and an inference service that cannot count
gets the character guess (logged once)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from inprocess import start_scripted_mesh
from support.served import served

from gateway.circuit import CircuitConfig
from gateway.prompt import (
    PromptPassage,
    PromptToolResult,
    conversation,
    passage_block,
    prompt_char_budget,
    token_room,
)
from gateway.prompt_budget import MESSAGE_OVERHEAD_TOKENS, PromptBudget, most_tokens
from gateway.upstreams import Upstreams, UpstreamTargets
from genmesh.errors import InvalidArgument
from genmesh.messages import message_text
from genmesh.tool_messages import CUT_MARK
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference.engine import EngineConfig
from services.inference.server import DEFAULT_MODEL, InferenceService

CONTEXT = 512  # the shipped model's
MAX_TOKENS = 16
QUESTION = "What does yield do?"
# Few characters, many tokens: each symbol is two UTF-8 bytes the shipped byte-level BPE never merged.
DENSE = PromptPassage("Symbols", " ".join("§¶ü" for _ in range(150)))
PLAIN = PromptPassage(
    "The yield expression", "A yield expression suspends the generator and hands a value to its caller."
)
TOOLS = [PromptToolResult("calculator", '{"expression": "1+1"}', '{"value": 2}')]


@pytest.fixture(scope="module")
async def inference() -> AsyncIterator[str]:
    service = InferenceService(DEFAULT_MODEL, "cpu", EngineConfig(), threads=1)
    async with served(service, metrics=False) as where:
        yield where.address


@pytest.fixture
async def upstreams(inference: str) -> AsyncIterator[Upstreams]:
    opened = Upstreams(UpstreamTargets("127.0.0.1:9", "127.0.0.1:9", inference), CircuitConfig())
    await opened.inference.start()
    await opened.inference.wait_until_any_serving(30)
    yield opened
    await opened.close()


async def count(address: str, messages: list[common_pb2.ChatMessage], *texts: str) -> inference_pb2.CountTokensResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        request = inference_pb2.CountTokensRequest(messages=messages, texts=texts)
        counted: inference_pb2.CountTokensResponse = await inference_pb2_grpc.InferenceServiceStub(channel).CountTokens(
            request, timeout=10
        )
        return counted


async def test_a_passage_too_long_in_tokens_is_dropped_where_the_3_char_guess_kept_it(
    upstreams: Upstreams, inference: str
) -> None:
    room = token_room(CONTEXT, MAX_TOKENS)
    dense_tokens = (await count(inference, [], passage_block(DENSE))).text_tokens[0]
    assert len(passage_block(DENSE)) < prompt_char_budget(CONTEXT, MAX_TOKENS) // 2 and room < dense_tokens
    guessed, _ = conversation(QUESTION, [], [DENSE, PLAIN], TOOLS, prompt_char_budget(CONTEXT, MAX_TOKENS))
    assert passage_block(DENSE) in message_text(guessed[0])  # the guess keeps it: it would not fit

    messages, shifted = await PromptBudget().conversation(upstreams, QUESTION, [], [DENSE, PLAIN], TOOLS, 16, None)
    assert shifted and [m.role for m in messages] == [common_pb2.ROLE_SYSTEM, common_pb2.ROLE_USER]
    assert message_text(messages[0]) == (
        f"{passage_block(PLAIN)}\n\nTool calculator({TOOLS[0].arguments_json}) returned: {TOOLS[0].result}"
    )
    assert (await count(inference, messages)).prompt_tokens <= room


async def test_passages_are_kept_best_first_while_they_fit(upstreams: Upstreams, inference: str) -> None:
    passages = [PromptPassage(f"Title {i}", f"Passage {i} says something about generators. " * 6) for i in range(8)]
    blocks = (await count(inference, [], *(passage_block(p) + "\n\n" for p in passages))).text_tokens
    empty_system = common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=[common_pb2.ContentPart(text="\n")])
    base = (await count(inference, [empty_system, _user(QUESTION)])).prompt_tokens
    fitting = (token_room(CONTEXT, MAX_TOKENS) - base) // blocks[0]
    assert 1 <= fitting < len(passages)
    messages, _ = await PromptBudget().conversation(upstreams, QUESTION, [], passages, [], MAX_TOKENS, None)
    assert message_text(messages[0]) == "\n\n".join(passage_block(p) for p in passages[:fitting])
    assert (await count(inference, messages)).prompt_tokens <= token_room(CONTEXT, MAX_TOKENS)


async def test_a_passage_longer_than_count_tokens_takes_is_dropped_uncounted(upstreams: Upstreams) -> None:
    huge = PromptPassage("A chunk of the largest size ingest allows", "generators " * 9_091)  # 100,001 characters
    assert len(passage_block(huge)) > 65_536, "beyond CountTokensRequest.texts' bound"
    messages, _ = await PromptBudget().conversation(upstreams, QUESTION, [], [huge, PLAIN], [], MAX_TOKENS, None)
    assert message_text(messages[0]) == passage_block(PLAIN), "the huge block is dropped, the next one kept"


async def test_a_client_system_message_leads_and_the_fields_keep_the_client_s_names(upstreams: Upstreams) -> None:
    client = [common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=[common_pb2.ContentPart(text="Be brief.")])]
    client.append(_user(QUESTION))
    messages, shifted = await PromptBudget().conversation(upstreams, "", client, [PLAIN], [], MAX_TOKENS, None)
    assert not shifted and message_text(messages[0]) == f"Be brief.\n\n{passage_block(PLAIN)}"
    assert messages[1:] == client[1:]
    # long enough not to fit by the estimate: counted, and the counter's refusal named as the client's field
    bad = [_user("Why? " * 80), common_pb2.ChatMessage(role=common_pb2.ROLE_USER, name="not a name!")]
    bad[1].content.add(text="x")
    with pytest.raises(InvalidArgument) as refused:
        await PromptBudget().conversation(upstreams, "", bad, [PLAIN], [], MAX_TOKENS, None)
    assert [v.field for v in refused.value.violations] == ["messages[1].name"]


async def test_a_question_too_long_in_tokens_is_refused_naming_it(upstreams: Upstreams) -> None:
    question = "¶" * 600  # within the guess's 732 characters, some 1200 tokens
    assert len(question) < prompt_char_budget(CONTEXT, MAX_TOKENS) // 2
    with pytest.raises(InvalidArgument) as refused:
        await PromptBudget().conversation(upstreams, question, [], [PLAIN], [], MAX_TOKENS, None)
    ((field, description),) = [(v.field, v.description) for v in refused.value.violations]
    assert field == "question" and "prompt tokens, at most 496 " in description


async def test_an_inference_service_that_cannot_count_gets_the_guess_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scripted = await start_scripted_mesh()  # its inference has no CountTokens: UNIMPLEMENTED
    upstreams = Upstreams(scripted.targets(), CircuitConfig())
    budget = PromptBudget()
    try:
        with caplog.at_level(logging.WARNING, "genmesh.gateway"):
            for _ in range(2):
                messages, shifted = await budget.conversation(upstreams, QUESTION, [], [DENSE], [], MAX_TOKENS, None)
                assert shifted and passage_block(DENSE) in message_text(messages[0])  # trimmed to characters only
    finally:
        await upstreams.close()
        await scripted.stop()
    assert sum("cannot count tokens" in r.getMessage() for r in caplog.records) == 1


def _user(content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=[common_pb2.ContentPart(text=content)])


def _assistant(content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content=[common_pb2.ContentPart(text=content)])


async def test_tool_results_too_long_for_the_context_are_cut_to_fit_not_refused(
    upstreams: Upstreams, inference: str
) -> None:
    long = [PromptToolResult("search_docs", '{"query": "yield"}', "The yield statement suspends a generator. " * 200)]
    messages, _ = await PromptBudget().conversation(upstreams, QUESTION, [], [PLAIN], long, MAX_TOKENS, None)
    context = message_text(messages[0])
    assert context.startswith("Tool search_docs") and context.endswith(CUT_MARK)  # no room left for the passage
    prompt_tokens = (await count(inference, messages)).prompt_tokens
    assert token_room(CONTEXT, MAX_TOKENS) * 0.8 < prompt_tokens <= token_room(CONTEXT, MAX_TOKENS)


async def test_a_conversation_that_surely_fits_is_not_counted_once_the_context_is_known(
    upstreams: Upstreams, inference: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = PromptBudget()
    counted = []
    real_count = budget._count

    async def counting(*args: object) -> inference_pb2.CountTokensResponse:
        counted.append(1)
        return await real_count(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(budget, "_count", counting)

    async def ask() -> list[common_pb2.ChatMessage]:
        return (await budget.conversation(upstreams, QUESTION, [], [PLAIN], TOOLS, MAX_TOKENS, None))[0]

    first = await ask()
    assert len(counted) == 1, "the first request learns the context length from CountTokens"
    second = await ask()
    assert second == first and len(counted) == 1, "the same small request fits by the estimate: not counted"
    # 400 bytes of question and three framings leave less than the estimate needs: counted, and it fits
    long_question = "Why? " * 80
    kept, _ = await budget.conversation(upstreams, long_question, [], [PLAIN], [], MAX_TOKENS, None)
    assert len(counted) == 2 and message_text(kept[-1]) == long_question
    with pytest.raises(InvalidArgument):
        await budget.conversation(upstreams, "¶" * 600, [], [], [], MAX_TOKENS, None)  # counted, then refused
    assert len(counted) == 3


async def test_the_estimate_bounds_the_shipped_tokenizer_s_count_from_above(inference: str) -> None:
    system = common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=[common_pb2.ContentPart(text="Be brief.")])
    called = common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT)
    called.tool_calls.add(call_id="call_1", name="calculator", arguments_json='{"expression": "6*7"}')
    answered = common_pb2.ChatMessage(
        role=common_pb2.ROLE_TOOL, tool_call_id="call_1", content=[common_pb2.ContentPart(text='{"value": 42}')]
    )
    for conversation_ in (
        [_user("?")],
        [_user(QUESTION)],
        [_user(" ".join("§¶ü" for _ in range(40)))],
        [_user("生成器は値を返す。" * 5 + "🙂🙃" * 10)],
        [system, _user(QUESTION), called, answered],
        [_user("?") if i % 2 == 0 else _assistant("!") for i in range(15)],  # framing outweighs the text
    ):
        real = (await count(inference, conversation_)).prompt_tokens
        assert sum(most_tokens(m) for m in conversation_) + MESSAGE_OVERHEAD_TOKENS >= real
