"""The prompt budget counted by the model's tokenizer: one CountTokens call per request, of the conversation
without passages (the client's turns, the tool results in the system turn, the template's generation prompt) and
of each passage block with its separator; the passages are then kept best first while they fit the context less
the answer's room (gateway.prompt.fit_blocks), whole, and never cut. A seam between two counted pieces can merge
into one token less (byte-level BPE), so the sum errs long, never short.

CountTokens goes under the inference guard (gateway.resilience) as Generate does: to the least loaded replica
(taking no round-robin turn from Generate), tried again on another when one is UNAVAILABLE. A passage block too
long to ever fit the system message is not sent to be counted (it could break CountTokens' bound on each text,
a field the client never sent); a refusal naming ``texts`` anyway is the gateway's own, never the client's.

The call is skipped when everything surely fits (``surely_fits``): a token holds at least one UTF-8 byte, so a
conversation's bytes plus MESSAGE_OVERHEAD_TOKENS per message for the template's framing bound its tokens from
above. A short question with a few passages then costs no round trip before Generate. A template that frames a
message with more tokens than that can overrun the estimate; inference then keeps the prompt's tail
(``truncate_prompt``), as for a guessed budget.

An inference service without CountTokens (UNIMPLEMENTED: an older release) gets the character guess of
gateway.prompt.conversation, without asking again for RECHECK_S; the gateway says so in its log once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc

from gateway.prompt import (
    CHARS_PER_TOKEN,
    SEPARATOR,
    PromptPassage,
    PromptToolResult,
    client_field,
    client_turns,
    context_room,
    conversation,
    fit_blocks,
    join_context,
    passage_block,
    prompt_char_budget,
    token_room,
    tools_text,
    with_context,
)
from gateway.resilience import RetryRule
from gateway.upstreams import METADATA_TIMEOUT_S, Upstreams
from genmesh import mesh
from genmesh.deadlines import left_s, timeout
from genmesh.errors import InvalidArgument
from genmesh.messages import message_text
from genmesh.status import from_rpc_error
from genmesh.tool_messages import CUT_MARK
from genmesh.v1 import common_pb2, inference_pb2

log = logging.getLogger("genmesh.gateway")

RECHECK_S = 60.0
"""How long the budget is guessed without asking after an inference service could not count."""
COUNT_ATTEMPTS = 3
"""CountTokens attempts by default (the gateway passes its Generate attempts)."""
MAX_COUNTED_TEXTS = 1024
MAX_COUNTED_CHARS = 65_536
"""CountTokensRequest.texts' bounds (docs/CONTRACTS.md): how many, and each one's characters."""
RESERVE_MARGIN_TOKENS = 32
"""Tokens counted besides a reserved text's own: what the chat template writes around the tools' declarations."""
MESSAGE_OVERHEAD_TOKENS = 32
"""Tokens a chat template adds around one message, call or the generation prompt (role headers, tool-call and
result framing, a default system text): Qwen2.5's take about 20, Llama 3's about 10, the shipped template's fewer."""


def most_tokens(message: common_pb2.ChatMessage) -> int:
    """The most tokens ``message`` can take in a prompt: its text's and its calls' UTF-8 bytes and the framing."""
    calls = sum(len(c.name.encode()) + len(c.arguments_json.encode()) for c in message.tool_calls)
    return len(message_text(message).encode()) + calls + MESSAGE_OVERHEAD_TOKENS * (1 + len(message.tool_calls))


def surely_fits(messages: Sequence[common_pb2.ChatMessage], reserve: str, room: int) -> bool:
    """Whether ``messages``, the generation prompt and ``reserve`` take at most ``room`` tokens by the estimate
    from above (no tokenizer needed)."""
    reserved = len(reserve.encode()) + RESERVE_MARGIN_TOKENS if reserve else 0
    return sum(most_tokens(m) for m in messages) + MESSAGE_OVERHEAD_TOKENS + reserved <= room


