"""The HTTP front (gateway/http) served in-process by uvicorn on a free port, as `genmesh serve http` serves it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import uvicorn

from gateway.http.app import build_app
from gateway.http.context import ToolsTarget
from genmesh.cli.launcher import free_port

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
    channel: grpc.aio.Channel, model: str = MODEL, tools: ToolsTarget | None = None
) -> AsyncIterator[Front]:
    """The HTTP front over the gateway at ``channel``, serving until the block ends (``model``: --model-name;
    ``tools``: build_app's)."""
    port = free_port()
    app = build_app(channel, model=model, tools=tools)
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
