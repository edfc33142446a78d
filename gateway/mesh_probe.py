"""What MeshService asks one replica, under one short deadline: its health (and version), its figures (retrieval
GetStats, tools ListTools, inference GetModelInfo plus the balancer's latest load report), and the state that
follows from them and the gateway's circuit breaker. A probe never raises for the replica's sake: whatever went
wrong (an inference replica's channel closed as the pool retires it included) becomes the entry's state and
last_error; only the caller's own cancellation goes through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from gateway.balancing.replica import STALE_AFTER_S
from gateway.balancing.replica import Replica as InferenceReplica
from gateway.circuit import CircuitBreaker, CircuitState
from gateway.upstreams import MAX_TOOL_PAGES
from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.health import Health, check_health
from genmesh.status import status_message
from genmesh.tls import ClientTLS
from genmesh.v1 import inference_pb2, mesh_pb2, retrieval_pb2, retrieval_pb2_grpc, tools_pb2, tools_pb2_grpc

CIRCUIT_STATES = {
    CircuitState.CLOSED: mesh_pb2.CIRCUIT_STATE_CLOSED,
    CircuitState.HALF_OPEN: mesh_pb2.CIRCUIT_STATE_HALF_OPEN,
    CircuitState.OPEN: mesh_pb2.CIRCUIT_STATE_OPEN,
}


def rpc_failure(what: str, error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """``last_error`` for a call that failed."""
    return status_message(error.code(), f"{what}: {error.details() or error.code().name}")


def state_of(health: Health, circuit: CircuitState | None, accepting: bool = True) -> mesh_pb2.ReplicaState.ValueType:
    """The replica's state: NOT_SERVING unless it answered SERVING (DRAINING when it said it stopped accepting),
    CIRCUIT_OPEN when the gateway's breaker holds calls back."""
    if not accepting and health.answered:
        return mesh_pb2.REPLICA_STATE_DRAINING
    if health.status != "SERVING":
        return mesh_pb2.REPLICA_STATE_NOT_SERVING
    if circuit is not None and circuit is not CircuitState.CLOSED:
        return mesh_pb2.REPLICA_STATE_CIRCUIT_OPEN
    return mesh_pb2.REPLICA_STATE_SERVING


def health_failure(health: Health, breaker: CircuitBreaker) -> status_pb2.Status | None:
    """``last_error`` of the replica's health and breaker: the failed check, a status other than SERVING, or why
    the circuit opened; None when all is well."""
    if health.error is not None:
        return rpc_failure("health check", health.error)
    if health.status != "SERVING":
        return status_message(grpc.StatusCode.UNAVAILABLE, f"health check: {health.status}")
    if breaker.state is not CircuitState.CLOSED:
        why = f": {breaker.reason}" if breaker.reason else ""
        return status_message(grpc.StatusCode.UNAVAILABLE, f"circuit {breaker.state.value}{why}")
    return None


def _stamp(entry: mesh_pb2.Replica, health: Health, breaker: CircuitBreaker, accepting: bool = True) -> None:
    """Fill the fields every upstream replica has from its health and the gateway's breaker."""
    entry.state = state_of(health, breaker.state, accepting)
    entry.version = health.version
    entry.circuit_state = CIRCUIT_STATES[breaker.state]
    failure = health_failure(health, breaker)
    if failure is not None:
        entry.last_error.CopyFrom(failure)
    if health.answered:
        entry.last_report_time.GetCurrentTime()


def unresolved(service: str, target: str, breaker: CircuitBreaker | None, why: str) -> mesh_pb2.Replica:
    """A NOT_SERVING entry saying ``why``: the one of a service whose target stands for no address now
    (``breaker``: the service's own), or a replica whose probe failed."""
    entry = mesh_pb2.Replica(service=service, target=target, state=mesh_pb2.REPLICA_STATE_NOT_SERVING)
    if breaker is not None:
        entry.circuit_state = CIRCUIT_STATES[breaker.state]
    entry.last_error.CopyFrom(status_message(grpc.StatusCode.UNAVAILABLE, why))
    return entry


async def never_failing(
    probe: Coroutine[Any, Any, mesh_pb2.Replica], service: str, target: str, breaker: CircuitBreaker
) -> mesh_pb2.Replica:
    """``probe``'s entry, or a NOT_SERVING one saying why the probe failed; the caller's cancellation still
    cancels (a call cancelled under it, as closing its channel does, is the probe's failure)."""
    try:
        return await probe
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        why = "probe cancelled: its channel closed (the replica left the pool)"
    except Exception as error:
        why = f"probe failed: {type(error).__name__}: {error}"
    return unresolved(service, target, breaker, why)