def fit_tools(tools: str, tokens: int, room: int) -> tuple[str, int]:
    """The tool results' text within ``room`` tokens, and the tokens it may take: whole when it fits, else cut by
    its own characters per token with a tenth to spare (the cut marked): the tools' output is the gateway's to
    fit, never a reason to refuse the client's request."""
    if tokens <= room:
        return tools, tokens
    keep = int(len(tools) * room / tokens * 0.9) - len(CUT_MARK)
    return (tools[:keep] + CUT_MARK if keep > 0 else ""), room


class PromptBudget:
    """Builds each request's conversation within the model's context; remembers whether it warned about an
    inference service that cannot count. ``rule`` and ``connect_wait_s`` as the inference stage's Generate."""

    def __init__(self, rule: RetryRule | None = None, connect_wait_s: float = 0.0) -> None:
        self.guessing_logged = False
        self._guess_until = float("-inf")
        """Until when (time.monotonic) the budget is guessed without asking: an inference service answered
        UNIMPLEMENTED (asked again after RECHECK_S, as replicas are upgraded)."""
        self._rule = rule or RetryRule(COUNT_ATTEMPTS)
        self._connect_wait_s = connect_wait_s
        self._context_length: int | None = None
        """The model's context in tokens, as the last CountTokens said (the replicas serve one model)."""

    async def conversation(
        self,
        upstreams: Upstreams,
        question: str,
        messages: Sequence[common_pb2.ChatMessage],
        passages: Sequence[PromptPassage],
        tool_results: Sequence[PromptToolResult],
        max_tokens: int,
        deadline: float | None,
        reserve: str = "",
    ) -> tuple[list[common_pb2.ChatMessage], bool]:
        """The messages for GenerateRequest.messages and whether a system message went before the client's.
        InvalidArgument naming ``question`` or ``messages`` when the conversation alone leaves no room, ``tools``
        when ``reserve`` (a text the prompt holds besides: the tools' declarations) does not fit with it."""
        guess = (upstreams, question, messages, passages, tool_results, max_tokens, reserve)
        if time.monotonic() < self._guess_until:
            return await self._guess(*guess)
        turns = client_turns(question, messages)
        tools = tools_text(tool_results, context_room(turns))
        chars = context_room(turns) - len(tools)
        blocks = [passage_block(p) for p in passages]
        if self._context_length is not None and len(context := join_context(blocks, tools)) <= chars:
            everything = with_context(turns, context)
            if surely_fits(everything[0], reserve, token_room(self._context_length, max_tokens)):
                return everything
        # A block that cannot fit the system message is never kept: it is not counted either.
        fitting = min(chars, MAX_COUNTED_CHARS) - len(SEPARATOR)
        counted_blocks = [i for i, block in enumerate(blocks) if len(block) <= fitting][:MAX_COUNTED_TEXTS]
        # Counted with a system turn, as the context will need one; "\n" stands for an empty context (a message
        # must hold some text), a token more than the context's own separators need: the sum errs long. The tool
        # results are counted apart (the first text), so that they can be cut to what the client's turns leave.
        base, shifted = with_context(turns, "\n")
        texts = [tools + SEPARATOR] if tools else []
        texts += [blocks[i] + SEPARATOR for i in counted_blocks]
        texts += [reserve] if reserve else []
        try:
            counted = await self._count(
                upstreams, inference_pb2.CountTokensRequest(messages=base, texts=texts), deadline
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._cannot_count()
            else:
                self._refused(error, not messages, shifted)  # returns only when the passages alone were refused
            return await self._guess(*guess)
        self._context_length = counted.context_length_tokens
        room = token_room(counted.context_length_tokens, max_tokens)
        if counted.prompt_tokens > room:
            raise InvalidArgument.field(
                "messages" if messages else "question",
                f"is too long for the model's context: {counted.prompt_tokens} prompt tokens, at most {room} (the "
                f"context of {counted.context_length_tokens} tokens less the answer's room)",
            )
        left = room - counted.prompt_tokens
        passage_tokens = list(counted.text_tokens)
        if reserve:
            reserved = passage_tokens.pop() + RESERVE_MARGIN_TOKENS
            if reserved > left:
                raise InvalidArgument.field(
                    "tools", f"take about {reserved} tokens of the model's context, and the conversation leaves {left}"
                )
            left -= reserved
        if tools:
            tools, used = fit_tools(tools, passage_tokens.pop(0), left)
            left -= used
            chars = context_room(turns) - len(tools)
        sizes = [len(blocks[i]) for i in counted_blocks]
        kept = fit_blocks(passage_tokens, sizes, left, chars)
        return with_context(turns, join_context([blocks[counted_blocks[i]] for i in kept], tools))

    async def count(
        self, upstreams: Upstreams, request: inference_pb2.CountTokensRequest, deadline: float | None
    ) -> inference_pb2.CountTokensResponse | None:
        """CountTokens of ``request``; None when inference cannot count (an older release)."""
        if time.monotonic() < self._guess_until:
            return None
        try:
            return await self._count(upstreams, request, deadline)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise from_rpc_error(error) from None
            self._cannot_count()
            return None

    async def _count(
        self, upstreams: Upstreams, request: inference_pb2.CountTokensRequest, deadline: float | None
    ) -> inference_pb2.CountTokensResponse:
        """CountTokens under the inference guard (CircuitOpen when every replica's circuit is open)."""
        connect_until = time.monotonic() + self._connect_wait_s
        guard = upstreams.guard(mesh.INFERENCE.name, self._rule, turn=False)
        async for attempt in guard.attempts(deadline, "CountTokens"):
            with attempt:
                replica = upstreams.inference.replicas[attempt.target.name]
                await replica.ensure_connected(min(left_s(connect_until), left_s(deadline)))
                left = timeout(deadline)
                limit = METADATA_TIMEOUT_S if left is None else min(METADATA_TIMEOUT_S, left)
                counted: inference_pb2.CountTokensResponse = await replica.stub.CountTokens(request, timeout=limit)
                return counted
        raise AssertionError("the guard ends with an attempt's answer or its error")  # pragma: no cover

    def _cannot_count(self) -> None:
        """The inference service has no CountTokens: guess for RECHECK_S; say so once."""
        self._guess_until = time.monotonic() + RECHECK_S
        if not self.guessing_logged:
            self.guessing_logged = True
            log.warning(
                "the inference service cannot count tokens (CountTokens is UNIMPLEMENTED: an older release); the "
                f"prompt budget is guessed at {CHARS_PER_TOKEN} characters per token until it can"
            )

    @staticmethod
    def _refused(error: grpc.aio.AioRpcError, asked: bool, shifted: bool) -> None:
        """Raise what a CountTokens failure is to the client: a refusal of its messages names its own fields.
        One of the passages' texts alone (the gateway's to send right, never a client's field) is logged, and
        this request's budget guessed (the return)."""
        failure = from_rpc_error(error, lambda name: client_field(name, asked, shifted))
        if isinstance(failure, InvalidArgument):
            client = [v for v in failure.violations if not v.field.startswith("texts")]
            if len(client) < len(failure.violations):
                log.error("CountTokens refused the passages' texts", extra={"detail": error.details()})
                if not client:
                    return
                failure = InvalidArgument(client)
        raise failure from None

    @staticmethod
    async def _guess(
        upstreams: Upstreams,
        question: str,
        messages: Sequence[common_pb2.ChatMessage],
        passages: Sequence[PromptPassage],
        tool_results: Sequence[PromptToolResult],
        max_tokens: int,
        reserve: str,
    ) -> tuple[list[common_pb2.ChatMessage], bool]:
        """The conversation by the character guess (gateway.prompt.conversation)."""
        try:
            context_length = await upstreams.context_length()
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        budget = prompt_char_budget(context_length, max_tokens) - len(reserve)
        limit = budget // 2
        if len(question) > limit:
            raise InvalidArgument.field(
                "messages" if messages else "question",
                f"is too long for the model's context: {len(question)} characters, at most {limit}",
            )
        return conversation(question, messages, passages, tool_results, budget)
