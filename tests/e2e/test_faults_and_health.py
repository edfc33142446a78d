"""Faults from GENMESH_<SERVICE>_FAULTS (the flag wins, a bad spec stops start-up); `genmesh health`'s exit code."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, free_port, free_ports, start_service, wait_ready
from genmesh.v1 import common_pb2, tools_pb2, tools_pb2_grpc

ENV_FAULTS = {"GENMESH_TOOLS_FAULTS": "Invoke:abort=PERMISSION_DENIED"}


@pytest_asyncio.fixture(scope="module")
async def tools_pair(log_root: Path) -> AsyncIterator[Mesh]:
    """Two tools services with the same GENMESH_TOOLS_FAULTS: ``env`` without --faults, ``flag`` with it."""
    ports = free_ports(2)
    running = Mesh()
    try:
        for (name, extra), port in zip(
            [("env", []), ("flag", ["--faults", "ListTools:abort=ABORTED"])], ports, strict=True
        ):
            args = ["serve", "tools", "--port", str(port), "--retrieval-target", "", *extra]
            running.services[name] = await start_service(
                topology.TOOLS, args, f"127.0.0.1:{port}", log_root / f"faults-{name}", ENV_FAULTS
            )
        await asyncio.gather(*(wait_ready(service, 60) for service in running.services.values()))
        yield running
    finally:
        await running.stop(grace_s=2.0)


async def _outcomes(address: str) -> tuple[grpc.StatusCode, grpc.StatusCode]:
    """The status codes of one ListTools and one Invoke of the calculator (which computes 6 * 7 = 42)."""
    async with open_channel(address) as channel:
        stub = tools_pb2_grpc.ToolsServiceStub(channel)
        codes = []
        for call in (
            stub.ListTools(tools_pb2.ListToolsRequest(), timeout=10),
            stub.Invoke(
                tools_pb2.InvokeRequest(
                    call=common_pb2.ToolCall(name="calculator", arguments_json=json.dumps({"expression": "6 * 7"}))
                ),
                timeout=10,
            ),
        ):
            try:
                response = await call
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
                assert "injected fault" in (error.details() or ""), error.details()
            else:
                codes.append(grpc.StatusCode.OK)
                if isinstance(response, tools_pb2.InvokeResponse):
                    assert json.loads(response.result.result_json)["value"] == 42
        return codes[0], codes[1]


async def test_the_environment_configures_faults(tools_pair: Mesh) -> None:
    assert await _outcomes(tools_pair.address("env")) == (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED)


async def test_the_flag_wins_over_the_environment(tools_pair: Mesh) -> None:
    assert await _outcomes(tools_pair.address("flag")) == (grpc.StatusCode.ABORTED, grpc.StatusCode.OK)


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        ({"GENMESH_TOOLS_FAULTS": "Invoke:abort=NOPE"}, [], "unknown status code 'NOPE'"),
        (ENV_FAULTS, ["--faults", "Invoke:delay=-5ms"], "must be between 0 and 1 hour"),
    ],
)
async def test_a_bad_fault_spec_stops_start_up(
    tmp_path: Path, env: dict[str, str], flags: list[str], message: str
) -> None:
    port = free_port()
    args = ["serve", "tools", "--port", str(port), "--retrieval-target", "", *flags]
    service = await start_service(topology.TOOLS, args, f"127.0.0.1:{port}", tmp_path, env)
    assert await asyncio.wait_for(service.process.wait(), 60) != 0
    log = service.log_tail(100)
    assert message in log and "listening" not in log, log


async def _health(target: str, *flags: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "genmesh.cli", "health", target, *flags, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode().strip()


async def test_genmesh_health_exit_code(tools_pair: Mesh) -> None:
    address = tools_pair.address("env")
    assert await _health(address) == (0, "SERVING")
    assert await _health(address, "--service", "genmesh.v1.ToolsService") == (0, "SERVING")
    assert (await _health(address, "--service", "genmesh.v1.NoSuchService"))[0] == 1
    assert await _health(f"127.0.0.1:{free_port()}") == (1, "UNREACHABLE")  # nothing listens there
