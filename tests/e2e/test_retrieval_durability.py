"""Upserts acknowledged before a kill -9 survive it; the stale vector index it left is found and rebuilt."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from pydoc_data.topics import topics

import grpc

from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import ServiceProcess, free_port, start_service, wait_ready
from genmesh.v1 import retrieval_pb2, retrieval_pb2_grpc

COLLECTION = "durable"
TOPICS = sorted(topics)


async def _start(data_dir: Path, log_dir: Path) -> tuple[ServiceProcess, str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = ["serve", "retrieval", "--port", str(port), "--data-dir", str(data_dir), "--threads", "1"]
    service = await start_service(topology.RETRIEVAL, args, address, log_dir)
    await wait_ready(service, timeout_s=180)
    return service, address


async def _stop(service: ServiceProcess) -> None:
    if service.process.returncode is None:
        service.process.terminate()
        await service.process.wait()


def _doc(i: int) -> retrieval_pb2.Document:
    """Documents of different subjects (the Python reference's topics), so that each is its own nearest
    neighbour, and each with a rare word for BM25."""
    text = f"Record qk{i}v. {topics[TOPICS[i]][:400]}"
    return retrieval_pb2.Document(id=f"d{i}", title=f"Record {i}", text=text)


def _index_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "vectors").iterdir())


def _generation(data_dir: Path) -> int:
    """The collection's committed generation, read without changing the files (no WAL checkpoint)."""
    uri = f"file:{data_dir / 'retrieval.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        row = conn.execute("SELECT id, generation FROM collections WHERE name = ?", (COLLECTION,)).fetchone()
    assert row[0] == 1
    return int(row[1])


async def test_acknowledged_upserts_survive_kill_9(tmp_path: Path, log_root: Path) -> None:
    data_dir, log_dir = tmp_path / "data", log_root / "durability"
    log = log_dir / "retrieval.log"

    # 1. A first run stores two documents and stops cleanly: its index is saved under the generation.
    service, address = await _start(data_dir, log_dir)
    try:
        async with open_channel(address) as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
            await stub.Upsert(
                retrieval_pb2.UpsertRequest(collection=COLLECTION, documents=[_doc(0), _doc(1)]), timeout=60
            )
    finally:
        await _stop(service)
    saved = _generation(data_dir)
    assert _index_files(data_dir) == [f"c1.flat.g{saved}.faiss"]

    # 2. A second run loads that index, acknowledges more upserts and is killed with the next one in flight.
    logged = log.stat().st_size
    service, address = await _start(data_dir, log_dir)
    acknowledged = [0, 1]
    try:
        assert "vector index loaded" in log.read_text()[logged:]
        async with open_channel(address) as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)

            async def write() -> None:
                for i in range(2, len(TOPICS) - 1, 2):
                    request = retrieval_pb2.UpsertRequest(collection=COLLECTION, documents=[_doc(i), _doc(i + 1)])
                    await stub.Upsert(request, timeout=60)
                    acknowledged.extend((i, i + 1))

            writer = asyncio.create_task(write())
            while len(acknowledged) < 22 and not writer.done():
                await asyncio.sleep(0.01)
            service.process.kill()  # SIGKILL while the next upsert is in flight
            await service.process.wait()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await writer
    finally:
        if service.process.returncode is None:
            service.process.kill()
            await service.process.wait()
    assert len(acknowledged) >= 22
    # What the crash left: the saved index is behind the committed generation.
    assert _index_files(data_dir) == [f"c1.flat.g{saved}.faiss"]
    committed = _generation(data_dir)
    assert committed >= saved + 10

    # 3. A restart finds the index stale, rebuilds it from SQLite (and saves it), and finds every document.
    logged = log.stat().st_size
    restarted, address = await _start(data_dir, log_dir)
    try:
        startup = log.read_text()[logged:]
        assert "vector index rebuilt from the store" in startup and "vector index loaded" not in startup
        assert _index_files(data_dir) == [f"c1.flat.g{committed}.faiss"]
        async with open_channel(address) as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
            stats = await stub.GetStats(retrieval_pb2.GetStatsRequest(collection=COLLECTION), timeout=10)
            [collection] = stats.collections
            assert collection.documents >= len(acknowledged)
            assert collection.vectors == collection.chunks == collection.documents, "FAISS agrees with SQLite"
            for i in acknowledged:
                doc = _doc(i)
                for mode, text in [
                    (retrieval_pb2.SEARCH_MODE_BM25, f"qk{i}v"),
                    # The passage's own text: its vector must be in the index, under its id.
                    (retrieval_pb2.SEARCH_MODE_DENSE, f"{doc.title}\n{doc.text}"),
                ]:
                    query = retrieval_pb2.QueryRequest(text=text, collection=COLLECTION, top_k=1, mode=mode)
                    found = await stub.Query(query, timeout=30)
                    assert [p.document_id for p in found.passages] == [doc.id], (i, mode)
    finally:
        await _stop(restarted)
