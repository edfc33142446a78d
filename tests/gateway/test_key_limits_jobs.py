"""Per-key limits of background jobs: SubmitJob costs one request of its key and reserves the job's max_tokens;
the run charges nothing more (real SQLite queue, real in-process upstreams; the limiter's clock stands still)."""

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
from genmesh.errors import InvalidArgument, QuotaViolation, ResourceExhausted
from genmesh.sampling import DEFAULT_MAX_TOKENS
from genmesh.v1 import common_pb2, gateway_pb2, jobs_pb2

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
    return KeyLimiter(clock=lambda: 0.0, audit=AuditLog())  # no refill between the calls of a test


@dataclass
class Jobs:
    service: JobServicer
    runtime: JobRuntime


@pytest.fixture
async def jobs(scripted: ScriptedMesh, limiter: KeyLimiter, tmp_path: Path) -> AsyncIterator[Jobs]:
    upstreams = Upstreams(scripted.targets())
    runtime = JobRuntime(JobConfig(str(tmp_path / "jobs.db"), workers=1), Orchestrator(upstreams).answer)
    await runtime.start()
    yield Jobs(JobServicer(runtime, limiter), runtime)
    await runtime.stop()
    await upstreams.close()


async def submit_as(
    jobs: Jobs, caller: Caller, submit: jobs_pb2.SubmitJobRequest = SUBMIT
) -> jobs_pb2.SubmitJobResponse:
    token = CALLER.set(caller)
    try:
        return await jobs.service.SubmitJob(submit, NO_CONTEXT)
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


def with_max_tokens(max_tokens: int) -> jobs_pb2.SubmitJobRequest:
    submit = jobs_pb2.SubmitJobRequest()
    submit.CopyFrom(SUBMIT)
    submit.request.sampling.CopyFrom(common_pb2.SamplingParams(max_tokens=max_tokens))
    return submit


def tokens_left(limiter: KeyLimiter, name: str = "tokens_per_minute") -> float:
    state = limiter.state("apiKeys/k1")
    assert state is not None
    return state.buckets[name].level


async def test_submit_job_reserves_max_tokens_so_a_key_submits_about_its_limit_over_max_tokens(jobs: Jobs) -> None:
    caller = key(Limits(tokens_per_minute=1000, tokens_per_day=100_000))
    for _ in range(4):  # 1000 -> 700 -> 400 -> 100 -> -200: admitted while a token is left, then in debt
        await submit_as(jobs, caller, with_max_tokens(300))
    with pytest.raises(ResourceExhausted) as refused:
        await submit_as(jobs, caller, with_max_tokens(300))
    assert refused.value.quota_violations == [QuotaViolation("apiKeys/k1", "tokens_per_minute: 1000")]
    assert refused.value.retry_after_s == pytest.approx(201 / (1000 / 60))  # until the debt is paid back


async def test_a_job_without_max_tokens_reserves_the_default_against_both_token_limits(
    jobs: Jobs, limiter: KeyLimiter
) -> None:
    await submit_as(jobs, key(Limits(tokens_per_minute=1000, tokens_per_day=5000)))
    assert tokens_left(limiter) == 1000 - DEFAULT_MAX_TOKENS
    assert tokens_left(limiter, "tokens_per_day") == 5000 - DEFAULT_MAX_TOKENS


async def test_an_invalid_submit_job_costs_its_key_nothing(jobs: Jobs, limiter: KeyLimiter) -> None:
    caller = key(Limits(requests_per_minute=1, tokens_per_minute=1000))
    with pytest.raises(InvalidArgument):
        await submit_as(jobs, caller, with_max_tokens(0))
    assert limiter.state("apiKeys/k1") is None
    await submit_as(jobs, caller)


async def test_a_job_run_charges_its_owner_nothing_beyond_the_reservation(jobs: Jobs, limiter: KeyLimiter) -> None:
    caller = key(Limits(tokens_per_minute=1000))
    submitted = await submit_as(jobs, caller, with_max_tokens(2))  # the scripted answer is 3 tokens
    record = await finished(jobs, submitted.job.id)
    assert record.state == JobState.SUCCEEDED and record.owner == "apiKeys/k1"
    assert tokens_left(limiter) == 1000 - 2


async def test_a_job_of_n_samples_reserves_max_tokens_per_sample_and_answers_sample_zero(
    jobs: Jobs, limiter: KeyLimiter
) -> None:
    submit = with_max_tokens(10)
    submit.request.sampling.n = 3
    submitted = await submit_as(jobs, key(Limits(tokens_per_minute=1000)), submit)
    assert tokens_left(limiter) == 1000 - 30
    record = await finished(jobs, submitted.job.id)
    assert record.state == JobState.SUCCEEDED
    result = jobs_pb2.JobResult.FromString(record.result)
    assert result.answer == "Generators yield values."  # sample 0's text, not the three interleaved
    assert result.completion.usage.completion_tokens == 9  # 3 tokens for each of the 3 samples
