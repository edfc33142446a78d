"""A background job's run in the trace of its submission: JobService served by genmesh.server.serve (tracing on,
exported by the OpenTelemetry SDK to a real OTLP receiver), real workers and SQLite or Postgres queue, the
gateway's pipeline calling real in-process upstreams. The job keeps the SubmitJob span's traceparent; each run is
a ``job.run`` span under it, and the run's upstream calls under that. Also: the column's migration."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
import pytest_asyncio
from inprocess import Fault, ScriptedMesh, ScriptedTool, start_scripted_mesh
from opentelemetry import trace
from support.jobs_gateway import wait_final
from support.otlp_receiver import OtlpReceiver, ReceivedSpan, running_receiver
from support.served import served

from gateway.jobs.config import JobConfig
from gateway.jobs.model import NewJob
from gateway.jobs.runtime import JobRuntime
from gateway.jobs.service import SERVICE_NAME, JobServicer
from gateway.jobs.stores import make_store
from gateway.jobs.tracing import ATTEMPT, JOB_ID, RUN, STATE
from gateway.orchestrator import Orchestrator
from gateway.upstreams import Upstreams
from genmesh import tracing
from genmesh.channels import open_channel
from genmesh.v1 import common_pb2, gateway_pb2, jobs_pb2, jobs_pb2_grpc

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SUBMIT_SPAN = f"{SERVICE_NAME}/SubmitJob"
REQUEST = gateway_pb2.GatewayRequest(
    question="What does yield do?",
    tool_calls=[common_pb2.ToolCall(call_id="sum", name="calculator", arguments_json='{"expression": "1+1"}')],
)


class _Jobs:
    """JobService alone, as genmesh.server.serve runs a service."""

    service_name = SERVICE_NAME
    also_serves: tuple[str, ...] = ()
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()

    def __init__(self, runtime: JobRuntime) -> None:
        self.runtime = runtime

    def register(self, server: grpc.aio.Server) -> None:
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self.runtime), server)

    async def start(self) -> None:
        await self.runtime.start()

    def drain(self) -> None:
        pass

    async def stop(self) -> None:
        await self.runtime.stop()


async def exported(
    receiver: OtlpReceiver, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 30.0
) -> list[ReceivedSpan]:
    """The spans received once ``done`` holds for them (each round exports every span ended so far)."""
    async with asyncio.timeout(timeout_s):
        while True:
            assert await asyncio.to_thread(tracing.flush)
            if done(receiver.spans):
                return list(receiver.spans)
            await asyncio.sleep(0.05)


@dataclass
class Gateway:
    stub: jobs_pb2_grpc.JobServiceStub
    runtime: JobRuntime
    receiver: OtlpReceiver
    upstreams: ScriptedMesh

    async def exported(self) -> list[ReceivedSpan]:
        """The spans received once a job's run span is among them."""
        return await exported(self.receiver, _has_run)


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> JobConfig:
    if request.param == "postgres":
        return JobConfig(request.getfixturevalue("postgres_url"), workers=1)
    return JobConfig(str(tmp_path / "jobs.db"), workers=1)


@pytest_asyncio.fixture
async def gateway(config: JobConfig) -> AsyncIterator[Gateway]:
    """A traced JobService over a fresh queue; its runs call scripted upstreams through traced channels."""
    async with AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(running_receiver())
        tracing.install("gateway", tracing.TraceSettings(receiver.endpoint))
        stack.push_async_callback(asyncio.to_thread, tracing.shutdown)  # the receiver must still listen
        scripted: ScriptedMesh = await start_scripted_mesh(ScriptedTool("calculator"))
        stack.push_async_callback(scripted.stop)
        upstreams = Upstreams(scripted.targets())  # after install: its channels trace
        stack.push_async_callback(upstreams.close)
        runtime = JobRuntime(config, Orchestrator(upstreams).answer)
        jobs = await stack.enter_async_context(served(_Jobs(runtime), metrics=False))
        channel = await stack.enter_async_context(open_channel(jobs.address))
        yield Gateway(jobs_pb2_grpc.JobServiceStub(channel), runtime, receiver, scripted)


def _has_run(spans: list[ReceivedSpan]) -> bool:
    return any(span.name == RUN for span in spans)


def _under(span: ReceivedSpan, ancestor: ReceivedSpan, spans: list[ReceivedSpan]) -> bool:
    """Whether ``ancestor`` is on ``span``'s chain of parents."""
    by_id = {s.span_id: s for s in spans if s.trace_id == span.trace_id}
    parent = by_id.get(span.parent_span_id)
    while parent is not None:
        if parent.span_id == ancestor.span_id:
            return True
        parent = by_id.get(parent.parent_span_id)
    return False


