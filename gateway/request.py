"""Validation of a GatewayRequest into the plan the orchestrator runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.agent.plan import AgentPlan, plan_agent
from gateway.auth.caller import may_call_tool
from gateway.deadlines import MAX_BUDGET_MS
from genmesh.convert import sampling_from_proto
from genmesh.errors import FieldViolation, InvalidArgument, quote
from genmesh.limits import call_id_violation
from genmesh.logs import REQUEST_ID
from genmesh.mesh import DEFAULT_COLLECTION
from genmesh.messages import last_user_text, message_violations
from genmesh.response_format import response_format_from_proto
from genmesh.sampling import SamplingParams
from genmesh.schema import parse_object, validate_arguments
from genmesh.v1 import common_pb2, gateway_pb2, tools_pb2

MAX_QUESTION_CHARS = 4096
MAX_TOOL_CALLS = 16
MAX_TOP_K = 100
DEFAULT_TOP_K = 3


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    """One validated tool call."""

    index: int
    call_id: str
    name: str
    arguments_json: str
    timeout_ms: int | None
    permitted: bool = True
    """Whether the caller's key may call the tool; a call that may not is never sent (TOOL_NOT_ALLOWED)."""


@dataclass(frozen=True, slots=True)
class AnswerPlan:
    """A validated gateway request."""

    request_id: str
    question: str
    """The question, or the text of the last ROLE_USER message of ``messages``: what retrieval searches for (the
    conversation inference renders is gateway.prompt's)."""
    tool_calls: tuple[ToolCallPlan, ...]
    retrieval_enabled: bool
    top_k: int
    collection: str
    sampling: SamplingParams
    sampling_proto: common_pb2.SamplingParams
    """The client's sampling knobs as sent (validated into ``sampling``), forwarded to inference unchanged."""
    retrieval_budget_s: float | None = None
    """The request's own retrieval budget; None: the gateway's."""
    require_all_stages: bool = False
    messages: tuple[common_pb2.ChatMessage, ...] = ()
    """The client's conversation when it sent messages instead of a question (checked)."""
    response_format: common_pb2.ResponseFormat | None = None
    """The structure the answer must have, as sent (its bounds checked; inference compiles it); None: free text."""
    agent: AgentPlan | None = None
    """The agent loop of a request with tools (gateway.agent); None without."""


def plan_request(
    request: gateway_pb2.GatewayRequest,
    tool_schemas: dict[str, dict[str, Any]] | None,
    unverifiable_prefixes: tuple[str, ...] = (),
    allowed_tools: frozenset[str] = frozenset(),
    tool_specs: Mapping[str, tools_pb2.ToolSpec] | None = None,
) -> AnswerPlan:
    """Check every field of ``request``; raises InvalidArgument naming all bad fields.

    ``allowed_tools``: the tools the caller's key may call (empty: all). A call of another tool is planned as
    not ``permitted``, its name and arguments unchecked: the key learns nothing of tools it may not call.

    ``tool_schemas`` maps tool names to their argument schemas; None when the tools service
    could not be asked, in which case names and arguments are left for it to check. Names that
    start with one of ``unverifiable_prefixes`` (a tool provider that is down) are left to it too.
    ``tool_specs``: the tools service's tools, for the request's ``tools`` (gateway.agent.plan).
    """
    bad: list[FieldViolation] = []
    question = _plan_question(request, bad)

    options = request.retrieval
    top_k = options.top_k if options.HasField("top_k") else DEFAULT_TOP_K
    if not 1 <= top_k <= MAX_TOP_K:
        bad.append(FieldViolation("retrieval.top_k", f"must be between 1 and {MAX_TOP_K}"))
    budget_ms = options.timeout_ms if options.HasField("timeout_ms") else None
    if budget_ms is not None and not 1 <= budget_ms <= MAX_BUDGET_MS:
        bad.append(FieldViolation("retrieval.timeout_ms", f"must be between 1 and {MAX_BUDGET_MS}"))

    calls = _plan_tool_calls(request, tool_schemas, unverifiable_prefixes, allowed_tools, bad)
    try:
        sampling = sampling_from_proto(request.sampling)
    except InvalidArgument as error:
        bad.extend(error.violations)
    try:
        response_format = response_format_from_proto(request.response_format)
    except InvalidArgument as error:
        bad.extend(error.violations)
    agent = plan_agent(request, tool_specs, allowed_tools, bad)
    if agent is not None and request.sampling.n > 1:
        bad.append(FieldViolation("sampling.n", "must be 1 with tools"))
    if bad:
        raise InvalidArgument(bad)
    return AnswerPlan(
        request_id=request.request_id or REQUEST_ID.get(),
        question=question,
        tool_calls=calls,
        retrieval_enabled=not options.disabled,
        top_k=top_k,
        collection=options.collection or DEFAULT_COLLECTION,
        sampling=sampling,
        sampling_proto=request.sampling,
        retrieval_budget_s=None if budget_ms is None else budget_ms / 1000.0,
        require_all_stages=request.require_all_stages,
        messages=tuple(request.messages),
        response_format=request.response_format if response_format is not None else None,
        agent=agent,
    )


