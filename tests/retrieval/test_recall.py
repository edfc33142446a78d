"""Retrieval quality on the demo collection: recall@5 of hybrid, dense and BM25 search on labelled questions.

The questions (tests/retrieval/python_questions.json) are written the way a user asks, not in the reference's
words; each lists the pydoc topics that answer it. Runs against the real service of the session's mesh.
"""

from __future__ import annotations

import json
from pathlib import Path

from genmesh.v1 import retrieval_pb2, retrieval_pb2_grpc

QUESTIONS = json.loads((Path(__file__).with_name("python_questions.json")).read_text())["questions"]
MODES = {
    "hybrid": retrieval_pb2.SEARCH_MODE_HYBRID,
    "dense": retrieval_pb2.SEARCH_MODE_DENSE,
    "bm25": retrieval_pb2.SEARCH_MODE_BM25,
}


async def _recall_at_5(stub: retrieval_pb2_grpc.RetrievalServiceStub, mode: int) -> tuple[float, list[str]]:
    missed = []
    for item in QUESTIONS:
        request = retrieval_pb2.QueryRequest(text=item["question"], top_k=5, mode=mode)  # type: ignore[arg-type]
        response = await stub.Query(request, timeout=30)
        if not {p.document_id for p in response.passages} & set(item["topics"]):
            missed.append(item["question"])
    return 1.0 - len(missed) / len(QUESTIONS), missed


async def test_hybrid_recall_at_5_beats_each_method_alone(
    retrieval: retrieval_pb2_grpc.RetrievalServiceStub,
) -> None:
    assert len(QUESTIONS) >= 30
    recall = {}
    for name, mode in MODES.items():
        recall[name], missed = await _recall_at_5(retrieval, mode)
        print(f"recall@5 {name:<6} {recall[name]:.3f}  missed: {missed}")
    assert recall["hybrid"] >= 0.9
    assert recall["hybrid"] >= recall["dense"]
    assert recall["hybrid"] >= recall["bm25"]
