"""Two gateways on one Postgres job queue, one killed with SIGKILL under load: are jobs lost, how soon taken over?

Starts its own Postgres (initdb/pg_ctl in a temporary directory, tests/support/postgres.py) and a mesh on free
loopback ports whose gateway uses it, plus a second gateway on the same queue; submits jobs through both,
kills the second one while it runs jobs, and waits (bounded) for every job to end. Figures:

- jobs_lost_multi_gateway: submitted jobs that never reached a final state within the wait (must be 0);
- jobs_failed: jobs that ended other than SUCCEEDED (must be 0: the killed gateway's were run again);
- jobs_interrupted: jobs the killed gateway was running; takeover_s: from the kill until the survivor had
  claimed every one of them again (about --job-lease plus a third of it).

    python -m bench.multi_gateway --quick     # about a minute, as CI runs it
    python -m bench.multi_gateway

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench import harness
from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import free_port
from genmesh.v1 import gateway_pb2, jobs_pb2, jobs_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
FINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)


@dataclass(frozen=True, slots=True)
class Settings:
    jobs: int
    workers: int
    max_tokens: int
    lease_s: float
    wait_s: float


QUICK = Settings(jobs=40, workers=4, max_tokens=16, lease_s=2.0, wait_s=90.0)
FULL = Settings(jobs=200, workers=8, max_tokens=32, lease_s=5.0, wait_s=600.0)


def _request(i: int, max_tokens: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question=f"What does the with statement do? ({i})")
    request.retrieval.disabled = True
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    return request


async def _rows(url: str) -> dict[str, tuple[int, int, str]]:
    """Every job: (state, attempts, owner)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        rows = await (await db.execute("SELECT id, state, attempts, COALESCE(owner, '') FROM jobs")).fetchall()
    return {job_id: (state, attempts, owner) for job_id, state, attempts, owner in rows}


async def _states(stub: jobs_pb2_grpc.JobServiceStub) -> dict[str, int]:
    jobs: dict[str, int] = {}
    token = ""
    while True:
        page = await stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=1000, page_token=token), timeout=60)
        jobs.update((job.id, job.state) for job in page.jobs)
        if not (token := page.next_page_token):
            return jobs


async def _run(settings: Settings, url: str, scratch: Path) -> dict[str, float | int]:
    flags = ["--jobs-db", url, "--job-workers", str(settings.workers), "--job-lease", str(settings.lease_s)]
    flags += ["--job-queue-max", str(settings.jobs * 2)]
    logs = scratch / "logs"
    async with harness.running_mesh(logs, {"inference": ["--threads", "1"], "gateway": flags}) as mesh:
        ports = {name: int(service.address.rsplit(":", 1)[1]) for name, service in mesh.services.items()}
        ports["gateway"] = free_port()
        hosts = {s.name: "127.0.0.1" for s in topology.SERVICES}
        args = [*topology.serve_args(topology.GATEWAY, "127.0.0.1", ports, hosts), *flags]
        address = f"127.0.0.1:{ports['gateway']}"
        async with (
            harness.serving(topology.GATEWAY, args, address, scratch / "logs-second", 120) as second,
            open_channel(mesh.address("gateway")) as first_channel,
            open_channel(address) as second_channel,
        ):
            stubs = [jobs_pb2_grpc.JobServiceStub(c) for c in (first_channel, second_channel)]
            ids = []
            for i in range(settings.jobs):
                request = jobs_pb2.SubmitJobRequest(request=_request(i, settings.max_tokens))
                ids.append((await stubs[i % 2].SubmitJob(request, timeout=60)).job.id)
            victim = f"/{second.process.pid}/"
            deadline = time.monotonic() + settings.wait_s
            while not any(victim in owner and state == 2 for state, _, owner in (await _rows(url)).values()):
                if time.monotonic() > deadline:
                    raise SystemExit("benchmark failed: the second gateway never ran a job")
                await asyncio.sleep(0.02)
            second.process.kill()
            await second.process.wait()
            killed = time.monotonic()
            at_kill = await _rows(url)
            interrupted = {job_id: attempts for job_id, (state, attempts, owner) in at_kill.items() if victim in owner}
            takeover_s = -1.0
            deadline = time.monotonic() + settings.wait_s
            while time.monotonic() < deadline:
                if takeover_s < 0:
                    rows = await _rows(url)
                    if all(
                        rows[job_id][1] > attempts or rows[job_id][0] > 2 for job_id, attempts in interrupted.items()
                    ):
                        takeover_s = time.monotonic() - killed
                states = await _states(stubs[0])
                if takeover_s >= 0 and all(states.get(job_id) in FINAL for job_id in ids):
                    break
                await asyncio.sleep(0.1)
    lost = sum(1 for job_id in ids if states.get(job_id) not in FINAL)
    failed = sum(1 for job_id in ids if states.get(job_id) in FINAL[1:])
    print(
        f"{len(ids)} jobs on two gateways, one killed running {len(interrupted)}: lost {lost}, failed {failed},"
        f" taken over in {takeover_s:.2f} s (lease {settings.lease_s} s)"
    )
    return {
        "jobs_lost_multi_gateway": lost,
        "jobs_submitted": len(ids),
        "jobs_failed": failed,
        "jobs_interrupted": len(interrupted),
        "takeover_s": round(takeover_s, 2),
        "lease_s": settings.lease_s,
    }


async def measure_jobs_lost_multi_gateway(quick: bool) -> dict[str, float | int]:
    """Run the benchmark (quick: about a minute) on a Postgres of its own; its figures."""
    sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers, for their throwaway Postgres server
    from support.postgres import create_database, running_postgres

    settings = QUICK if quick else FULL
    with harness.scratch() as scratch, running_postgres() as server:
        return await _run(settings, create_database(server), scratch)


async def _measure(quick: bool, args: argparse.Namespace) -> harness.Figures:
    return dict(await measure_jobs_lost_multi_gateway(quick))


def main() -> None:
    """``python -m bench.multi_gateway [--quick]``: the figures, the last line one JSON object."""
    harness.main("multi_gateway", __doc__, _measure, True, False)


if __name__ == "__main__":
    main()
