"""The HTTP front (gateway/http) served in-process by uvicorn on a free port, as `genmesh serve http` serves it, or
started as that command's own process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import uvicorn

from gateway.http.app import build_app
from gateway.http.context import ToolsTarget
from genmesh.cli.launcher import free_port
from genmesh.metrics import Metrics

MODEL = "genmesh-test"
"""The --model-name of every front the tests start."""


@dataclass
class Front:
    """A running HTTP front: its base URL (``http://127.0.0.1:PORT``) and the uvicorn server."""

    url: str
    server: uvicorn.Server

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/v1/ws"


@asynccontextmanager
async def served_front(
    channel: grpc.aio.Channel, model: str = MODEL, tools: ToolsTarget | None = None, metrics: Metrics | None = None
) -> AsyncIterator[Front]:
    """The HTTP front over the gateway at ``channel``, serving until the block ends (``model``: --model-name;
    ``tools``, ``metrics``: build_app's)."""
    port = free_port()
    app = build_app(channel, model=model, tools=tools, metrics=metrics)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            ws="websockets-sansio", timeout_graceful_shutdown=1)  # fmt: skip
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # pytest keeps its signals
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield Front(f"http://127.0.0.1:{port}", server)
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def spawned_front(gateway: str, log: Path, *flags: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``genmesh serve http --gateway gateway *flags`` as a process of its own on a free port, its output in
    ``log``: the process and its base URL once /healthz answers; killed at the block's end if still running."""
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "genmesh.cli", "serve", "http", "--port", str(port), "--gateway", gateway, *flags,
            env={**os.environ, "PYTHONPATH": str(root)}, stdout=out, stderr=out,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=url, timeout=20) as http:
                for _ in range(200):
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
            yield process, url
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
