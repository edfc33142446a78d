"""Two gateways on one Postgres queue, one killed with SIGKILL mid-run: the other takes its jobs over after the
lease, every job ends once, and WatchJob on the survivor follows a job that the killed gateway started."""

from __future__ import annotations

import asyncio
import time

import grpc
import psycopg
import pytest
from support.jobs_gateway import list_all, start_jobs_gateway, stop, wait_final, watch_all

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh
from genmesh.v1 import gateway_pb2, jobs_pb2, jobs_pb2_grpc

JOBS = 16
WORKERS = 2
LEASE_S = 3.0
#: Deltas of the long job the survivor's watcher has seen, run by the other gateway, when that one is killed.
SEEN_DELTAS = 5


def _request(i: int, max_tokens: int = 24) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question=f"Question {i}: how do generators work?")
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    request.retrieval.disabled = i % 4 != 0
    return request


async def _owners(url: str) -> dict[str, int]:
    """The running jobs, each with the process id of the gateway holding its lease (owner = host/pid/nonce)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        rows = await (await db.execute("SELECT id, owner FROM jobs WHERE state = 2")).fetchall()
    return {job_id: int(owner.split("/")[1]) for job_id, owner in rows}


async def _read(call: grpc.aio.UnaryStreamCall, seen: list[jobs_pb2.WatchJobResponse], deltas: int) -> None:
    """Read the watch until it has seen ``deltas`` deltas in all (0: to its end)."""
    while not deltas or sum(m.event.HasField("delta") for m in seen) < deltas:
        message = await call.read()
        if message is grpc.aio.EOF:
            assert not deltas, "the watch ended early"
            return
        seen.append(message)


async def test_two_gateways_share_the_queue_and_one_takes_over_a_killed_ones_jobs(
    mesh: Mesh, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("jobs-multi")
    flags = ("--job-workers", str(WORKERS), "--job-lease", str(LEASE_S), "--job-max-attempts", "3")
    gateways = [await start_jobs_gateway(mesh, postgres_url, root / f"logs-{i}", *flags) for i in range(2)]
    channels = [open_channel(g.address) for g in gateways]
    try:
        stubs = [jobs_pb2_grpc.JobServiceStub(channel) for channel in channels]
        # First a long job (greedy until its row is full): it still runs when its gateway is killed.
        submit = jobs_pb2.SubmitJobRequest(request=_request(-1, 4096), idempotency_key="long", priority=10)
        long_id = (await stubs[0].SubmitJob(submit, timeout=10)).job.id
        async with asyncio.timeout(30):
            while long_id not in (owners := await _owners(postgres_url)):
                await asyncio.sleep(0.02)
        pids = [g.process.pid for g in gateways]
        victim = pids.index(owners[long_id])
        stub = stubs[1 - victim]  # the survivor's
        ids = [long_id]
        for i in range(JOBS):  # through both gateways
            request = jobs_pb2.SubmitJobRequest(request=_request(i), idempotency_key=f"multi-{i}")
            ids.append((await stubs[i % 2].SubmitJob(request, timeout=10)).job.id)
        # The survivor's watcher follows the long job live while the other gateway runs it.
        live = stub.WatchJob(jobs_pb2.WatchJobRequest(id=long_id), timeout=180)
        followed: list[jobs_pb2.WatchJobResponse] = []
        await asyncio.wait_for(_read(live, followed, SEEN_DELTAS), 60)

        gateways[victim].process.kill()
        await gateways[victim].process.wait()
        killed_at = time.time()
        interrupted = {job_id for job_id, pid in (await _owners(postgres_url)).items() if pid == pids[victim]}
        assert long_id in interrupted
        # A watch opened now replays what the killed gateway stored, then follows the takeover.
        replay = stub.WatchJob(jobs_pb2.WatchJobRequest(id=long_id), timeout=180)
        replayed: list[jobs_pb2.WatchJobResponse] = []
        await asyncio.wait_for(asyncio.gather(_read(live, followed, 0), _read(replay, replayed, 0)), 180)
        finals = [await wait_final(stub, job_id) for job_id in ids]
        histories = await asyncio.gather(*(watch_all(stub, job_id) for job_id in ids))
        listed = {job.id for job in await list_all(stub, page_size=100)}
        # The killed gateway's idempotency keys still name their jobs on the survivor.
        again = jobs_pb2.SubmitJobRequest(request=_request(1), idempotency_key="multi-1")
        assert (await stub.SubmitJob(again, timeout=10)).job.id == ids[2]
    finally:
        for channel in channels:
            await channel.close()
        await asyncio.gather(*(stop(g) for g in gateways))

    assert listed == set(ids), "no job lost, none added"
    for job_id, final, history in zip(ids, finals, histories, strict=True):
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, (job_id, final.error)
        # Only the killed gateway's running jobs ran again; a live gateway's leases held (its heartbeats).
        assert final.attempts == (2 if job_id in interrupted else 1), (job_id, final.attempts)
        if job_id in interrupted:  # taken over after the kill, never while the first run went on
            assert final.start_time.ToNanoseconds() >= killed_at * 1e9
        events = history[:-1]
        assert history[-1].job == final and {m.attempt for m in events} == {final.attempts}
        sequences = [m.sequence for m in events]
        assert sequences == list(range(sequences[0], sequences[0] + len(events)))
        kinds = [m.event.WhichOneof("event") for m in events]
        assert kinds.count("complete") == 1 and kinds[-1] == "complete", kinds
        assert "".join(m.event.delta.text for m in events if m.event.HasField("delta")) == final.result.answer

    long_history = histories[0]
    firsts = []
    for watched in (followed, replayed):
        first = [m for m in watched if m.attempt == 1]
        assert [m.sequence for m in first] == list(range(1, len(first) + 1)), "the killed gateway's run, in order"
        assert watched[len(first) :] == long_history, "then the takeover's run, live, to the final job"
        assert long_history[0].sequence > len(first)
        firsts.append(first)
    assert len(firsts[0]) >= SEEN_DELTAS and firsts[0] == firsts[1][: len(firsts[0])]