async def submit(
    gateway: Gateway, traceparent: str | None, state: jobs_pb2.JobState.ValueType = jobs_pb2.JOB_STATE_SUCCEEDED
) -> jobs_pb2.Job:
    metadata = () if traceparent is None else (("traceparent", traceparent),)
    answer = await gateway.stub.SubmitJob(jobs_pb2.SubmitJobRequest(request=REQUEST), metadata=metadata, timeout=10)
    job: jobs_pb2.Job = await wait_final(gateway.stub, answer.job.id, timeout_s=60)
    assert job.state == state, job
    return job


async def test_a_job_runs_in_the_trace_of_the_submit_call(gateway: Gateway) -> None:
    job = await submit(gateway, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
    spans = await gateway.exported()

    [submitted] = [span for span in spans if span.name == SUBMIT_SPAN]
    [run] = [span for span in spans if span.name == RUN]
    assert (submitted.trace_id, submitted.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    assert (run.trace_id, run.parent_span_id, run.kind) == (CLIENT_TRACE, submitted.span_id, "CONSUMER")
    assert run.attributes == {JOB_ID: job.id, ATTEMPT: 1, STATE: "succeeded"}
    assert run.status == "UNSET" and submitted.end_ns <= run.start_ns
    stored = await gateway.runtime.get(job.id)
    assert stored.traceparent == f"00-{CLIENT_TRACE}-{submitted.span_id}-01"

    upstream = {span.name for span in spans if span.kind == "CLIENT" and _under(span, run, spans)}
    assert {
        "genmesh.v1.ToolsService/ListTools",
        "genmesh.v1.RetrievalService/Query",
        "genmesh.v1.ToolsService/InvokeMany",
        "genmesh.v1.InferenceService/Generate",
    } <= upstream, upstream
    others = {span.name for span in spans if span.trace_id != CLIENT_TRACE}
    assert others == {f"{SERVICE_NAME}/GetJob"}, "one trace but for the polls of the job, which sent no traceparent"


async def test_a_job_submitted_without_a_traceparent_runs_under_the_submit_span(gateway: Gateway) -> None:
    await submit(gateway, None)
    spans = await gateway.exported()
    [submitted] = [span for span in spans if span.name == SUBMIT_SPAN]
    [run] = [span for span in spans if span.name == RUN]
    assert submitted.parent_span_id == "", "the gateway started the trace"
    assert (run.trace_id, run.parent_span_id) == (submitted.trace_id, submitted.span_id)


async def test_a_failed_run_is_an_error_span_saying_why(gateway: Gateway) -> None:
    gateway.upstreams.inference.fault = Fault(grpc.StatusCode.INVALID_ARGUMENT, "the prompt is refused")
    job = await submit(gateway, None, jobs_pb2.JOB_STATE_FAILED)
    [run] = [span for span in await gateway.exported() if span.name == RUN]
    assert run.attributes == {JOB_ID: job.id, ATTEMPT: 1, STATE: "failed"}
    assert run.status == "ERROR"


async def test_an_unsampled_submit_leaves_the_run_unrecorded_too(gateway: Gateway) -> None:
    # The gateway's own decision not to record the submission (a ratio below 1), stored with the job; the run
    # follows it, although the gateway's ratio (1) would record a client's unsampled trace.
    unsampled = trace.SpanContext(int(CLIENT_TRACE, 16), int(CLIENT_SPAN, 16), False, trace.TraceFlags(0))
    with trace.use_span(trace.NonRecordingSpan(unsampled)):
        record = await gateway.runtime.submit(REQUEST.SerializeToString(), "", 0)
    assert record.traceparent == f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
    job = await wait_final(gateway.stub, record.id, timeout_s=60)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job
    await submit(gateway, None)  # a sampled one after it: once its run is exported, the first's would be too
    spans = await gateway.exported()
    assert {span.trace_id for span in spans} != {CLIENT_TRACE} and all(span.trace_id != CLIENT_TRACE for span in spans)
    assert len([span for span in spans if span.name == RUN]) == 1


async def test_a_retried_job_runs_its_next_attempt_in_the_same_trace(config: JobConfig) -> None:
    # The first attempt, as a gateway that then died left it: running. The job was submitted inside a trace.
    crashed = make_store(config)
    await crashed.open()
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    await crashed.submit(NewJob("job-1", REQUEST.SerializeToString(), "", 0, 1.0, traceparent=traceparent), 10)
    assert (await crashed.claim_next(2.0)) is not None
    await crashed.close()
    config = JobConfig(config.db, workers=1, lease_s=0.6)  # Postgres: the lease runs out soon
    async with running_receiver() as receiver:
        tracing.install("gateway", tracing.TraceSettings(receiver.endpoint))
        scripted = await start_scripted_mesh(ScriptedTool("calculator"))
        upstreams = Upstreams(scripted.targets())
        runtime = JobRuntime(config, Orchestrator(upstreams).answer)
        await runtime.start()
        try:
            spans = await exported(receiver, _has_run, timeout_s=60)
        finally:
            await runtime.stop()
            await upstreams.close()
            await scripted.stop()
            await asyncio.to_thread(tracing.shutdown)
    [run] = [span for span in spans if span.name == RUN]
    assert (run.trace_id, run.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    assert run.attributes == {JOB_ID: "job-1", ATTEMPT: 2, STATE: "succeeded"}
    assert any(span.name == "genmesh.v1.InferenceService/Generate" and _under(span, run, spans) for span in spans)


#: The job table as the stores made it before jobs kept a traceparent (with owners).
BEFORE_SQLITE = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, idempotency_key TEXT, state INTEGER NOT NULL,
    priority INTEGER NOT NULL, request BLOB NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,
    error_code INTEGER NOT NULL DEFAULT 0, error_message TEXT NOT NULL DEFAULT '', result BLOB NOT NULL DEFAULT x'',
    seq_base INTEGER NOT NULL DEFAULT 0, owner_key TEXT NOT NULL DEFAULT '', allowed_tools TEXT NOT NULL DEFAULT '[]',
    UNIQUE (owner_key, idempotency_key)
);
INSERT INTO jobs (id, state, priority, request, created, owner_key) VALUES ('job-old', 1, 0, x'72', 1, 'apiKeys/a');
"""
BEFORE_POSTGRES = """
CREATE TABLE jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL UNIQUE, idempotency_key TEXT,
    state SMALLINT NOT NULL, priority INTEGER NOT NULL, request BYTEA NOT NULL, created DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION, finished DOUBLE PRECISION, attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE, error_code INTEGER NOT NULL DEFAULT 0,
    error_message TEXT NOT NULL DEFAULT '', result BYTEA NOT NULL DEFAULT '', seq_base BIGINT NOT NULL DEFAULT 0,
    owner TEXT, lease_until DOUBLE PRECISION, owner_key TEXT NOT NULL DEFAULT '',
    allowed_tools TEXT NOT NULL DEFAULT '[]'
);
INSERT INTO jobs (id, state, priority, request, created, owner_key) VALUES ('job-old', 1, 0, '\\x72', 1, 'apiKeys/a');
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_queue_made_before_traceparents_is_migrated(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        with sqlite3.connect(tmp_path / "jobs.db") as db:
            db.executescript(BEFORE_SQLITE)
        config = JobConfig(str(tmp_path / "jobs.db"))
    else:
        config = JobConfig(request.getfixturevalue("postgres_url"))
        with psycopg.connect(config.db, autocommit=True) as conn:
            conn.execute(BEFORE_POSTGRES.encode())
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    store = make_store(config)
    await store.open()
    try:
        await store.submit(NewJob("job-new", b"r", "", 0, 2.0, traceparent=traceparent), 10)
        old, new = await store.claim_next(3.0), await store.claim_next(3.0)
        assert old is not None and (old.id, old.traceparent, old.owner) == ("job-old", "", "apiKeys/a")
        assert new is not None and (new.id, new.traceparent) == ("job-new", traceparent)
    finally:
        await store.close()
    store = make_store(config)  # opened again: nothing left to migrate, nothing lost
    await store.open()
    try:
        again = await store.get("job-new")
        assert again is not None and again.traceparent == traceparent
    finally:
        await store.close()


async def test_a_gateway_starting_on_a_migrated_queue_waits_for_no_reader(postgres_url: str) -> None:
    config = JobConfig(postgres_url)
    first = make_store(config)
    await first.open()  # the schema as it is now: nothing left to migrate
    await first.close()
    with psycopg.connect(postgres_url) as reader:  # a read under way holds ACCESS SHARE on jobs until it ends
        reader.execute("SELECT COUNT(*) FROM jobs")
        store = make_store(config)
        opening = asyncio.ensure_future(store.open())
        done, _ = await asyncio.wait({opening}, timeout=5)
        reader.rollback()
        await opening
        await store.close()
    assert done, "the start waited for the reader: it took a lock of the whole table (and held up every call after)"
