"""A lean HTTP/1.1 client for SSE answers: each over a kept-alive connection of its own (opened when none is idle),
the request in one write, the chunked body read with asyncio streams.

bench/http.py times the HTTP front's time to first chunk with it, so that the figure holds the front's cost and
not the Python client's: httpx (the ``openai`` package's transport) adds about 2 ms of its own per request on the
2-core development machine, where the gRPC side's client is C core (docs/BENCHMARKS.md, "HTTP front").
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

IDLE_REUSE_S = 2.0
"""An idle connection older than this is closed, not reused: uvicorn closes idle ones after 5 s by default."""


class LeanSseClient:
    """POSTs JSON bodies to an HTTP server and reads their ``text/event-stream`` answers."""

    def __init__(self, base_url: str) -> None:
        """``base_url``: ``http://host:port``."""
        host, _, port = base_url.removeprefix("http://").rpartition(":")
        self.host, self.port = host, int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        """Connections between answers, each with when it became idle (time.monotonic)."""

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since < IDLE_REUSE_S:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def answer(self, path: str, body: dict[str, Any]) -> tuple[int, float]:
        """(completion tokens of the usage chunk, seconds to the first chunk with content) of one streamed answer."""
        reader, writer = await self._connection()
        try:
            answered = await self._answer(reader, writer, path, body)
        except BaseException:
            writer.close()
            raise
        self._idle.append((reader, writer, time.monotonic()))
        return answered

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: dict[str, Any]
    ) -> tuple[int, float]:
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n\r\n"
        )
        start = time.perf_counter()
        writer.write(head.encode() + payload)
        status = await reader.readline()
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the front answered {status!r}")
        while await reader.readline() not in (b"\r\n", b""):
            pass  # the headers: the front's SSE answer is chunked
        first, tokens, pending = 0.0, 0, b""
        while size := int((await reader.readline()).strip(), 16):
            pending += (await reader.readexactly(size + 2))[:-2]
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[len(b"data: ") :])
                if not first and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        await reader.readline()  # the last chunk's empty line
        return tokens, first
