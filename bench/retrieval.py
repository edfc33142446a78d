"""Retrieval benchmark: query latency and throughput with micro-batching on vs off, ingest speed, recall@5.

Starts two retrieval services on free loopback ports over one data directory holding the demo collection
(Python's language reference): one micro-batches query encoding (``--batch-window-ms 2``), the other does
not (``--batch-window-ms 0``). Trials alternate between them, so both see the same machine:

- p50/p99 latency and queries/s of hybrid queries through gRPC at concurrency 1 and 32, each service;
  batching_ratio_c32 = queries/s with batching over queries/s without, at concurrency 32;
- ingest_chunks_per_s: documents of the demo corpus streamed with UpsertStream into a fresh collection
  (chunking, encoding, SQLite commit, index update), in passages per second;
- recall5_hybrid / recall5_dense / recall5_bm25 on the labelled questions of tests/retrieval.

The demo collection is copied (SQLite backup) from ``--seed-from`` when that holds a complete one (what
`make run` builds in .genmesh/data/retrieval), else embedded from scratch, which takes about a minute here.

    python -m bench.retrieval --quick     # about a minute, as CI runs it
    python -m bench.retrieval             # the figures of docs/BENCHMARKS.md

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench import harness
from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.launcher import ServiceProcess, free_port
from genmesh.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.corpus import load_python_reference
from services.retrieval.ingest import DEMO_INGEST_ID
from services.retrieval.schema import DATABASE_FILE

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = json.loads((ROOT / "tests" / "retrieval" / "python_questions.json").read_text())["questions"]


@dataclass(frozen=True, slots=True)
class Settings:
    trials: int
    queries_c1: int
    queries_c32: int
    ingest_documents: int


QUICK = Settings(trials=2, queries_c1=40, queries_c32=320, ingest_documents=12)
FULL = Settings(trials=5, queries_c1=200, queries_c32=1280, ingest_documents=10_000)


def snapshot_demo(source: Path, target: Path) -> bool:
    """Copy a store whose demo ingest completed (a consistent SQLite backup); False if there is none."""
    database = source / DATABASE_FILE
    if not database.is_file():
        return False
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        try:
            row = conn.execute("SELECT completed FROM ingests WHERE ingest_id = ?", (DEMO_INGEST_ID,)).fetchone()
        except sqlite3.Error:
            return False
        if not row or not row[0]:
            return False
        target.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(target / DATABASE_FILE) as copy:
            conn.backup(copy)
    return True


@contextlib.asynccontextmanager
async def serving(data_dir: Path, log_dir: Path, window_ms: float) -> AsyncIterator[ServiceProcess]:
    """A retrieval service over ``data_dir`` with a batch window of ``window_ms``, for the block."""
    port = free_port()
    args = [
        "serve",
        "retrieval",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--batch-window-ms",
        str(window_ms),
        "--seed-demo",
    ]
    async with harness.serving(mesh.RETRIEVAL, args, f"127.0.0.1:{port}", log_dir, 600) as service:
        yield service


@dataclass(frozen=True, slots=True)
class Run:
    elapsed_s: float
    latencies_ms: list[float]

    @property
    def qps(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s


async def run_queries(stub: retrieval_pb2_grpc.RetrievalServiceStub, total: int, concurrency: int) -> Run:
    """``total`` hybrid queries (the labelled questions, cycled), ``concurrency`` in flight at a time."""
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            question = QUESTIONS[next_index % len(QUESTIONS)]["question"]
            next_index += 1
            started = time.perf_counter()
            await stub.Query(retrieval_pb2.QueryRequest(text=question, top_k=5), timeout=120)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(time.perf_counter() - started, latencies)


async def measure_queries(addresses: dict[str, str], settings: Settings) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with open_channel(addresses["on"]) as on, open_channel(addresses["off"]) as off:
        stubs = {"on": retrieval_pb2_grpc.RetrievalServiceStub(on), "off": retrieval_pb2_grpc.RetrievalServiceStub(off)}
        for stub in stubs.values():
            await run_queries(stub, 40, 8)  # warm up: channels, threads, the model's first passes
        for concurrency, total in ((1, settings.queries_c1), (32, settings.queries_c32)):
            runs: dict[str, list[Run]] = {"on": [], "off": []}
            for trial in range(settings.trials):
                for which in harness.alternate(trial, "on", "off"):
                    runs[which].append(await run_queries(stubs[which], total, concurrency))
            for which in ("on", "off"):
                latencies = [ms for run in runs[which] for ms in run.latencies_ms]
                qps = statistics.median(run.qps for run in runs[which])
                p50, p99 = harness.percentile(latencies, 0.50), harness.percentile(latencies, 0.99)
                figures[f"qps_c{concurrency}_batching_{which}"] = round(qps, 1)
                figures[f"p50_ms_c{concurrency}_batching_{which}"] = round(p50, 2)
                figures[f"p99_ms_c{concurrency}_batching_{which}"] = round(p99, 2)
                print(
                    f"c={concurrency:<3} batching {which:<3}  {qps:8.1f} queries/s"
                    f"   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms",
                    flush=True,
                )
            ratio = figures[f"qps_c{concurrency}_batching_on"] / figures[f"qps_c{concurrency}_batching_off"]
            figures[f"batching_ratio_c{concurrency}"] = round(ratio, 2)
            print(f"c={concurrency:<3} batching ratio (queries/s on / off) = {ratio:.2f}", flush=True)
        stats = await stubs["on"].GetStats(retrieval_pb2.GetStatsRequest(), timeout=10)
        if stats.query_batches:
            figures["mean_batch_size"] = round(stats.queries_encoded / stats.query_batches, 2)
    return figures


async def measure_recall(address: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    modes = {
        "hybrid": retrieval_pb2.SEARCH_MODE_HYBRID,
        "dense": retrieval_pb2.SEARCH_MODE_DENSE,
        "bm25": retrieval_pb2.SEARCH_MODE_BM25,
    }
    async with open_channel(address) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        for name, mode in modes.items():
            found = 0
            for item in QUESTIONS:
                request = retrieval_pb2.QueryRequest(text=item["question"], top_k=5, mode=mode)
                response = await stub.Query(request, timeout=60)
                found += bool({p.document_id for p in response.passages} & set(item["topics"]))
            figures[f"recall5_{name}"] = round(found / len(QUESTIONS), 3)
            print(f"recall@5 {name:<6} {found / len(QUESTIONS):.3f}  ({found}/{len(QUESTIONS)} questions)", flush=True)
    return figures


async def measure_ingest(address: str, documents: int) -> dict[str, float]:
    docs = load_python_reference()[:documents]

    async def messages() -> AsyncIterator[retrieval_pb2.UpsertStreamRequest]:
        yield retrieval_pb2.UpsertStreamRequest(collection=f"bench-ingest-{time.time_ns()}")
        for start in range(0, len(docs), 4):
            yield retrieval_pb2.UpsertStreamRequest(
                documents=[
                    retrieval_pb2.Document(id=d.doc_id, title=d.title, text=d.text, metadata=dict(d.metadata))
                    for d in docs[start : start + 4]
                ]
            )

    async with open_channel(address) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        started = time.perf_counter()
        response = await stub.UpsertStream(messages(), timeout=1800)
        elapsed = time.perf_counter() - started
    chunks = int(response.progress.chunks)
    print(
        f"ingest: {len(docs)} documents, {chunks} passages in {elapsed:.1f} s = {chunks / elapsed:.1f} passages/s",
        flush=True,
    )
    return {"ingest_documents": len(docs), "ingest_chunks": chunks, "ingest_chunks_per_s": round(chunks / elapsed, 1)}


async def main_async(settings: Settings, args: argparse.Namespace) -> harness.Figures:
    with harness.scratch() as scratch:
        data_dir, logs = scratch / "data", scratch / "logs"
        copied = snapshot_demo(args.seed_from, data_dir)
        print(f"demo collection: {'copied from ' + str(args.seed_from) if copied else 'embedding it now'}", flush=True)
        started = time.perf_counter()
        async with serving(data_dir, logs / "batching-on", 2.0) as on:
            print(f"service ready in {time.perf_counter() - started:.1f} s", flush=True)
            async with serving(data_dir, logs / "batching-off", 0.0) as off:
                figures: harness.Figures = {}
                figures.update(await measure_recall(on.address))
                figures.update(await measure_queries({"on": on.address, "off": off.address}, settings))
                figures.update(await measure_ingest(on.address, settings.ingest_documents))
    return {**figures, "p50_ms": figures["p50_ms_c1_batching_on"], "p99_ms": figures["p99_ms_c1_batching_on"]}


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed-from",
        type=Path,
        default=ROOT / ".genmesh" / "data" / "retrieval",
        help="data directory to copy the demo collection from, when it holds one",
    )


if __name__ == "__main__":
    harness.main("retrieval", __doc__, main_async, QUICK, FULL, options)
