"""Helpers for the job tests: a gateway of their own beside the session mesh, and job-watching clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.jobs.model import JobEvent, JobRecord
from gateway.jobs.sqlite_store import SqliteJobStore
from genmesh import mesh as topology
from genmesh.cli.launcher import Mesh, ServiceProcess, free_port, start_service, wait_ready
from genmesh.v1 import jobs_pb2, jobs_pb2_grpc

FINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)


async def start_jobs_gateway(
    upstreams: Mesh, db: Path | str, log_dir: Path, *flags: str, port: int | None = None
) -> ServiceProcess:
    """A gateway with its own job queue file (or a Postgres URL), calling the upstream services of ``upstreams``."""
    ports = {name: int(service.address.rsplit(":", 1)[1]) for name, service in upstreams.services.items()}
    ports[topology.GATEWAY.name] = port or free_port()
    hosts = {s.name: "127.0.0.1" for s in topology.SERVICES}
    args = [*topology.serve_args(topology.GATEWAY, "127.0.0.1", ports, hosts), "--jobs-db", str(db), *flags]
    gateway = await start_service(topology.GATEWAY, args, f"127.0.0.1:{ports['gateway']}", log_dir)
    try:
        await wait_ready(gateway, timeout_s=60)
    except BaseException:
        gateway.process.kill()
        await gateway.process.wait()
        raise
    return gateway


async def stop(gateway: ServiceProcess) -> None:
    """SIGTERM, then SIGKILL after a while."""
    if gateway.process.returncode is None:
        gateway.process.terminate()
        try:
            await asyncio.wait_for(gateway.process.wait(), 20)
        except TimeoutError:
            gateway.process.kill()
            await gateway.process.wait()


async def wait_final(stub: jobs_pb2_grpc.JobServiceStub, job_id: str, timeout_s: float = 120) -> jobs_pb2.Job:
    """The job once it reached a final state (polling GetJob)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job: jobs_pb2.Job = (await stub.GetJob(jobs_pb2.GetJobRequest(id=job_id), timeout=10)).job
        if job.state in FINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {jobs_pb2.JobState.Name(job.state)}"
        await asyncio.sleep(0.1)


async def list_all(
    stub: jobs_pb2_grpc.JobServiceStub,
    state: jobs_pb2.JobState.ValueType = jobs_pb2.JOB_STATE_UNSPECIFIED,
    page_size: int = 7,
) -> list[jobs_pb2.Job]:
    """Every job, following next_page_token."""
    jobs: list[jobs_pb2.Job] = []
    token = ""
    while True:
        page = await stub.ListJobs(
            jobs_pb2.ListJobsRequest(state=state, page_size=page_size, page_token=token), timeout=10
        )
        jobs.extend(page.jobs)
        token = page.next_page_token
        if not token:
            return jobs


async def watch_all(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> list[jobs_pb2.WatchJobResponse]:
    """Every message of a WatchJob stream."""
    return [m async for m in stub.WatchJob(jobs_pb2.WatchJobRequest(id=job_id), timeout=120)]


async def stored_jobs(db: Path) -> dict[str, tuple[JobRecord, list[JobEvent]]]:
    """Every job in a stopped gateway's queue file, with its stored events: what the gateway left behind."""
    store = SqliteJobStore(db)
    await store.open()
    try:
        jobs: dict[str, tuple[JobRecord, list[JobEvent]]] = {}
        for record in await store.list(None, None, 100_000):
            _, events = await store.snapshot(record.id, 0, 100_000)
            jobs[record.id] = (record, events)
        return jobs
    finally:
        await store.close()
