"""`genmesh up` brings the mesh up, streams the demo answer, and stops every service on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from genmesh import mesh
from genmesh.cli.launcher import free_ports


async def test_up_demo_then_ctrl_c(tmp_path: Path) -> None:
    chosen = zip(mesh.SERVICES, free_ports(len(mesh.SERVICES)), strict=True)
    ports = [arg for spec, port in chosen for arg in (f"--{spec.name}-port", str(port))]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genmesh.cli",
        "up",
        "--demo",
        "--max-tokens",
        "12",
        "--log-dir",
        str(tmp_path / "logs"),
        *ports,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output = await _read_until_up(process)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    assert "Sources:" in output and "Tool calculator [0]" in output and "Tool clock [1]" in output
    answer = re.search(r"^Answer: (.*?)^finish:", output, re.MULTILINE | re.DOTALL)
    assert answer and answer.group(1).strip(), output
    assert re.search(r"^finish: \w+ +tokens: prompt \d+, completion \d+", output, re.MULTILINE)
    pids = [int(m) for m in re.findall(r"pid (\d+)", output)]
    assert len(pids) == 4

    process.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, rest.decode()
    assert "stopped" in rest.decode()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"service process {pid} outlived genmesh up")


async def _read_until_up(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    lines: list[str] = []
    while not any(line.startswith("mesh is up") for line in lines):
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        assert line, "genmesh up exited early:\n" + "".join(lines)
        lines.append(line.decode())
    return "".join(lines)
