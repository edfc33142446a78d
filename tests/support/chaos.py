"""Helpers of the resilience tests: kill and restart one service of a mesh, read a process's memory and logs."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from genmesh import mesh as topology
from genmesh.cli.launcher import Mesh, start_service, wait_ready


def ports_of(running: Mesh) -> dict[str, int]:
    return {name: int(service.address.rsplit(":", 1)[1]) for name, service in running.services.items()}


async def kill9(running: Mesh, name: str) -> None:
    """SIGKILL one service and reap it."""
    process = running.services[name].process
    os.kill(process.pid, signal.SIGKILL)
    await process.wait()


async def restart(running: Mesh, name: str, extra_args: Sequence[str] = (), ready_timeout_s: float = 180.0) -> None:
    """Start a service that was stopped again, on the same port, and wait until it is SERVING."""
    old = running.services[name]
    spec = topology.BY_NAME[name]
    host = old.address.rsplit(":", 1)[0]
    hosts = {s.name: host for s in topology.SERVICES}
    args = topology.serve_args(spec, host, ports_of(running), hosts) + list(extra_args)
    log_dir = old.log_path.parent if old.log_path is not None else None
    service = await start_service(spec, args, old.address, log_dir)
    running.services[name] = service
    await wait_ready(service, ready_timeout_s)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def rpc_lines(running: Mesh, name: str, needle: str) -> list[str]:
    """The per-RPC log lines of a service that contain ``needle`` (a request id, a method)."""
    path = running.services[name].log_path
    assert path is not None
    return [line for line in path.read_text(errors="replace").splitlines() if "msg=rpc " in line and needle in line]


async def wait_for_lines(running: Mesh, name: str, needle: str, timeout_s: float = 10.0) -> list[str]:
    """``rpc_lines`` once there are any (log lines are written when an RPC ends)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        lines = rpc_lines(running, name, needle)
        if lines or loop.time() > end:
            return lines
        await asyncio.sleep(0.05)


_MALLINFO2_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS.split()]


def heap_in_use_bytes() -> int:
    """Bytes this process holds from malloc now (glibc's mallinfo2): unlike RSS, memory freed earlier and reused
    does not hide a new allocation, and protobuf's C arenas (invisible to tracemalloc) are counted."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    info: _MallInfo2 = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def log_lines(running: Mesh, name: str, *needles: str) -> list[str]:
    """The log lines of a service that contain every one of ``needles``."""
    path = running.services[name].log_path
    assert path is not None
    return [line for line in path.read_text(errors="replace").splitlines() if all(n in line for n in needles)]


async def wait_for_log(running: Mesh, name: str, *needles: str, timeout_s: float = 30.0) -> str:
    """The first log line of a service that contains every one of ``needles``, once it is written."""
    async with asyncio.timeout(timeout_s):
        while not (lines := log_lines(running, name, *needles)):
            await asyncio.sleep(0.05)
    return lines[0]


def attempts(running: Mesh, name: str, method: str, request_id: str) -> int:
    """How many ``method`` calls (``Query``) with this request id a service logged (one line per call, written
    before the call's status is sent, so every call whose end the caller saw is counted); inference's calls carry
    the gateway's attempt id, ``<request id>.<suffix>`` (gateway.balancing.pool.attempt_id)."""
    count = 0
    for line in rpc_lines(running, name, f"request_id={request_id}"):
        fields = dict(part.partition("=")[::2] for part in line.split(" "))
        logged = fields.get("request_id", "")
        if (
            fields.get("msg") == "rpc"
            and (logged == request_id or logged.startswith(f"{request_id}."))
            and fields.get("method", "").endswith(f"/{method}")
        ):
            count += 1
    return count
