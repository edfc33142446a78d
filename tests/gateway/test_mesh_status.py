"""MeshService.GetMeshStatus on a real gateway served in-process by the real bootstrap, in front of a real tools
service (with an MCP server up and one that never starts), a retrieval servicer and two inference replicas, each
served by the real bootstrap too (so each tells its version): every replica listed with its state, version, load
and figures; a stopped replica, a hanging one, an open circuit and a draining replica each shown as such while the
call still answers, in about the probe deadline."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import pytest
from inprocess import Fault, ScriptedRetrieval
from replicas import ReplicaInference, start_replica
from support.api_keys import error_info
from support.served import Hosted, Served, served

from gateway.auth.caller import Scope
from gateway.auth.file_keys import FileKeyStore
from gateway.auth.keystore import KeyStore
from gateway.balancing.replica import Replica as InferenceReplica
from gateway.circuit import CircuitConfig
from gateway.jobs.config import JobConfig
from gateway.mesh_probe import probe_inference
from gateway.mesh_status import PROBE_TIMEOUT_S, probe_timeout
from gateway.policy import ResiliencePolicy
from gateway.server import GatewayService
from gateway.upstreams import UpstreamTargets
from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.errors import Reason
from genmesh.server import Service
from genmesh.v1 import (
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2_grpc,
    jobs_pb2,
    mesh_pb2,
    mesh_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from genmesh.version import version
from services.tools.mcp_provider import McpServerConfig
from services.tools.server import ToolsConfig, ToolsService

ECHO_SERVER = Path(__file__).resolve().parents[1] / "tools" / "mcp_echo_server.py"
GATEWAY_ADDRESS = "gateway.test:50051"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


class StatsRetrieval(ScriptedRetrieval):
    """Answers GetStats with one collection, after ``stats_delay_s``."""

    stats_delay_s = 0.0

    async def GetStats(self, request: object, context: grpc.aio.ServicerContext) -> retrieval_pb2.GetStatsResponse:
        await asyncio.sleep(self.stats_delay_s)
        return retrieval_pb2.GetStatsResponse(
            collections=[retrieval_pb2.CollectionStats(name="python-reference", documents=3, chunks=42)]
        )


@dataclass
class Mesh:
    """The gateway and its upstreams; ``stops`` ends a served upstream by name."""

    gateway: Served
    retrieval: StatsRetrieval
    inference: list[ReplicaInference]
    addresses: dict[str, str]
    stops: dict[str, AsyncExitStack]

    async def status(self, timeout_s: float = 10.0, api_key: str = "") -> mesh_pb2.GetMeshStatusResponse:
        async with open_channel(self.gateway.address, api_key=api_key) as channel:
            stub = mesh_pb2_grpc.MeshServiceStub(channel)
            response: mesh_pb2.GetMeshStatusResponse = await stub.GetMeshStatus(
                mesh_pb2.GetMeshStatusRequest(), timeout=timeout_s
            )
            return response

    async def stop(self, name: str) -> None:
        await self.stops.pop(name).aclose()


def by_target(response: mesh_pb2.GetMeshStatusResponse) -> dict[str, mesh_pb2.Replica]:
    return {replica.target: replica for replica in response.replicas}


@asynccontextmanager
async def running_mesh(
    tmp_path: Path, api_keys: KeyStore | None = None, named_retrieval: bool = False
) -> AsyncIterator[Mesh]:
    """``named_retrieval``: retrieval's target is ``localhost:PORT``, a name each status call resolves."""
    retrieval, inference = StatsRetrieval(), [ReplicaInference(), ReplicaInference()]
    mcp = (
        McpServerConfig("echo", (sys.executable, str(ECHO_SERVER))),
        McpServerConfig("broken", (sys.executable, "-c", "raise SystemExit(3)")),
    )
    tools = ToolsService(ToolsConfig(entry_points=False, mcp_servers=mcp, mcp_start_timeout_s=60.0))
    upstreams: dict[str, Service] = {
        "retrieval": Hosted(
            mesh.RETRIEVAL.grpc_service, partial(retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server, retrieval)
        ),
        "tools": tools,
        **{
            f"inference-{n}": Hosted(
                mesh.INFERENCE.grpc_service, partial(inference_pb2_grpc.add_InferenceServiceServicer_to_server, i)
            )
            for n, i in enumerate(inference, 1)
        },
    }
    stops: dict[str, AsyncExitStack] = {}
    addresses: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        for name, service in upstreams.items():
            stops[name] = AsyncExitStack()
            stack.push_async_callback(stops[name].aclose)
            addresses[name] = (await stops[name].enter_async_context(served(service, metrics=False))).address
        retrieval_target = addresses["retrieval"].replace("127.0.0.1", "localhost" if named_retrieval else "127.0.0.1")
        targets = UpstreamTargets(
            retrieval_target, addresses["tools"], f"{addresses['inference-1']},{addresses['inference-2']}"
        )
        policy = ResiliencePolicy(circuit=CircuitConfig(failures=1, cooldown_s=600.0))
        jobs = JobConfig(db=str(tmp_path / "jobs.db"))
        gateway_service = GatewayService(targets, 30.0, jobs, policy, api_keys, GATEWAY_ADDRESS)
        gateway = await stack.enter_async_context(served(gateway_service, metrics=False))
        yield Mesh(gateway, retrieval, inference, addresses, stops)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path) as started:
        yield started