async def probe_address(
    service: str, address: str, breaker: CircuitBreaker, tls: ClientTLS | None, timeout_s: float
) -> mesh_pb2.Replica:
    """One retrieval or tools replica at ``address``, reached on a channel of its own (the gateway's own channel
    spreads calls over every replica) and asked for its health and figures at once."""
    return await never_failing(_probe_address(service, address, breaker, tls, timeout_s), service, address, breaker)


async def _probe_address(
    service: str, address: str, breaker: CircuitBreaker, tls: ClientTLS | None, timeout_s: float
) -> mesh_pb2.Replica:
    entry = mesh_pb2.Replica(service=service, target=address)
    async with open_channel(address, tls=tls) as channel:
        figures = _retrieval_figures if service == mesh.RETRIEVAL.name else _tools_figures
        health, failure = await asyncio.gather(check_health(channel, timeout_s), figures(channel, entry, timeout_s))
    _stamp(entry, health, breaker)
    if failure is not None and not entry.HasField("last_error"):
        entry.last_error.CopyFrom(failure)
    return entry


async def _retrieval_figures(
    channel: grpc.aio.Channel, entry: mesh_pb2.Replica, timeout_s: float
) -> status_pb2.Status | None:
    try:
        stats = await retrieval_pb2_grpc.RetrievalServiceStub(channel).GetStats(
            retrieval_pb2.GetStatsRequest(), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as error:
        return rpc_failure("GetStats", error)
    entry.retrieval.collections.extend(sorted(stats.collections, key=lambda c: c.name))
    return None


async def _tools_figures(
    channel: grpc.aio.Channel, entry: mesh_pb2.Replica, timeout_s: float
) -> status_pb2.Status | None:
    stub = tools_pb2_grpc.ToolsServiceStub(channel)
    until = time.monotonic() + timeout_s
    names: list[str] = []
    token, failure = "", None
    try:
        for _ in range(MAX_TOOL_PAGES):
            request = tools_pb2.ListToolsRequest(page_token=token)
            page = await stub.ListTools(request, timeout=max(0.001, until - time.monotonic()))
            if not token:
                entry.tools.mcp_servers.extend(page.providers)
            names += [tool.name for tool in page.tools]
            token = page.next_page_token
            if not token:
                break
    except grpc.aio.AioRpcError as error:
        failure = rpc_failure("ListTools", error)
    if names or failure is None:
        entry.tools.tool_names.extend(sorted(names))
    return failure


async def probe_inference(replica: InferenceReplica, timeout_s: float) -> mesh_pb2.Replica:
    """One inference replica: health and model asked now on the balancer's own channel; load, draining and
    breaker as the balancer follows them (its WatchLoad feed)."""
    probe = _probe_inference(replica, timeout_s)
    entry = await never_failing(probe, mesh.INFERENCE.name, replica.name, replica.breaker)
    entry.replica_id = replica.replica_id
    return entry


async def _probe_inference(replica: InferenceReplica, timeout_s: float) -> mesh_pb2.Replica:
    entry = mesh_pb2.Replica(service=mesh.INFERENCE.name, target=replica.name, replica_id=replica.replica_id)
    health, info = await asyncio.gather(check_health(replica.channel, timeout_s), _model_info(replica, timeout_s))
    report, age_s = replica.last_report()
    _stamp(entry, health, replica.breaker, accepting=replica.accepting)
    details = entry.inference
    details.gateway_in_flight_count = replica.in_flight
    if isinstance(info, inference_pb2.GetModelInfoResponse):
        details.model = info.model
    elif not entry.HasField("last_error"):
        entry.last_error.CopyFrom(info)
    if report is not None:
        entry.last_report_time.CopyFrom(_report_time(report, age_s))
        if age_s < STALE_AFTER_S:
            entry.running_count = report.running_count
            entry.waiting_count = report.waiting_count
            details.kv_used_tokens = report.kv_used_tokens
            details.kv_capacity_tokens = report.kv_capacity_tokens
    return entry


async def _model_info(
    replica: InferenceReplica, timeout_s: float
) -> inference_pb2.GetModelInfoResponse | status_pb2.Status:
    try:
        response: inference_pb2.GetModelInfoResponse = await replica.stub.GetModelInfo(
            inference_pb2.GetModelInfoRequest(), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as error:
        return rpc_failure("GetModelInfo", error)
    return response


def _report_time(report: inference_pb2.WatchLoadResponse, age_s: float) -> timestamp_pb2.Timestamp:
    """When the replica took the snapshot; when it did not say, when the gateway received it."""
    if report.HasField("report_time"):
        return report.report_time
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns() - int(age_s * 1e9))
    return stamp
