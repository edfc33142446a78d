"""The retrieval service over gRPC: upserts (unary and streamed, resumable), queries, deletes, stats, bad input."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from support.streams import violated_fields

from genmesh.cli.launcher import Mesh
from genmesh.v1 import retrieval_pb2, retrieval_pb2_grpc

Stub = retrieval_pb2_grpc.RetrievalServiceStub


def _collection() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def _doc(i: int, **metadata: str) -> retrieval_pb2.Document:
    return retrieval_pb2.Document(
        id=f"doc-{i}", title=f"Note {i}", text=f"Marker zq{i}x. Note number {i} of the stream.", metadata=metadata
    )


async def _ids(stub: Stub, collection: str, text: str, **fields: object) -> list[str]:
    request = retrieval_pb2.QueryRequest(text=text, collection=collection, **fields)  # type: ignore[arg-type]
    response = await stub.Query(request, timeout=30)
    return [p.document_id for p in response.passages]


async def test_upsert_query_delete_and_stats(retrieval: Stub) -> None:
    name = _collection()
    docs = [
        retrieval_pb2.Document(
            id="a", title="Kettles", text="Descale the kettle with vinegar.", metadata={"room": "kitchen"}
        ),
        retrieval_pb2.Document(
            id="b", title="Lamps", text="Replace the bulb when the lamp flickers.", metadata={"room": "hall"}
        ),
    ]
    response = await retrieval.Upsert(retrieval_pb2.UpsertRequest(collection=name, documents=docs), timeout=60)
    assert (response.documents, response.replaced, response.chunks) == (2, 0, 2)

    result = await retrieval.Query(
        retrieval_pb2.QueryRequest(text="limescale in the kettle", collection=name), timeout=30
    )
    top = result.passages[0]
    assert (top.document_id, top.title, top.rank, top.chunk_id) == ("a", "Kettles", 1, "a#0")
    assert dict(top.metadata) == {"room": "kitchen"} and (top.start, top.end) == (0, len(docs[0].text))
    for mode in (retrieval_pb2.SEARCH_MODE_DENSE, retrieval_pb2.SEARCH_MODE_BM25, retrieval_pb2.SEARCH_MODE_HYBRID):
        assert (await _ids(retrieval, name, "vinegar kettle", mode=mode))[0] == "a"
    assert await _ids(retrieval, name, "kettle", filters={"room": "hall"}) == ["b"]
    assert await _ids(retrieval, name, "kettle", mode=retrieval_pb2.SEARCH_MODE_DENSE, min_score=2.0) == []

    stats = await retrieval.GetStats(retrieval_pb2.GetStatsRequest(collection=name), timeout=10)
    [one] = stats.collections
    assert (one.documents, one.chunks, one.vectors, one.index_kind, one.dim) == (2, 2, 2, "flat", 384)
    assert one.index_bytes > 0 and stats.store_bytes > 0 and stats.query_batches >= 1

    deleted = await retrieval.Delete(
        retrieval_pb2.DeleteRequest(collection=name, filters={"room": "kitchen"}), timeout=30
    )
    assert (deleted.documents, deleted.chunks) == (1, 1)
    assert await _ids(retrieval, name, "kettle") == ["b"]
    deleted = await retrieval.Delete(retrieval_pb2.DeleteRequest(collection=name, document_ids=["b", "zz"]), timeout=30)
    assert deleted.documents == 1
    assert await _ids(retrieval, name, "kettle") == []


async def test_demo_collection_is_there(retrieval: Stub) -> None:
    stats = await retrieval.GetStats(retrieval_pb2.GetStatsRequest(collection="python-reference"), timeout=10)
    [demo] = stats.collections
    assert demo.documents > 50 and demo.vectors == demo.chunks > demo.documents
    assert "context-managers" in await _ids(retrieval, "python-reference", "what does __exit__ return", top_k=5)


async def _stream(
    messages: list[retrieval_pb2.UpsertStreamRequest],
) -> AsyncIterator[retrieval_pb2.UpsertStreamRequest]:
    for message in messages:
        yield message


async def test_stream_reports_progress_and_resumes_after_a_break(retrieval: Stub) -> None:
    name, ingest_id = _collection(), f"load-{uuid.uuid4().hex[:8]}"
    first = [
        retrieval_pb2.UpsertStreamRequest(collection=name, ingest_id=ingest_id, documents=[_doc(0), _doc(1)]),
        *(retrieval_pb2.UpsertStreamRequest(documents=[_doc(i)]) for i in range(2, 100)),
    ]
    gate = asyncio.Event()

    async def breaking() -> AsyncIterator[retrieval_pb2.UpsertStreamRequest]:
        for message in first:
            yield message
        await gate.wait()  # hold the stream open; the client will cancel it

    call = retrieval.UpsertStream(breaking(), timeout=120)
    progress = None
    for _ in range(600):  # the service commits every 64 passages: wait for the first durable batch
        await asyncio.sleep(0.1)
        try:
            progress = (
                await retrieval.GetIngestProgress(
                    retrieval_pb2.GetIngestProgressRequest(ingest_id=ingest_id), timeout=5
                )
            ).progress
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            continue
        if progress.documents:
            break
    call.cancel()
    # One passage per document: the first commit is of exactly 64 passages, and it is all that is stored.
    assert progress is not None and not progress.completed
    assert (progress.documents, progress.chunks, progress.last_document_id) == (64, 64, "doc-63")
    stats = await retrieval.GetStats(retrieval_pb2.GetStatsRequest(collection=name), timeout=10)
    assert (stats.collections[0].documents, stats.collections[0].chunks) == (64, 64)

    done = int(progress.documents)
    rest = [retrieval_pb2.UpsertStreamRequest(collection=name, ingest_id=ingest_id, resume=True)]
    rest += [retrieval_pb2.UpsertStreamRequest(documents=[_doc(i)]) for i in range(done, 150)]
    response = await retrieval.UpsertStream(_stream(rest), timeout=120)
    final = response.progress
    assert (final.documents, final.last_document_id, final.completed, final.collection) == (150, "doc-149", True, name)
    stats = await retrieval.GetStats(retrieval_pb2.GetStatsRequest(collection=name), timeout=10)
    assert stats.collections[0].documents == 150
    assert await _ids(retrieval, name, "zq7x", mode=retrieval_pb2.SEARCH_MODE_BM25) == ["doc-7"]


def _upsert(collection: str, *docs: retrieval_pb2.Document) -> retrieval_pb2.UpsertRequest:
    return retrieval_pb2.UpsertRequest(collection=collection, documents=list(docs))


async def test_bad_input_names_the_field(retrieval: Stub) -> None:
    name = _collection()
    ok = retrieval_pb2.Document(id="ok", title="t", text="fine")
    cases = [
        (retrieval.Query, retrieval_pb2.QueryRequest(text=" "), "text"),
        (retrieval.Query, retrieval_pb2.QueryRequest(text="x", top_k=1001), "top_k"),
        (retrieval.Query, retrieval_pb2.QueryRequest(text="x", mode=99), "mode"),  # type: ignore[arg-type]
        (retrieval.Query, retrieval_pb2.QueryRequest(text="x", filters={"a b": "c"}), "filters"),
        (
            retrieval.Upsert,
            _upsert(name, ok, ok, retrieval_pb2.Document(id="big", text="x" * 1_000_001)),
            "documents[2].text",
        ),
        (
            retrieval.Upsert,
            _upsert(name, ok, retrieval_pb2.Document(id="m", text="t", metadata={"": "v"})),
            "documents[1].metadata",
        ),
        (retrieval.Upsert, _upsert("Bad Name", ok), "collection"),
        (retrieval.Upsert, _upsert(name), "documents"),
        (
            retrieval.Upsert,
            _upsert(name, *(retrieval_pb2.Document(id=f"m{i}", text="x") for i in range(1001))),
            "documents",
        ),
        (retrieval.Delete, retrieval_pb2.DeleteRequest(collection="python-reference"), "document_ids"),
        (retrieval.GetIngestProgress, retrieval_pb2.GetIngestProgressRequest(), "ingest_id"),
    ]
    for method, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, caught.value.details())
        assert field in violated_fields(caught.value), (field, violated_fields(caught.value))
    stream = [retrieval_pb2.UpsertStreamRequest(collection=name, documents=[ok, retrieval_pb2.Document(id="e")])]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await retrieval.UpsertStream(_stream(stream), timeout=30)
    assert violated_fields(caught.value) == ["documents[1].text"]
    many = [retrieval_pb2.Document(id=f"m{i}", text="x") for i in range(1001)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await retrieval.UpsertStream(_stream([retrieval_pb2.UpsertStreamRequest(collection=name, documents=many)]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violated_fields(caught.value) == ["documents"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # nothing refused was stored
        await retrieval.GetStats(retrieval_pb2.GetStatsRequest(collection=name), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    for method, request in [
        (retrieval.Query, retrieval_pb2.QueryRequest(text="x", collection="no-such-collection")),
        (retrieval.Delete, retrieval_pb2.DeleteRequest(collection="no-such-collection", document_ids=["a"])),
        (retrieval.GetStats, retrieval_pb2.GetStatsRequest(collection="no-such-collection")),
        (retrieval.GetIngestProgress, retrieval_pb2.GetIngestProgressRequest(ingest_id="never-seen")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_genmesh_ingest_loads_a_folder(retrieval: Stub, mesh: Mesh, tmp_path: Path) -> None:
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "kettle.md").write_text("# Kettle care\n\nDescale the kettle every month with vinegar.\n")
    (tmp_path / "lamp.txt").write_text("Lamp notes: replace the bulb when it flickers.\n")
    name = _collection()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genmesh.cli",
        "ingest",
        str(tmp_path),
        "--collection",
        name,
        "--target",
        mesh.address("retrieval"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    assert f"2 documents committed to '{name}'" in out.decode()
    result = await retrieval.Query(retrieval_pb2.QueryRequest(text="vinegar", collection=name, top_k=1), timeout=30)
    [passage] = result.passages
    assert (passage.document_id, passage.title) == ("guide/kettle.md", "Kettle care")
    assert dict(passage.metadata) == {"source": "guide/kettle.md", "format": "md"}