async def test_every_replica_is_listed_with_its_state_version_and_figures(running: Mesh) -> None:
    running.inference[0].report(running=3, waiting=2)
    await asyncio.sleep(0.3)  # the balancer's load feed passes the report on
    response = await running.status()
    assert [r.service for r in response.replicas] == ["gateway", "retrieval", "tools", "inference", "inference"]
    assert response.HasField("report_time")
    found = by_target(response)
    gateway = found[GATEWAY_ADDRESS]
    assert gateway.state == mesh_pb2.REPLICA_STATE_SERVING and gateway.version == version()
    assert {c.state: c.count for c in gateway.gateway.job_counts} == {
        state: 0 for state in jobs_pb2.JobState.values() if state
    }
    assert gateway.gateway.max_streams == ResiliencePolicy().max_streams and not gateway.HasField("last_error")
    for name in ("retrieval", "tools", "inference-1", "inference-2"):
        replica = found[running.addresses[name]]
        assert replica.state == mesh_pb2.REPLICA_STATE_SERVING, (name, replica)
        assert replica.version == version(), "each replica tells its own version in its health answer"
        assert replica.circuit_state == mesh_pb2.CIRCUIT_STATE_CLOSED and not replica.HasField("last_error")
        assert replica.HasField("last_report_time")
    collections = found[running.addresses["retrieval"]].retrieval.collections
    assert [(c.name, c.documents, c.chunks) for c in collections] == [("python-reference", 3, 42)]
    tools = found[running.addresses["tools"]].tools
    assert {"calculator", "echo__echo", "echo__add"} <= set(tools.tool_names)
    assert list(tools.tool_names) == sorted(tools.tool_names)
    assert [(p.name, p.available) for p in tools.mcp_servers] == [("mcp:echo", True), ("mcp:broken", False)]
    busy, idle = found[running.addresses["inference-1"]], found[running.addresses["inference-2"]]
    assert (busy.running_count, busy.waiting_count) == (3, 2) and (idle.running_count, idle.waiting_count) == (0, 0)
    assert busy.inference.model == "scripted"


async def test_a_stopped_upstream_is_shown_not_serving_and_the_rest_still_answer(running: Mesh) -> None:
    await running.stop("inference-2")
    await running.stop("retrieval")
    started = time.monotonic()
    response = await running.status()
    assert time.monotonic() - started < PROBE_TIMEOUT_S + 1.0
    found = by_target(response)
    assert len(response.replicas) == 5, "a stopped replica is still listed"
    for name in ("retrieval", "inference-2"):
        down = found[running.addresses[name]]
        assert down.state == mesh_pb2.REPLICA_STATE_NOT_SERVING, name
        assert down.last_error.code == UNAVAILABLE and "health check" in down.last_error.message
        assert down.version == "" and not down.HasField("retrieval")
    for name in ("tools", "inference-1"):
        assert found[running.addresses[name]].state == mesh_pb2.REPLICA_STATE_SERVING
    assert found[running.addresses["inference-2"]].HasField("last_report_time"), "when it was last heard from"


async def test_a_hanging_replica_costs_the_answer_at_most_the_callers_deadline(running: Mesh) -> None:
    running.retrieval.stats_delay_s = 30.0
    started = time.monotonic()
    response = await running.status(timeout_s=0.6)
    assert time.monotonic() - started < 0.6, "the probes end before the caller's deadline"
    retrieval = by_target(response)[running.addresses["retrieval"]]
    assert retrieval.state == mesh_pb2.REPLICA_STATE_SERVING, "it answers its health checks"
    assert retrieval.last_error.code == DEADLINE_EXCEEDED and retrieval.last_error.message.startswith("GetStats")


