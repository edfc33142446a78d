"""genmesh.health.watch follows a real service's health stream (through the interceptor every service has):
SERVING once it is up, not serving when it dies, SERVING again after a restart on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.launcher import free_port, start_service, wait_ready
from genmesh.health import watch


async def _next(seen: asyncio.Queue[tuple[bool, str]], serving: bool) -> str:
    """The status of the next update with ``serving`` (earlier ones are skipped)."""
    while True:
        is_serving, status = await asyncio.wait_for(seen.get(), 60)
        if is_serving == serving:
            return status


async def test_watch_follows_a_service_through_a_restart(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = ["serve", "tools", "--port", str(port), "--retrieval-target", ""]
    service = await start_service(mesh.TOOLS, args, address, tmp_path)
    seen: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()
    async with open_channel(address) as channel:
        watcher = asyncio.create_task(watch(channel, lambda serving, status: seen.put_nowait((serving, status))))
        try:
            await wait_ready(service, 60)
            assert await _next(seen, True) == "SERVING"
            os.kill(service.process.pid, signal.SIGKILL)
            await service.process.wait()
            assert (await _next(seen, False)).startswith("unreachable")
            service = await start_service(mesh.TOOLS, args, address, tmp_path)
            await wait_ready(service, 60)
            assert await _next(seen, True) == "SERVING"
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if service.process.returncode is None:
                service.process.terminate()
                await service.process.wait()
