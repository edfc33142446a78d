"""Job ownership and tool permissions end to end: a gateway process with ``--api-keys`` (keys made by ``genmesh keys
create``) in front of the session mesh's real model and tools. Two keys cannot see, watch, cancel or list each
other's jobs; an admin key sees all; a key limited to some tools gets PERMISSION_DENIED in the own ToolResult of a
call of another tool, in Generate and in its jobs, while its allowed calls run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from support.api_keys import bearer, error_info
from support.jobs_gateway import start_jobs_gateway, stop

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, ServiceProcess
from genmesh.status import error_info_of
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, jobs_pb2, jobs_pb2_grpc

#: Each key: its scopes and the tools it may call (empty: every tool).
KEYS = {
    "alice": ("generate,jobs", "calculator"),
    "bob": ("jobs", ""),
    "root": ("jobs,admin", ""),
}


def create_key(store: Path, name: str, scopes: str, tools: str) -> str:
    """``genmesh keys --store STORE create NAME --scopes SCOPES [--tools TOOLS]``: the secret it prints."""
    command = [sys.executable, "-m", "genmesh.cli", "keys", "--store", str(store), "create", name, "--scopes", scopes]
    command += ["--tools", tools] if tools else []
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout.strip()


@dataclass
class Keyed:
    process: ServiceProcess
    jobs: jobs_pb2_grpc.JobServiceStub
    gateway: gateway_pb2_grpc.GatewayServiceStub
    secrets: dict[str, str]

    def meta(self, key: str) -> tuple[tuple[str, str], ...]:
        metadata: tuple[tuple[str, str], ...] = bearer(self.secrets[key])
        return metadata


@pytest_asyncio.fixture(scope="module")
async def keyed(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keyed]:
    root = tmp_path_factory.mktemp("job-owners")
    store = root / "keys.json"
    secrets = {name: create_key(store, name, scopes, tools) for name, (scopes, tools) in KEYS.items()}
    flags = ("--api-keys", str(store), "--job-workers", "1")
    process = await start_jobs_gateway(mesh, root / "jobs.db", root / "logs", *flags)
    try:
        async with open_channel(process.address) as channel:
            yield Keyed(
                process, jobs_pb2_grpc.JobServiceStub(channel), gateway_pb2_grpc.GatewayServiceStub(channel), secrets
            )
    finally:
        await stop(process)


def _request(*tools: str) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question="What does a yield expression do?")
    request.sampling.max_tokens = 4
    request.sampling.temperature = 0.0
    request.retrieval.disabled = True
    for i, name in enumerate(tools):
        arguments = '{"expression": "6 * 7"}' if name == "calculator" else "{}"
        request.tool_calls.add(call_id=f"c{i}", name=name, arguments_json=arguments)
    return request


async def _submit(keyed: Keyed, key: str, request: gateway_pb2.GatewayRequest, idem: str = "") -> jobs_pb2.Job:
    submit = jobs_pb2.SubmitJobRequest(request=request, idempotency_key=idem)
    job: jobs_pb2.Job = (await keyed.jobs.SubmitJob(submit, metadata=keyed.meta(key), timeout=10)).job
    return job


async def _watch(keyed: Keyed, key: str, job_id: str) -> list[jobs_pb2.WatchJobResponse]:
    stream = keyed.jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job_id), metadata=keyed.meta(key), timeout=120)
    return [message async for message in stream]


async def _list(keyed: Keyed, key: str) -> list[jobs_pb2.Job]:
    jobs: list[jobs_pb2.Job] = []
    token = ""
    while True:
        request = jobs_pb2.ListJobsRequest(page_size=2, page_token=token)
        page = await keyed.jobs.ListJobs(request, metadata=keyed.meta(key), timeout=10)
        jobs.extend(page.jobs)
        if not (token := page.next_page_token):
            return jobs


async def _refusal(keyed: Keyed, key: str, rpc: str, job_id: str) -> tuple[grpc.StatusCode, str, str]:
    """How GetJob, WatchJob or CancelJob of ``job_id`` failed for ``key``: code, message (id made neutral), reason."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if rpc == "WatchJob":
            await _watch(keyed, key, job_id)
        else:
            request = (jobs_pb2.GetJobRequest if rpc == "GetJob" else jobs_pb2.CancelJobRequest)(id=job_id)
            await getattr(keyed.jobs, rpc)(request, metadata=keyed.meta(key), timeout=10)
    error = caught.value
    return error.code(), (error.details() or "").replace(job_id, "JOB"), error_info(error).reason


def _assert_not_allowed(result: common_pb2.ToolResult, name: str) -> None:
    info = error_info_of(result.error.status)
    assert result.error.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0], result
    assert info is not None and info.reason == "TOOL_NOT_ALLOWED"
    assert result.error.status.message == f"this API key may not call the tool {name!r}"


async def test_two_keys_cannot_see_each_other_s_jobs_and_an_admin_sees_both(keyed: Keyed) -> None:
    alice = await _submit(keyed, "alice", _request(), idem="nightly")
    bob = await _submit(keyed, "bob", _request(), idem="nightly")
    assert alice.owner.startswith("apiKeys/") and bob.owner.startswith("apiKeys/") and alice.id != bob.id
    unknown = {rpc: await _refusal(keyed, "bob", rpc, "job-0123") for rpc in ("GetJob", "WatchJob", "CancelJob")}
    assert unknown["GetJob"] == (grpc.StatusCode.NOT_FOUND, "no job 'JOB' (it may have expired)", "JOB_NOT_FOUND")
    for rpc, answer in unknown.items():
        assert await _refusal(keyed, "bob", rpc, alice.id) == answer, f"{rpc}: another key's job is an unknown id"
    assert [job.id for job in await _list(keyed, "bob") if job.id in (alice.id, bob.id)] == [bob.id]
    assert [job.id for job in await _list(keyed, "alice") if job.id in (alice.id, bob.id)] == [alice.id]
    seen = {job.id: job.owner for job in await _list(keyed, "root")}
    assert seen[alice.id] == alice.owner and seen[bob.id] == bob.owner, "the admin key lists every key's jobs"
    final = (await _watch(keyed, "root", alice.id))[-1].job
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED and final.owner == alice.owner, "bob's cancel did nothing"


async def test_a_key_limited_to_some_tools_gets_a_refusal_in_that_call_s_result(keyed: Keyed) -> None:
    stream = keyed.gateway.Generate(_request("clock", "calculator"), metadata=keyed.meta("alice"), timeout=120)
    events = [event async for event in stream]
    results = {e.tool_result.call_id: e.tool_result for e in events if e.HasField("tool_result")}
    _assert_not_allowed(results["c0"], "clock")
    assert results["c1"].result_json and events[-1].HasField("complete"), "the allowed call and the answer come"

    job = await _submit(keyed, "alice", _request("clock", "calculator"))
    final = (await _watch(keyed, "alice", job.id))[-1].job
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    by_call = {result.call_id: result for result in final.result.tool_results}
    _assert_not_allowed(by_call["c0"], "clock")
    assert by_call["c1"].result_json, "the job's allowed call ran"
