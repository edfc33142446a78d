"""The gateway's gRPC server: a thin servicer over the orchestrator, and its entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import grpc

from gateway.admission import StreamLimiter
from gateway.auth.caller import current_caller
from gateway.auth.flags import add_api_key_flags, key_store_from_args, open_for_serving
from gateway.auth.interceptor import AuthInterceptor
from gateway.auth.keystore import KeyStore
from gateway.auth.limits import NO_LIMITS, KeyLimiter
from gateway.auth.service import SERVICE_NAME as API_KEY_SERVICE_NAME
from gateway.auth.service import ApiKeyServicer
from gateway.balancing.choice import Policy
from gateway.embeddings import SERVICE_NAME as EMBEDDING_SERVICE_NAME
from gateway.embeddings import EmbeddingServicer
from gateway.gauges import NAMES as GAUGE_NAMES
from gateway.gauges import GaugeCollector, read_gauges
from gateway.jobs.config import JobConfig, add_job_flags
from gateway.jobs.runtime import JobRuntime
from gateway.jobs.service import SERVICE_NAME as JOB_SERVICE_NAME
from gateway.jobs.service import JobServicer
from gateway.mesh_status import SERVICE_NAME as MESH_SERVICE_NAME
from gateway.mesh_status import MeshStatusServicer
from gateway.metrics import GatewayMetrics, counting_refusals
from gateway.models import SERVICE_NAME as MODEL_SERVICE_NAME
from gateway.models import ModelServicer
from gateway.orchestrator import Orchestrator
from gateway.policy import ResiliencePolicy, add_resilience_flags, policy_from_args
from gateway.request import plan_request
from gateway.upstreams import Upstreams, UpstreamTargets
from genmesh import mesh
from genmesh.config import add_server_flags, add_upstream_tls_flags, parse
from genmesh.metrics import current as current_metrics
from genmesh.server import run
from genmesh.tls import ClientTLS
from genmesh.v1 import (
    api_keys_pb2_grpc,
    embeddings_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    jobs_pb2_grpc,
    mesh_pb2_grpc,
    models_pb2_grpc,
)

log = logging.getLogger("genmesh.gateway")


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Protobuf in, protobuf out; the orchestrator does the work."""

    def __init__(
        self, orchestrator: Orchestrator, limiter: StreamLimiter, key_limits: KeyLimiter | None = None
    ) -> None:
        self._orchestrator = orchestrator
        self._limiter = limiter
        self._key_limits = key_limits if key_limits is not None else KeyLimiter()
        self.metrics: GatewayMetrics | None = None
        """Where refusals are counted (set when the gateway serves metrics)."""

    async def Generate(
        self, request: gateway_pb2.GatewayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        caller = current_caller()
        if caller is not None and caller.limits != NO_LIMITS:
            # Checked before the key's limits so that an invalid request costs its key nothing (tool names and
            # arguments, which need the tools' schemas, are checked by the orchestrator, after admission).
            plan_request(request, None, allowed_tools=caller.allowed_tools)
        # The key's limits first: a key over its limits must not skew the gateway-wide slot's retry hint.
        with contextlib.ExitStack() as admitted:
            with counting_refusals(self.metrics):
                meter = admitted.enter_context(self._key_limits.stream(caller))
                admitted.enter_context(self._limiter.admit())
            async for event in self._orchestrator.answer(request, context.time_remaining()):
                if meter is not None and event.HasField("delta"):
                    meter.charge(len(event.delta.token_ids))
                yield event


class _Recorder(Protocol):
    """A part of the gateway that records metrics once given them."""

    metrics: GatewayMetrics | None


class GatewayService:
    """The gateway as the server bootstrap runs it: ready once its upstreams are."""

    service_name = mesh.GATEWAY.grpc_service
    also_serves: tuple[str, ...] = (JOB_SERVICE_NAME, MESH_SERVICE_NAME, MODEL_SERVICE_NAME, EMBEDDING_SERVICE_NAME)

    def __init__(
        self,
        targets: UpstreamTargets,
        upstream_wait_s: float,
        jobs: JobConfig,
        policy: ResiliencePolicy | None = None,
        api_keys: KeyStore | None = None,
        address: str = "",
    ) -> None:
        self._keys = api_keys
        self._address = address
        """Where the gateway listens, as MeshService reports it."""
        self._draining = False
        auth = (AuthInterceptor(api_keys),) if api_keys is not None else ()
        self.interceptors: tuple[grpc.aio.ServerInterceptor, ...] = auth
        self.also_serves = (*self.also_serves, API_KEY_SERVICE_NAME) if api_keys is not None else self.also_serves
        self._targets = targets
        self._upstream_wait_s = upstream_wait_s
        self._policy = policy or ResiliencePolicy()
        self._upstreams: Upstreams | None = None
        self._job_config = jobs
        self._jobs: JobRuntime | None = None
        self._recorders: list[_Recorder] = []
        self._gauges: GaugeCollector | None = None

    def register(self, server: grpc.aio.Server) -> None:
        # Channels belong to the running event loop, so they are opened here, not in __init__.
        policy = self._policy
        self._upstreams = Upstreams(self._targets, policy.circuit)
        orchestrator = Orchestrator(self._upstreams, policy)
        key_limits = KeyLimiter()  # one per process: Generate and SubmitJob count together
        limiter = StreamLimiter(policy.max_streams)
        servicer = GatewayServicer(orchestrator, limiter, key_limits)
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        self._jobs = JobRuntime(self._job_config, orchestrator.answer)
        job_servicer = JobServicer(self._jobs, key_limits)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(job_servicer, server)
        self._recorders = [self._upstreams, orchestrator, servicer, job_servicer, self._jobs]
        mesh_status = MeshStatusServicer(
            self._upstreams, self._targets, self._jobs.count_by_state, limiter, self._address, lambda: self._draining
        )
        mesh_pb2_grpc.add_MeshServiceServicer_to_server(mesh_status, server)
        models_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self._upstreams), server)
        embeddings_pb2_grpc.add_EmbeddingServiceServicer_to_server(
            EmbeddingServicer(self._upstreams, key_limits), server
        )
        if self._keys is not None:
            api_keys_pb2_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(self._keys), server)

    async def start(self) -> None:
        self._record_metrics()
        await open_for_serving(self._keys)
        if self._upstreams is not None:
            await self._upstreams.start(self._upstream_wait_s)
        if self._jobs is not None:
            await self._jobs.start()

    def drain(self) -> None:
        """Health already reports NOT_SERVING; MeshService reports the gateway DRAINING from now on."""
        self._draining = True

    def _record_metrics(self) -> None:
        """When this process serves metrics: every part records into them, and the gauges are read from now on."""
        metrics = current_metrics()
        if metrics is None or self._upstreams is None:
            return
        recorded = GatewayMetrics(metrics)
        for part in self._recorders:
            part.metrics = recorded
        upstreams, jobs = self._upstreams, self._jobs
        self._gauges = GaugeCollector(lambda: read_gauges(upstreams, jobs), asyncio.get_running_loop())
        metrics.collector("genmesh_gateway_gauges", self._gauges, GAUGE_NAMES)

    async def stop(self) -> None:
        if self._gauges is not None:
            self._gauges.close()
        if self._keys is not None:
            await self._keys.close()
        if self._jobs is not None:
            await self._jobs.stop()
        if self._upstreams is not None:
            await self._upstreams.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="genmesh serve gateway", description=__doc__)
    flags = add_server_flags(parser, "gateway", mesh.GATEWAY.default_port)
    for upstream in (mesh.RETRIEVAL, mesh.TOOLS, mesh.INFERENCE):
        flags.add(
            f"--{upstream.name}-target",
            default=f"127.0.0.1:{upstream.default_port}",
            help=f"the {upstream.name} replicas: host:port[,host:port...] or dns:///name:port (re-resolved)",
        )
    flags.add(
        "--inference-balancing",
        choices=[policy.value for policy in Policy],
        default=Policy.LEAST_LOAD.value,
        help="how Generate calls are spread over inference replicas (gateway/balancing/choice.py)",
    )
    flags.add("--upstream-wait", type=float, default=300.0, help="seconds to wait for upstreams at start-up")
    add_upstream_tls_flags(flags)
    add_job_flags(flags)
    add_api_key_flags(flags)
    add_resilience_flags(flags)
    args = parse(parser, argv)
    try:
        targets = UpstreamTargets(
            args.retrieval_target,
            args.tools_target,
            args.inference_target,
            Policy(args.inference_balancing),
            ClientTLS.from_flags(args.upstream_tls_ca, args.upstream_tls_cert, args.upstream_tls_key),
        )
        jobs = JobConfig.from_args(args)
        policy = policy_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    address = f"{args.host}:{args.port}"
    run(
        "gateway",
        args,
        lambda: GatewayService(targets, args.upstream_wait, jobs, policy, key_store_from_args(args), address),
    )


if __name__ == "__main__":
    main()
