"""The gateway's metrics, scraped over HTTP from a gateway served in-process (tests/gateway/served.py) over
scripted upstreams: stage latencies, time to first token and relayed tokens per answer; degraded stages by stage
and code, and the breaker that opens after them; retries; admission refusals; each inference replica's health,
breaker and load; the job queue by state and the run time of finished jobs. With metrics off nothing is counted."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from inprocess import Fault, ScriptedTool
from served import served_gateway
from support.jobs_gateway import wait_final
from support.scrape import changed, recorded, scrape_until, value

from gateway.circuit import CircuitConfig
from gateway.policy import ResiliencePolicy
from genmesh.v1 import common_pb2, gateway_pb2, jobs_pb2

G = "genmesh_gateway_"
NO_RETRIEVAL = gateway_pb2.RetrievalOptions(disabled=True)
LOOKUP = ScriptedTool("lookup", idempotent=True)
NOTIFY = ScriptedTool("notify", idempotent=False)


def ask(*tools: str, retrieval: bool = True) -> gateway_pb2.GatewayRequest:
    calls = [common_pb2.ToolCall(call_id=f"c{i}", name=name) for i, name in enumerate(tools)]
    options = None if retrieval else NO_RETRIEVAL
    return gateway_pb2.GatewayRequest(question="What does yield do?", tool_calls=calls, retrieval=options)


async def test_an_answer_is_timed_per_stage_and_its_tokens_counted(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, LOOKUP) as served:
        served.replicas.replicas[0].servicer.delta_delay_s = 0.05
        before = await served.scrape()
        events = await served.answer(ask("lookup"))
        after = await served.scrape()
    completion = events[-1].complete
    grown = changed(after, before)
    for stage in ("retrieval", "tools", "inference"):
        assert value(grown, f"{G}stage_duration_seconds_count", stage=stage) == 1, stage
    assert value(grown, f"{G}time_to_first_token_seconds_count") == 1
    assert value(grown, f"{G}generated_tokens_total") == 3 == completion.usage.completion_tokens
    assert not [key for key in grown if key[0] == f"{G}degraded_total"]
    # The same moments as the Completion's timings: the first token, and the inference stage's span.
    ttft_s = value(grown, f"{G}time_to_first_token_seconds_sum")
    assert ttft_s == pytest.approx(completion.timings.time_to_first_token_ms / 1000.0, abs=1e-6)
    spans = {span.stage: span for span in completion.timings.stages}
    inference_s = (spans["inference"].end_ms - spans["inference"].start_ms) / 1000.0
    assert inference_s >= 0.15  # three deltas 50 ms apart
    assert value(grown, f"{G}stage_duration_seconds_sum", stage="inference") == pytest.approx(inference_s, abs=0.02)
    assert 0 < value(grown, f"{G}stage_duration_seconds_sum", stage="retrieval") < inference_s


async def test_degraded_stages_are_counted_by_stage_and_code_and_the_breaker_opens(tmp_path: Path) -> None:
    policy = ResiliencePolicy(circuit=CircuitConfig(failures=2, cooldown_s=60.0))
    async with served_gateway(tmp_path, NOTIFY, policy=policy) as served:
        before = await scrape_until(served.metrics_url, lambda s: value(s, f"{G}upstream_up", upstream="tools") == 1)
        assert value(before, f"{G}circuit_state", upstream="tools") == 0
        served.upstreams.tools.stream_fault = Fault(grpc.StatusCode.UNAVAILABLE, "tools are down")
        served.upstreams.retrieval.fault = Fault(grpc.StatusCode.INTERNAL, "index broken", times=1)
        for _ in range(3):  # the third finds the circuit open: degraded without a call
            events = await served.answer(ask("notify"))
            assert events[-1].HasField("complete"), "the answer goes on without the failed stages"
        assert len(served.upstreams.tools.invocations) == 2
        after = await scrape_until(served.metrics_url, lambda s: value(s, f"{G}circuit_state", upstream="tools") == 2)
    grown = changed(after, before)
    assert value(grown, f"{G}degraded_total", stage="tools", code="Unavailable") == 3
    assert value(grown, f"{G}degraded_total", stage="retrieval", code="Internal") == 1
    assert value(after, f"{G}circuit_state", upstream="retrieval") == 0, "one failure does not open it"
    assert value(after, f"{G}upstream_up", upstream="tools") == 1, "health still says SERVING"


async def test_retries_are_counted_per_upstream(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, LOOKUP) as served:
        before = await served.scrape()
        served.upstreams.tools.stream_fault = Fault(grpc.StatusCode.UNAVAILABLE, "restarting", times=1)
        served.replicas.replicas[0].servicer.fault = Fault(grpc.StatusCode.UNAVAILABLE, "engine restarting", times=1)
        events = await served.answer(ask("lookup", retrieval=False))
        after = await served.scrape()
    assert not events[-1].complete.degraded, "both retries succeeded"
    grown = changed(after, before)
    assert value(grown, f"{G}retries_total", upstream="tools") == 1
    assert value(grown, f"{G}retries_total", upstream="inference") == 1
    assert value(grown, f"{G}retries_total", upstream="retrieval") == 0


async def test_a_stream_past_the_limit_is_counted_as_refused(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, policy=ResiliencePolicy(max_streams=1)) as served:
        served.replicas.replicas[0].servicer.delta_delay_s = 0.3
        before = await served.scrape()
        holding = served.gateway.Generate(ask(retrieval=False), timeout=20)
        await holding.read()  # admitted: the one slot is taken
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.answer(ask(retrieval=False))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        holding.cancel()
        after = await served.scrape()
    grown = changed(after, before)
    assert value(grown, f"{G}admission_refused_total", reason="gateway_stream_limit") == 1
    assert value(after, f"{G}admission_refused_total", reason="rate_limited") == 0, "each reason has its series"


async def test_each_replica_reports_its_load_health_and_breaker(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, replicas=2) as served:
        first, second = served.replicas.replicas
        first.servicer.report(running=3, waiting=2, kv_used_tokens=300, kv_capacity_tokens=1000)
        second.servicer.report(running=1, waiting=0, kv_used_tokens=0, kv_capacity_tokens=1000)
        a, b = first.address, second.address
        loaded = await scrape_until(
            served.metrics_url,
            lambda s: (
                value(s, f"{G}replica_requests_running", replica=a) == 3
                and value(s, f"{G}replica_requests_running", replica=b) == 1
            ),
        )
        assert value(loaded, f"{G}replica_requests_waiting", replica=a) == 2
        assert value(loaded, f"{G}replica_kv_cache_usage_ratio", replica=a) == pytest.approx(0.3)
        assert value(loaded, f"{G}replica_kv_cache_usage_ratio", replica=b) == 0
        for name in (a, b, "inference"):
            assert value(loaded, f"{G}upstream_up", upstream=name) == 1, name
            assert loaded[(f"{G}circuit_state", frozenset({("upstream", name)}))] == 0, name

        await first.set_serving(False)
        down = await scrape_until(served.metrics_url, lambda s: value(s, f"{G}upstream_up", upstream=a) == 0)
    assert value(down, f"{G}circuit_state", upstream=a) == 2, "a replica not serving gets no calls"
    assert value(down, f"{G}circuit_state", upstream=b) == 0
    assert value(down, f"{G}circuit_state", upstream="inference") == 0, "the service is as open as its best replica"
    assert value(down, f"{G}upstream_up", upstream="inference") == 1


async def test_jobs_are_gauged_by_state_and_timed_when_they_finish(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, job_workers=1, job_queue_max=1) as served:
        inference = served.replicas.replicas[0].servicer
        inference.delta_delay_s = 60.0  # the first job runs until cancelled
        before = await served.scrape()
        submit = jobs_pb2.SubmitJobRequest(request=ask(retrieval=False))
        first = (await served.jobs.SubmitJob(submit, timeout=10)).job
        await scrape_until(served.metrics_url, lambda s: value(s, f"{G}jobs", state="running") == 1)
        second = (await served.jobs.SubmitJob(submit, timeout=10)).job
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await served.jobs.SubmitJob(submit, timeout=10)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        queued = await scrape_until(served.metrics_url, lambda s: value(s, f"{G}jobs", state="queued") == 1)
        assert value(queued, f"{G}jobs", state="running") == 1
        inference.delta_delay_s = 0.1
        await served.jobs.CancelJob(jobs_pb2.CancelJobRequest(id=first.id), timeout=10)
        assert (await wait_final(served.jobs, second.id, timeout_s=30)).state == jobs_pb2.JOB_STATE_SUCCEEDED
        done = await scrape_until(served.metrics_url, lambda s: value(s, f"{G}jobs", state="succeeded") == 1)
    assert value(done, f"{G}jobs", state="cancelled") == 1
    assert value(done, f"{G}jobs", state="queued") == value(done, f"{G}jobs", state="running") == 0
    assert value(done, f"{G}jobs", state="failed") == 0, "every state has its series"
    grown = changed(done, before)
    for state in ("succeeded", "cancelled"):
        assert value(grown, f"{G}jobs_finished_total", state=state) == 1, state
        assert value(grown, f"{G}job_run_duration_seconds_count", outcome=state) == 1, state
    assert value(grown, f"{G}job_run_duration_seconds_sum", outcome="succeeded") >= 0.3  # 3 deltas, 0.1 s apart
    assert value(grown, f"{G}job_run_duration_seconds_sum", outcome="cancelled") >= 1.0  # seen running, then queued
    assert value(grown, f"{G}admission_refused_total", reason="job_queue_full") == 1


async def test_upstream_gauges_go_on_while_the_job_store_hangs(tmp_path: Path) -> None:
    async with served_gateway(tmp_path) as served:
        replica = served.replicas.replicas[0]
        await scrape_until(served.metrics_url, lambda s: value(s, f"{G}jobs", state="queued") == 0 < len(s))
        # Another process holds the job file's write lock: a submit waits on it (busy_timeout, 5 s) in the
        # store's only thread, and a count of the jobs waits behind that submit.
        with closing(sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            submit = jobs_pb2.SubmitJobRequest(request=ask(retrieval=False))
            waiting = asyncio.ensure_future(served.jobs.SubmitJob(submit, timeout=30))
            await asyncio.sleep(0.2)
            await replica.set_serving(False)
            down = await scrape_until(
                served.metrics_url, lambda s: value(s, f"{G}upstream_up", upstream=replica.address) == 0, 3.0
            )
            other.execute("ROLLBACK")
        await waiting
    assert value(down, f"{G}circuit_state", upstream=replica.address) == 2
    assert not [key for key in down if key[0] == f"{G}jobs"], "no job counts rather than stale ones"


async def test_with_metrics_off_nothing_is_counted(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, LOOKUP, metrics=False) as served:
        before = recorded(G)
        events = await served.answer(ask("lookup"))
        after = recorded(G)
    assert events[-1].HasField("complete")
    assert after == before
