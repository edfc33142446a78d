"""Upserts acknowledged before a kill -9 are all there after a restart, and the vector index agrees with SQLite."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc

from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import ServiceProcess, free_port, start_service, wait_ready
from genmesh.v1 import retrieval_pb2, retrieval_pb2_grpc

COLLECTION = "durable"


async def _start(data_dir: Path, log_dir: Path) -> tuple[ServiceProcess, str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = ["serve", "retrieval", "--port", str(port), "--data-dir", str(data_dir), "--threads", "1"]
    service = await start_service(topology.RETRIEVAL, args, address, log_dir)
    await wait_ready(service, timeout_s=180)
    return service, address


def _doc(i: int) -> retrieval_pb2.Document:
    return retrieval_pb2.Document(
        id=f"d{i}", title=f"Record {i}", text=f"Durable record qk{i}v, written before the crash."
    )


async def test_acknowledged_upserts_survive_kill_9(tmp_path: Path, log_root: Path) -> None:
    data_dir = tmp_path / "data"
    service, address = await _start(data_dir, log_root / "durability")
    acknowledged: list[int] = []
    try:
        async with open_channel(address) as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)

            async def write_forever() -> None:
                i = 0
                while True:
                    request = retrieval_pb2.UpsertRequest(collection=COLLECTION, documents=[_doc(i), _doc(i + 1)])
                    await stub.Upsert(request, timeout=60)
                    acknowledged.extend((i, i + 1))
                    i += 2

            writer = asyncio.create_task(write_forever())
            while len(acknowledged) < 20 and not writer.done():
                await asyncio.sleep(0.01)
            service.process.kill()  # SIGKILL while the next upsert is in flight
            await service.process.wait()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await writer
    finally:
        if service.process.returncode is None:
            service.process.kill()
            await service.process.wait()
    assert len(acknowledged) >= 20

    restarted, address = await _start(data_dir, log_root / "durability")
    try:
        async with open_channel(address) as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
            stats = await stub.GetStats(retrieval_pb2.GetStatsRequest(collection=COLLECTION), timeout=10)
            [collection] = stats.collections
            assert collection.documents >= len(acknowledged)
            assert collection.vectors == collection.chunks == collection.documents, "FAISS agrees with SQLite"
            for i in acknowledged:
                for mode in (retrieval_pb2.SEARCH_MODE_BM25, retrieval_pb2.SEARCH_MODE_DENSE):
                    query = retrieval_pb2.QueryRequest(text=f"qk{i}v", collection=COLLECTION, top_k=1000, mode=mode)
                    found = await stub.Query(query, timeout=30)
                    assert f"d{i}" in {p.document_id for p in found.passages}, (i, mode)
    finally:
        restarted.process.terminate()
        await restarted.process.wait()
    log = (log_root / "durability" / "retrieval.log").read_text()
    assert "vector index rebuilt from the store" in log, "the index the crash left behind was stale and rebuilt"