async def test_an_open_circuit_and_a_draining_replica_are_shown(running: Mesh) -> None:
    running.retrieval.fault = Fault(grpc.StatusCode.UNAVAILABLE)
    running.inference[1].report(accepting=False)
    async with open_channel(running.gateway.address) as channel:
        request = gateway_pb2.GatewayRequest(question="What does yield do?")
        request.sampling.max_tokens = 4
        events = [e async for e in gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=30)]
    assert any(e.complete.degraded for e in events if e.HasField("complete")), "retrieval failed the request"
    await asyncio.sleep(0.3)
    found = by_target(await running.status())
    retrieval = found[running.addresses["retrieval"]]
    assert retrieval.state == mesh_pb2.REPLICA_STATE_CIRCUIT_OPEN
    assert retrieval.circuit_state == mesh_pb2.CIRCUIT_STATE_OPEN and "circuit open" in retrieval.last_error.message
    assert found[running.addresses["inference-2"]].state == mesh_pb2.REPLICA_STATE_DRAINING
    assert found[running.addresses["inference-1"]].state == mesh_pb2.REPLICA_STATE_SERVING


async def test_it_needs_an_admin_key_when_the_gateway_has_keys(tmp_path: Path) -> None:
    keys = FileKeyStore(tmp_path / "keys.json")
    _, admin = await keys.create("ops", [Scope.ADMIN])
    _, user = await keys.create("app", [Scope.GENERATE, Scope.JOBS])
    async with running_mesh(tmp_path, FileKeyStore(tmp_path / "keys.json")) as running:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await running.status(api_key=user)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(refused.value).reason == Reason.SCOPE_MISSING
        assert len((await running.status(api_key=admin)).replicas) == 5


def test_probes_get_at_most_a_second_and_never_outlive_the_caller() -> None:
    assert probe_timeout(None) == PROBE_TIMEOUT_S == 1.0
    assert probe_timeout(30.0) == 1.0
    assert 0.4 < probe_timeout(0.5) < 0.5
    assert probe_timeout(0.0) > 0


async def test_resolving_a_target_and_probing_it_share_the_callers_deadline(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, named_retrieval=True) as running:
        running.retrieval.stats_delay_s = 30.0
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        slow_dns = loop.run_in_executor(None, time.sleep, 0.5)  # the lookup (getaddrinfo, run there) waits 0.5 s
        started = time.monotonic()
        response = await running.status(timeout_s=1.0)
        elapsed = time.monotonic() - started
        await slow_dns
    assert elapsed < 1.0, "the probes got what the lookup left of the deadline"
    retrieval = by_target(response)[running.addresses["retrieval"]]
    assert retrieval.last_error.code == DEADLINE_EXCEEDED and retrieval.last_error.message.startswith("GetStats")


@contextmanager
def silent_replica() -> Iterator[InferenceReplica]:
    """A replica as the balancer holds it, at an address that accepts connections and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        yield InferenceReplica(f"127.0.0.1:{silent.getsockname()[1]}", None)


async def test_a_replica_retired_while_probed_is_shown_not_serving() -> None:
    with silent_replica() as replica:
        probing = asyncio.ensure_future(probe_inference(replica, 10.0))
        await asyncio.sleep(0.3)
        await replica.close()  # as the pool retires a replica that left the target: its calls are cancelled
        entry = await asyncio.wait_for(probing, 5)
    assert entry.state == mesh_pb2.REPLICA_STATE_NOT_SERVING and entry.target == replica.name
    assert entry.last_error.code == UNAVAILABLE and "left the pool" in entry.last_error.message


async def test_a_probe_still_ends_when_its_caller_is_cancelled() -> None:
    with silent_replica() as replica:
        probing = asyncio.ensure_future(probe_inference(replica, 10.0))
        await asyncio.sleep(0.3)
        probing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probing
        await replica.close()


async def test_a_health_status_the_gateway_does_not_know_is_not_serving() -> None:
    served_replica = await start_replica()
    replica = InferenceReplica(served_replica.address, None)
    try:
        await served_replica.health.set("", 7)  # a newer server's status
        entry = await probe_inference(replica, 5.0)
    finally:
        await replica.close()
        await served_replica.server.stop(None)
    assert entry.state == mesh_pb2.REPLICA_STATE_NOT_SERVING and entry.inference.model == "scripted"
    assert entry.last_error.message == "health check: STATUS_7"
