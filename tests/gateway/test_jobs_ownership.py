"""JobService with the caller the auth interceptor sets: a key sees, watches and cancels only its own jobs (another
key's job is NOT_FOUND exactly as an unknown id), lists only its own (paging intact); an admin key sees all; a
gateway without keys behaves as before."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest

from gateway.auth.caller import CALLER, Caller, Scope
from gateway.jobs.config import JobConfig
from gateway.jobs.runtime import JobRuntime
from gateway.jobs.service import JobServicer
from gateway.jobs.store import JobNotFound
from genmesh.errors import GenmeshError
from genmesh.status import status_of
from genmesh.v1 import common_pb2, gateway_pb2, jobs_pb2

NO_CONTEXT = cast(grpc.aio.ServicerContext, None)
KEY_A = Caller("apiKeys/a", "a", frozenset({Scope.JOBS}))
KEY_B = Caller("apiKeys/b", "b", frozenset({Scope.JOBS}))
ADMIN = Caller("apiKeys/root", "root", frozenset({Scope.ADMIN}))


class Gate:
    """A pipeline whose runs wait until ``open`` is set, then answer."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started = asyncio.Event()

    async def answer(
        self, request: gateway_pb2.GatewayRequest, _: float | None, allowed_tools: frozenset[str]
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        self.started.set()
        await self.open.wait()
        yield gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text="done"))
        yield gateway_pb2.GatewayEvent(complete=common_pb2.Completion(finish_reason=common_pb2.FINISH_REASON_STOP))


@pytest.fixture
async def gate() -> Gate:
    return Gate()


@pytest.fixture
async def service(tmp_path: Path, gate: Gate) -> AsyncIterator[JobServicer]:
    """JobService on a SQLite queue with one worker: the first job runs (held at the gate), the others wait."""
    runtime = JobRuntime(JobConfig(str(tmp_path / "jobs.db"), workers=1), gate.answer)
    await runtime.start()
    yield JobServicer(runtime)
    gate.open.set()
    await runtime.stop()


@contextlib.contextmanager
def calling_as(caller: Caller | None) -> Iterator[None]:
    """Serve what follows as the auth interceptor would for ``caller`` (None: a gateway without keys)."""
    token = CALLER.set(caller)
    try:
        yield
    finally:
        CALLER.reset(token)


async def _submit(service: JobServicer, caller: Caller | None, question: str, key: str = "") -> jobs_pb2.Job:
    request = jobs_pb2.SubmitJobRequest(request=gateway_pb2.GatewayRequest(question=question), idempotency_key=key)
    with calling_as(caller):
        return (await service.SubmitJob(request, NO_CONTEXT)).job


async def _get(service: JobServicer, caller: Caller | None, job_id: str) -> jobs_pb2.Job:
    with calling_as(caller):
        return (await service.GetJob(jobs_pb2.GetJobRequest(id=job_id), NO_CONTEXT)).job


async def _watch(service: JobServicer, caller: Caller | None, job_id: str) -> list[jobs_pb2.WatchJobResponse]:
    with calling_as(caller):
        return [m async for m in service.WatchJob(jobs_pb2.WatchJobRequest(id=job_id), NO_CONTEXT)]


async def _cancel(service: JobServicer, caller: Caller | None, job_id: str) -> jobs_pb2.Job:
    with calling_as(caller):
        return (await service.CancelJob(jobs_pb2.CancelJobRequest(id=job_id), NO_CONTEXT)).job


async def _list(service: JobServicer, caller: Caller | None, page_size: int = 100) -> list[list[str]]:
    """Every page ListJobs gives ``caller``, as job ids."""
    pages: list[list[str]] = []
    token = ""
    with calling_as(caller):
        while True:
            response = await service.ListJobs(
                jobs_pb2.ListJobsRequest(page_size=page_size, page_token=token), NO_CONTEXT
            )
            pages.append([job.id for job in response.jobs])
            if not (token := response.next_page_token):
                return pages


