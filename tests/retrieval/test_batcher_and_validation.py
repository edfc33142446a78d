"""The micro-batcher (real threads, a plain batch function) and the checks of retrieval requests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from genmesh.errors import InvalidArgument
from services.retrieval.batcher import MicroBatcher
from services.retrieval.corpus import Document
from services.retrieval.validation import (
    MAX_DOCUMENT_CHARS,
    MAX_QUERY_CHARS,
    MAX_TOP_K,
    SearchMode,
    check_documents,
    check_query,
)


class Recorder:
    """A batch function that squares numbers and remembers each batch (optionally holding the first one)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.release.wait(10)
        self.batches.append(list(items))
        if any(item < 0 for item in items):
            raise ValueError("negative")
        return [item * item for item in items]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


async def test_concurrent_items_share_one_call(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder, executor, window_s=0.2, max_batch=64)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * i for i in range(10)]
    assert recorder.batches == [list(range(10))]
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.largest) == (1, 10, 10)
    await batcher.close()


async def test_a_full_batch_does_not_wait_for_the_window(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder, executor, window_s=30.0, max_batch=4)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(8))), 10)
    assert results == [i * i for i in range(8)]
    assert recorder.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    await batcher.close()


async def test_items_arriving_during_a_call_form_the_next_batch(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder, executor, window_s=0.001, max_batch=64)
    first = asyncio.ensure_future(batcher.submit(1))
    while batcher.stats.batches == 0:
        await asyncio.sleep(0.001)
    later = [asyncio.ensure_future(batcher.submit(i)) for i in range(2, 6)]
    await asyncio.sleep(0.05)
    recorder.release.set()
    assert await first == 1
    assert await asyncio.gather(*later) == [4, 9, 16, 25]
    assert recorder.batches == [[1], [2, 3, 4, 5]]
    await batcher.close()


async def test_window_zero_turns_batching_off(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder, executor, window_s=0.0, max_batch=64)
    assert batcher.max_batch == 1
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 1, 4, 9, 16]
    assert recorder.batches == [[0], [1], [2], [3], [4]]
    await batcher.close()


async def test_an_error_fails_its_batch_only_and_cancelled_callers_are_skipped(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder, executor, window_s=0.05, max_batch=64)
    bad = asyncio.gather(batcher.submit(-1), batcher.submit(2), return_exceptions=True)
    outcomes = await bad
    assert all(isinstance(o, ValueError) for o in outcomes)
    gone = asyncio.ensure_future(batcher.submit(7))
    kept = asyncio.ensure_future(batcher.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    assert await kept == 9
    assert recorder.batches[-1] == [3]
    await batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.submit(1)


def test_batcher_arguments_are_checked(executor: ThreadPoolExecutor) -> None:
    with pytest.raises(ValueError, match="window_s"):
        MicroBatcher(Recorder(), executor, window_s=-1, max_batch=1)
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(), executor, window_s=0.002, max_batch=0)


# --- request checks ---------------------------------------------------------------------------------------------------


def _fields(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]


def test_a_good_query_gets_defaults() -> None:
    params = check_query("what is a generator?")
    assert (params.top_k, params.mode, params.collection, params.filters, params.min_score) == (
        4,
        SearchMode.HYBRID,
        "python-reference",
        {},
        None,
    )
    assert check_query("x" * MAX_QUERY_CHARS, MAX_TOP_K, "bm25", "kb-1", {"lang": "en"}, 0.5).mode is SearchMode.BM25


@pytest.mark.parametrize(
    ("kwargs", "fields"),
    [
        ({"text": ""}, ["text"]),
        ({"text": " \n"}, ["text"]),
        ({"text": "x" * (MAX_QUERY_CHARS + 1)}, ["text"]),
        ({"top_k": 0}, ["top_k"]),
        ({"top_k": MAX_TOP_K + 1}, ["top_k"]),
        ({"top_k": True}, ["top_k"]),
        ({"mode": "semantic"}, ["mode"]),
        ({"mode": None}, ["mode"]),
        ({"collection": "Bad Name!"}, ["collection"]),
        ({"filters": {"": "x"}}, ["filters"]),
        ({"filters": {"lang": "x" * 2000}}, ["filters.lang"]),
        ({"min_score": float("nan")}, ["min_score"]),
        ({"text": "", "top_k": -1, "mode": "x"}, ["text", "top_k", "mode"]),
    ],
)
def test_bad_queries_name_every_bad_field(kwargs: dict[str, object], fields: list[str]) -> None:
    arguments: dict[str, object] = {"text": "yield", **kwargs}
    with pytest.raises(InvalidArgument) as caught:
        check_query(**arguments)  # type: ignore[arg-type]
    assert _fields(caught.value) == fields


def test_documents_are_checked_field_by_field() -> None:
    good = Document("a", "A", "text", {"lang": "en"})
    check_documents([good])
    documents = [
        good,
        Document("", "B", "text"),
        Document("c", "C", " "),
        Document("d", "D", "x" * (MAX_DOCUMENT_CHARS + 1)),
        Document("a", "E", "text"),
        Document("f", "F", "text", {"bad key": "v"}),
        Document("g", "G" * 2000, "text"),
    ]
    with pytest.raises(InvalidArgument) as caught:
        check_documents(documents)
    assert _fields(caught.value) == [
        "documents[1].id",
        "documents[2].text",
        "documents[3].text",
        "documents[4].id",
        "documents[5].metadata",
        "documents[6].title",
    ]
    with pytest.raises(InvalidArgument) as caught:
        check_documents([])
    assert _fields(caught.value) == ["documents"]
