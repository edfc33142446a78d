"""`genmesh status`: the whole mesh on one screen, from the gateway's MeshService.GetMeshStatus (one port is
enough): every service and replica with its state, version, address and load, then retrieval's collections, the
tools and MCP servers, and the gateway's job queue. ``--json`` prints the response as proto3 JSON instead.

Exits 0 whenever the gateway answered, services down included (they are shown down); non-zero, with a message,
when the gateway itself cannot be asked."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.client_flags import add_api_key_flag, add_client_tls_flags, client_tls
from genmesh.cli.rpc_errors import describe_rpc_error
from genmesh.status import code_of_value
from genmesh.v1 import jobs_pb2, mesh_pb2, mesh_pb2_grpc

UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def add_status_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `genmesh status`."""
    status = commands.add_parser(
        "status", help="every service and replica of the mesh, as the gateway sees it (exit 0 if the gateway answers)"
    )
    status.add_argument("--target", default=f"127.0.0.1:{mesh.GATEWAY.default_port}", help="the gateway")
    status.add_argument("--json", action="store_true", help="print the GetMeshStatus response as JSON")
    status.add_argument("--timeout", type=float, default=5.0, dest="timeout_s", help="deadline of the call, s")
    add_client_tls_flags(status)
    add_api_key_flag(status)


def run_status(args: argparse.Namespace, out: TextIO = sys.stdout) -> int | str:
    """Run `genmesh status`; 0 once the gateway answered, else the message to exit with."""
    try:
        response = asyncio.run(fetch(args.target, args))
    except grpc.aio.AioRpcError as error:
        if error.code() in UNREACHABLE:
            return f"error: cannot reach the gateway at {args.target}: {error.code().name}: {error.details()}"
        return describe_rpc_error(error)
    if args.json:
        print(json_format.MessageToJson(response, always_print_fields_with_no_presence=True), file=out)
    else:
        print(render(response, args.target), file=out)
    return 0


async def fetch(target: str, args: argparse.Namespace) -> mesh_pb2.GetMeshStatusResponse:
    """Ask the gateway at ``target``."""
    async with open_channel(target, tls=client_tls(args), api_key=args.api_key) as channel:
        stub = mesh_pb2_grpc.MeshServiceStub(channel)
        response: mesh_pb2.GetMeshStatusResponse = await stub.GetMeshStatus(
            mesh_pb2.GetMeshStatusRequest(), timeout=args.timeout_s
        )
        return response


def enum_name(enum: EnumDescriptor, value: int, prefix: str) -> str:
    """The name of ``value`` less ``prefix``; ``STATE_<value>`` for one this client does not know (a newer gateway
    may send it)."""
    known = enum.values_by_number.get(value)
    return f"STATE_{value}" if known is None else known.name.removeprefix(prefix)


def state_name(state: int) -> str:
    """``SERVING``, ``NOT_SERVING``, ..."""
    return enum_name(mesh_pb2.ReplicaState.DESCRIPTOR, state, "REPLICA_STATE_")


def _circuit(state: int) -> str:
    if state == mesh_pb2.CIRCUIT_STATE_UNSPECIFIED:
        return "-"
    name = enum_name(mesh_pb2.CircuitState.DESCRIPTOR, state, "CIRCUIT_STATE_")
    return name if name.startswith("STATE_") else name.lower()


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headers, *rows)
    ]


def _load(replica: mesh_pb2.Replica) -> tuple[str, str, str]:
    """Running, waiting and KV use, where the service reports them (not for a replica down: its figures are old)."""
    if replica.state == mesh_pb2.REPLICA_STATE_NOT_SERVING:
        return "-", "-", "-"
    if replica.service == mesh.INFERENCE.name and replica.HasField("inference"):
        kv = replica.inference
        use = f"{kv.kv_used_tokens}/{kv.kv_capacity_tokens}" if kv.kv_capacity_tokens else "-"
        return str(replica.running_count), str(replica.waiting_count), use
    if replica.service == mesh.GATEWAY.name:
        return str(replica.running_count), "-", "-"
    return "-", "-", "-"


def _error(replica: mesh_pb2.Replica) -> str:
    if not replica.HasField("last_error"):
        return ""
    return f"{code_of_value(replica.last_error.code).name}: {replica.last_error.message}"


def render(response: mesh_pb2.GetMeshStatusResponse, target: str) -> str:
    """One screen: the replicas, then each service's figures, then a one-line verdict."""
    replicas = list(response.replicas)
    lines = [f"genmesh mesh via {target}", "", *_replica_table(replicas)]
    models: dict[str, list[str]] = {}
    for r in replicas:
        if r.HasField("inference") and r.inference.model:
            models.setdefault(r.inference.model, []).append(r.target)
    for model, targets in models.items():
        lines += ["", f"Model {model} on inference {', '.join(targets)}"]
    collections = [(r, c) for r in replicas if r.HasField("retrieval") for c in r.retrieval.collections]
    if collections:
        rows = [[f"  {r.target}", c.name, str(c.documents), str(c.chunks), c.index_kind] for r, c in collections]
        lines += ["", "Collections", *_table(["  REPLICA", "NAME", "DOCUMENTS", "PASSAGES", "INDEX"], rows)]
    for r in replicas:
        if r.HasField("tools"):
            lines += ["", *_tools(r)]
    for r in replicas:
        if r.HasField("gateway"):
            counts = ", ".join(f"{_job_state(c.state)} {c.count}" for c in r.gateway.job_counts)
            lines += ["", f"Jobs: {counts or 'unknown'}"]
            lines.append(f"Generate streams: {r.running_count} of at most {r.gateway.max_streams}")
    down = [r for r in replicas if r.state != mesh_pb2.REPLICA_STATE_SERVING]
    verdict = f"{len(replicas) - len(down)} of {len(replicas)} replicas serving"
    if down:
        verdict += "; not serving: " + ", ".join(f"{r.service} {r.target} ({state_name(r.state)})" for r in down)
    return "\n".join([*lines, "", verdict])


def _replica_table(replicas: Sequence[mesh_pb2.Replica]) -> list[str]:
    headers = ["SERVICE", "ADDRESS", "STATE", "VERSION", "RUNNING", "WAITING", "KV TOKENS", "CIRCUIT", "LAST ERROR"]
    rows = [
        [r.service, r.target, state_name(r.state), r.version or "-", *_load(r), _circuit(r.circuit_state), _error(r)]
        for r in replicas
    ]
    return _table(headers, rows)


def _tools(replica: mesh_pb2.Replica) -> list[str]:
    names = replica.tools.tool_names
    lines = [f"Tools on {replica.target} ({len(names)}): {', '.join(names) or '-'}"]
    if replica.tools.mcp_servers:
        rows = [
            [f"  {p.name}", "up" if p.available else "down", str(p.restarts), p.last_error]
            for p in replica.tools.mcp_servers
        ]
        lines += _table(["  MCP SERVER", "STATE", "RESTARTS", "LAST ERROR"], rows)
    return lines


def _job_state(state: int) -> str:
    name = enum_name(jobs_pb2.JobState.DESCRIPTOR, state, "JOB_STATE_")
    return name if name.startswith("STATE_") else name.lower()
