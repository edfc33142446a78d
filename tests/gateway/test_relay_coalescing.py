"""The relay's unread messages: runs of deltas merged into one message, every token kept, the completion last."""

from __future__ import annotations

from gateway.relay import Unread
from genmesh.v1 import common_pb2, inference_pb2


def _delta(ids: list[int], text: str) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(delta=common_pb2.TokenDelta(token_ids=ids, text=text))


def _done() -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(complete=common_pb2.Completion(usage=common_pb2.Usage(completion_tokens=4)))


def coalesce(batch: list[inference_pb2.GenerateResponse]) -> list[inference_pb2.GenerateResponse]:
    """What a reader that fell behind by ``batch`` takes."""
    unread = Unread()
    for message in batch:
        unread.push(message)
    return unread.take()


def test_runs_of_deltas_become_one_message() -> None:
    merged = coalesce([_delta([1], "a"), _delta([2, 3], "bc"), _delta([4], "d"), _done()])
    assert [message.WhichOneof("event") for message in merged] == ["delta", "complete"]
    assert list(merged[0].delta.token_ids) == [1, 2, 3, 4]
    assert merged[0].delta.text == "abcd"


def test_logprobs_follow_their_tokens() -> None:
    first = _delta([1], "a")
    first.delta.logprobs.add(token_id=1, logprob=-0.5)
    second = _delta([2], "b")
    second.delta.logprobs.add(token_id=2, logprob=-1.5)
    (merged,) = coalesce([first, second])
    assert [lp.token_id for lp in merged.delta.logprobs] == [1, 2]
    assert merged.delta.text == "ab"


def test_what_was_taken_is_never_merged_into_again() -> None:
    unread = Unread()
    unread.push(_delta([1], "a"))
    unread.push(_delta([2], "b"))
    (taken,) = unread.take()
    assert not unread
    unread.push(_delta([3], "c"))
    unread.push(_delta([4], "d"))
    (later,) = unread.take()
    assert (list(taken.delta.token_ids), taken.delta.text) == ([1, 2], "ab"), "a message already handed out is final"
    assert (list(later.delta.token_ids), later.delta.text) == ([3, 4], "cd")


def test_a_run_ends_at_the_completion() -> None:
    taken = coalesce([_delta([1], "a"), _done(), _delta([2], "b")])
    assert [message.WhichOneof("event") for message in taken] == ["delta", "complete", "delta"]
    assert [message.delta.text for message in taken] == ["a", "", "b"]


def test_interleaved_samples_merge_each_into_its_own_run() -> None:
    """n > 1 interleaves the samples' deltas; a slow reader still holds one merged delta per sample."""
    batch = []
    for step in range(50):
        for index in (0, 1):
            batch.append(_delta([100 * index + step], "ab"[index]))
            batch[-1].index = index
    done_0, done_1 = _done(), _done()
    done_1.index = 1
    taken = coalesce([*batch, done_0, done_1])
    assert [(m.index, m.WhichOneof("event")) for m in taken] == [
        (0, "delta"),
        (1, "delta"),
        (0, "complete"),
        (1, "complete"),
    ]
    assert (list(taken[0].delta.token_ids), taken[0].delta.text) == (list(range(50)), "a" * 50)
    assert (list(taken[1].delta.token_ids), taken[1].delta.text) == (list(range(100, 150)), "b" * 50)


def test_deltas_of_different_samples_are_never_merged() -> None:
    first, other, again = _delta([1], "a"), _delta([2], "b"), _delta([3], "c")
    other.index = 1
    taken = coalesce([first, other, again])
    assert [(m.index, list(m.delta.token_ids), m.delta.text) for m in taken] == [(0, [1, 3], "ac"), (1, [2], "b")]


def test_a_sample_keeps_its_order_around_its_completion() -> None:
    """A completion closes its sample's run: its later deltas never jump ahead of it; other samples' runs stay open."""
    messages = [_delta([1], "a"), _delta([2], "b"), _done(), _delta([3], "c"), _delta([4], "d")]
    messages[1].index = messages[4].index = 1
    taken = coalesce(messages)
    assert [(m.index, m.WhichOneof("event"), list(m.delta.token_ids)) for m in taken] == [
        (0, "delta", [1]),
        (1, "delta", [2, 4]),
        (0, "complete", []),
        (0, "delta", [3]),
    ]
