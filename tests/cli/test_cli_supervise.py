"""`genmesh up` keeps the mesh up: a service killed with SIGKILL is started again on its port after a backoff, the
launcher says so, and once stop is asked nothing is restarted. A real tools service process (it starts fast)."""

from __future__ import annotations

import asyncio
import io
import shutil
import signal
from pathlib import Path

from genmesh import mesh
from genmesh.cli.launcher import Mesh, free_ports, start_service, wait_ready
from genmesh.cli.supervise import Backoff, _first_line, supervise
from genmesh.health import wait_until_serving


def test_the_backoff_doubles_to_its_cap_and_resets_after_a_healthy_run() -> None:
    backoff = Backoff(first_s=1, max_s=8, healthy_after_s=60)
    delays = [backoff.next(None, 0)]
    for _ in range(5):
        delays.append(backoff.next(delays[-1], 5))
    assert delays == [1, 2, 4, 8, 8, 8]
    assert backoff.next(8, 61) == 1


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    assert _first_line(OSError()) == "OSError" and _first_line(TimeoutError("late\nmore")) == "late"


async def wait_for_text(out: io.StringIO, text: str, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while text not in out.getvalue():
            await asyncio.sleep(0.05)


async def test_a_killed_service_is_restarted_on_its_port_and_stop_ends_the_watch(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    args = ["serve", "tools", "--port", str(port), "--retrieval-target", "127.0.0.1:1", "--drain-delay", "0"]
    tools = await start_service(mesh.TOOLS, args, address, tmp_path)
    running = Mesh({"tools": tools})
    stop = asyncio.Event()
    out = io.StringIO()
    watch: asyncio.Task[None] | None = None
    try:
        await wait_ready(tools, 60)
        watch = asyncio.create_task(supervise(running, stop, Backoff(first_s=0.2), ready_timeout_s=60, out=out))
        tools.process.send_signal(signal.SIGKILL)
        await wait_for_text(out, "tools is back")
        restarted = running.services["tools"]
        assert restarted is not tools and restarted.process.returncode is None
        assert out.getvalue().splitlines() == [
            f"tools exited with status -9 (log: {tmp_path / 'tools.log'}); restarting it in 0.2 s",
            f"tools is back (pid {restarted.process.pid})",
        ]
        await wait_until_serving(address, timeout_s=10)
        stop.set()
        await asyncio.wait_for(watch, 10)
    finally:
        stop.set()
        if watch is not None:
            await asyncio.gather(watch, return_exceptions=True)
        await running.stop(grace_s=2)
    assert running.services["tools"].process.returncode is not None
    assert len(out.getvalue().splitlines()) == 2, "the stop is not taken for a crash"


async def test_stop_during_the_backoff_restarts_nothing(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    args = ["serve", "tools", "--port", str(port), "--retrieval-target", "127.0.0.1:1"]
    tools = await start_service(mesh.TOOLS, args, f"127.0.0.1:{port}", tmp_path)
    running = Mesh({"tools": tools})
    stop = asyncio.Event()
    out = io.StringIO()
    tools.process.send_signal(signal.SIGKILL)
    watch = asyncio.create_task(supervise(running, stop, Backoff(first_s=30), out=out))
    await wait_for_text(out, "restarting it in 30 s")
    stop.set()
    await asyncio.wait_for(watch, 5)
    assert running.services["tools"] is tools


async def test_a_restart_that_fails_is_told_and_tried_again_after_a_backoff(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    address, logs = f"127.0.0.1:{port}", tmp_path / "logs"
    args = ["serve", "tools", "--port", str(port), "--retrieval-target", "127.0.0.1:1", "--drain-delay", "0"]
    tools = await start_service(mesh.TOOLS, args, address, logs)
    running = Mesh({"tools": tools})
    stop = asyncio.Event()
    out = io.StringIO()
    watch: asyncio.Task[None] | None = None
    try:
        await wait_ready(tools, 60)
        watch = asyncio.create_task(supervise(running, stop, Backoff(0.2, 0.4), ready_timeout_s=60, out=out))
        shutil.rmtree(logs)
        logs.write_text("a file where the log folder was: the restart cannot open its log\n")
        tools.process.send_signal(signal.SIGKILL)
        await wait_for_text(out, "trying again in 0.4 s")
        assert not watch.done()  # the keeper goes on
        logs.unlink()
        await wait_for_text(out, "tools is back")
        lines = out.getvalue().splitlines()
        assert lines[1].startswith("tools could not be restarted: [Errno 17] File exists: "), lines
        await wait_until_serving(address, timeout_s=10)
    finally:
        stop.set()
        if watch is not None:
            await asyncio.gather(watch, return_exceptions=True)
        await running.stop(grace_s=2)
