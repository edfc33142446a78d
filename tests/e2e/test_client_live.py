"""genmesh.client against the live mesh of four real processes (the shipped model, the demo collection, the real
tools): async events in order, the blocking client from a thread, jobs, a client mistake as BadRequest."""

from __future__ import annotations

import asyncio

import pytest

from genmesh.cli.launcher import Mesh
from genmesh.client import (
    AsyncClient,
    BadRequest,
    Client,
    Complete,
    Delta,
    Sampling,
    Sources,
    Tool,
    ToolResult,
)

QUESTION = "How does the with statement use a context manager?"


async def test_async_events_arrive_in_order_from_the_real_services(mesh: Mesh) -> None:
    async with AsyncClient(mesh.address("gateway"), timeout_s=60) as client:
        events = [
            event
            async for event in client.generate(
                QUESTION,
                top_k=2,
                tool_calls=[Tool("calculator", {"expression": "6*7"})],
                sampling=Sampling(max_tokens=12, temperature=0.0),
            )
        ]
    kinds = [type(event) for event in events]
    assert kinds[-1] is Complete and Delta in kinds
    first_delta = kinds.index(Delta)
    assert {Sources, ToolResult} <= set(kinds[:first_delta]), "sources and tool results come before the answer"
    sources = next(e for e in events if isinstance(e, Sources))
    assert len(sources.passages) == 2 and all(p.text for p in sources.passages)
    (tool,) = [e for e in events if isinstance(e, ToolResult)]
    assert tool.error is None and '"value":42' in tool.result_json.replace(" ", "")
    complete = events[-1]
    assert isinstance(complete, Complete)
    deltas = [e for e in events if isinstance(e, Delta)]
    assert complete.usage.completion_tokens == sum(len(d.token_ids) for d in deltas) == 12


async def test_the_blocking_client_answers_and_runs_a_job_from_a_thread(mesh: Mesh) -> None:
    def blocking() -> tuple[str, str, int]:
        with Client(mesh.address("gateway"), timeout_s=60) as client:
            answer = client.answer(
                messages=[{"role": "user", "content": QUESTION}], sampling=Sampling(max_tokens=8, temperature=0.0)
            )
            job = client.jobs.submit(QUESTION, sampling=Sampling(max_tokens=4))
            final = [update for update in client.jobs.watch(job.id)][-1].job
            assert final is not None
            return answer.text, final.state, answer.usage.completion_tokens

    text, state, tokens = await asyncio.to_thread(blocking)
    assert text and tokens == 8 and state == "succeeded"


async def test_a_client_mistake_is_bad_request_naming_the_field(mesh: Mesh) -> None:
    async with AsyncClient(mesh.address("gateway")) as client:
        with pytest.raises(BadRequest) as refused:
            await client.answer(QUESTION, sampling=Sampling(max_tokens=8, temperature=-1.0))
    assert [v.field for v in refused.value.field_violations] == ["sampling.temperature"]
