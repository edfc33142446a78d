"""Prometheus metrics: the process's registry and naming rules (``core``), /metrics over HTTP (``http``), and the
RPC metrics every server records (``rpc``). docs/OBSERVABILITY.md lists every metric."""

from genmesh.metrics.core import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS,
    TOKEN_COUNT_BUCKETS,
    TOKEN_INTERVAL_BUCKETS,
    Metrics,
    check_name,
    current,
    process_metrics,
    restore,
    use,
)
from genmesh.metrics.http import MetricsServer
from genmesh.metrics.rpc import RpcMetrics

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "LATENCY_BUCKETS",
    "TOKEN_COUNT_BUCKETS",
    "TOKEN_INTERVAL_BUCKETS",
    "Metrics",
    "MetricsServer",
    "RpcMetrics",
    "check_name",
    "current",
    "process_metrics",
    "restore",
    "use",
]
