"""The relay merges the deltas a slow reader missed, keeping every token and the completion last."""

from __future__ import annotations

from gateway.relay import push
from genmesh.v1 import common_pb2, inference_pb2


def coalesce(batch: list[inference_pb2.GenerateResponse]) -> list[inference_pb2.GenerateResponse]:
    """What a reader that fell behind by ``batch`` finds pending."""
    pending: list[inference_pb2.GenerateResponse] = []
    for message in batch:
        push(pending, message)
    return pending


def _delta(ids: list[int], text: str) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(delta=common_pb2.TokenDelta(token_ids=ids, text=text))


def test_runs_of_deltas_become_one_message() -> None:
    done = inference_pb2.GenerateResponse(complete=common_pb2.Completion(usage=common_pb2.Usage(completion_tokens=4)))
    merged = coalesce([_delta([1], "a"), _delta([2, 3], "bc"), _delta([4], "d"), done])
    assert len(merged) == 2
    assert list(merged[0].delta.token_ids) == [1, 2, 3, 4]
    assert merged[0].delta.text == "abcd"
    assert merged[1].HasField("complete")


def test_logprobs_follow_their_tokens() -> None:
    first = _delta([1], "a")
    first.delta.logprobs.add(token_id=1, logprob=-0.5)
    second = _delta([2], "b")
    second.delta.logprobs.add(token_id=2, logprob=-1.5)
    (merged,) = coalesce([first, second])
    assert [lp.token_id for lp in merged.delta.logprobs] == [1, 2]
