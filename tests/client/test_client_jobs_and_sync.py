"""The job API of AsyncClient, and the blocking Client (run in a thread, as a script would, while the gateway
serves on the test's loop), against a real gateway served in-process over scripted upstreams."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from served import served_gateway

from gateway.policy import ResiliencePolicy
from genmesh.cli.launcher import free_port
from genmesh.client import (
    AsyncClient,
    BadRequest,
    Client,
    ClientTLS,
    Complete,
    Delta,
    Event,
    NotFound,
    RetryPolicy,
    Sampling,
    Sources,
    Unavailable,
)

QUESTION = "What does yield do?"


async def test_submit_watch_get_and_list_a_job(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served, AsyncClient(served.address) as client:
        submitted = await client.jobs.submit(QUESTION, idempotency_key="k1", priority=3, collection="notes")
        again = await client.jobs.submit(QUESTION, idempotency_key="k1", priority=3, collection="notes")
        updates = [u async for u in client.jobs.watch(submitted.id)]
        got = await client.jobs.get(submitted.id)
        page = await client.jobs.list(state="succeeded")
    assert again.id == submitted.id and submitted.priority == 3
    *events, last = updates
    assert isinstance(events[0].event, Sources) and isinstance(events[-1].event, Complete)
    assert [u.sequence for u in events] == sorted({u.sequence for u in events})
    assert last.job is not None and last.job.state == "succeeded" and last.job.done
    assert got.answer is not None and got.answer.text == "Generators yield values." and got.error is None
    assert [p.document_id for p in got.answer.sources] == ["yield"] and got.answer.usage.completion_tokens == 3
    assert [j.id for j in page.jobs] == [submitted.id]


async def test_cancel_a_running_job_and_errors_of_the_job_api(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        inference = served.replicas.replicas[0].servicer
        inference.deltas, inference.delta_delay_s = [f"w{i} " for i in range(400)], 0.05
        async with AsyncClient(served.address) as client:
            job = await client.jobs.submit(QUESTION, retrieval=False)
            async for update in client.jobs.watch(job.id):
                if isinstance(update.event, Delta):
                    break
            cancelled = await client.jobs.cancel(job.id)
            final = [u.job async for u in client.jobs.watch(job.id) if u.job is not None]
            with pytest.raises(NotFound):
                await client.jobs.get("no-such-job")
            with pytest.raises(BadRequest) as raised:
                await client.jobs.submit(QUESTION, sampling=Sampling(top_p=2))
    assert cancelled.state in ("cancelled", "running")
    assert [j.state for j in final] == ["cancelled"]
    assert [v.field for v in raised.value.field_violations] == ["request.sampling.top_p"]


async def test_the_blocking_client_streams_answers_and_runs_jobs(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:

        def script() -> tuple[list[Event], str, str, list[str]]:
            with Client(served.address, timeout_s=30) as client:
                events = list(client.generate(QUESTION))
                text = client.answer(QUESTION, retrieval=False).text
                job = client.jobs.submit(QUESTION, retrieval=False)
                states = [u.job.state for u in client.jobs.watch(job.id) if u.job is not None]
                with pytest.raises(BadRequest) as raised:
                    client.answer(QUESTION, sampling=Sampling(max_tokens=0))
                return events, text, raised.value.field_violations[0].field, states

        events, text, field, states = await asyncio.to_thread(script)
    assert isinstance(events[0], Sources) and isinstance(events[-1], Complete)
    assert text == "Generators yield values." and states == ["succeeded"]
    assert field == "sampling.max_tokens"


async def test_leaving_a_blocking_stream_early_cancels_the_call(tmp_path: Path) -> None:
    policy = ResiliencePolicy(max_streams=1)  # a stream left running would refuse the next one
    async with served_gateway(tmp_path, policy=policy, metrics=False) as served:
        inference = served.replicas.replicas[0].servicer
        inference.deltas, inference.delta_delay_s = [f"w{i} " for i in range(400)], 0.05

        def first_delta(client: Client) -> str:
            for event in client.generate(QUESTION, retrieval=False):
                if isinstance(event, Delta):
                    return event.text
            raise AssertionError("no delta")

        def script() -> list[str]:
            with Client(served.address, timeout_s=60) as client:
                return [first_delta(client), first_delta(client)]

        firsts = await asyncio.wait_for(asyncio.to_thread(script), 15)  # a whole answer takes 20 s
    assert firsts == ["w0 ", "w0 "]


def test_an_unreadable_ca_fails_at_once_naming_it_and_leaves_no_thread(tmp_path: Path) -> None:
    threads = threading.active_count()
    with pytest.raises(ValueError, match=r"ca\.pem"):
        Client("127.0.0.1:1", tls=ClientTLS(ca=tmp_path / "ca.pem"))
    assert threading.active_count() == threads


def test_a_gateway_nobody_serves_is_unavailable_after_the_retries() -> None:
    with Client(f"127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=2, backoff_s=0.05)) as client:
        with pytest.raises(Unavailable):
            client.answer(QUESTION)
        client.close()  # closing twice does nothing
