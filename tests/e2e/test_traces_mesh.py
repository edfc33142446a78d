"""The four processes of a mesh started as `genmesh up` starts it, each exporting spans over OTLP/gRPC to a real
receiver: one Generate with tool calls is one trace across all four services, every span linked to a parent in
it, the gateway's stages and the engine's phases nested where they ran and in the order they ran; a client's
traceparent is continued, and a job submitted with one runs in that trace."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from pathlib import Path

from support.otlp_receiver import OtlpReceiver, ReceivedSpan, running_receiver
from support.streams import collect

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.launcher import start_mesh
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, jobs_pb2, jobs_pb2_grpc

GENERATE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
JOB_TRACE = "5ce0e9a56015fec5aadfa328ae398115"
CLIENT_SPAN = "00f067aa0ba902b7"
SERVICES = {f"genmesh-{spec.name}" for spec in mesh.SERVICES}
GATEWAY_GENERATE = "genmesh.v1.GatewayService/Generate"
INFERENCE_GENERATE = "genmesh.v1.InferenceService/Generate"
QUERY = "genmesh.v1.RetrievalService/Query"
INVOKE_MANY = "genmesh.v1.ToolsService/InvokeMany"
STAGES = ("gateway.retrieval", "gateway.tools", "gateway.inference")
PHASES = ("inference.queued", "inference.prefill", "inference.decode")
REQUEST = gateway_pb2.GatewayRequest(
    question="How does the with statement use a context manager?",
    tool_calls=[
        common_pb2.ToolCall(call_id="sum", name="calculator", arguments_json='{"expression": "6*7"}'),
        common_pb2.ToolCall(
            call_id="docs", name="search_docs", arguments_json='{"query": "context manager", "top_k": 2}'
        ),
    ],
    sampling=common_pb2.SamplingParams(max_tokens=8, temperature=0.0),
)


def traceparent(trace_id: str) -> tuple[tuple[str, str]]:
    return (("traceparent", f"00-{trace_id}-{CLIENT_SPAN}-01"),)


def one(spans: list[ReceivedSpan], service: str, name: str, kind: str | None = None) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name and kind in (None, s.kind)]
    assert len(found) == 1, (service, name, kind, [(s.service, s.name, s.kind) for s in spans])
    return found[0]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.parent_span_id == parent.span_id), key=lambda s: s.start_ns)


def tree(spans: list[ReceivedSpan]) -> str:
    """The trace as an indented tree (the root: the span whose parent is not in it), with durations."""
    ids = {s.span_id for s in spans}
    lines: list[str] = []

    def add(span: ReceivedSpan, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        head = f"{prefix}{branch}{span.service:<18} {span.kind:<8} {span.name}"
        lines.append(f"{head:<78} {(span.end_ns - span.start_ns) / 1e6:6.1f} ms")
        below = children(spans, span)
        for i, child in enumerate(below):
            add(child, prefix + ("" if top else ("   " if last else "│  ")), i == len(below) - 1, False)

    for root in sorted((s for s in spans if s.parent_span_id not in ids), key=lambda s: s.start_ns):
        add(root, "", True, True)
    return "\n".join(lines)


async def exported(
    receiver: OtlpReceiver, trace_id: str, done: Callable[[list[ReceivedSpan]], bool]
) -> list[ReceivedSpan]:
    """The spans of ``trace_id`` once ``done`` holds for them (the processes export every 100 ms)."""
    await receiver.wait_for(lambda got: done([s for s in got if s.trace_id == trace_id]), timeout_s=60)
    await asyncio.sleep(0.5)  # anything still on its way (a span ended late) comes too
    return [s for s in receiver.spans if s.trace_id == trace_id]


def complete(top: str) -> Callable[[list[ReceivedSpan]], bool]:
    """Whether the spans of an answer under the gateway's span ``top`` all came (the gateway's ends last)."""

    def done(spans: list[ReceivedSpan]) -> bool:
        names = {(s.service, s.name) for s in spans}
        wanted = {("genmesh-gateway", top), ("genmesh-inference", "inference.decode")}
        wanted |= {("genmesh-inference", INFERENCE_GENERATE)}
        wanted |= {("genmesh-tools", INVOKE_MANY), ("genmesh-retrieval", QUERY)}
        return wanted <= names and sum(1 for s in spans if s.service == "genmesh-retrieval") >= 2

    return done


def nested_in_order(parent: ReceivedSpan, chain: list[ReceivedSpan]) -> None:
    """``chain`` are children of ``parent``, inside it, each starting where the one before ended."""
    assert all(span.parent_span_id == parent.span_id for span in chain), chain
    assert parent.start_ns <= chain[0].start_ns and chain[-1].end_ns <= parent.end_ns
    for earlier, later in itertools.pairwise(chain):
        assert earlier.start_ns <= earlier.end_ns == later.start_ns, (earlier, later)


async def test_one_generate_is_one_trace_across_the_mesh_and_a_job_runs_in_its_submit_trace(tmp_path: Path) -> None:
    async with running_receiver() as receiver:
        env = {"GENMESH_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        jobs_db = tmp_path / "jobs.db"
        running = await start_mesh(
            log_dir=tmp_path / "logs",
            extra_args={"inference": ["--threads", "1"], "gateway": ["--jobs-db", str(jobs_db)]},
            env=env,
        )
        try:
            async with open_channel(running.address("gateway")) as channel:
                gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
                got = await collect(gateway.Generate(REQUEST, metadata=traceparent(GENERATE_TRACE), timeout=120))
                spans = await exported(receiver, GENERATE_TRACE, complete(GATEWAY_GENERATE))

                jobs = jobs_pb2_grpc.JobServiceStub(channel)
                submit = jobs_pb2.SubmitJobRequest(request=REQUEST)
                job = (await jobs.SubmitJob(submit, metadata=traceparent(JOB_TRACE), timeout=10)).job
                job_spans = await exported(receiver, JOB_TRACE, complete("job.run"))
        finally:
            await running.stop(grace_s=2.0)

    assert got.completion.usage.completion_tokens > 0
    results = [event.tool_result for event in got.events if event.HasField("tool_result")]
    assert sorted(r.call_id for r in results) == ["docs", "sum"] and not any(r.HasField("error") for r in results)
    if os.environ.get("GENMESH_PRINT_TRACE"):
        print(f"\n{tree(spans)}\n\n{tree(job_spans)}")

    # One trace, spans from every process, each linked to a parent in it; the root continues the client's span.
    assert {s.service for s in spans} == SERVICES
    ids = {s.span_id for s in spans}
    [root] = [s for s in spans if s.parent_span_id not in ids]
    assert (root.service, root.kind, root.name, root.parent_span_id) == (
        "genmesh-gateway",
        "SERVER",
        GATEWAY_GENERATE,
        CLIENT_SPAN,
    )

    # The gateway's stages under its Generate span: retrieval and tools at once, then inference.
    retrieval, tools, inference = (one(spans, "genmesh-gateway", name) for name in STAGES)
    for stage in (retrieval, tools, inference):
        assert stage.parent_span_id == root.span_id and root.start_ns <= stage.start_ns <= stage.end_ns <= root.end_ns
    assert max(retrieval.end_ns, tools.end_ns) <= inference.start_ns
    assert one(spans, "genmesh-gateway", QUERY, "CLIENT").parent_span_id == retrieval.span_id
    assert one(spans, "genmesh-gateway", INVOKE_MANY, "CLIENT").parent_span_id == tools.span_id
    generate_call = one(spans, "genmesh-gateway", INFERENCE_GENERATE, "CLIENT")
    assert generate_call.parent_span_id == inference.span_id

    # Each hop: the callee's server span under the caller's client span, tools → retrieval for search_docs too.
    invoke = one(spans, "genmesh-tools", INVOKE_MANY, "SERVER")
    assert invoke.parent_span_id == one(spans, "genmesh-gateway", INVOKE_MANY, "CLIENT").span_id
    search = one(spans, "genmesh-tools", QUERY, "CLIENT")
    assert search.parent_span_id == invoke.span_id
    queries = [s for s in spans if s.service == "genmesh-retrieval" and s.name == QUERY]
    assert all(s.kind == "SERVER" for s in queries)
    assert sorted(s.parent_span_id for s in queries) == sorted(
        [search.span_id, one(spans, "genmesh-gateway", QUERY, "CLIENT").span_id]
    ), "one Query from the gateway's retrieval stage, one from search_docs"

    # The engine's phases under the inference server span, one after another, with the tokens reported.
    server = one(spans, "genmesh-inference", INFERENCE_GENERATE, "SERVER")
    assert server.parent_span_id == generate_call.span_id
    phases = [one(spans, "genmesh-inference", name) for name in PHASES]
    nested_in_order(server, phases)
    usage = got.completion.usage
    assert phases[1].attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert phases[2].attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens

    # The job: SubmitJob continues the client's trace, and the run is in it, down to the engine's phases.
    submitted = one(job_spans, "genmesh-gateway", "genmesh.v1.JobService/SubmitJob", "SERVER")
    assert submitted.parent_span_id == CLIENT_SPAN
    run = one(job_spans, "genmesh-gateway", "job.run")
    assert run.parent_span_id == submitted.span_id and run.attributes["genmesh.job.id"] == job.id
    job_ids = {s.span_id for s in job_spans}
    assert [s for s in job_spans if s.parent_span_id not in job_ids] == [submitted]
    assert {s.service for s in job_spans} == SERVICES
    assert {s.name for s in children(job_spans, run)} >= set(STAGES)
    nested_in_order(
        one(job_spans, "genmesh-inference", INFERENCE_GENERATE, "SERVER"),
        [one(job_spans, "genmesh-inference", name) for name in PHASES],
    )
