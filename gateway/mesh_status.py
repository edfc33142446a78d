"""MeshService: the whole mesh in one answer (`genmesh status`), so that the gateway's port is the only one an
operator needs (docker-compose and Kubernetes expose only it).

GetMeshStatus asks every replica at once: the retrieval and tools replicas their targets stand for now (each on a
channel of its own), and the inference replicas of the balancer's pool; each probe gets the same short deadline
(PROBE_TIMEOUT_S, less when the caller's deadline is nearer; resolving a service's target spends from it too), so a
dead or hanging replica costs the answer at most that long and shows up as NOT_SERVING with its last_error instead
of failing the call. It needs the ``admin`` scope when the gateway has API keys
(gateway.auth.interceptor.SCOPE_OF_SERVICE): it names every address and model of the mesh.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

import grpc

from gateway.admission import StreamLimiter
from gateway.jobs.model import JobState
from gateway.mesh_probe import probe_address, probe_inference, unresolved
from gateway.upstreams import Upstreams, UpstreamTargets
from genmesh import mesh
from genmesh.deadlines import DEADLINE_MARGIN_S
from genmesh.status import status_message
from genmesh.targets import resolve
from genmesh.v1 import jobs_pb2, mesh_pb2, mesh_pb2_grpc
from genmesh.version import version

log = logging.getLogger("genmesh.gateway")

SERVICE_NAME = mesh_pb2.DESCRIPTOR.services_by_name["MeshService"].full_name
PROBE_TIMEOUT_S = 1.0
"""The longest any one replica is waited for."""
MIN_PROBE_TIMEOUT_S = 0.01

CountJobs = Callable[[], Awaitable[dict[JobState, int]]]


def probe_timeout(time_remaining: float | None) -> float:
    """Each probe's deadline: PROBE_TIMEOUT_S, or what the caller's deadline leaves (less a margin to answer in)."""
    if time_remaining is None:
        return PROBE_TIMEOUT_S
    return max(MIN_PROBE_TIMEOUT_S, min(PROBE_TIMEOUT_S, time_remaining - DEADLINE_MARGIN_S))


class MeshStatusServicer(mesh_pb2_grpc.MeshServiceServicer):
    """Answers GetMeshStatus from ``upstreams`` (channels, breakers, the inference pool), ``targets`` (which
    addresses to ask), the job queue's counts and the gateway's own admission."""

    def __init__(
        self,
        upstreams: Upstreams,
        targets: UpstreamTargets,
        count_jobs: CountJobs,
        limiter: StreamLimiter,
        address: str,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self._upstreams = upstreams
        self._targets = targets
        self._count_jobs = count_jobs
        self._limiter = limiter
        self._address = address
        self._draining = draining
        self._replica_id = f"{socket.gethostname()}-{os.getpid()}"

    async def GetMeshStatus(
        self, request: mesh_pb2.GetMeshStatusRequest, context: grpc.aio.ServicerContext
    ) -> mesh_pb2.GetMeshStatusResponse:
        timeout_s = probe_timeout(context.time_remaining())
        gateway, services, inference = await asyncio.gather(
            self._gateway(timeout_s),
            asyncio.gather(*(self._service(spec.name, timeout_s) for spec in (mesh.RETRIEVAL, mesh.TOOLS))),
            self._inference(timeout_s),
        )
        response = mesh_pb2.GetMeshStatusResponse(replicas=[gateway, *(r for s in services for r in s), *inference])
        response.report_time.GetCurrentTime()
        return response

    async def _inference(self, timeout_s: float) -> list[mesh_pb2.Replica]:
        """Every replica of the balancer's pool (which follows the target's addresses), in address order."""
        replicas = sorted(self._upstreams.inference.replicas.values(), key=lambda r: r.name)
        if not replicas:
            target = self._targets.inference
            return [unresolved(mesh.INFERENCE.name, target, None, f"{target} resolves to no address")]
        return list(await asyncio.gather(*(probe_inference(replica, timeout_s) for replica in replicas)))

    async def _service(self, name: str, timeout_s: float) -> list[mesh_pb2.Replica]:
        """Every replica of retrieval or tools, in address order; resolving the target and probing its replicas
        share the one ``timeout_s``."""
        spec = self._targets.spec(name)
        breaker = self._upstreams.breakers[name]
        deadline = time.monotonic() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                addresses = await resolve(spec)
        except TimeoutError:
            return [unresolved(name, spec.text, breaker, f"resolving {spec.text} took over {timeout_s:.2f} s")]
        if not addresses:
            return [unresolved(name, spec.text, breaker, f"{spec.text} resolves to no address")]
        tls = self._targets.tls_for(name)
        left_s = max(MIN_PROBE_TIMEOUT_S, deadline - time.monotonic())
        return list(await asyncio.gather(*(probe_address(name, a, breaker, tls, left_s) for a in addresses)))

    async def _gateway(self, timeout_s: float) -> mesh_pb2.Replica:
        """The gateway's own entry: it answers, so it serves (or drains); its streams and its job queue."""
        entry = mesh_pb2.Replica(
            service=mesh.GATEWAY.name,
            target=self._address,
            replica_id=self._replica_id,
            state=mesh_pb2.REPLICA_STATE_DRAINING if self._draining() else mesh_pb2.REPLICA_STATE_SERVING,
            running_count=self._limiter.active,
            version=version(),
        )
        entry.last_report_time.GetCurrentTime()
        entry.gateway.max_streams = self._limiter.max_streams
        try:
            async with asyncio.timeout(timeout_s):
                counts = await self._count_jobs()
        except TimeoutError:
            entry.last_error.CopyFrom(
                status_message(grpc.StatusCode.DEADLINE_EXCEEDED, f"job counts: no answer in {timeout_s:.2f} s")
            )
        except Exception as error:  # a job store down must not fail the status call
            log.warning("job counts failed", extra={"error": str(error)})
            entry.last_error.CopyFrom(status_message(grpc.StatusCode.UNAVAILABLE, f"job counts: {error}"))
        else:
            entry.gateway.job_counts.extend(
                mesh_pb2.JobCount(state=jobs_pb2.JobState.ValueType(state), count=count)
                for state, count in sorted(counts.items())
            )
        return entry
