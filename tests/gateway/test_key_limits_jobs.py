"""Per-key limits of background jobs: SubmitJob costs one request of its key, and the tokens a job generates are
charged to its owner key by the worker that runs it (real SQLite queue, real in-process upstreams)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest
from inprocess import ScriptedMesh, start_scripted_mesh

from gateway.auth.audit import AuditLog
from gateway.auth.caller import CALLER, Caller, Limits, Scope
from gateway.auth.limits import KeyLimiter
from gateway.jobs.config import JobConfig
from gateway.jobs.model import JobRecord, JobState
from gateway.jobs.runtime import JobRuntime
from gateway.jobs.service import JobServicer
from gateway.orchestrator import Orchestrator
from gateway.upstreams import Upstreams
from genmesh.errors import QuotaViolation, ResourceExhausted
from genmesh.v1 import gateway_pb2, jobs_pb2

NO_CONTEXT = cast(grpc.aio.ServicerContext, None)
SUBMIT = jobs_pb2.SubmitJobRequest(
    request=gateway_pb2.GatewayRequest(question="q?", retrieval=gateway_pb2.RetrievalOptions(disabled=True))
)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedMesh]:
    running = await start_scripted_mesh()
    yield running
    await running.stop()


@pytest.fixture
def limiter() -> KeyLimiter:
    return KeyLimiter(audit=AuditLog())


@dataclass
class Jobs:
    service: JobServicer
    runtime: JobRuntime


@pytest.fixture
async def jobs(scripted: ScriptedMesh, limiter: KeyLimiter, tmp_path: Path) -> AsyncIterator[Jobs]:
    upstreams = Upstreams(scripted.targets())
    runtime = JobRuntime(
        JobConfig(str(tmp_path / "jobs.db"), workers=1), Orchestrator(upstreams).answer, charge_tokens=limiter.charge
    )
    await runtime.start()
    yield Jobs(JobServicer(runtime, limiter), runtime)
    await runtime.stop()
    await upstreams.close()


async def submit_as(jobs: Jobs, caller: Caller) -> jobs_pb2.SubmitJobResponse:
    token = CALLER.set(caller)
    try:
        return await jobs.service.SubmitJob(SUBMIT, NO_CONTEXT)
    finally:
        CALLER.reset(token)


async def finished(jobs: Jobs, job_id: str) -> JobRecord:
    return [item async for item in jobs.runtime.watch(job_id, 0) if isinstance(item, JobRecord)][-1]


def key(limits: Limits) -> Caller:
    return Caller("apiKeys/k1", "k1", frozenset({Scope.JOBS}), limits)


async def test_submit_job_costs_a_request_of_its_key(jobs: Jobs) -> None:
    caller = key(Limits(requests_per_minute=1))
    await submit_as(jobs, caller)
    with pytest.raises(ResourceExhausted) as refused:
        await submit_as(jobs, caller)
    assert refused.value.quota_violations == [QuotaViolation("apiKeys/k1", "requests_per_minute: 1")]


async def test_the_tokens_a_job_generates_are_charged_to_its_owner(jobs: Jobs, limiter: KeyLimiter) -> None:
    caller = key(Limits(tokens_per_minute=2))  # the scripted answer is 3 tokens
    submitted = await submit_as(jobs, caller)
    record = await finished(jobs, submitted.job.id)
    assert record.state == JobState.SUCCEEDED and record.owner == "apiKeys/k1"
    state = limiter.state("apiKeys/k1")
    assert state is not None and state.buckets["tokens_per_minute"].level < 0  # charged by the worker
    with pytest.raises(ResourceExhausted) as refused:
        await submit_as(jobs, caller)
    assert refused.value.quota_violations == [QuotaViolation("apiKeys/k1", "tokens_per_minute: 2")]
