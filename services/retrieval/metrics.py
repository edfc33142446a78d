"""The retrieval service's Prometheus metrics: query latency by search mode, the size of the query micro-batches,
ingest throughput (passages and bytes), index rebuilds, and the passages of each collection. docs/OBSERVABILITY.md
lists them.

Events are recorded where they happen (the Retriever, its micro-batcher, the index cache; prometheus_client is
thread-safe). The passages per collection are read from the catalog when Prometheus scrapes, on a read-only
connection of the scrape's own, so they are the store's truth (also for rows another process wrote).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from genmesh.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS, Metrics
from services.retrieval import catalog
from services.retrieval.validation import SearchMode

log = logging.getLogger("genmesh.retrieval")

P = "genmesh_retrieval_"
PASSAGES = f"{P}passages"
_PASSAGES_HELP = "Passages (chunks) stored in each collection, read from the catalog at scrape time"


class _PassagesCollector:
    """``genmesh_retrieval_passages{collection}`` from the catalog, one read per scrape."""

    def __init__(self, database: Path) -> None:
        self._uri = f"{database.resolve().as_uri()}?mode=ro"

    def describe(self) -> Iterator[Metric]:
        """The gauge without values: the registry learns its name without opening the store."""
        yield GaugeMetricFamily(PASSAGES, _PASSAGES_HELP, labels=["collection"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(PASSAGES, _PASSAGES_HELP, labels=["collection"])
        try:
            with contextlib.closing(sqlite3.connect(self._uri, uri=True, timeout=5.0)) as conn:
                rows = catalog.list_collections(conn)
        except sqlite3.Error as error:  # a scrape must not fail for it: the gauge is left out this once
            log.warning("reading the collections for /metrics failed", extra={"error": str(error)})
            rows = []
        for row in rows:
            family.add_metric([row.name], row.chunks)
        yield family


class RetrievalMetrics:
    """What the retrieval service records; each method is one event."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.query_duration = metrics.histogram(
            f"{P}query_duration_seconds",
            "Time to answer a query (waiting for its micro-batch, encoding and searching), by search mode",
            LATENCY_BUCKETS,
            ["mode"],
        )
        self.batch_size = metrics.histogram(
            f"{P}batch_size", "Dense and hybrid queries encoded together in one forward pass", BATCH_SIZE_BUCKETS
        )
        self.ingested_passages = metrics.counter(
            f"{P}ingested_passages_total", "Passages (chunks) embedded and committed by Upsert and UpsertStream"
        )
        self.ingested_bytes = metrics.counter(
            f"{P}ingested_bytes_total", "UTF-8 bytes of the text of the documents committed by Upsert and UpsertStream"
        )
        self.index_rebuilds = metrics.counter(
            f"{P}index_rebuilds_total",
            "Vector indexes rebuilt from the store (no saved index at start-up, an index behind the store, too "
            "many HNSW tombstones)",
        )
        self.index_rebuild_duration = metrics.histogram(
            f"{P}index_rebuild_duration_seconds",
            "Time to rebuild one vector index: reading its vectors from the store and indexing them",
            LATENCY_BUCKETS,
        )
        self._by_mode = {mode: self.query_duration.labels(mode.value) for mode in SearchMode}

    def watch_store(self, database: Path) -> None:
        """Report the passages of the collections of the SQLite store at ``database``."""
        self._metrics.collector(PASSAGES, _PassagesCollector(database), [PASSAGES])

    def queried(self, mode: SearchMode, seconds: float) -> None:
        """A query in ``mode`` was answered after ``seconds``."""
        self._by_mode[mode].observe(seconds)

    def batched(self, size: int) -> None:
        """One micro-batch of ``size`` queries was encoded."""
        self.batch_size.observe(size)

    def ingested(self, passages: int, text_bytes: int) -> None:
        """A write committed ``passages`` chunks of documents holding ``text_bytes`` bytes of text."""
        self.ingested_passages.inc(passages)
        self.ingested_bytes.inc(text_bytes)

    def rebuilt(self, seconds: float) -> None:
        """A vector index was rebuilt in ``seconds``."""
        self.index_rebuilds.inc()
        self.index_rebuild_duration.observe(seconds)
