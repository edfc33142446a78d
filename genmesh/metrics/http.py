"""/metrics over HTTP: prometheus_client's own threaded server, so that a scrape never runs on the event loop.

Rendering a registry takes a few milliseconds for a few hundred series, and the load collectors take the
scheduler's lock; done on the event loop, every scrape would stall each token stream of the process by that
much. prometheus_client's server answers each scrape on a thread of its own (and does content negotiation,
gzip and ``name[]`` filtering), so the loop only pays for the GIL the rendering holds.
"""

from __future__ import annotations

import asyncio
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from genmesh.metrics.core import Metrics


class MetricsServer:
    """Serves ``metrics`` at ``http://host:port/metrics`` (any path answers) until ``close``; port 0 picks one."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.host = host
        self.port: int = int(server.server_port)

    @property
    def url(self) -> str:
        """Where to scrape."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def close(self) -> None:
        """Stop serving (off the event loop: the server notices within its half-second poll)."""
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