def _as_status(error: GenmeshError) -> tuple[int, str, bytes]:
    """What the client would get: the google.rpc.Status of the error, with the job's id made neutral."""
    status = status_of(error)
    return status.code, status.message, status.details[0].SerializeToString()


async def test_another_key_s_job_is_not_found_exactly_as_an_unknown_id(service: JobServicer, gate: Gate) -> None:
    running = await _submit(service, KEY_A, "first")
    queued = await _submit(service, KEY_A, "second")
    await gate.started.wait()
    assert running.owner == queued.owner == "apiKeys/a"
    unknown = _as_status(JobNotFound("job-unknown"))
    for job in (running, queued):
        for call in (_get, _watch, _cancel):
            with pytest.raises(JobNotFound) as caught:
                await call(service, KEY_B, job.id)
            assert caught.value.message == f"no job {job.id!r} (it may have expired)"
            code, message, info = _as_status(caught.value)
            assert (code, message.replace(job.id, "job-unknown"), info) == unknown, call.__name__
    assert (await _get(service, KEY_A, queued.id)).state == jobs_pb2.JOB_STATE_QUEUED, "B's cancel changed nothing"
    assert (await _get(service, KEY_A, running.id)).state == jobs_pb2.JOB_STATE_RUNNING


async def test_a_key_cancels_and_watches_its_own_job(service: JobServicer, gate: Gate) -> None:
    await _submit(service, KEY_A, "first")
    queued = await _submit(service, KEY_A, "second")
    assert (await _cancel(service, KEY_A, queued.id)).state == jobs_pb2.JOB_STATE_CANCELLED
    assert (await _watch(service, KEY_A, queued.id))[-1].job.state == jobs_pb2.JOB_STATE_CANCELLED


async def test_a_key_lists_only_its_jobs_a_page_at_a_time(service: JobServicer) -> None:
    owners = [KEY_A, KEY_B, KEY_B] * 4 + [None]
    jobs = [await _submit(service, caller, f"q{n}") for n, caller in enumerate(owners)]
    mine = [job.id for job, caller in zip(jobs, owners, strict=True) if caller is KEY_A][::-1]
    theirs = [job.id for job, caller in zip(jobs, owners, strict=True) if caller is KEY_B][::-1]
    assert await _list(service, KEY_A, page_size=3) == [mine[:3], mine[3:]]
    assert await _list(service, KEY_B, page_size=3) == [theirs[:3], theirs[3:6], theirs[6:]]
    everyone = [job.id for job in jobs][::-1]
    assert await _list(service, ADMIN) == [everyone], "an admin key sees every key's jobs"
    assert await _list(service, None) == [everyone], "so does a client of a gateway without keys"


async def test_an_admin_key_gets_watches_and_cancels_any_job(service: JobServicer, gate: Gate) -> None:
    running = await _submit(service, KEY_A, "first")
    queued = await _submit(service, None, "second")
    assert (await _get(service, ADMIN, running.id)).owner == "apiKeys/a"
    assert (await _cancel(service, ADMIN, queued.id)).state == jobs_pb2.JOB_STATE_CANCELLED
    gate.open.set()
    watched = await _watch(service, ADMIN, running.id)
    assert watched[-1].job.state == jobs_pb2.JOB_STATE_SUCCEEDED and watched[-1].job.owner == "apiKeys/a"


async def test_a_gateway_without_keys_shares_every_job_as_before(service: JobServicer, gate: Gate) -> None:
    running = await _submit(service, None, "first")
    queued = await _submit(service, None, "second")
    assert running.owner == "" and (await _get(service, None, running.id)).id == running.id
    assert (await _cancel(service, None, queued.id)).state == jobs_pb2.JOB_STATE_CANCELLED
    assert await _list(service, KEY_A) == [[]], "its jobs belong to no key"


async def test_an_idempotency_key_names_a_job_per_api_key(service: JobServicer) -> None:
    a = await _submit(service, KEY_A, "same", key="nightly")
    b = await _submit(service, KEY_B, "same", key="nightly")
    assert a.id != b.id and b.owner == "apiKeys/b"
    assert (await _submit(service, KEY_A, "same", key="nightly")).id == a.id
