"""Background jobs benchmark: how fast the gateway accepts and completes jobs, and how soon a job speaks.

Starts a mesh on free loopback ports (the gateway with --job-workers N and its own job file),
measures, stops it. Figures, each beside a baseline measured in the same run:

- accepted_per_s: SubmitJob calls committed per second (16 clients submitting at once);
- completed_per_s: jobs finished per second, from the first submit to the last finish, beside
  generate_per_s, the same requests through GatewayService.Generate with N streams at a time
  (completed_ratio_vs_generate = completed_per_s / generate_per_s);
- submit_to_first_event_ms: median time from sending SubmitJob to WatchJob's first event, one job at a
  time on an idle queue, beside generate_first_event_ms, Generate's first event for the same request;
- jobs_lost: accepted jobs that are missing afterwards or did not succeed (must be 0).

    python -m bench.jobs --quick     # about a minute, as CI runs it
    python -m bench.jobs             # the figures of docs/BENCHMARKS.md

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, replace

import grpc

from bench import harness
from genmesh.channels import open_channel
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc, jobs_pb2, jobs_pb2_grpc

QUESTION = "What happens when a class defines __enter__ and __exit__?"
SUBMITTERS = 16


@dataclass(frozen=True, slots=True)
class Settings:
    jobs: int
    workers: int
    max_tokens: int
    latency_samples: int


QUICK = Settings(jobs=300, workers=8, max_tokens=16, latency_samples=40)
FULL = Settings(jobs=1000, workers=8, max_tokens=32, latency_samples=100)


def _request(i: int, max_tokens: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question=f"{QUESTION} ({i})")
    request.retrieval.disabled = True
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    return request


async def measure_first_event(
    jobs: jobs_pb2_grpc.JobServiceStub, gateway: gateway_pb2_grpc.GatewayServiceStub, settings: Settings
) -> dict[str, float]:
    """Submit → first WatchJob event, against Generate → first event, one at a time, interleaved."""
    via_job: list[float] = []
    direct: list[float] = []
    for i in range(settings.latency_samples):
        request = _request(i, settings.max_tokens)
        start = time.perf_counter()
        job = (await jobs.SubmitJob(jobs_pb2.SubmitJobRequest(request=request), timeout=60)).job
        watch = jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id), timeout=120)
        first = 0.0
        async for message in watch:
            if not first and message.HasField("event"):
                first = time.perf_counter() - start
        via_job.append(first * 1000)
        start = time.perf_counter()
        first = 0.0
        async for _ in gateway.Generate(request, timeout=120):
            first = first or time.perf_counter() - start
        direct.append(first * 1000)
    job_ms, direct_ms = statistics.median(via_job), statistics.median(direct)
    print(f"first event: job {job_ms:.2f} ms   Generate {direct_ms:.2f} ms   overhead {job_ms - direct_ms:.2f} ms")
    return {
        "submit_to_first_event_ms": round(job_ms, 2),
        "generate_first_event_ms": round(direct_ms, 2),
        "first_event_overhead_ms": round(job_ms - direct_ms, 2),
    }


async def measure_throughput(
    jobs: jobs_pb2_grpc.JobServiceStub, gateway: gateway_pb2_grpc.GatewayServiceStub, settings: Settings
) -> dict[str, float]:
    """Submit every job at once (16 submitters), wait for all; then the same requests through Generate."""
    requests = [_request(1000 + i, settings.max_tokens) for i in range(settings.jobs)]
    ids: list[str] = []
    pending = iter(requests)

    async def submitter() -> None:
        for request in pending:
            job = (await jobs.SubmitJob(jobs_pb2.SubmitJobRequest(request=request), timeout=60)).job
            ids.append(job.id)

    start = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
    accepted_s = time.perf_counter() - start
    finished = await _wait_all(jobs, set(ids), timeout_s=600)
    completed_s = time.perf_counter() - start
    lost = len(ids) - sum(1 for job in finished if job.state == jobs_pb2.JOB_STATE_SUCCEEDED)

    streams = iter(requests)

    async def streamer() -> None:
        for request in streams:
            async for _ in gateway.Generate(request, timeout=120):
                pass

    start = time.perf_counter()
    await asyncio.gather(*(streamer() for _ in range(settings.workers)))
    generate_s = time.perf_counter() - start

    accepted, completed, generated = len(ids) / accepted_s, len(ids) / completed_s, len(ids) / generate_s
    print(
        f"{len(ids)} jobs, {settings.workers} workers: accepted {accepted:.1f}/s   completed {completed:.2f}/s"
        f"   Generate x{settings.workers} {generated:.2f}/s   ratio {completed / generated:.3f}   lost {lost}"
    )
    return {
        "accepted_per_s": round(accepted, 1),
        "completed_per_s": round(completed, 2),
        "generate_per_s": round(generated, 2),
        "completed_ratio_vs_generate": round(completed / generated, 3),
        "jobs_lost": lost,
    }


async def _wait_all(stub: jobs_pb2_grpc.JobServiceStub, ids: set[str], timeout_s: float) -> list[jobs_pb2.Job]:
    """The jobs once none of ``ids`` is queued or running (or the timeout passed), read with ListJobs."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs: list[jobs_pb2.Job] = []
        token = ""
        while True:
            page = await stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=1000, page_token=token), timeout=60)
            jobs.extend(job for job in page.jobs if job.id in ids)
            token = page.next_page_token
            if not token:
                break
        busy = (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING)
        if not any(job.state in busy for job in jobs) or time.monotonic() > deadline:
            return jobs
        await asyncio.sleep(0.1)


async def main_async(settings: Settings, args: argparse.Namespace) -> harness.Figures:
    settings = replace(settings, jobs=args.jobs or settings.jobs, workers=args.workers or settings.workers)
    with harness.scratch() as scratch:
        gateway_args = [
            "--jobs-db",
            str(scratch / "jobs.db"),
            "--job-workers",
            str(settings.workers),
            "--job-queue-max",
            str(settings.jobs * 2),
        ]
        async with harness.running_mesh(
            scratch / "logs", {"inference": ["--threads", "1"], "gateway": gateway_args}
        ) as mesh:
            try:
                async with open_channel(mesh.address("gateway")) as channel:
                    jobs = jobs_pb2_grpc.JobServiceStub(channel)
                    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
                    async for _ in gateway.Generate(_request(-1, settings.max_tokens), timeout=120):
                        pass  # warm the channels and the model's first step
                    latency = await measure_first_event(jobs, gateway, settings)
                    throughput = await measure_throughput(jobs, gateway, settings)
            except grpc.aio.AioRpcError as error:
                raise SystemExit(f"benchmark failed: {error.code().name}: {error.details()}") from None
    return {
        "jobs": settings.jobs,
        "workers": settings.workers,
        "max_tokens": settings.max_tokens,
        **throughput,
        **latency,
    }


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, help="job workers (default 8)")
    parser.add_argument("--jobs", type=int, help="jobs in the throughput run")


if __name__ == "__main__":
    harness.main("jobs", __doc__, main_async, QUICK, FULL, options)
