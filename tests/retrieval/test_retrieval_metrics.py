"""The retrieval service's Prometheus metrics, scraped over HTTP from the real service (real embedder, real store)
served in-process: queries timed by mode, micro-batch sizes as GetStats counts them, ingest throughput in passages
and bytes, an index rebuild, and each collection's passages read from the catalog at scrape time."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
import pytest
from support.scrape import Samples, delta, recorded, scrape_async, series, value
from support.served import served

from genmesh.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.server import RetrievalService

P = "genmesh_retrieval_"
GARDEN = [
    ("tomato", "Tomatoes need full sun, warm soil and regular deep watering."),
    ("rose", "Prune roses in late winter; cut above an outward facing bud."),
    ("basil", "Basil is a tender herb; pinch off the flower buds to keep leaves coming."),
    ("compost", "A compost heap turns kitchen scraps into humus in a few months — no café grounds wasted."),
]
NOTES = [
    ("a", "Crème brûlée needs a very hot grill for its crust."),
    ("b", "Sourdough rises slowly overnight in a cool kitchen."),
    ("c", "Miso soup is finished off the boil so the miso keeps its taste."),
]


def service(data_dir: Path) -> RetrievalService:
    args = argparse.Namespace(
        data_dir=str(data_dir),
        embedder="",
        device="cpu",
        precision="auto",
        threads=1,
        chunk_size=800,
        chunk_overlap=160,
        index="hnsw",  # deletes leave tombstones; past a quarter of the index, it is rebuilt
        hnsw_m=32,
        batch_window_ms=20.0,
        max_batch=64,
        read_threads=2,
        seed_demo=False,
    )
    return RetrievalService(args)


def documents(pairs: list[tuple[str, str]]) -> list[retrieval_pb2.Document]:
    return [retrieval_pb2.Document(id=i, title=i.title(), text=text) for i, text in pairs]


def text_bytes(pairs: list[tuple[str, str]]) -> int:
    return sum(len(text.encode("utf-8")) for _, text in pairs)


async def test_queries_batches_ingest_rebuilds_and_passages(tmp_path: Path) -> None:
    async with served(service(tmp_path)) as retrieval, grpc.aio.insecure_channel(retrieval.address) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        before = await scrape_async(retrieval.metrics_url)
        stats_before = await stub.GetStats(retrieval_pb2.GetStatsRequest(), timeout=30)

        upserted = await stub.Upsert(retrieval_pb2.UpsertRequest(collection="garden", documents=documents(GARDEN)))
        assert upserted.chunks == len(GARDEN), "one passage per short document"
        stream = [
            retrieval_pb2.UpsertStreamRequest(collection="notes", ingest_id="n", documents=documents(NOTES[:2])),
            retrieval_pb2.UpsertStreamRequest(documents=documents(NOTES[2:])),
        ]
        streamed = await stub.UpsertStream(iter(stream), timeout=60)
        assert streamed.progress.chunks == len(NOTES)
        ingested = await scrape_async(retrieval.metrics_url)

        def query(
            text: str, mode: retrieval_pb2.SearchMode.ValueType, collection: str = "garden"
        ) -> retrieval_pb2.QueryRequest:
            return retrieval_pb2.QueryRequest(text=text, mode=mode, collection=collection, top_k=2)

        hybrid, dense, bm25 = (
            retrieval_pb2.SEARCH_MODE_HYBRID,
            retrieval_pb2.SEARCH_MODE_DENSE,
            retrieval_pb2.SEARCH_MODE_BM25,
        )
        batched = [query("sunny plants", hybrid), query("pruning", hybrid), query("herbs", hybrid)]
        batched += [query("what grows in the sun", dense)]
        answers = await asyncio.gather(*(stub.Query(q, timeout=60) for q in batched))
        assert all(answer.passages for answer in answers)
        for text in ("humus", "roses"):
            assert (await stub.Query(query(text, bm25), timeout=30)).passages
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Query(query("anything", hybrid, "no-such-collection"), timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        queried = await scrape_async(retrieval.metrics_url)
        stats = await stub.GetStats(retrieval_pb2.GetStatsRequest(), timeout=30)

        deleted = await stub.Delete(retrieval_pb2.DeleteRequest(collection="garden", document_ids=["rose", "basil"]))
        assert deleted.documents == 2
        after = await scrape_async(retrieval.metrics_url)

    assert delta(ingested, before, f"{P}ingested_passages_total") == len(GARDEN) + len(NOTES)
    assert delta(ingested, before, f"{P}ingested_bytes_total") == text_bytes(GARDEN) + text_bytes(NOTES)

    def counted(samples: Samples, mode: str) -> float:
        return float(value(samples, f"{P}query_duration_seconds_count", mode=mode))

    assert {mode: counted(queried, mode) - counted(ingested, mode) for mode in ("hybrid", "dense", "bm25")} == {
        "hybrid": 3,
        "dense": 1,
        "bm25": 2,
    }, "answered queries, by mode; the one for a missing collection is not"
    assert 0 < delta(queried, ingested, f"{P}query_duration_seconds_sum", mode="hybrid") < 60
    encoded = stats.queries_encoded - stats_before.queries_encoded
    assert encoded == 4, "the dense and hybrid queries, not the BM25 ones"
    assert delta(queried, before, f"{P}batch_size_sum") == encoded
    assert delta(queried, before, f"{P}batch_size_count") == stats.query_batches - stats_before.query_batches

    assert delta(queried, before, f"{P}index_rebuilds_total") == 0
    assert delta(after, queried, f"{P}index_rebuilds_total") == 1, "2 tombstones in an index of 4"
    assert delta(after, queried, f"{P}index_rebuild_duration_seconds_count") == 1
    assert {dict(labels)["collection"]: v for labels, v in series(after, f"{P}passages").items()} == {
        "garden": 2,
        "notes": 3,
    }


async def test_with_metrics_off_nothing_is_recorded(tmp_path: Path) -> None:
    before = recorded(P)
    async with (
        served(service(tmp_path), metrics=False) as retrieval,
        grpc.aio.insecure_channel(retrieval.address) as channel,
    ):
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        await stub.Upsert(retrieval_pb2.UpsertRequest(collection="garden", documents=documents(GARDEN)), timeout=60)
        request = retrieval_pb2.QueryRequest(text="sun", collection="garden", mode=retrieval_pb2.SEARCH_MODE_HYBRID)
        assert (await stub.Query(request, timeout=30)).passages
    assert recorded(P) == before
