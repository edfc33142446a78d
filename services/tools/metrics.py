"""The tools service's Prometheus metrics: tool calls by tool and status code, their duration, and the state of
each MCP server (up, restarts). docs/OBSERVABILITY.md lists them.

The ``tool`` label holds only names the registry knows (its tools and the tools its providers last listed, a
set the operator controls); any other name a client sends is counted as ``unknown``, so clients cannot add
series. ``code`` is the status code as Go spells it, as in ``genmesh_rpc_handled_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import grpc
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from genmesh.errors import GenmeshError
from genmesh.metrics import LATENCY_BUCKETS, Metrics
from genmesh.metrics.rpc import GO_CODE_NAMES
from genmesh.status import status_code_of
from services.tools.mcp_provider import McpProvider

P = "genmesh_tools_"
UNKNOWN = "unknown"
"""The ``tool`` label of a call to a name the registry does not know."""
MCP_UP = f"{P}mcp_server_up"
_MCP_UP_HELP = "1 while the MCP server is connected and its tools can be called, 0 while it is down"


def code_of(error: BaseException | None) -> grpc.StatusCode:
    """The status code a call ended with: OK without ``error``, INTERNAL for an error that is not genmesh's."""
    if error is None:
        return grpc.StatusCode.OK
    return status_code_of(error) if isinstance(error, GenmeshError) else grpc.StatusCode.INTERNAL


class _McpCollector:
    """``genmesh_tools_mcp_server_up{server}``, read from the providers at scrape time."""

    def __init__(self, providers: Sequence[McpProvider]) -> None:
        self._providers = tuple(providers)

    def describe(self) -> Iterator[Metric]:
        """The gauge without values."""
        yield GaugeMetricFamily(MCP_UP, _MCP_UP_HELP, labels=["server"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(MCP_UP, _MCP_UP_HELP, labels=["server"])
        for provider in self._providers:
            family.add_metric([provider.config.name], 1.0 if provider.available else 0.0)
        yield family


class ToolsMetrics:
    """What the tools service records; each method is one event. ``knows(name)``: whether the registry knows
    a tool of that name (the label is the name then, else ``unknown``)."""

    def __init__(self, metrics: Metrics, knows: Callable[[str], bool]) -> None:
        self._metrics = metrics
        self._knows = knows
        self.calls = metrics.counter(
            f"{P}calls_total",
            "Tool calls answered, by tool and status code (unknown tool names: tool=unknown)",
            ["tool", "code"],
        )
        self.call_duration = metrics.histogram(
            f"{P}call_duration_seconds",
            "Time from a tool call's start (for InvokeMany, from getting its slot) to its result or error",
            LATENCY_BUCKETS,
            ["tool"],
        )
        self.mcp_restarts = metrics.counter(
            f"{P}mcp_server_restarts_total", "MCP server processes started again after one died or failed", ["server"]
        )

    def watch_mcp(self, providers: Sequence[McpProvider]) -> None:
        """Report whether each of ``providers`` is up (at scrape time), and count its restarts from 0."""
        self._metrics.collector(MCP_UP, _McpCollector(providers), [MCP_UP])
        for provider in providers:
            self.mcp_restarts.labels(provider.config.name)

    def mcp_restarted(self, server: str) -> None:
        """The MCP server called ``server`` was started again."""
        self.mcp_restarts.labels(server).inc()

    def called(self, name: str, code: grpc.StatusCode, seconds: float) -> None:
        """A call of the tool called ``name`` (as the client sent it) ended with ``code`` after ``seconds``."""
        tool = name if self._knows(name) else UNKNOWN
        self.calls.labels(tool, GO_CODE_NAMES[code]).inc()
        self.call_duration.labels(tool).observe(seconds)
