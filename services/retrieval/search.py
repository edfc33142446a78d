"""Ranking arithmetic of a query, free of storage: reciprocal rank fusion of dense and BM25 rankings."""

from __future__ import annotations

from collections.abc import Sequence

RRF_K = 60
"""The constant of reciprocal rank fusion: a passage at rank r in a ranking gains 1 / (RRF_K + r)."""
HYBRID_CANDIDATES = 50
"""How deep each ranking is read before fusion (at least ``top_k``)."""


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse rankings of ids (best first) into one: score = sum over rankings of 1 / (k + rank), rank from 1.

    Ties keep the order in which ids first appear, the earlier ranking and the better rank first.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    scores: dict[int, float] = {}
    first_seen: dict[int, tuple[int, int]] = {}
    for which, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            first_seen.setdefault(item, (rank, which))
    return sorted(scores.items(), key=lambda pair: (-pair[1], first_seen[pair[0]]))


def candidate_depth(top_k: int, hybrid: bool) -> int:
    """How many results to ask each ranking for: fusion needs more than ``top_k`` to be worth it."""
    return max(top_k, HYBRID_CANDIDATES) if hybrid else top_k
