"""The gateway's gRPC server: a thin servicer over the orchestrator, and its entry point."""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator, Sequence

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
from gateway.jobs.config import JobConfig, add_job_flags
from gateway.jobs.runtime import JobRuntime
from gateway.jobs.service import SERVICE_NAME as JOB_SERVICE_NAME
from gateway.jobs.service import JobServicer
from gateway.orchestrator import Orchestrator
from gateway.policy import ResiliencePolicy, add_resilience_flags, policy_from_args
from gateway.request import plan_request
from gateway.upstreams import Upstreams, UpstreamTargets
from genmesh import mesh
from genmesh.config import add_server_flags, add_upstream_tls_flags, parse
from genmesh.server import run
from genmesh.tls import ClientTLS
from genmesh.v1 import api_keys_pb2_grpc, gateway_pb2, gateway_pb2_grpc, jobs_pb2_grpc

log = logging.getLogger("genmesh.gateway")


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Protobuf in, protobuf out; the orchestrator does the work."""

    def __init__(
        self, orchestrator: Orchestrator, limiter: StreamLimiter, key_limits: KeyLimiter | None = None
    ) -> None:
        self._orchestrator = orchestrator
        self._limiter = limiter
        self._key_limits = key_limits if key_limits is not None else KeyLimiter()

    async def Generate(
        self, request: gateway_pb2.GatewayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        caller = current_caller()
        if caller is not None and caller.limits != NO_LIMITS:
            # Checked before the key's limits so that an invalid request costs its key nothing (tool names and
            # arguments, which need the tools' schemas, are checked by the orchestrator, after admission).
            plan_request(request, None, allowed_tools=caller.allowed_tools)
        # The key's limits first: a key over its limits must not skew the gateway-wide slot's retry hint.
        with self._key_limits.stream(caller) as meter, self._limiter.admit():
            async for event in self._orchestrator.answer(request, context.time_remaining()):
                if meter is not None and event.HasField("delta"):
                    meter.charge(len(event.delta.token_ids))
                yield event


class GatewayService:
    """The gateway as the server bootstrap runs it: ready once its upstreams are."""

    service_name = mesh.GATEWAY.grpc_service
    also_serves: tuple[str, ...] = (JOB_SERVICE_NAME,)

    def __init__(
        self,
        targets: UpstreamTargets,
        upstream_wait_s: float,
        jobs: JobConfig,
        policy: ResiliencePolicy | None = None,
        api_keys: KeyStore | None = None,
    ) -> None:
        self._keys = api_keys
        auth = (AuthInterceptor(api_keys),) if api_keys is not None else ()
        self.interceptors: tuple[grpc.aio.ServerInterceptor, ...] = auth
        self.also_serves = (*self.also_serves, API_KEY_SERVICE_NAME) if api_keys is not None else self.also_serves
        self._targets = targets
        self._upstream_wait_s = upstream_wait_s
        self._policy = policy or ResiliencePolicy()
        self._upstreams: Upstreams | None = None
        self._job_config = jobs
        self._jobs: JobRuntime | None = None

    def register(self, server: grpc.aio.Server) -> None:
        # Channels belong to the running event loop, so they are opened here, not in __init__.
        policy = self._policy
        self._upstreams = Upstreams(self._targets, policy.circuit)
        orchestrator = Orchestrator(self._upstreams, policy)
        key_limits = KeyLimiter()  # one per process: Generate and SubmitJob count together
        servicer = GatewayServicer(orchestrator, StreamLimiter(policy.max_streams), key_limits)
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        self._jobs = JobRuntime(self._job_config, orchestrator.answer)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self._jobs, key_limits), server)
        if self._keys is not None:
            api_keys_pb2_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(self._keys), server)

    async def start(self) -> None:
        await open_for_serving(self._keys)
        if self._upstreams is not None:
            await self._upstreams.start(self._upstream_wait_s)
        if self._jobs is not None:
            await self._jobs.start()

    def drain(self) -> None:
        """Nothing to announce: health already reports NOT_SERVING."""

    async def stop(self) -> None:
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
    run("gateway", args, lambda: GatewayService(targets, args.upstream_wait, jobs, policy, key_store_from_args(args)))


if __name__ == "__main__":
    main()