def _plan_question(request: gateway_pb2.GatewayRequest, bad: list[FieldViolation]) -> str:
    """The question (or the last user message's text); exactly one of question and messages must be set."""
    if not request.messages:
        question = request.question.strip()
        if not question:
            bad.append(FieldViolation("question", "must not be empty"))
        elif len(request.question) > MAX_QUESTION_CHARS:
            bad.append(FieldViolation("question", f"must be at most {MAX_QUESTION_CHARS} characters"))
        return question
    if request.question:
        bad.append(FieldViolation("messages", "set either question or messages, not both"))
    if violations := message_violations(request.messages):
        bad.extend(violations)
        return ""
    question = last_user_text(request.messages).strip()
    if not question:
        bad.append(FieldViolation("messages", "must hold a ROLE_USER message with text"))
    return question[-MAX_QUESTION_CHARS:]  # what retrieval searches for: a long message's tail, in its bound


def _plan_tool_calls(
    request: gateway_pb2.GatewayRequest,
    tool_schemas: dict[str, dict[str, Any]] | None,
    unverifiable_prefixes: tuple[str, ...],
    allowed_tools: frozenset[str],
    bad: list[FieldViolation],
) -> tuple[ToolCallPlan, ...]:
    if len(request.tool_calls) > MAX_TOOL_CALLS:
        bad.append(FieldViolation("tool_calls", f"at most {MAX_TOOL_CALLS} tool calls"))
        return ()
    calls: list[ToolCallPlan] = []
    seen: set[str] = set()
    for i, call in enumerate(request.tool_calls):
        field = f"tool_calls[{i}]"
        call_id = call.call_id or str(i)
        if (violation := call_id_violation(call_id, f"{field}.call_id")) is not None:
            bad.append(violation)
        elif call_id in seen:
            bad.append(FieldViolation(f"{field}.call_id", f"duplicate call id {quote(call_id)}"))
        seen.add(call_id)
        permitted = may_call_tool(allowed_tools, call.name)
        if not call.name:
            bad.append(FieldViolation(f"{field}.name", "must not be empty"))
        elif (
            permitted
            and tool_schemas is not None
            and call.name not in tool_schemas
            and not (unverifiable_prefixes and call.name.startswith(unverifiable_prefixes))
        ):
            known = ", ".join(sorted(tool_schemas)) or "none"
            bad.append(FieldViolation(f"{field}.name", f"unknown tool {quote(call.name)} (known: {known})"))
        arguments_json = call.arguments_json or "{}"
        if permitted and tool_schemas is not None and call.name in tool_schemas:
            try:
                validate_arguments(tool_schemas[call.name], arguments_json, f"{field}.arguments_json")
            except InvalidArgument as error:
                bad.extend(error.violations)
        else:
            try:
                parse_object(arguments_json, f"{field}.arguments_json")
            except InvalidArgument as error:
                bad.extend(error.violations)
        if call.HasField("timeout_ms") and call.timeout_ms == 0:
            bad.append(FieldViolation(f"{field}.timeout_ms", "must be positive"))
        timeout_ms = call.timeout_ms if call.HasField("timeout_ms") else None
        calls.append(ToolCallPlan(i, call_id, call.name, arguments_json, timeout_ms, permitted))
    return tuple(calls)
